"""Compiled evaluation (`eval.backend`, experiments/compiled_evaluation.py, envs/mjx/evaluation.py) on
the jax.numpy Pendulum-v1 against the host's (gymnasium, the reference): the same returns from the
same initial states, the same scores in distribution from each backend's own resets, the same
records in a whole run, and the refused settings. The compiled online phase over four devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

import envs
from envs.environment import run_episodes
from envs.mjx import EnvState, evaluation
from experiments import compiled_evaluation, records
from experiments.config import ConfigError, compose
from experiments.data import load
from experiments.evaluate import evaluate_run
from experiments.settings import check_options_apply, check_run_settings
from experiments.train import run

PENDULUM = envs.lookup("local", "pendulum-mixed")
TINY = ["dataset=local/pendulum-mixed", "algo=iql", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
        "steps=20", "log_every=20", "eval.every=20", "eval.episodes=3", "seeds=2"]
ONLINE = ["online.steps=140", "online.eval_every=70", "online.log_every=70", "online.episodes=2",
          "env.backend=mjx"]


class Float32Start(gym.Wrapper):
    """gymnasium's Pendulum with its reset state rounded to float32, where the compiled copy starts."""

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        pendulum = self.env.unwrapped
        pendulum.state = pendulum.state.astype(np.float32).astype(np.float64)
        return pendulum._get_obs(), info


def gymnasium_start(env_seeds: np.ndarray) -> np.ndarray:
    """(th, th') of gymnasium's reset with each seed, in float32, shape env_seeds.shape + (2,)."""
    env = envs.make_env(PENDULUM)
    starts = []
    for seed in np.asarray(env_seeds).reshape(-1):
        env.reset(seed=int(seed))
        starts.append(np.asarray(env.unwrapped.state, np.float32))
    return np.stack(starts).reshape(*np.shape(env_seeds), 2)


@pytest.fixture(scope="module")
def assembled(data_dir):
    """A tiny IQL run's Assembly (eval.backend=mjx) and its fresh states: a fixed deterministic
    policy (untrained: its actions are those of the initial networks)."""
    from experiments.assembly import Assembly

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFFRL_DATA_DIR", str(data_dir))
        asm = Assembly.build(compose([*TINY, "eval.episodes=25", "eval.backend=mjx"]))
    return asm, asm.fresh()["states"]


def from_the_same_starts(asm, states, copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(host, compiled) returns of evaluation 0's episodes, (seeds x copies, episodes), the policy
    program of `copies` candidates per seed on both backends, each episode started from gymnasium's
    reset state for its episode seed, rounded to float32."""
    env_seeds = records.episode_seeds(asm.seeds, asm.cfg, "offline", 0, copies)
    host = run_episodes(asm.policy("offline", members=copies)(states),
                        lambda: Float32Start(envs.make_env(PENDULUM)), env_seeds, workers=1)
    initial = jax.vmap(jax.vmap(asm.jax_env.reset_to))(gymnasium_start(env_seeds))
    return host, compiled_evaluation.CompiledEvaluation(asm).play("offline", states, initial, copies)


def test_compiled_and_host_returns_agree_from_the_same_initial_states(assembled):
    """2 seeds x 25 whole 200-step episodes of the same policy program, each started on both backends
    from the same state: every episode's return agrees to float32 round-off (the host steps
    gymnasium in float64)."""
    host, returns = from_the_same_starts(*assembled)
    assert returns.shape == host.shape == (2, 25) and returns.dtype == np.float64
    assert np.ptp(host) > 100  # the episodes differ: a shuffled comparison would fail
    np.testing.assert_allclose(returns, host, rtol=1e-5)  # measured: 9e-7 at most


@pytest.mark.integration
def test_every_candidate_plays_its_seeds_episodes_as_on_the_host(offline_data):
    """Uni-O4's members (rows seeds x members, member m of seed i at row i * members + m): from the
    same initial states, every row's compiled returns are the host's."""
    from helpers import UNIO4_TINY_RUN

    from experiments.assembly import Assembly

    asm = Assembly.build(compose([*UNIO4_TINY_RUN, "steps=20", "eval.backend=mjx"]))
    count = asm.algo.candidates().count
    host, returns = from_the_same_starts(asm, asm.fresh()["states"], count)
    assert count > 1 and returns.shape == host.shape == (2 * count, 2)
    assert np.ptp(host.reshape(2, count, 2), axis=1).min() > 1e-3  # the members act differently
    np.testing.assert_allclose(returns, host, rtol=1e-5)


def test_compiled_and_host_scores_agree_in_distribution(assembled):
    """Each backend from its own resets of evaluation 0's 50 episode seeds (gymnasium's generator on
    the host, `jax.random` keys of the same seeds compiled): Welch's t-test finds no difference of
    the mean normalized scores (p > 0.01; fixed seeds, so the numbers are the same on every run),
    and the compiled episodes are not the host's (other initial states)."""
    asm, states = assembled
    host = records.play(asm.policy()(states), asm.info, asm.seeds, asm.cfg, "offline", 0,
                        asm.raw.observation_dim)
    compiled = compiled_evaluation.CompiledEvaluation(asm).returns("offline", states, 0)
    host_scores, compiled_scores = (envs.normalized_score(r, asm.info).ravel() for r in (host, compiled))
    assert compiled.shape == host.shape == (2, 25)
    assert stats.ttest_ind(compiled_scores, host_scores, equal_var=False).pvalue > 0.01
    assert not np.allclose(np.sort(compiled.ravel()), np.sort(host.ravel()))


