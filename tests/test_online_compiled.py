"""The compiled online phase (`env.backend=mjx`, experiments/online_compiled.py) on the jax.numpy
Pendulum-v1 (compiles in seconds): the environment against gymnasium's, the rows the program stores,
one end-to-end run per off-policy algorithm, seed batching, exact resume and the refused settings."""

from __future__ import annotations

import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import resume_is_exact

import envs
from algorithms.cql import CalQL as ALGO_CAL_QL
from envs.mjx import PendulumEnv, make_jax_env
from experiments import compiled_episodes, online_compiled
from experiments.config import ConfigError, compose
from experiments.phases import Hooks, Position
from experiments.settings import check_run_settings
from experiments.train import run

PENDULUM = envs.lookup("local", "pendulum-mixed")
# tiny, 2 seeds; 420 environment steps: two 200-step episodes per seed end online
TINY = ["dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]", "algo.batch_size=32", "steps=20",
        "log_every=20", "eval.every=20", "eval.episodes=1", "online.steps=420", "online.eval_every=140",
        "online.log_every=140", "online.episodes=1", "seeds=2", "env.backend=mjx"]
ALGORITHMS = {
    "iql": [], "td3_bc": [], "sac": [], "cql": ["algo.num_sampled_actions=2"],
    "cal_ql": ["algo.num_sampled_actions=2"], "famo2o_iql": [],
    "spot": ["algo.vae_hidden_dims=[16,16]", "algo.vae_steps=20", "algo.vae_batch_size=32",
             "pretrain.cache_dir=null"],
}


def pendulum_state(env) -> np.ndarray:
    return np.asarray(env.unwrapped.state, np.float32)


def test_jax_pendulum_is_gymnasiums_from_the_same_state():
    """200 steps (one whole episode) of random actions from gymnasium's reset state: observations
    and rewards agree to float32 round-off, and the time limit ends the episode at the same step."""
    gym_env = envs.make_env(PENDULUM)
    env = make_jax_env(PENDULUM)
    assert isinstance(env, PendulumEnv) and env.max_episode_steps == 200
    assert (env.observation_size, env.action_size) == (3, 1)
    observation, _ = gym_env.reset(seed=3)
    state = env.reset_to(pendulum_state(gym_env))
    gym_env.unwrapped.state = np.asarray(state.data, np.float64)  # both from the same float32 state
    np.testing.assert_allclose(state.observation, observation, atol=1e-6)
    step = jax.jit(env.step)
    actions = np.random.default_rng(0).uniform(-1, 1, (200, 1)).astype(np.float32)
    for t, action in enumerate(actions):
        observation, reward, terminated, truncated, _ = gym_env.step(action)
        state = step(state, action)
        # float32 against gymnasium's float64 state; the angle is not wrapped, so its cos and sin
        # lose digits as it grows (measured: 3e-5 at most over this episode)
        np.testing.assert_allclose(state.observation, observation, atol=1e-4, err_msg=f"step {t}")
        np.testing.assert_allclose(state.reward, reward, rtol=1e-5, atol=1e-4, err_msg=f"step {t}")
        assert (bool(state.terminated), bool(state.truncated)) == (terminated, truncated)
    assert truncated  # the 200th step


def test_jax_pendulum_step_is_gymnasiums_step():
    """From one state, one step: the dynamics, the action rescaling and clipping, the reward."""
    env = PendulumEnv()
    ones = np.ones(1, np.float32)
    gym_env = gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), -ones, ones)
    gym_env.reset(seed=0)
    for theta, speed, action in [(0.3, -0.5, 0.25), (3.0, 7.9, 1.0), (-2.0, -7.5, -1.0), (1.0, 0.0, 0.5)]:
        gym_env.unwrapped.state = np.array([theta, speed], np.float64)
        observation, reward, *_ = gym_env.step(np.array([action], np.float32))
        stepped = env.step(env.reset_to([theta, speed]), np.array([action], np.float32))
        np.testing.assert_allclose(stepped.observation, observation, atol=1e-6)
        np.testing.assert_allclose(stepped.reward, reward, rtol=1e-6)


