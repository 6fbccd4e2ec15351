"""Bad input through the real command line: each case must stop with a non-zero exit, one clear
line on stderr naming the problem, no traceback, and no results.json.

Each run of `python -m experiments.train` pays the JAX import (~5 s), so all cases are started
once per module, two at a time, and the tests below check one outcome each.
"""

from __future__ import annotations

import itertools
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO, cli_env, d4rl_arrays, run_cli, write_hdf5

import algorithms

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("bad_input")]

QUICK = ["steps=10", "log_every=10", "eval.every=0"]
HOPPER = ["dataset=d4rl/hopper-medium-v2"]
TINY = ["algo.batch_size=8", "algo.hidden_dims=[8,8]"]
# a run with checkpoints at steps 10 and 20, and its resumption to step 30
CHECKPOINTED = ["steps=20", "log_every=10", "eval.every=0", "checkpoint.every=10", *TINY]
RESUMED = ["steps=30", "log_every=10", "eval.every=0", "checkpoint.every=10", "resume=true", *TINY]


def make_files(folder: Path, d4rl_steps, write_hdf5) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"good": write_hdf5(folder / "good.hdf5", d4rl_steps())}
    files["corrupt"] = folder / "corrupt.hdf5"
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(4096))
    steps = d4rl_steps()
    del steps["rewards"]
    files["no_rewards"] = write_hdf5(folder / "no_rewards.hdf5", steps)
    steps = d4rl_steps()
    steps["actions"] = steps["actions"][:9]
    files["short_actions"] = write_hdf5(folder / "short_actions.hdf5", steps)
    steps = d4rl_steps()
    steps["observations"][3, 2] = np.nan
    files["nan"] = write_hdf5(folder / "nan.hdf5", steps)
    files["five_dim"] = write_hdf5(folder / "five_dim.hdf5", d4rl_steps(obs_dim=5))
    files["five_actions"] = write_hdf5(folder / "five_actions.hdf5", d4rl_steps(act_dim=5))
    steps = d4rl_steps()
    steps["observations"] = np.full(steps["observations"].shape, b"x")  # strings, not numbers
    files["text"] = write_hdf5(folder / "text.hdf5", steps)
    files["folder"] = folder  # a folder that holds .hdf5 files
    return files