class Countdown:
    """A JAX environment whose episode from `reset_to(n)` terminates after n steps, reward 1 a step,
    time limit 10."""

    max_episode_steps = 10

    def reset_to(self, n):
        zero = jnp.zeros((), jnp.int32)
        return EnvState(jnp.asarray(n, jnp.int32), jnp.zeros(1), jnp.zeros(()), zero > 0, zero > 0, zero)

    def step(self, state, action):
        steps = state.steps + 1
        return EnvState(state.data, state.observation + action, jnp.ones(()), steps >= state.data,
                        steps >= self.max_episode_steps, steps)


def test_an_episode_counts_until_it_terminates_or_reaches_the_time_limit():
    env, seen = Countdown(), []

    def policy(observations):
        seen.append(observations.shape)
        return jnp.zeros_like(observations)

    initial = jax.vmap(jax.vmap(env.reset_to))(jnp.array([[3, 12], [10, 1]]))
    returns, lengths = jax.jit(lambda states: evaluation.play(env, policy, states))(initial)
    assert np.asarray(returns).tolist() == [[3, 10], [10, 1]]
    assert np.asarray(lengths).tolist() == [[3, 10], [10, 1]]
    assert seen == [(2, 2, 1)]  # one call per step for all (seeds, episodes)


def test_episode_keys_depend_on_the_episode_seed_alone():
    """A seed meets the same compiled initial states alone or beside other seeds, and evaluation
    indices do not share them (envs.episode_seeds' property, kept by the keys)."""
    env = envs.mjx.make_jax_env(PENDULUM)
    initial = lambda seeds, index: np.asarray(evaluation.reset(env, evaluation.episode_key_data(  # noqa: E731
        envs.episode_seeds(seeds, index, 4))).data)
    np.testing.assert_array_equal(initial([0, 1], 0)[1], initial([1], 0)[0])
    assert not np.allclose(initial([1], 0), initial([1], 1))


@pytest.mark.integration
def test_a_run_evaluated_compiled_writes_the_host_records(offline_data, tmp_path, monkeypatch):
    """A tiny run with env.backend=mjx (eval.backend=auto: compiled; the host's player is replaced by
    one that fails) and the same run evaluated on the host: the same evaluation lines, history and
    results.json, key for key and shape for shape; the evaluate command reads the compiled run."""
    host = run(compose([*TINY, *ONLINE, "eval.backend=host"]), tmp_path / "host")

    def no_host_evaluation(*args, **kwargs):
        raise AssertionError("evaluated on the host")

    with monkeypatch.context() as patch:
        patch.setattr(records, "play", no_host_evaluation)
        cfg = compose([*TINY, *ONLINE])
        compiled = run(cfg, tmp_path / "compiled")
    (tmp_path / "compiled" / ".hydra").mkdir()  # what a restore reads, as the command line writes it
    (tmp_path / "compiled" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))

    def evaluations(folder):
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [line for line in lines if line["type"] == "eval"]

    def shape(tree):  # keys, list lengths and value types, not values
        if isinstance(tree, dict):
            return {key: shape(value) for key, value in tree.items()}
        if isinstance(tree, list):
            return [shape(value) for value in tree]
        return type(tree).__name__

    info = load("local", "pendulum-mixed", None, False)[1]  # with the generated data's reference returns
    host_lines, compiled_lines = evaluations(tmp_path / "host"), evaluations(tmp_path / "compiled")
    assert [(e["phase"], e["step"], e["env_step"]) for e in compiled_lines] == [
        ("offline", 20, 0), ("online", 90, 70), ("online", 160, 140)]
    for host_line, compiled_line in zip(host_lines, compiled_lines, strict=True):
        assert shape(compiled_line) == shape(host_line)
        assert compiled_line["normalized_score"] == pytest.approx(envs.normalized_score(
            np.mean(compiled_line["episode_returns"], axis=1), info).tolist())
    for key in ("seeds", "summary"):
        assert shape(compiled[key]) == shape(host[key])
    assert compiled["config"]["eval"]["backend"] == "auto"
    # the offline phase trained the same: only the evaluation differs
    assert compiled_lines[0]["episode_returns"] != host_lines[0]["episode_returns"]
    again = evaluate_run(tmp_path / "compiled", workers=1, out=None)  # on the host, as it always is
    assert [len(seed["recorded_episode_returns"]) for seed in again["seeds"]] == [2, 2]
    recorded = [seed["recorded_episode_returns"] for seed in again["seeds"]]
    assert recorded == compiled_lines[-1]["episode_returns"]