def test_resets_are_gymnasiums_distribution():
    states = jax.vmap(PendulumEnv().reset)(jax.random.split(jax.random.key(0), 4000))
    theta, speed = np.asarray(states.data).T
    assert -np.pi <= theta.min() < -3.0 and 3.0 < theta.max() <= np.pi
    assert -1.0 <= speed.min() < -0.95 and 0.95 < speed.max() <= 1.0
    assert abs(theta.mean()) < 0.1 and abs(speed.mean()) < 0.05


def test_environments_without_a_compiled_copy_are_refused_naming_the_host_backend():
    with pytest.raises(envs.DatasetError, match="env.backend=host"):
        make_jax_env(envs.lookup("d4rl", "antmaze-umaze-v2"))


def test_empty_arrays_leave_the_checkpointed_episodes_and_come_back():
    """Orbax writes no zero-size array, and MJX's Data holds some (`act` of Hopper's model)."""
    states = {"act": jnp.zeros((2, 1, 0)), "qpos": jnp.arange(6.0).reshape(2, 1, 3)}
    episodes = compiled_episodes.Episodes(states, jnp.ones((2, 1)), jnp.full((2, 1), 7, jnp.int32))
    stored = compiled_episodes.stored(episodes)
    assert len(stored) == 3 and all(np.size(leaf) for leaf in stored.values())
    back = compiled_episodes.unstored(stored, jax.eval_shape(lambda: episodes))
    jax.tree.map(np.testing.assert_array_equal, back, episodes)
    assert back.states["act"].shape == (2, 1, 0)


@pytest.fixture(scope="module")
def compiled_online(tmp_path_factory, data_dir):
    """The online phase of IQL from scratch (steps=0), run by hand: the trees it returns."""
    from experiments.assembly import Assembly

    patch = pytest.MonkeyPatch()
    patch.setenv("OFFRL_DATA_DIR", str(data_dir))
    cfg = compose(["algo=iql", *TINY, "steps=0", "online.steps=420"])
    asm = Assembly.build(cfg)
    trees, position, logged = asm.fresh("online"), Position(), []
    hooks = Hooks(log=logged.append, evaluate=lambda *args: args[1], checkpoint=lambda *args: None,
                  leave=lambda where: None)
    trees = online_compiled.run_online(asm, trees, position, hooks, asm.runner("online"))
    patch.undo()
    return asm, trees, position, logged


def test_stored_rows_are_the_environments_transitions_preprocessed(compiled_online):
    """Every seed's buffer holds 420 rows in order: next observations continue into the next row but
    where a 200-step episode was truncated (a timeout, never a terminal), rewards are Pendulum's
    reward of the row's state and action after the dataset's reward transform, and the episodes'
    returns in the history are their rows' raw rewards summed."""
    asm, trees, position, _ = compiled_online
    preprocessor = asm.prepared.preprocessor
    rows = jax.device_get(trees["buffers"].transitions)
    assert np.asarray(trees["buffers"].size).tolist() == [420, 420]
    mean, std = preprocessor.normalizer.mean, preprocessor.normalizer.std
    for seed in range(2):
        observations = rows.observations[seed] * std + mean
        next_observations = rows.next_observations[seed] * std + mean
        ends = np.flatnonzero(rows.timeouts[seed])
        assert ends.tolist() == [199, 399] and not rows.terminals[seed].any()
        going_on = np.setdiff1d(np.arange(419), ends)
        np.testing.assert_allclose(next_observations[going_on], observations[going_on + 1], atol=1e-5)
        theta = np.arctan2(observations[:, 1], observations[:, 0])
        torque = 2.0 * np.clip(rows.actions[seed][:, 0], -1, 1)
        raw = -(theta**2 + 0.1 * observations[:, 2] ** 2 + 0.001 * torque**2)
        np.testing.assert_allclose(rows.rewards[seed], preprocessor.rewards(raw), rtol=1e-4, atol=1e-4)
        episodes = [e for e in position.history["episodes"] if e[1] == seed]
        assert [(e[0], e[3], e[4]) for e in episodes] == [(200, 200, None), (400, 200, None)]
        for (_, _, ret, _, _), first in zip(episodes, (0, 200), strict=True):
            np.testing.assert_allclose(ret, raw[first:first + 200].sum(), rtol=1e-4)
    assert position.env_step == 420 and int(trees["states"].step) == 420  # one update per step
    assert np.asarray(trees["environments"].lengths).tolist() == [[20], [20]]  # the third episode


