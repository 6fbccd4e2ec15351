"""The Hydra command line as a user meets it: a fast `--help`, no option silently ignored, the
Optuna sweeper, and progress lines from long work (issue 22, items 11, 13, 16, 17)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments import config, settings

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


# ---- item 11: --help without JAX --------------------------------------------------------------


@pytest.mark.integration
def test_help_answers_without_importing_jax(tmp_path):
    env = {**os.environ, "OFFRL_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    os.environ["OFFRL_CACHE_DIR"] = str(tmp_path)
    try:
        config.save_schemas(config.algorithm_schemas())  # what any earlier start leaves behind
    finally:
        del os.environ["OFFRL_CACHE_DIR"]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.train", "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "== Configuration groups ==" in done.stdout and "expectile: '${by_family:" in done.stdout
    modules = imported_modules(done.stderr)
    assert "hydra" in modules  # the parser saw the imports
    assert not {"jax", "flax", "algorithms", "orbax.checkpoint"} & modules


def test_help_from_the_schema_cache_shows_what_the_schemas_show(tmp_path, monkeypatch):
    """The cached schemas compose into the same config text as the dataclasses themselves."""
    monkeypatch.setenv("OFFRL_CACHE_DIR", str(tmp_path))
    assert config.cached_schemas() is None
    overrides = ["algo=spot", "dataset=local/hopper-medium"]
    real = OmegaConf.to_yaml(config.compose(overrides))  # setup() writes the cache
    assert config.schema_cache().exists()
    config.register_configs(for_help=True)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base=None):
        cached = OmegaConf.to_yaml(compose("train", overrides=overrides))
    config.register_configs()  # the typed schemas back, for the tests after this one
    assert cached == real


# ---- item 17: long work shows progress ---------------------------------------------------------


def test_stage_pretraining_logs_step_holdout_loss_and_time_left(caplog):
    import jax.numpy as jnp
    import numpy as np

    from algorithms import Spec
    from algorithms.core import dynamics
    from envs import Dataset
    from experiments.stages import train_stage

    rng = np.random.default_rng(0)
    states, actions = rng.normal(size=(400, 2)), rng.uniform(-1, 1, size=(400, 1))
    as_array = lambda x: jnp.asarray(x, jnp.float32)
    zeros = as_array(np.zeros(400))
    data = Dataset(as_array(states), as_array(actions), as_array(states[:, 0]), as_array(states * 0.9),
                   zeros, zeros)
    config = dynamics.DynamicsConfig(num_members=2, num_elites=1, hidden_dims=(8,), weight_decays=(0.0, 0.0),
                                     batch_size=16, validate_every=20, max_steps=60, patience=10_000)
    spec = Spec(2, 1, 0)
    with caplog.at_level("INFO", logger="stages"):
        train_stage(dynamics.dynamics_stage(config, spec), spec, data, log_every=20, progress_seconds=0)
    lines = [record.getMessage() for record in caplog.records if record.name == "stages"]
    assert [line.split(";")[0].split(",")[0] for line in lines[:3]] == [
        "stage dynamics: step 20/60", "stage dynamics: step 40/60", "stage dynamics: step 60/60"]
    assert all("holdout_mse" in line and "left" in line for line in lines[:3])
    assert "at most" in lines[0]  # the ensemble may stop early: max_steps bounds the time left
    assert lines[3].startswith("stage dynamics: done, 60 steps") and len(lines) == 5
    assert lines[4].startswith("stage dynamics (seed 0): ran its step budget (60 updates)")

    caplog.clear()  # an ensemble that stops at its first validation says so
    impatient = dataclasses.replace(config, patience=1, improvement=10.0, max_steps=400)
    with caplog.at_level("INFO", logger="stages"):
        _, record = train_stage(dynamics.dynamics_stage(impatient, spec), spec, data, log_every=20)
    lines = [record.getMessage() for record in caplog.records if record.name == "stages"]
    assert record.stopped_early_at == record.steps < 400
    assert lines[-2].startswith(f"stage dynamics: done, {record.steps} steps")
    assert lines[-2].endswith(f"(stopped early at step {record.steps})")
    assert lines[-1].startswith(f"stage dynamics (seed 0): its validation stopped it at step {record.steps}")


def test_dataset_generation_logs_its_progress(tmp_path, caplog):
    from experiments import generate

    with caplog.at_level("INFO", logger="generate"):
        generate.generate("pendulum", ["random"], size=300, root=tmp_path)
    lines = [record.getMessage() for record in caplog.records if record.name == "generate"]
    assert lines[0].startswith("generating local/pendulum-random: step 300/300")
    assert lines[-1].startswith("generating local/pendulum-random: done, 300 steps")


# ---- item 16: no option silently ignored -------------------------------------------------------


def problems_of(overrides: list[str], in_sweep: bool = False) -> list[str]:
    """What the run's settings check says about these command-line overrides."""
    return settings.check_options_apply(config.compose(overrides), overrides, in_sweep=in_sweep)


