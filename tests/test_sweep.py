"""A sweep with a failing job runs every other job to completion, with every launcher we can run
here, records the failure in the job's folder, and a re-launch with skip_done=true trains nothing
twice. Each sweep is a real `python -m experiments.train -m` process on tiny files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("sweep")]

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=d4rl/hopper-medium-v2", "steps=10", "log_every=10", "eval.every=0", "algo=bc",
        "algo.hidden_dims=[8,8]", "algo.batch_size=8"]
LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel"],
             "slurm_local": ["hydra/launcher=slurm_local"],
             # a local Ray instance; the ray extra lives in its own environment (cloudpickle<3)
             "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                     "+hydra.launcher.ray.init.include_dashboard=false"]}
PLUGINS = {"slurm_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
           "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}


def run_sweep(sweep_dir: Path, paths: list[Path], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.train", "-m", *TINY,
               f"dataset.path={','.join(str(p) for p in paths)}", f"hydra.sweep.dir={sweep_dir}",
               *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0", "RAY_AUTH_MODE": "disabled"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from helpers import d4rl_arrays, write_hdf5

    folder = tmp_path_factory.mktemp("sweep-data")
    return {"missing": folder / "missing.hdf5",
            "good": write_hdf5(folder / "good.hdf5", d4rl_arrays(n=50))}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep in job order (their names come from their overrides)."""
    from omegaconf import OmegaConf

    folders = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "hydra.yaml").exists()]
    return sorted(folders, key=lambda p: OmegaConf.load(p / ".hydra" / "hydra.yaml").hydra.job.num)


@pytest.fixture(scope="module")
def basic_sweep(files, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("basic") / "sweep"
    return sweep_dir, run_sweep(sweep_dir, [files["missing"], files["good"]])


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_job_never_loses_the_others(launcher, files, tmp_path, request):
    if launcher == "basic":
        sweep_dir, process = request.getfixturevalue("basic_sweep")
    else:
        if launcher in PLUGINS:
            module, extra = PLUGINS[launcher]
            pytest.importorskip(module, reason=f'the {extra} extra: pip install -e ".[{extra}]"')
        sweep_dir = tmp_path / "sweep"
        # the failing job first: with the basic launcher, everything after it would be lost
        process = run_sweep(sweep_dir, [files["missing"], files["good"]], *LAUNCHERS[launcher])
    failed, good = job_dirs(sweep_dir)
    assert process.returncode == 1, process.stderr  # the sweep reports that a job failed ...
    assert json.loads((good / "results.json").read_text())["seeds"]  # ... after the others ran
    assert not (failed / "results.json").exists()
    record = json.loads((failed / "failure.json").read_text())
    assert record["error"].startswith(f"dataset file '{files['missing']}' does not exist")
    assert f"dataset.path={files['missing']}" in record["overrides"]
    assert (record["algo"], record["dataset"], record["exception"]) == (
        "bc", "d4rl/hopper-medium-v2", "JobFailed")
    assert not (good / "failure.json").exists()
    assert f"error: dataset file '{files['missing']}' does not exist" in process.stderr + "".join(
        p.read_text() for p in sweep_dir.rglob("*_log.err"))  # submitit keeps each job's stderr


def test_relaunch_with_skip_done_trains_only_what_is_missing(files, basic_sweep):
    sweep_dir, _ = basic_sweep
    failed, good = job_dirs(sweep_dir)
    before = {name: (good / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    (failed / "failure.json").write_text("{}")
    # the file exists now: the job that failed trains this time, the finished one is skipped
    files["missing"].write_bytes(files["good"].read_bytes())
    process = run_sweep(sweep_dir, [files["missing"], files["good"]], "skip_done=true")
    assert process.returncode == 0, process.stderr
    assert "already has results.json; not training again" in (good / "train.log").read_text()
    assert {name: (good / name).read_bytes() for name in before} == before
    assert json.loads((failed / "results.json").read_text())["seeds"]
    assert not (failed / "failure.json").exists()  # the failure record of the earlier attempt
    files["missing"].unlink()


def test_single_run_bad_input_still_exits_2_without_a_failure_record(files, tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", *TINY, f"dataset.path={files['missing']}",
         f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith("error: dataset file")
    assert not (tmp_path / "run" / "failure.json").exists()