def test_every_finished_episode_reaches_the_log_lines(compiled_online):
    _, _, position, logged = compiled_online
    assert [line["env_step"] for line in logged] == [140, 280, 420]
    assert [len(line["episodes"]) for line in logged] == [0, 2, 2]
    assert sum((line["episodes"] for line in logged), []) == position.history["episodes"]
    assert all(np.isfinite(line["critic_loss"]).all() for line in logged)


@pytest.fixture(scope="module", params=sorted(ALGORITHMS))
def trained(request, tmp_path_factory, data_dir):
    patch = pytest.MonkeyPatch()
    patch.setenv("OFFRL_DATA_DIR", str(data_dir))
    folder = tmp_path_factory.mktemp(request.param)
    results = run(compose([f"algo={request.param}", *TINY, *ALGORITHMS[request.param]]), folder)
    patch.undo()
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return request.param, results, lines


@pytest.mark.integration
def test_every_off_policy_algorithm_fine_tunes_with_the_compiled_environment(trained):
    name, results, lines = trained
    online = [line for line in lines if line.get("phase") == "online"]
    assert [line["env_step"] for line in online if line["type"] == "train"] == [140, 280, 420]
    assert [line["env_step"] for line in online if line["type"] == "eval"] == [140, 280, 420]
    assert [line["step"] for line in online if line["type"] == "train"] == [160, 300, 440]  # UTD 1
    episodes = sum((line["episodes"] for line in online if line["type"] == "train"), [])
    assert sorted((e[0], e[1]) for e in episodes) == [(200, 0), (200, 1), (400, 0), (400, 1)]
    for seed in results["seeds"]:
        assert np.isfinite(seed["online_final_score"]), name


@pytest.mark.integration
def test_a_seed_trains_the_same_alone_or_beside_another(offline_data, tmp_path):
    """Seed 1 of a 2-seed run and seed 1 alone: the same episodes and losses in the first chunk (the
    environments reset from keys of the seed and the environment step alone)."""
    short = ["steps=0", "online.steps=200", "online.log_every=200", "online.eval_every=0", "eval.every=0"]
    pair = run(compose(["algo=iql", *TINY, *short]), tmp_path / "pair")
    alone = run(compose(["algo=iql", *TINY, *short, "seed=1", "seeds=1"]), tmp_path / "alone")
    line = lambda folder: [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()
                           if '"train"' in x][-1]
    both, single = line(tmp_path / "pair"), line(tmp_path / "alone")
    assert both["episodes"][1][2:4] == pytest.approx(single["episodes"][0][2:4], rel=1e-5)
    for name in ("critic_loss", "value_loss", "actor_loss"):
        assert both[name][1] == pytest.approx(single[name][0], rel=1e-4), name
    assert pair["seeds"][1]["seed"] == alone["seeds"][0]["seed"] == 1


@pytest.mark.integration
def test_a_run_killed_online_resumes_to_the_same_numbers(offline_data, tmp_path):
    """Killed after the online chunk ending at environment step 280 (update step 300), between the
    checkpoints at 140 and 280 ... the running episodes (environments, returns, lengths) come back
    from the checkpoint, so the resumed run's lines and results equal the uninterrupted run's."""
    settings = ["algo=iql", *TINY, "online.eval_every=70", "online.log_every=70"]
    straight = resume_is_exact(settings, 20 + 210, tmp_path)
    episodes = [e for line in straight.lines if line["type"] == "train" for e in line.get("episodes", [])]
    assert len(episodes) == 4  # the episodes crossing the kill and the checkpoint were continued