@pytest.mark.parametrize("overrides, message", [
    (["dataset=local/pendulum-mixed", "dataset.path=/nonexistent/x.hdf5"],
     "dataset.path '/nonexistent/x.hdf5' is not a folder"),
    (["dataset=local/hopper-medium", "dataset.download=false"],
     "dataset.download=false does not apply to local/hopper-medium"),
    (["online.eval_every=5000"], "online.eval_every=5000 does nothing with online.steps=0"),
    (["online=locomotion", "online.steps=0"], "online=locomotion does nothing with online.steps=0"),
    (["algo.online.block=10"], "algo.online.block=10 does nothing with online.steps=0"),
    (["eval.every=0", "eval.episodes=5"], "eval.episodes=5 does nothing with eval.every=0"),
    (["eval.every=0", "eval.workers=2"], "eval.workers=2 does nothing with eval.every=0"),
    (["eval.episodes=0", "eval.every=100"], "eval.every=100 does nothing with eval.episodes=0"),
    (["algo=td3_bc", "algo.alpha=3.0", "grid.algo.alpha=[1.0,2.0]"],
     "algo.alpha=3.0 does nothing: grid.algo.alpha gives alpha its values"),
])
def test_an_option_that_does_nothing_is_an_error(overrides, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        problems_of(overrides)


def test_options_that_apply_pass():
    assert problems_of(["online.steps=100", "online.eval_every=50", "algo.online.block=10",
                        "eval.every=0", "eval.episodes=5", "eval.workers=1"]) == []
    assert problems_of(["algo=td3_bc", "grid.algo.alpha=[1.0,2.0]", "algo.batch_size=8"]) == []
    assert problems_of(["dataset=d4rl/hopper-medium-v2", "dataset.download=false"]) == []


def test_in_a_sweep_a_shared_option_that_does_nothing_in_this_job_is_a_warning(tmp_path):
    """`-m online.steps=0,1000 online.eval_every=500`: the job without an online phase warns."""
    assert problems_of(["online.steps=0", "online.eval_every=500"], in_sweep=True) == [
        "online.eval_every=500 does nothing with online.steps=0 (no online phase): set online.steps=N "
        "to fine-tune online, or drop the override"]
    with pytest.raises(config.ConfigError, match="is not a folder"):  # never right, sweep or not
        problems_of(["dataset.path=" + str(tmp_path / "x.hdf5")], in_sweep=True)


def test_a_stage_path_for_a_stage_the_algorithm_lacks_is_an_error():
    from algorithms import Spec
    from experiments.stages import train_stages

    algo = config.make_algorithm(config.compose(["algo=iql"]).algo)
    with pytest.raises(config.ConfigError, match="stage_paths.dynamics does nothing: iql has no "
                                                 "pretraining stages"):
        train_stages(algo, Spec(3, 1, 10), None, cache_root=None, dataset_key=("local", "x", None),
                     log_every=10, paths={"dynamics": "/somewhere"})


@pytest.mark.integration
def test_the_command_line_refuses_an_ignored_option_with_one_error_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for overrides, message in (
            (["dataset=local/pendulum-mixed", "dataset.path=/nonexistent/x.hdf5"], "is not a folder"),
            (["online.eval_every=5000"], "online.eval_every=5000 does nothing")):
        done = subprocess.run([sys.executable, "-m", "experiments.train", *overrides,
                               f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]


# ---- item 13: the Optuna sweeper tunes for the score a run returns -----------------------------


def test_the_optuna_sweeper_must_maximise_a_score_the_run_has():
    optuna = OmegaConf.create({"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                               "direction": "minimize"})
    cfg = config.compose()
    with pytest.raises(config.ConfigError, match="hydra/sweeper=optuna_maximize"):
        settings.check_sweeper(cfg, optuna)
    optuna.direction = "maximize"
    settings.check_sweeper(cfg, optuna)
    with pytest.raises(config.ConfigError, match="evaluation is off"):
        settings.check_sweeper(config.compose(["eval.every=0"]), optuna)
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"})
    settings.check_sweeper(config.compose(["eval.every=0"]), basic)  # the basic sweeper needs no score


@pytest.mark.slow  # three trainings, each compiled: ~5 min on 2 loaded cores
@pytest.mark.integration
def test_optuna_tunes_a_setting_for_the_final_score(tmp_path):
    import json

    import yaml

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason='the optuna extra: pip install -e ".[optuna]"')
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", "hydra/sweeper=optuna_maximize",
         "hydra.sweeper.n_trials=3", "algo=iql", "algo.expectile=interval(0.5,0.9)",
         "dataset=local/pendulum-mixed", "algo.hidden_dims=[8,8]", "algo.batch_size=16", "steps=20",
         "log_every=10", "eval.every=20", "eval.episodes=1", f"hydra.sweep.dir={sweep_dir}",
         f"pretrain.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/results.json"))]
    assert len(trials) == 3
    scores = [trial["summary"]["final_score_mean"] for trial in trials]
    assert best["best_value"] == pytest.approx(max(scores))
    assert 0.5 <= best["best_params"]["algo.expectile"] <= 0.9
    assert len({trial["config"]["algo"]["expectile"] for trial in trials}) == 3  # three proposals