def cases(files: dict[str, Path], folder: Path) -> dict[str, SimpleNamespace]:
    """name -> the overrides, and the words the one error line must hold (`app`: the error comes
    from our train app as `error: ...` with exit code 2; otherwise from Hydra)."""

    def case(overrides, words, app=True):
        return SimpleNamespace(overrides=overrides, words=words, app=app)

    missing = folder / "missing" / "hopper.hdf5"
    return {
        "missing_file": case([*HOPPER, f"dataset.path={missing}", *QUICK],
                             [str(missing), "does not exist", "dataset.path"]),
        "corrupt_file": case([*HOPPER, f"dataset.path={files['corrupt']}", *QUICK],
                             [str(files["corrupt"]), "not a readable HDF5 file"]),
        "missing_key": case([*HOPPER, f"dataset.path={files['no_rewards']}", *QUICK],
                            ["lacks the required key", "'rewards'"]),
        "different_lengths": case([*HOPPER, f"dataset.path={files['short_actions']}", *QUICK],
                                  ["different lengths", "actions 9", "rewards 10"]),
        "nan_values": case([*HOPPER, f"dataset.path={files['nan']}", *QUICK],
                           ["'observations'", "NaN/inf", "row 3"]),
        "observation_size": case(
            [*HOPPER, f"dataset.path={files['five_dim']}", "steps=10", "log_every=10",
             "eval.every=10", "eval.episodes=1"],
            ["5 values", "Hopper-v4", "11"]),
        "unknown_minari_dataset": case(
            ["dataset=minari/custom", "dataset.name=nobody/nothing-v0", "dataset.download=false",
             *QUICK],
            ["nobody/nothing-v0", "not in the local Minari folder"]),
        "unknown_algorithm": case(["algo=nope", *QUICK], ["Could not find", "algo/nope"], app=False),
        "unknown_dataset": case(["dataset=d4rl/nope-v2", *QUICK],
                                ["Could not find", "dataset/d4rl/nope-v2"], app=False),
        "unknown_hyperparameter": case(["algo.not_a_field=1", *QUICK],
                                       ["Could not override", "algo.not_a_field"], app=False),
        "seeds_not_a_number": case(["seeds=abc", *QUICK], ["seeds", "abc"]),
        # online fine-tuning: refused before any offline training
        "online_environment_mismatch": case(
            [*HOPPER, f"dataset.path={files['five_dim']}", *QUICK, "online.steps=10"],
            ["5 values", "Hopper-v4", "11"]),
        "online_negative_steps": case([*QUICK, "online.steps=-5"], ["online.steps", "-5"]),
        "online_buffer_too_small": case(
            [*HOPPER, f"dataset.path={files['good']}", *QUICK, "online.steps=10",
             "algo.online.buffer_size=5"], ["buffer_size=5", "cannot hold the dataset"]),
        "action_width": case([*HOPPER, f"dataset.path={files['five_actions']}", *QUICK],
                             ["actions have 5 values", "Hopper-v4", "takes 3"]),
        "non_numeric": case([*HOPPER, f"dataset.path={files['text']}", *QUICK],
                            ["'observations'", "non-numeric", str(files["text"])]),
        "negative_layer_width": case([*HOPPER, f"dataset.path={files['good']}", *QUICK,
                                      "algo.hidden_dims=[-4]"],
                                     ["algo.hidden_dims", "layer widths", "-4"]),
        "negative_steps": case([*HOPPER, f"dataset.path={files['good']}", *QUICK[1:], "steps=-5"],
                               ["steps must be an integer >= 0", "-5"]),
        "resume_not_a_boolean": case([*HOPPER, f"dataset.path={files['good']}", *QUICK, "resume=maybe"],
                                     ["resume must be auto, true or false", "maybe"]),
        "path_is_a_folder": case([*HOPPER, f"dataset.path={files['folder']}", *QUICK],
                                 [str(files["folder"]), "is a folder", "corrupt.hdf5", "dataset.path=FILE"]),
        # a previous run's checkpoints, every one unreadable (made in `outcomes`)
        "unreadable_checkpoints": case([*HOPPER, f"dataset.path={files['good']}", *RESUMED],
                                       ["no checkpoint in", "can be read", "step 20", "step 10"]),
        # ... only the newest unreadable: the run resumes from the one before it and completes
        "unreadable_latest_checkpoint": case([*HOPPER, f"dataset.path={files['good']}", *RESUMED], []),
        # the control: a valid file trains and writes results.json, so its absence above means
        # something
        "valid_control": case([*HOPPER, f"dataset.path={files['good']}", *QUICK,
                               "algo.batch_size=8", "algo.hidden_dims=[8,8]"], []),
        "help": case(["--help"], []),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    files = make_files(root / "files", d4rl_arrays, write_hdf5)
    env = cli_env(**{variable: str(root / folder) for variable, folder in [
        ("OFFRL_DATA_DIR", "offrl"), ("MINARI_DATASETS_PATH", "minari"), ("D4RL_DATASET_DIR", "d4rl")]})
    table = cases(files, root)
    previous = root / "runs" / "previous"
    previous.parent.mkdir(parents=True, exist_ok=True)
    first = run_cli([*HOPPER, f"dataset.path={files['good']}", *CHECKPOINTED], previous, env)
    assert first.returncode == 0, first.stderr
    for name, steps in [("unreadable_checkpoints", (10, 20)), ("unreadable_latest_checkpoint", (20,))]:
        shutil.copytree(previous, root / "runs" / name)
        (root / "runs" / name / "results.json").unlink()
        for step in steps:
            for file in (root / "runs" / name / "checkpoints" / str(step) / "states").rglob("*"):
                if file.is_file():
                    file.write_bytes(b"damaged")

    def launch(name):
        run_dir = root / "runs" / name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        return name, run_dir, run_cli(table[name].overrides, run_dir, env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(launch, table))
    return {name: SimpleNamespace(case=table[name], run_dir=run_dir, process=process)
            for name, run_dir, process in results}


def report(outcome) -> str:
    process = outcome.process
    return f"exit {process.returncode}\n--- stdout\n{process.stdout}\n--- stderr\n{process.stderr}"


BAD_INPUT = [
    "missing_file", "corrupt_file", "missing_key", "different_lengths", "nan_values",
    "observation_size", "unknown_minari_dataset", "unknown_algorithm", "unknown_dataset",
    "unknown_hyperparameter",
    "seeds_not_a_number", "action_width", "non_numeric", "negative_layer_width", "negative_steps",
    "resume_not_a_boolean", "path_is_a_folder", "unreadable_checkpoints",
    "online_environment_mismatch", "online_negative_steps", "online_buffer_too_small",
]


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_stops_with_one_clear_line(outcomes, name):
    outcome = outcomes[name]
    process, case = outcome.process, outcome.case
    assert process.returncode != 0, report(outcome)
    assert "Traceback" not in process.stderr, report(outcome)
    lines = [line for line in process.stderr.splitlines() if all(w in line for w in case.words)]
    assert lines, report(outcome)
    if case.app:
        assert process.returncode == 2, report(outcome)
        errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
        assert errors == lines, report(outcome)  # exactly one error line, and it is the clear one
    assert not (outcome.run_dir / "results.json").exists()


def test_valid_control_writes_results(outcomes):
    outcome = outcomes["valid_control"]
    assert outcome.process.returncode == 0, report(outcome)
    assert (outcome.run_dir / "results.json").is_file()
    assert "error:" not in outcome.process.stderr


# What a user can pass as algo=<name>: the YAML files in configs/algo (the `<name>_base` schemas they
# build on are internal and must not be offered).
ALGO_CHOICES = sorted(path.stem for path in (REPO / "configs" / "algo").glob("*.yaml"))


def test_unknown_algorithm_lists_the_algorithms_to_choose_from(outcomes):
    outcome = outcomes["unknown_algorithm"]
    listed = outcome.process.stderr.split("Available options in 'algo':\n", 1)[-1].splitlines()
    offered = [line.strip() for line in itertools.takewhile(lambda line: line.startswith("\t"), listed)]
    assert offered == ALGO_CHOICES, report(outcome)
    assert set(algorithms.available()) <= set(offered)  # every algorithm can be chosen


def test_help_offers_only_real_algorithms(outcomes):
    outcome = outcomes["help"]
    assert outcome.process.returncode == 0, report(outcome)
    lines = [line for line in outcome.process.stdout.splitlines() if line.startswith("algo: ")]
    assert lines and lines[0].removeprefix("algo: ").split(", ") == ALGO_CHOICES, report(outcome)
def test_resume_falls_back_past_an_unreadable_checkpoint(outcomes):
    """The newest checkpoint (step 20) is damaged: one line says so, the run resumes from step 10
    and completes."""
    outcome = outcomes["unreadable_latest_checkpoint"]
    assert outcome.process.returncode == 0, report(outcome)
    output = outcome.process.stdout + outcome.process.stderr  # Hydra's log lines go to stdout
    warnings = [line for line in output.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and "step 20" in warnings[0], report(outcome)
    assert "resuming from the checkpoint at step 10" in output
    assert (outcome.run_dir / "results.json").is_file()
    lines = (outcome.run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [10, 20, 30]  # the damaged run's step-20 line was dropped and written again


@pytest.mark.parametrize("override", [
    "seed=-1", "seeds=0", "steps=-5", "log_every=0", "eval.every=-1", "eval.episodes=-1",
    "checkpoint.every=-1", "checkpoint.keep=0", "watchdog_seconds=-1", "resume=maybe",
    "dataset.download=sometimes", "steps=1.5", "eval.workers=0", "eval.workers=two",
])
def test_every_run_setting_is_checked_alone(override):
    from experiments.config import ConfigError, compose
    from experiments.settings import check_run_settings

    key, value = override.split("=")
    with pytest.raises(ConfigError, match=f"^{key} must be .*got .*{value}.*fix the override {key}="):
        check_run_settings(compose(["dataset=d4rl/hopper-medium-v2", override]))
    check_run_settings(compose(["dataset=d4rl/hopper-medium-v2"]))  # the defaults pass