# ---- Cal-QL's online returns-to-go (experiments/returns_to_go.py) ---------------------------------


def test_the_compiled_block_writes_the_returns_the_host_writes():
    """`record_block` (compiled) against `EpisodeReturns.block` (the host's, with the algorithm's own
    derive) over 12 blocks of 5 rows into a ring of 8: episodes of 1 to 15 steps, some longer than
    the ring, some never-solved (every reward the failure reward); the block's returns and the
    buffer's column after the writes agree block after block."""
    from experiments import returns_to_go

    algo = ALGO_CAL_QL(discount=0.9, failure_reward=-5.0)
    rule, capacity, steps, limit = returns_to_go.compiled_rule(algo), 8, 5, 16
    rng = np.random.default_rng(0)
    lengths = [3, 1, 11, 4, 9, 2, 6, 15, 3, 6]  # episodes in a row; the last runs on
    ended = np.zeros(sum(lengths), bool)
    ended[np.cumsum(lengths)[:-1] - 1] = True
    rewards = rng.normal(size=ended.size).astype(np.float32)
    rewards[3:4] = rewards[15:19] = -5.0  # the second and fourth episodes never solved
    host, column, position = returns_to_go.EpisodeReturns(algo, [[]]), np.zeros(capacity, np.float32), 0
    record, length, compiled_column = jnp.zeros(limit), jnp.asarray(0), jnp.zeros(capacity)
    block_of = jax.jit(lambda *args: returns_to_go.record_block(rule, *args))
    for first in range(0, 60, steps):
        r, e = rewards[first:first + steps], ended[first:first + steps]
        returns, writes = host.block(r[:, None], e[:, None], position, capacity)
        for _, slot, value in writes:
            column[slot] = value
        column[(position + np.arange(steps)) % capacity] = returns[:, 0]
        record, length, block_returns, compiled_column = block_of(
            record, length, jnp.asarray(r), jnp.asarray(e), compiled_column, jnp.asarray(position))
        np.testing.assert_allclose(block_returns, returns[:, 0], rtol=1e-5, err_msg=f"block at {first}")
        compiled_column = compiled_column.at[(position + jnp.arange(steps)) % capacity].set(block_returns)
        np.testing.assert_allclose(compiled_column, column, rtol=1e-5, err_msg=f"block at {first}")
        position = (position + steps) % capacity
        assert int(length) == len(host.running[0])
        np.testing.assert_allclose(record[:int(length)], host.running[0], rtol=1e-6)
    assert np.isneginf(column).sum() == 6  # the running episode's rows so far


@pytest.fixture(scope="module")
def calibrated_online(tmp_path_factory, data_dir):
    """Cal-QL with online_calibration=true from scratch, run by hand on a ring of 300 rows (420
    environment steps: the first 120 rows overwritten): the assembly, the trees and what the
    checkpoint hook got at environment step 140 (copies: the chunks take over their arguments)."""
    from experiments.assembly import Assembly

    patch = pytest.MonkeyPatch()
    patch.setenv("OFFRL_DATA_DIR", str(data_dir))
    cfg = compose(["algo=cal_ql", *TINY, *ALGORITHMS["cal_ql"], "steps=0", "algo.online_calibration=true",
                   "algo.online.buffer_size=300", "algo.discount=0.9"])
    asm = Assembly.build(cfg)
    saved = {}

    def checkpoint(position, trees):
        saved[position.env_step] = (json.loads(json.dumps(position.record())), jax.device_get(trees))

    hooks = Hooks(log=lambda line: None, evaluate=lambda *args: args[1], checkpoint=checkpoint,
                  leave=lambda where: None)
    trees = online_compiled.run_online(asm, asm.fresh("online"), Position(), hooks, asm.runner("online"))
    patch.undo()
    return asm, jax.device_get(trees), saved


