"""Evaluating a saved run in this process (experiments/evaluate.py, experiments/restored.py): the same
episode returns as the run's own evaluations, any kept checkpoint, the bad inputs, and the video
writer (envs/video.py). The command line end to end: tests/test_evaluate_cli.py."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from experiments.evaluate import command_line, evaluate_run, own_evaluation_index
from experiments.restored import RunError, restore

# IQL, 2 seeds, an evaluation and a checkpoint every 20 steps, all three kept.
TINY_IQL = {"algo": "iql", "dataset": "local/pendulum-mixed", "seeds": 2, "steps": 40, "log_every": 20,
            "eval.every": 20, "eval.episodes": 2, "checkpoint.keep": 3, "algo.hidden_dims": [8, 8],
            "algo.batch_size": 16}


@pytest.fixture(scope="module")
def iql_run(tmp_path_factory, data_dir):
    """A tiny IQL run trained through the Python API (offrl.train), as the command line writes it."""
    import offrl

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFFRL_DATA_DIR", str(data_dir))
        result = offrl.train(run_dir=tmp_path_factory.mktemp("iql") / "run", **TINY_IQL)
        yield result


@pytest.fixture
def run_copy(iql_run, tmp_path, offline_data):
    """A copy of the run to damage or edit."""
    return shutil.copytree(iql_run.run_dir, tmp_path / "copy")


def last_evaluation(results: dict, key: str = "episode_returns") -> list:
    return [list(seed[key].values())[-1] for seed in results["seeds"]]


def test_evaluate_gives_the_runs_own_returns_and_never_touches_results(iql_run, offline_data):
    results_file = iql_run.run_dir / "results.json"
    before = results_file.read_bytes()
    record = evaluate_run(iql_run.run_dir, workers=1)
    assert [seed["episode_returns"] for seed in record["seeds"]] == last_evaluation(iql_run.results)
    assert [seed["recorded_episode_returns"] for seed in record["seeds"]] == last_evaluation(iql_run.results)
    assert (record["checkpoint"], record["phase"], record["evaluation_index"]) == (40, "offline", 1)
    assert json.loads((iql_run.run_dir / "evaluation.json").read_text()) == record
    assert results_file.read_bytes() == before
    scores = [seed["final_score"] for seed in iql_run.results["seeds"]]
    assert record["summary"]["mean"] == pytest.approx(np.mean(scores))
    assert iql_run.scores == pytest.approx(scores)


def test_an_earlier_checkpoint_and_one_seed(iql_run, offline_data):
    record = evaluate_run(iql_run.run_dir, checkpoint=20, seeds=[1], out=None)
    assert [seed["seed"] for seed in record["seeds"]] == [1]
    assert record["seeds"][0]["episode_returns"] == iql_run.results["seeds"][1]["episode_returns"][20]
    other = evaluate_run(iql_run.run_dir, checkpoint=20, seeds=[1], evaluation_index=7, out=None)
    assert other["seeds"][0]["episode_returns"] != record["seeds"][0]["episode_returns"]  # other episodes
    assert "recorded_episode_returns" not in other["seeds"][0]


def test_the_evaluation_index_of_a_checkpoint():
    history = {"evaluations": [{"phase": "offline", "step": 20, "env_step": 0},
                               {"phase": "offline", "step": 40, "env_step": 0}]}
    assert own_evaluation_index(history, {"phase": "offline", "step": 40, "env_step": 0}) == 1
    assert own_evaluation_index(history, {"phase": "offline", "step": 50, "env_step": 0}) == 2  # no eval
    # online, an evaluation's step counts the updates (20 offline + 40 online); the checkpoint's does not
    history["evaluations"].append({"phase": "online", "step": 80, "env_step": 40})
    assert own_evaluation_index(history, {"phase": "online", "step": 40, "env_step": 40}) == 2
    assert own_evaluation_index(history, {"phase": "online", "step": 40, "env_step": 50}) == 3


def test_the_command_line_takes_the_run_folder_first_and_video_as_a_switch():
    assert command_line(["runs/x", "video=true", "video.episodes=2", "seeds=[0,3]"]) == [
        "run=runs/x", "video.record=true", "video.episodes=2", "seeds=[0,3]"]


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="is not a folder"):
        restore(tmp_path / "missing")
    with pytest.raises(RunError, match=r"is not a run folder \(no .hydra/config.yaml"):
        restore(tmp_path)


def test_a_checkpoint_that_was_not_kept(iql_run, offline_data):
    with pytest.raises(RunError, match=r"checkpoint=30 was not kept .*: the kept ones are 20, 40"):
        restore(iql_run.run_dir, checkpoint=30)


def test_an_algorithm_this_version_does_not_have(run_copy):
    config = run_copy / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("name: iql", "name: gone"))
    with pytest.raises(RunError, match="algo=gone, which this version of the code does not have"):
        restore(run_copy)


def test_a_seed_the_run_did_not_train(iql_run, offline_data):
    with pytest.raises(RunError, match=r"it trained seeds \[0, 1\]"):
        evaluate_run(iql_run.run_dir, seeds=[5], out=None)


def test_bad_options_are_refused_before_restoring(tmp_path):
    from experiments.config import ConfigError

    for options, message in (({"episodes": 0}, "episodes must be an integer >= 1"),
                             ({"seeds": [0.5]}, "seeds must be a list of training seeds"),
                             ({"out": "results.json"}, "would replace the run's own results"),
                             ({"workers": 0}, "eval.workers must be")):
        with pytest.raises(ConfigError, match=message):
            evaluate_run(tmp_path, **options)


def test_a_corrupt_checkpoint_falls_back_to_the_kept_one_before_it(run_copy, caplog):
    for item in (run_copy / "checkpoints" / "40" / "states").rglob("*"):
        if item.is_file():
            item.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        record = evaluate_run(run_copy, seeds=[0], out=None)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "checkpoints"]
    assert len(warnings) == 1 and "checkpoint at step 40" in warnings[0].getMessage()
    assert record["checkpoint"] == 20
    assert record["seeds"][0]["episode_returns"] == json.loads(
        (run_copy / "results.json").read_text())["seeds"][0]["episode_returns"]["20"]
    assert (run_copy / "checkpoints" / "40").exists()  # evaluation changes nothing in the run


# ---- the Python API's policy ---------------------------------------------------------------------


def test_load_policy_acts_as_the_runs_own_policy(iql_run, offline_data):
    import jax
    import jax.numpy as jnp

    import offrl
    from experiments import policies

    policy = offrl.load_policy(iql_run.run_dir, seed=1)
    observations = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    restored = restore(iql_run.run_dir)
    states, values = restored.subset([1])
    unit = policies.make_policy(restored.algo, restored.preprocessor, values=values)(states)(
        observations[None])[0]  # the run's evaluation program: actions in [-1, 1]
    batched = policy(observations)
    np.testing.assert_allclose(batched, 2.0 * unit, rtol=1e-5, atol=1e-6)  # Pendulum's torque: [-2, 2]
    assert isinstance(batched, np.ndarray) and batched.shape == (5, 1)
    np.testing.assert_allclose(policy(observations[2]), batched[2], rtol=1e-6)
    on_device = policy(jnp.asarray(observations))
    assert isinstance(on_device, jax.Array)
    np.testing.assert_allclose(jax.jit(lambda o: policy(o))(jnp.asarray(observations)), batched, rtol=1e-6)
    assert np.all(np.abs(policy(100.0 * observations)) <= 2.0)
    assert policy.source["seed"] == 1 and policy.source["checkpoint"] == 40
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(n, 3\)"):
        policy(np.zeros(4))


def test_the_exported_policy_acts_as_load_policy(iql_run, offline_data, tmp_path):
    pytest.importorskip("flatbuffers", reason="jax.export serializes with flatbuffers: pip install -e .")
    from jax import export as jax_export

    import offrl
    from experiments.export import POLICY_FILE, SPEC_FILE, export_policy

    folder = export_policy(iql_run.run_dir, tmp_path / "policy", seed=0)
    exported = jax_export.deserialize((folder / POLICY_FILE).read_bytes())
    observations = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    # Two compilations of one policy (the exported one for a symbolic batch size) may sum in another
    # order: a few float32 ulps of the O(1) terms (1.2e-7 each), so atol 1e-6 for actions near 0;
    # another seed's or checkpoint's policy differs by far more.
    np.testing.assert_allclose(np.asarray(exported.call(observations)),
                               offrl.load_policy(iql_run.run_dir, seed=0)(observations), rtol=1e-6, atol=1e-6)
    spec = json.loads((folder / SPEC_FILE).read_text())
    assert spec["inputs"][0]["shape"] == ["batch", 3] and spec["outputs"][0]["high"] == [2.0]


# ---- videos --------------------------------------------------------------------------------------


def test_video_returns_are_the_evaluations_and_a_missing_renderer_is_one_line(tmp_path, monkeypatch):
    from envs import video

    def broken():
        raise RuntimeError("no OpenGL here\nsecond line")

    with pytest.raises(video.VideoError, match=r"cannot render a frame here \(RuntimeError: no OpenGL here\)"
                       ) as error:
        video.check_renderer(broken, "Hopper-v5")
    assert "\n" not in str(error.value) and "MUJOCO_GL" in str(error.value)
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)
    with pytest.raises(video.VideoError, match=r'pip install -e "\.\[video\]"'):
        video.check_renderer(broken, "Pendulum-v1")


@pytest.mark.integration
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])
def test_recorded_episodes_play_as_evaluated(env_id, tmp_path):
    """A fixed policy's episodes, recorded to mp4, return what the evaluation's vector env gives;
    skipped, with the reason, where this machine cannot render the environment."""
    import gymnasium as gym

    from envs import video
    from envs.environment import run_episodes

    pytest.importorskip("imageio_ffmpeg", reason='mp4 needs imageio-ffmpeg: pip install -e ".[video]"')

    def factory(render_mode=None):
        return lambda: gym.wrappers.TimeLimit(gym.make(env_id, render_mode=render_mode).unwrapped, 30)

    try:
        video.check_renderer(factory("rgb_array"), env_id)
    except video.VideoError as error:
        pytest.skip(str(error))
    action_dim = gym.make(env_id).action_space.shape[0]
    policy = lambda observations: np.full((*observations.shape[:2], action_dim), 0.3)  # noqa: E731
    seeds = np.array([[3, 4]])
    returns = video.record(policy, factory("rgb_array"), seeds, lambda i, e, r: tmp_path / f"{e}_{r:.1f}.mp4")
    np.testing.assert_allclose(returns, run_episodes(policy, factory(), seeds, workers=1))
    import imageio.v2 as imageio

    files = sorted(tmp_path.glob("*.mp4"))
    assert [f.name for f in files] == [f"{e}_{r:.1f}.mp4" for e, r in enumerate(returns[0])]
    if env_id == "Pendulum-v1":  # never terminates: the first frame and one per step of 30
        with imageio.get_reader(files[0]) as reader:
            assert sum(1 for _ in reader) == 31


def test_a_changed_environment_and_a_stochastic_policy(iql_run, offline_data):
    base = evaluate_run(iql_run.run_dir, seeds=[0], episodes=1, out=None)["seeds"][0]["episode_returns"][0]
    shorter = evaluate_run(iql_run.run_dir, seeds=[0], episodes=1, env={"max_episode_steps": 50}, out=None)
    assert shorter["env"] == {"max_episode_steps": 50}
    assert base < shorter["seeds"][0]["episode_returns"][0] <= 0  # 50 of the 200 steps' costs
    heavier = evaluate_run(iql_run.run_dir, seeds=[0], episodes=1, env={"g": 20.0}, out=None)
    assert heavier["seeds"][0]["episode_returns"][0] != base  # Pendulum's gravity, a gym.make argument
    sampled = [evaluate_run(iql_run.run_dir, seeds=[0], episodes=1, deterministic=False, out=None)[
        "seeds"][0]["episode_returns"][0] for _ in range(2)]
    assert sampled[0] == sampled[1] != base  # keys from the seed: reproducible, and not the mean action


def test_trainings_are_chosen_by_seed_and_grid_point():
    from experiments.grid import Grid
    from experiments.restored import Restored

    grid = Grid((0, 1), ("expectile",), ({"expectile": 0.7}, {"expectile": 0.9}))
    restored = Restored(*[None] * 7, grid, *[None] * 5)
    assert restored.select() == [0, 1, 2, 3]
    assert restored.select([1], {"expectile": 0.9}) == [3]
    assert restored.select(None, {"expectile": 0.7}) == [0, 1]
    with pytest.raises(RunError, match="point.tau: the run's grid has the fields expectile"):
        restored.select(None, {"tau": 0.1})
    with pytest.raises(RunError, match=r"no training .* has seed in \[2\]"):
        restored.select([2], {"expectile": 0.9})
