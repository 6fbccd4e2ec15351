"""Cluster runs lose nothing: a run in a folder that holds its checkpoints continues (resume=auto),
SIGTERM or submitit's time-limit signal stops at a chunk boundary with a checkpoint and the requeued
job reproduces the uninterrupted run, seeds are padded to divide over the devices, job folders are
named by their overrides, the W&B mirror continues its own run, and the CLI names the `-m` or the
plugin a command is missing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, cli_env, logged
from omegaconf import OmegaConf

from experiments import loggers, sweep
from experiments.checkpoints import Checkpointer
from experiments.config import ConfigError, compose
from experiments.settings import result_settings, settings_fingerprint
from experiments.train import resume_point, run

OFFLINE = ["dataset=local/pendulum-mixed", "algo=td3_bc", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
           "steps=60", "log_every=10", "eval.every=30", "eval.episodes=1", "seeds=2"]
# IQL 40 offline steps, then 80 environment steps in blocks of 20 (a checkpoint at every block end)
ONLINE = ["dataset=local/pendulum-mixed", "algo=iql", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
          "steps=40", "log_every=10", "eval.every=20", "eval.episodes=1", "online.steps=80",
          "online.eval_every=20", "online.log_every=20", "online.episodes=1", "algo.online.block=20",
          "seeds=2"]


class Killed(Exception):
    """What SIGTERM does to a run that does not handle it (instead of killing the test process)."""


@pytest.fixture
def sigterm_guard():
    def die(signum, frame):
        raise Killed

    previous = signal.signal(signal.SIGTERM, die)
    yield
    signal.signal(signal.SIGTERM, previous)


def signal_after(steps: set[int], signum=signal.SIGTERM):
    """An `after_chunk` hook (loop.ChunkRunner's fault seam) that sends `signum` to this process
    after the compiled chunk ending at a step of `steps`, once per step: the run notices it at its
    next chunk boundary, as it would a signal that arrived while the chunk ran."""
    def send(step: int) -> None:
        if step in steps:
            steps.discard(step)
            os.kill(os.getpid(), signum)

    return send


# ---- resume=auto: the settings beside the checkpoints -------------------------------------------

def test_the_fingerprint_ignores_what_does_not_change_results():
    base = compose(OFFLINE)
    same = compose([*OFFLINE, "resume=true", "skip_done=true", "eval.workers=1", "watchdog_seconds=5",
                    "checkpoint.keep=5", "logger=tensorboard"])
    assert settings_fingerprint(base) == settings_fingerprint(same)
    assert settings_fingerprint(base) == settings_fingerprint(OmegaConf.to_container(base, resolve=True))
    assert settings_fingerprint(base) != settings_fingerprint(compose([*OFFLINE, "algo.batch_size=16"]))
    assert settings_fingerprint(base) != settings_fingerprint(compose([*OFFLINE, "seed=1"]))
    assert "resume" not in result_settings(base) and "logger" not in result_settings(base)


def test_resume_auto_continues_the_same_settings_and_refuses_others(tmp_path, caplog):
    cfg = compose(OFFLINE)
    templates = {"offline": {"keys": jnp.zeros(3)}}
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert resume_point(cfg, checkpointer, templates) is None  # no checkpoint: a fresh start
    checkpointer.save(20, {"keys": jnp.arange(3.0)}, {"phase": "offline", "step": 20})
    checkpointer.wait()
    with pytest.raises(ConfigError, match="settings.json is missing"):  # who wrote it is unknown
        resume_point(cfg, checkpointer, templates)
    checkpointer.write_settings(settings_fingerprint(cfg), result_settings(cfg))
    index, record, trees = resume_point(cfg, checkpointer, templates)
    assert (index, record["step"]) == (20, 20) and trees["keys"].tolist() == [0.0, 1.0, 2.0]
    other = compose([*OFFLINE, "algo.batch_size=16", "steps=90"])
    with pytest.raises(ConfigError, match=r"other settings: algo.batch_size, steps; resume=true"):
        resume_point(other, checkpointer, templates)
    OmegaConf.update(other, "resume", True)  # continue anyway (a longer run, say)
    assert resume_point(other, checkpointer, templates)[0] == 20
    assert "resume=true: continuing from checkpoints written with other settings" in caplog.text
    OmegaConf.update(other, "resume", False)  # start over: the old checkpoints go
    assert resume_point(other, checkpointer, templates) is None and checkpointer.latest() is None



def test_a_folder_written_before_a_setting_existed_resumes_at_its_old_value(tmp_path):
    """settings.json of an older version lacks the settings added since (settings.ADDED_SETTINGS):
    it reads as their values of then (env.backend=host, ...), so a requeued job resumes after an
    upgrade; the same folder is refused beside a new setting's other value."""
    cfg = compose(OFFLINE)
    templates = {"offline": {"keys": jnp.zeros(3)}}
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(20, {"keys": jnp.arange(3.0)}, {"phase": "offline", "step": 20})
    checkpointer.wait()
    older = result_settings(cfg)
    del older["env"]["backend"], older["env"]["num_envs"], older["eval"]["backend"]
    # the fingerprint the older version wrote: of the settings it knew
    then = hashlib.sha256(json.dumps(older, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert then != settings_fingerprint(cfg) and settings_fingerprint(older) == settings_fingerprint(cfg)
    checkpointer.write_settings(then, older)
    assert resume_point(cfg, checkpointer, templates)[0] == 20
    with pytest.raises(ConfigError, match=r"other settings: env.backend; resume=true"):
        resume_point(compose([*OFFLINE, "env.backend=mjx"]), checkpointer, templates)

# ---- SIGTERM: a checkpoint at the next chunk boundary, then the same command continues ----------

@pytest.mark.integration
def test_sigterm_offline_and_online_stops_at_a_checkpoint_and_the_rerun_is_exact(
        offline_data, tmp_path, monkeypatch, sigterm_guard):
    cfg = compose(ONLINE)
    straight = run(cfg, tmp_path / "straight")
    preempted = tmp_path / "preempted"
    # offline: during the chunk that ends at step 20; online: during the block ending at env step 40
    # (updates 60-80); the block after it ends at env step 60, with a checkpoint, and the run leaves
    send = signal_after({20, 80})
    for checkpoint, step in ((20, 20), (40 + 60, 60)):
        with pytest.raises(SystemExit) as stop:
            run(cfg, preempted, after_chunk=send)  # the same command each time: resume=auto continues
        assert stop.value.code == 128 + signal.SIGTERM
        assert Checkpointer(preempted / "checkpoints").latest() == checkpoint
        assert not (preempted / "results.json").exists()
        lines = logged(preempted)
        assert max(line.get("env_step", 0) if line.get("phase") == "online" else line["step"]
                   for line in lines if line["type"] == "train") == step  # nothing lost, nothing after
    resumed = run(cfg, preempted)
    assert resumed["seeds"] == straight["seeds"]
    assert logged(preempted) == logged(tmp_path / "straight")
    assert resumed["online"]["episodes"] == straight["online"]["episodes"]


@pytest.mark.integration
def test_a_folder_of_other_settings_is_refused_with_one_line(offline_data, tmp_path):
    run(compose([*OFFLINE, "steps=20", "eval.every=20"]), tmp_path / "run")
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", *OFFLINE, "steps=20", "eval.every=20",
         "algo.batch_size=16", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "other settings: algo.batch_size" in last
    assert "resume=true" in last and "resume=false" in last



# ---- submitit: a job signalled at its time limit is requeued and finishes as if uninterrupted ----

def submitit_task(sweep_dir: Path) -> int | None:
    """The process id of the submitit task running a job of `sweep_dir`, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and any(str(sweep_dir).encode() in c for c in command):
            return int(entry.name)
    return None


@pytest.mark.integration
def test_a_slurm_local_job_at_its_time_limit_is_requeued_and_finishes_exactly(offline_data, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason='the submitit extra: pip install -e ".[submitit]"')
    overrides = [*OFFLINE, "steps=2000", "eval.every=1000", "algo.hidden_dims=[64,64]",
                 "algo.batch_size=256"]
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "-m", *overrides, "hydra/launcher=slurm_local",
         f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    signalled, deadline = False, time.time() + 400
    while not signalled and time.time() < deadline and process.poll() is None:
        metrics = list(sweep_dir.glob("*/metrics.jsonl"))
        pid = submitit_task(sweep_dir)
        if metrics and metrics[0].read_text().count('"train"') >= 2 and pid:
            os.kill(pid, signal.SIGUSR2)  # what submitit's controller sends at the time limit
            signalled = True
        time.sleep(0.05)
    out, err = process.communicate(timeout=400)
    assert signalled and process.returncode == 0, err
    (job,) = [p for p in sweep_dir.iterdir() if (p / "results.json").exists()]
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "SIGUSR2 received: stopped at step" in logs and "Requeued job" in logs
    straight = run(compose(overrides), tmp_path / "straight")
    assert json.loads((job / "results.json").read_text())["seeds"] == json.loads(
        json.dumps(straight["seeds"]))
    assert logged(job) == logged(tmp_path / "straight")  # metrics.jsonl kept, continued, not doubled


# ---- seeds padded to a multiple of the device count ---------------------------------------------

PADDED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax
    from experiments import seed_axis
    from experiments.config import compose
    from experiments.train import run

    assert len(jax.devices()) == 4, jax.devices()
    seen = []
    real_shard = seed_axis.shard_seeds
    def spy(*trees):
        trees = real_shard(*trees)
        leaf = jax.tree.leaves(trees[-1])[0]
        seen.append([leaf.shape[0], len(leaf.sharding.device_set)])
        return trees
    seed_axis.shard_seeds = spy
    run(compose(json.loads(sys.argv[1])), Path(sys.argv[2]))
    print(json.dumps(seen))
""")


def on_four_devices(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    """`overrides` trained into `run_dir` by a process with 4 forced host devices (PADDED): its
    last stdout line lists the seed axis and device count of each shard_seeds call."""
    process = subprocess.run(
        [sys.executable, "-c", PADDED, json.dumps(overrides), str(run_dir)], cwd=REPO,
        env=cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"), capture_output=True,
        text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    return process


@pytest.mark.integration
def test_five_seeds_train_on_four_devices_and_the_padding_is_discarded(offline_data, tmp_path):
    overrides = [*OFFLINE, "seeds=5", "steps=40", "eval.every=20"]
    single = run(compose(overrides), tmp_path / "one_device")
    process = on_four_devices(overrides, tmp_path / "four")
    seen = json.loads(process.stdout.strip().splitlines()[-1])
    assert seen[0] == [5, 1] and [8, 4] in seen  # the run's own trees as they are; each chunk padded
    four = json.loads((tmp_path / "four" / "results.json").read_text())
    assert [s["seed"] for s in four["seeds"]] == [0, 1, 2, 3, 4]
    for ours, theirs in zip(four["seeds"], single["seeds"], strict=True):
        assert ours["final_score"] == pytest.approx(theirs["final_score"], rel=1e-4, abs=1e-3)
    lines, reference = logged(tmp_path / "four"), logged(tmp_path / "one_device")
    assert len(lines) == len(reference)
    for line, expected in zip(lines, reference, strict=True):
        for key, value in expected.items():
            if isinstance(value, list) and value and isinstance(value[0], float):
                assert len(line[key]) == 5
                np.testing.assert_allclose(line[key], value, rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_per_seed_stage_results_are_padded_with_the_seeds(offline_data, tmp_path):
    """MOPO trains one dynamics model per seed (a seed axis in the context): with 3 seeds on 4
    devices the models are padded like the seeds, and each seed keeps its own model's numbers."""
    overrides = ["algo=mopo", "dataset=local/pendulum-mixed", "seeds=3", "steps=20", "log_every=10",
                 "eval.every=20", "eval.episodes=1", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
                 "algo.rollout_freq=10", "algo.rollout_batch=16", "algo.rollout_length=2",
                 "algo.dynamics.hidden_dims=[8,8]", "algo.dynamics.weight_decays=[0,0,0]",
                 "algo.dynamics.max_steps=30", "algo.dynamics.batch_size=16",
                 f"pretrain.cache_dir={tmp_path / 'cache'}"]
    single = run(compose(overrides), tmp_path / "one_device")
    on_four_devices(overrides, tmp_path / "four")
    four = json.loads((tmp_path / "four" / "results.json").read_text())
    assert [s["seed"] for s in four["seeds"]] == [0, 1, 2]
    for ours, theirs in zip(four["seeds"], single["seeds"], strict=True):
        assert ours["final_score"] == pytest.approx(theirs["final_score"], rel=1e-3, abs=1e-2)


# ---- job folders named by their overrides; skip_done compares the settings ----------------------

@pytest.mark.integration
def test_a_relaunch_in_another_order_finds_its_jobs_and_retrains_changed_settings(tmp_path):
    from helpers import d4rl_arrays, write_hdf5

    data = write_hdf5(tmp_path / "good.hdf5", d4rl_arrays(n=50))
    sweep_dir = tmp_path / "sweep"

    def launch(algos: str, *extra: str):
        return subprocess.run(
            [sys.executable, "-m", "experiments.train", "-m", "dataset=d4rl/hopper-medium-v2",
             f"dataset.path={data}", "steps=10", "log_every=10", "eval.every=0", f"algo={algos}",
             "algo.hidden_dims=[8,8]", "algo.batch_size=8", f"hydra.sweep.dir={sweep_dir}", *extra],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)

    first = launch("bc,td3_bc")
    assert first.returncode == 0, first.stderr
    folders = {p.name.split("_hopper")[0]: p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != "."}
    assert sorted(folders) == ["bc", "td3_bc"]
    td3_bc_results = (folders["td3_bc"] / "results.json").read_bytes()
    results = json.loads((folders["bc"] / "results.json").read_text())
    results["config"]["algo"]["actor_lr"] = 1.0  # as if written with another setting
    (folders["bc"] / "results.json").write_text(json.dumps(results))

    second = launch("td3_bc,bc", "skip_done=true")  # the other order, and skip what is done
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != ".") == sorted(
        p.name for p in folders.values())  # no new folder
    assert "not training again" in (folders["td3_bc"] / "train.log").read_text()
    assert (folders["td3_bc"] / "results.json").read_bytes() == td3_bc_results
    assert "results.json of other settings (algo.actor_lr); training again from scratch" in (
        folders["bc"] / "train.log").read_text()
    assert json.loads((folders["bc"] / "results.json").read_text())["config"]["algo"]["actor_lr"] != 1.0


# ---- the CLI: a sweep without -m, a plugin that is not installed --------------------------------

@pytest.mark.integration
def test_an_experiment_without_dash_m_is_an_error_showing_the_command(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", "+experiment=iql_locomotion", "seeds=2"], cwd=tmp_path,
        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1] == (
        "error: this config sweeps dataset (hydra.sweeper.params), which only a multirun does; add -m: "
        "python -m experiments.train -m +experiment=iql_locomotion seeds=2")
    assert not list(tmp_path.rglob("metrics.jsonl"))  # nothing trained


def test_a_missing_plugin_names_the_extra_that_provides_it(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name.startswith(
        "hydra_plugins.hydra_submitit") else real_find_spec(name, *args))
    assert sweep.missing_plugin(["algo=iql", "hydra/launcher=slurm"]) == (
        "hydra/launcher=slurm needs a Hydra plugin that is not installed "
        '(hydra_plugins.hydra_submitit_launcher); install it: pip install -e ".[submitit]"')
    assert sweep.missing_plugin(["hydra/launcher=parallel"]) is None  # joblib: installed with us
    optuna = sweep.missing_plugin(["hydra/sweeper=optuna"])
    assert optuna is None or optuna.endswith("install it: pip install hydra-optuna-sweeper")
    with pytest.raises(SystemExit) as stop:
        sweep.check_plugins(["hydra/launcher=slurm_local"])
    assert stop.value.code == 2


# ---- the W&B mirror continues its own run -------------------------------------------------------

class RecordingSink:
    def __init__(self):
        self.logged = []

    def log(self, prefix, step, values):
        self.logged.append(step)

    def close(self):
        pass


def test_a_resumed_mirror_does_not_replay_what_it_sent(tmp_path):
    path, state = tmp_path / "metrics.jsonl", tmp_path / ".wandb_mirror.json"
    lines = [json.dumps({"type": "train", "step": step, "loss": [1.0]}) + "\n" for step in (10, 20, 30)]
    path.write_text("".join(lines))
    first = loggers.Mirror(path, RecordingSink(), interval=3600, state=state)
    first.forward_new_lines()
    assert first.sink.logged == [10, 20, 30]
    # the job is requeued: it resumes from its checkpoint at step 10, cutting metrics.jsonl there ...
    second = loggers.Mirror(path, RecordingSink(), interval=3600, state=state)
    second.forward_new_lines()  # (it may look before the cut)
    path.write_text(lines[0])
    second.forward_new_lines()
    with open(path, "a") as stream:  # ... and writes steps 20 and 30 again, then 40
        stream.write("".join(lines[1:]) + json.dumps({"type": "train", "step": 40, "loss": [1.0]}) + "\n")
    second.forward_new_lines()
    assert second.sink.logged == [40]


def test_the_wandb_run_id_comes_from_the_run_folder(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(kwargs) or types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    settings = OmegaConf.create({"project": "tests"})
    for _ in range(2):  # a job and its requeued attempt
        loggers.WandbSink(tmp_path / "job", {}, settings, "sweep")
    loggers.WandbSink(tmp_path / "other", {}, settings, "sweep")
    assert [call["resume"] for call in calls] == ["allow"] * 3
    assert calls[0]["id"] == calls[1]["id"] == loggers.wandb_id(tmp_path / "job") != calls[2]["id"]


# ---- Ray: the ray_cluster preset joins a running head --------------------------------------------

@pytest.mark.integration
def test_the_ray_cluster_preset_joins_a_running_head(tmp_path):
    """`ray start --head` on the loopback address, then a sweep with `hydra/launcher=ray_cluster`
    (`address: auto`) as a user would; without `object_store_memory: null` in the preset, Ray
    refuses to connect (facebookresearch/hydra#2893). Run it with the Python of the ray extra's own
    environment (hydra-ray-launcher pins cloudpickle<3)."""
    pytest.importorskip("ray", reason='the ray extra, in its own environment: pip install -e ".[ray]"')
    pytest.importorskip("hydra_plugins.hydra_ray_launcher",
                        reason='the ray extra, in its own environment: pip install -e ".[ray]"')
    from helpers import d4rl_arrays, write_hdf5

    data = write_hdf5(tmp_path / "good.hdf5", d4rl_arrays(n=50))
    env = cli_env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(  # --block: the head's processes end with this one (ours to stop)
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         "--disable-usage-stats"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 120
        while not Path("/tmp/ray/ray_current_cluster").exists() and time.time() < deadline:
            assert head.poll() is None, head.stdout.read()
            time.sleep(1)
        sweep_dir = tmp_path / "sweep"
        process = subprocess.run(
            [sys.executable, "-m", "experiments.train", "-m", "dataset=d4rl/hopper-medium-v2",
             f"dataset.path={data}", "steps=10", "log_every=10", "eval.every=0", "algo=bc,td3_bc",
             "algo.hidden_dims=[8,8]", "algo.batch_size=8", "hydra/launcher=ray_cluster",
             "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
             f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=600)
        assert process.returncode == 0, process.stderr[-3000:]
        assert len(list(sweep_dir.glob("*/results.json"))) == 2
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