def test_compiled_buffers_hold_the_hosts_returns_to_go(calibrated_online):
    """Every held row's return-to-go is the algorithm's derive over the rest of its episode's
    preprocessed rewards (computed here in numpy from the held rows: G_t needs only r_t, r_t+1, ...
    to the episode's end), -inf for the third episode, still running; the record holds its rewards."""
    from experiments import returns_to_go

    asm, trees, _ = calibrated_online
    buffers = trees["buffers"]
    assert np.asarray(buffers.size).tolist() == [300, 300]
    assert np.asarray(buffers.position).tolist() == [120, 120]
    for seed in range(2):
        order = (120 + np.arange(300)) % 300  # oldest first: environment steps 120 ... 419
        rewards = buffers.transitions.rewards[seed][order]
        returns = buffers.transitions.returns_to_go[seed][order]
        ends = np.flatnonzero(buffers.transitions.timeouts[seed][order])
        assert ends.tolist() == [79, 279]  # steps 199 and 399
        for start, end in ((0, 79), (80, 279)):
            expected = returns_to_go.derived_returns(asm.algo, rewards[start:end + 1])
            np.testing.assert_allclose(returns[start:end + 1], expected, rtol=1e-5, atol=1e-5)
        assert np.all(returns[280:] == -np.inf)
        record = np.asarray(trees["environments"].record[seed, 0])
        np.testing.assert_allclose(record[:20], rewards[280:], rtol=1e-6)
        assert not record[20:].any()
    assert int(trees["states"].step) == 420