@pytest.mark.parametrize("overrides, words", [
    (["eval.backend=gpu"], "eval.backend must be auto, host or mjx (got 'gpu'); fix the override "
                           "eval.backend=..."),
    (["eval.backend=1"], "eval.backend must be auto, host or mjx (got 1)"),
])
def test_bad_evaluation_backends_are_refused(overrides, words):
    with pytest.raises(ConfigError) as error:
        check_run_settings(compose(overrides))
    assert str(error.value).startswith(words)


@pytest.mark.parametrize("overrides", [["eval.backend=mjx"], ["eval.backend=auto", "env.backend=mjx"]])
def test_a_compiled_evaluation_of_a_dataset_without_a_jax_environment_is_refused(overrides):
    with pytest.raises(ConfigError) as error:
        compiled_evaluation.check(compose(overrides), envs.lookup("d4rl", "pen-human-v1"))
    assert "use eval.backend=host" in str(error.value) and "env.backend" not in str(error.value)
    compiled_evaluation.check(compose(["eval.backend=host", "env.backend=mjx"]),
                              envs.lookup("d4rl", "pen-human-v1"))  # the host evaluates it


def test_the_refusal_comes_before_training(offline_data, monkeypatch):
    from experiments.assembly import Assembly

    monkeypatch.setattr(envs.mjx, "make_jax_env", lambda info: (_ for _ in ()).throw(
        envs.DatasetError(f"{info.key} has no environment to run compiled; use env.backend=host")))
    with pytest.raises(ConfigError, match="use eval.backend=host"):
        Assembly.build(compose([*TINY, "eval.backend=mjx"]))


def test_an_evaluation_backend_without_any_evaluation_is_refused():
    with pytest.raises(ConfigError, match="eval.backend=mjx does nothing with eval.every=0"):
        check_options_apply(compose(["eval.every=0"]), ["eval.every=0", "eval.backend=mjx"])


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax
    from experiments.config import compose
    from experiments.train import run

    assert len(jax.devices()) == 4, jax.devices()
    run(compose(json.loads(sys.argv[1])), Path(sys.argv[2]))
""")


@pytest.mark.integration
def test_the_compiled_online_phase_gives_the_same_numbers_on_four_devices(offline_data, tmp_path):
    """env.backend=mjx, 4 seeds (one per device), evaluations compiled too: the losses, online episodes
    and evaluation returns of 4 forced host devices are those of one device (the tolerance of
    tests/test_multidevice.py)."""
    overrides = [*TINY, *ONLINE[1:], "online.steps=280", "seeds=4"]  # two episodes end online
    run(compose(overrides), tmp_path / "one")
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                      "--xla_force_host_platform_device_count=4".strip(),
           "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", FOUR_DEVICES, json.dumps(overrides), str(tmp_path / "four")],
                   check=True, env=env, cwd=tmp_path)

    def lines(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    one, four = lines(tmp_path / "one"), lines(tmp_path / "four")
    assert [(line["type"], line.get("env_step")) for line in four] == [
        (line["type"], line.get("env_step")) for line in one]
    online_train = [line for line in one if line["type"] == "train" and line.get("phase") == "online"]
    assert online_train and any(line["episodes"] for line in online_train)
    for a, b in zip(one, four, strict=True):
        if a["type"] == "eval":
            np.testing.assert_allclose(b["episode_returns"], a["episode_returns"], rtol=1e-4)
        elif a["type"] == "train":
            np.testing.assert_allclose(b["critic_loss"], a["critic_loss"], rtol=1e-4)
            if a.get("phase") == "online":
                np.testing.assert_allclose([e[2] for e in b["episodes"]], [e[2] for e in a["episodes"]],
                                           rtol=1e-4)
                assert [e[:2] + e[3:] for e in b["episodes"]] == [e[:2] + e[3:] for e in a["episodes"]]