def test_a_calibrated_phase_resumed_mid_episode_ends_as_the_straight_one(calibrated_online):
    """From the checkpoint at environment step 140 (the first episodes 140 steps in: their record of
    rewards comes back from the stored tree) to 420: the same buffers (returns-to-go included) and
    parameters, bit for bit."""
    asm, straight, saved = calibrated_online
    record, trees = saved[140]
    assert np.asarray(compiled_episodes.unstored(trees["environments"], jax.eval_shape(
        lambda: compiled_episodes.fresh_episodes(asm.jax_env, asm.seeds, 1, record_steps=200))).lengths
        ).tolist() == [[140], [140]]
    hooks = Hooks(log=lambda line: None, evaluate=lambda *args: args[1], checkpoint=lambda *args: None,
                  leave=lambda where: None)
    resumed = online_compiled.run_online(asm, jax.device_put(trees), Position.of(record), hooks,
                                         asm.runner("online"))
    for name in ("buffers", "states"):
        for a, b in zip(jax.tree.leaves(straight[name]), jax.tree.leaves(jax.device_get(resumed[name])),
                        strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.integration
def test_cal_ql_calibrates_online_on_a_grid_with_the_compiled_environment(offline_data, tmp_path):
    """The issue's Cal-QL example in small: online_calibration=true with a grid axis, env.backend=mjx."""
    results = run(compose(["algo=cal_ql", *TINY, *ALGORITHMS["cal_ql"], "algo.online_calibration=true",
                           "grid.algo.min_q_weight=[1,5]", "seeds=1"]), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    online = [line for line in lines if line.get("phase") == "online" and line["type"] == "train"]
    assert [line["env_step"] for line in online] == [140, 280, 420]
    assert len(results["seeds"]) == 2 and all(np.isfinite(s["online_final_score"]) for s in results["seeds"])
    assert all(np.isfinite(line["critic_loss"]).all() for line in online)


@pytest.mark.integration
def test_a_calibrated_run_killed_mid_episode_resumes_to_the_same_numbers(offline_data, tmp_path):
    """Through the checkpoint files: killed after the chunk ending at environment step 210 (the
    checkpoint at 140 is mid-episode: the record of the running episode's rewards comes back from
    it), resumed: the same lines and results."""
    settings = ["algo=cal_ql", *TINY, *ALGORITHMS["cal_ql"], "algo.online_calibration=true",
                "online.log_every=70"]
    straight = resume_is_exact(settings, 20 + 210, tmp_path)
    assert sum(len(line.get("episodes", [])) for line in straight.lines if line["type"] == "train") == 4


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_off_policy_algorithm_traces_its_compiled_phase_on_a_grid(offline_data, name):
    """A grid axis (tau, the target update's rate, a value of every grid point) inside the compiled
    chunk: the program traces and lowers with the grid's values vmapped beside the seeds (not
    compiled: that is the end-to-end tests' cost)."""
    from experiments.assembly import Assembly

    asm = Assembly.build(compose([f"algo={name}", *TINY, *ALGORITHMS[name], "steps=0", "seeds=1",
                                  "grid.algo.tau=[0.005,0.01]"]))
    assert len(asm.seeds) == 2 and np.asarray(asm.values["tau"]).tolist() == pytest.approx([0.005, 0.01])
    trees = asm.fresh("online")
    episodes = compiled_episodes.fresh_episodes(asm.jax_env, asm.seeds, 1, 0,
                                              compiled_episodes.record_steps(asm.algo, asm.jax_env))
    chunk = online_compiled.make_online_chunk(asm.algo, asm.jax_env, asm.prepared.preprocessor, 2, 1, 0, True)
    lowered = chunk.lower(trees["states"], trees["buffers"], trees["keys"], episodes, jnp.asarray(asm.seeds),
                          jnp.asarray(0), asm.contexts["online"], asm.values)
    assert lowered.out_info[4]  # the metrics of every update


@pytest.mark.parametrize("override, words", [
    ("env.backend=gpu", "env.backend must be host or mjx (got 'gpu'); fix the override env.backend=..."),
    ("env.num_envs=0", "env.num_envs must be an integer >= 1 (got 0); fix the override env.num_envs=..."),
])
def test_bad_backend_settings_are_refused(override, words):
    with pytest.raises(ConfigError) as error:
        check_run_settings(compose([override]))
    assert str(error.value) == words


@pytest.mark.parametrize("overrides, words", [
    (["env.num_envs=4"], "env.num_envs=4: off-policy algorithms step one environment"),
    (["algo.online.block=512"], "online.steps=420 is fewer than one block of algo.online.block=512"),
])
def test_combinations_the_compiled_phase_does_not_run_are_refused(offline_data, overrides, words):
    from experiments.assembly import Assembly

    with pytest.raises(ConfigError, match=words):
        Assembly.build(compose([*TINY, *overrides]))


def test_a_dataset_without_a_compiled_environment_is_refused_before_training(offline_data):
    from experiments.assembly import compiled_env

    with pytest.raises(ConfigError, match="env.backend=host"):
        compiled_env(envs.lookup("d4rl", "pen-human-v1"))


@pytest.mark.slow
def test_hopper_fine_tunes_with_mjx(tmp_path):
    """D4RL's Hopper-v4 in MJX (compiling its step takes minutes on a CPU): offline steps on a small
    Hopper-shaped file, then 40 compiled environment steps per seed, evaluated on the host."""
    from helpers import d4rl_arrays, write_hdf5

    file = write_hdf5(tmp_path / "hopper.hdf5", d4rl_arrays(n=200))
    results = run(compose(["algo=iql", "dataset=d4rl/hopper-medium-v2", f"dataset.path={file}",
                           "algo.hidden_dims=[16,16]", "algo.batch_size=16", "steps=10", "log_every=10",
                           "eval.every=10", "eval.episodes=1", "online.steps=40", "online.eval_every=20",
                           "online.log_every=20", "online.episodes=1", "seeds=2", "env.backend=mjx",
                           "eval.backend=host"]),
                  tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    online = [line for line in lines if line.get("phase") == "online" and line["type"] == "train"]
    assert [line["env_step"] for line in online] == [20, 40]
    assert all(np.isfinite(line["critic_loss"]).all() for line in online)
    for seed in results["seeds"]:
        assert np.isfinite(seed["online_final_score"])
