"""Online fine-tuning on the engine: batches drawn with exact counts, online transitions preprocessed
exactly as the dataset was, a run killed during the online phase resumes to the same numbers."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import resume_is_exact

import algorithms
import envs
from algorithms import Spec
from algorithms.core.algorithm import OnlineConfig, Sampling
from algorithms.core.replay import ReplayBuffer, Transitions, draw
from envs.dataset import Dataset
from experiments import loop, online, run_parts
from experiments.assembly import Assembly
from experiments.config import compose
from experiments.train import run

TINY = ["dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]", "algo.batch_size=32", "steps=40",
        "log_every=20", "eval.every=40", "eval.episodes=2", "online.steps=60", "online.eval_every=20",
        "online.log_every=20", "online.episodes=2", "seeds=2"]


def rows(values, dim=2) -> Transitions:
    values = np.asarray(values, np.float32)
    column = np.repeat(values[:, None], dim, axis=1)
    return Transitions.from_dataset(Dataset(column, column[:, :1], values, column, values * 0, values * 0))


@pytest.mark.parametrize("fraction, batch", [(0.5, 64), (0.25, 40), (0.1, 7), (0.0, 16), (1.0, 16)])
def test_mixed_batches_draw_exactly_the_configured_counts(fraction, batch):
    data = rows(np.arange(100))  # rewards < 1000: dataset rows
    buffer = ReplayBuffer.create(50, 2, 1).add(rows(1000 + np.arange(30)))  # 30 of 50 slots filled
    for seed in range(5):
        drawn = draw(Sampling("mixed", fraction), data, buffer, jax.random.key(seed), batch)
        rewards = np.asarray(drawn.rewards)
        assert (rewards < 1000).sum() == round(batch * fraction)
        assert set(rewards[rewards >= 1000]) <= set(1000 + np.arange(30))  # never an empty slot
        np.testing.assert_array_equal(np.asarray(drawn.observations)[:, 0], rewards)  # rows whole


def test_union_draws_uniformly_over_dataset_and_buffer_as_one_pool():
    data = rows(np.arange(300))
    buffer = ReplayBuffer.create(1000, 2, 1).add(rows(1000 + np.arange(100)))
    rewards = np.asarray(draw(Sampling("union"), data, buffer, jax.random.key(0), 40_000).rewards)
    assert abs((rewards < 1000).mean() - 0.75) < 0.01  # 300 of the 400 rows held
    assert rewards.max() < 1100  # never an empty slot
    counts = np.bincount(np.where(rewards < 1000, rewards, rewards - 700).astype(int), minlength=400)
    assert counts.min() > 50 and counts.max() < 150  # every row about 100 times


def test_prefilled_buffer_too_small_for_the_dataset_is_refused():
    algo = algorithms.get("iql")(online=OnlineConfig(buffer_size=50))
    with pytest.raises(ValueError, match="cannot hold the dataset"):
        run_parts.buffer_capacity(algo, 100, 1_000)
    ring = algo.__class__(online=OnlineConfig(buffer_size=150))
    assert run_parts.buffer_capacity(ring, 100, 10) == 10  # every online row fits beside the dataset
    assert run_parts.buffer_capacity(ring, 100, 1_000) == 150  # then the online rows alone fill the ring
    assert run_parts.buffer_capacity(algo.__class__(), 100, 1_000) == 1_000  # nothing evicted


def test_a_finite_prefilled_buffer_evicts_the_dataset_first_then_the_oldest_online_rows():
    """CORL's, IQL's, SPOT's and d3rlpy's ring: loaded with the dataset, then online rows; once full,
    each new row overwrites the oldest one held. Dataset rows 0..9, a ring of 12."""
    data = rows(np.arange(10))
    sampling = Sampling("union", pool_size=12)
    buffer = ReplayBuffer.create(12, 2, 1)  # buffer_capacity: min(buffer_size, online steps)

    def held(buffer):
        return set(np.asarray(draw(sampling, data, buffer, jax.random.key(0), 5_000).rewards).tolist())

    assert held(buffer.add(rows(100 + np.arange(2)))) == set(range(10)) | {100, 101}  # free room
    assert held(buffer.add(rows(100 + np.arange(5)))) == set(range(3, 10)) | set(range(100, 105))
    assert held(buffer.add(rows(100 + np.arange(12)))) == set(range(100, 112))  # the dataset gone
    assert held(buffer.add(rows(100 + np.arange(12))).add(rows(112 + np.arange(3)))) == set(range(103, 115))
    # nothing evicted without a pool size: the dataset and every buffer row
    full = buffer.add(rows(100 + np.arange(12)))
    everything = draw(Sampling("union"), data, full, jax.random.key(0), 5_000)
    assert set(np.asarray(everything.rewards).tolist()) == set(range(10)) | set(range(100, 112))


def test_online_transitions_are_preprocessed_like_the_dataset(offline_data):
    algo = algorithms.get("td3_bc")(hidden_dims=(16, 16), batch_size=16, normalize_states=True,
                                    reward=algorithms.RewardConfig(returns_span=1000.0, scale=2.0,
                                                                   shift=-1.0),
                                    online=OnlineConfig(block=10))
    raw, info = envs.load("local", "pendulum-mixed")
    prepared = run_parts.prepare(algo, raw)
    asm = Assembly.from_environment(algo, lambda: envs.make_env(info), [3], 10, 100, prepared)
    ctx = asm.contexts["online"]
    run_state = online.OnlineRun(**asm.fresh("online"))
    collected = []
    online.train_online(algo, ctx, prepared.preprocessor, lambda: envs.make_env(info),
                        online.OnlineSchedule(30, eval_every=0, log_every=0), [3], run_state,
                        loop.ChunkRunner(algo, "online"),
                        on_collect=lambda transitions, step: collected.append(transitions))
    raw_rows = {name: np.concatenate([c[name][:, 0] for c in collected]) for name in Dataset._fields}
    stored = jax.tree.map(lambda x: np.asarray(x[0, :30]), run_state.buffers.transitions)
    # by hand, from the dataset's statistics: states standardized, rewards as the dataset's
    mean = raw.observations.mean(0)
    std = raw.observations.std(0) + 1e-3
    returns = envs.dataset.episode_returns(raw)
    rewards = 2.0 * raw_rows["rewards"] * 1000.0 / (returns.max() - returns.min()) - 1.0
    np.testing.assert_allclose(stored.observations, (raw_rows["observations"] - mean) / std, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(stored.next_observations, (raw_rows["next_observations"] - mean) / std,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stored.rewards, rewards, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(stored.actions, raw_rows["actions"])
    assert not stored.terminals.any()  # Pendulum only truncates
    # the dataset itself went through the same preprocessor
    np.testing.assert_allclose(np.asarray(prepared.data.observations), (raw.observations - mean) / std,
                               rtol=1e-4, atol=1e-4)


def short_episodes(monkeypatch, steps: int = 25):
    """Online training environments whose episodes end after `steps` (Pendulum's time limit is 200)."""
    real = envs.make_env
    monkeypatch.setattr(envs, "make_env",
                        lambda info: real(dataclasses.replace(info, max_episode_steps=steps)))


@pytest.mark.integration
def test_resume_during_the_online_phase_gives_the_same_numbers(offline_data, tmp_path, monkeypatch):
    """Killed between the online checkpoints at environment steps 20 and 40, both in the middle of
    25-step episodes, and resumed: the same numbers, and episodes that end only at their time limit."""
    short_episodes(monkeypatch)
    checked = resume_is_exact(["algo=iql", *TINY], 40 + 30, tmp_path)
    straight = checked.results
    lines = [line for line in checked.lines if line.get("phase") == "online"]
    episodes = [e for line in lines if line["type"] == "train" for e in line["episodes"]]
    # [end step, seed index, return, length, success]: no episode cut at the checkpoints at 20, 40
    assert [(e[0], e[1], e[3]) for e in episodes] == [(25, 0, 25), (25, 1, 25), (50, 0, 25), (50, 1, 25)]
    assert straight["online"]["episodes"] == episodes
    for seed in straight["seeds"]:
        assert set(seed["online_episode_returns"]) == {20, 40, 60}
        assert seed["offline_score"] is not None and seed["online_best_score"] >= seed["online_final_score"]


@pytest.mark.integration
def test_offline_then_online_results_and_metrics(offline_data, tmp_path):
    results = run(compose(["algo=spot", "algo.vae_hidden_dims=[16,16]", "algo.vae_steps=20",
                           "algo.vae_batch_size=32", "pretrain.cache_dir=null", *TINY]), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    online_lines = [line for line in lines if line.get("phase") == "online"]
    assert [line["env_step"] for line in online_lines if line["type"] == "train"] == [20, 40, 60]
    assert [line["step"] for line in online_lines if line["type"] == "train"] == [60, 80, 100]  # UTD 1
    assert [line["env_step"] for line in online_lines if line["type"] == "eval"] == [20, 40, 60]
    assert results["summary"]["offline_score_mean"] is not None
    assert results["online"]["updates_per_second_per_seed"] > 0
    for seed in results["seeds"]:
        assert seed["final_score"] == seed["online_final_score"]
        assert seed["regret"] is None  # no 200-step Pendulum episode ended within 60 steps


def test_regret_is_corls():
    from experiments.records import regret

    info = envs.lookup("d4rl", "hopper-medium-v2")
    low, high = info.ref_min_score, info.ref_max_score
    episodes = [[100, 0, low, 100, None], [200, 0, high, 100, None], [300, 1, low, 100, None]]
    assert regret(episodes, 0, info) == pytest.approx(0.5)  # 1 - normalized return / 100
    assert regret(episodes, 1, info) == pytest.approx(1.0)
    assert regret(episodes, 2, info) is None
    goals = [[100, 0, -500.0, 700, True], [800, 0, -700.0, 700, False], [900, 0, -700.0, 700, False]]
    assert regret(goals, 0, info) == pytest.approx(2 / 3)  # 1 - success on goal-reaching tasks


def test_a_seed_that_stops_early_keeps_its_parameters_and_the_others_go_on(offline_data):
    algo = algorithms.get("td3_bc")(hidden_dims=(8, 8), batch_size=16)
    raw, _ = envs.load("local", "pendulum-mixed")
    prepared = run_parts.prepare(algo, raw)
    ctx = run_parts.make_context(algo, prepared)
    keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(jnp.arange(2)))
    states = run_parts.init_states(algo, Spec(3, 1, 30), ctx, keys[0])

    class StopSecond(type(algo)):
        def early_stop(self, metrics):
            return np.array([False, True]), "seed 1 asked to stop"

    runner = loop.ChunkRunner(StopSecond(hidden_dims=(8, 8), batch_size=16))
    states, _, keys, _ = runner(states, None, keys[1], ctx, 10, 10)
    frozen = jax.tree.map(lambda x: np.asarray(x[1]), states.actor.params)
    moving = jax.tree.map(lambda x: np.asarray(x[0]), states.actor.params)
    states, _, keys, _ = runner(states, None, keys, ctx, 10, 20)
    assert runner.stopped == {1: (10, "seed 1 asked to stop")}
    chex.assert_trees_all_equal(frozen, jax.tree.map(lambda x: np.asarray(x[1]), states.actor.params))
    assert not all(np.array_equal(a, b[0]) for a, b in
                   zip(jax.tree.leaves(moving), jax.tree.leaves(states.actor.params), strict=True))
    with pytest.raises(loop.TrainingStopped, match="every seed"):
        all_stop = type("StopAll", (type(algo),), {"early_stop": lambda self, m: (np.ones(2, bool), "x")})
        loop.ChunkRunner(all_stop(hidden_dims=(8, 8), batch_size=16))(states, None, keys, ctx, 5, 25)


def test_online_rows_get_their_episodes_return_to_go_and_a_resumed_run_the_same(offline_data):
    """Cal-QL with online_calibration=true (the authors' code): every online row gets the discounted
    return of the rest of its episode, on the preprocessed rewards, once the episode ends; rows of
    the episode still running carry -inf (no bound). Episodes of 10 steps, 25 steps per seed, a
    checkpoint at step 15 (mid-episode), resumed from it to the same buffers."""
    algo = algorithms.get("cal_ql")(hidden_dims=(8, 8), batch_size=8, discount=0.5, bc_warmup_steps=0,
                                    online_calibration=True,
                                    reward=algorithms.RewardConfig(scale=2.0, shift=-1.0))
    raw, info = envs.load("local", "pendulum-mixed")
    prepared = run_parts.prepare(algo, raw)
    make_env = lambda: envs.make_env(dataclasses.replace(info, max_episode_steps=10))  # noqa: E731
    asm = Assembly.from_environment(algo, make_env, [3, 4], 10, 100, prepared)
    ctx = asm.contexts["online"]
    schedule = online.OnlineSchedule(25, eval_every=0, checkpoint_every=15, log_every=0)
    runner = loop.ChunkRunner(algo, "online")
    saved = {}

    def checkpoint(run):  # what a checkpoint keeps: copies of the arrays, the record as JSON
        saved[run.env_step] = online.OnlineRun(
            *jax.tree.map(lambda x: x.copy(), (run.states, run.buffers, run.keys)), run.env_step,
            json.loads(json.dumps(run.history)), json.loads(json.dumps(run.environments)))

    straight = online.train_online(algo, ctx, prepared.preprocessor, make_env, schedule, [3, 4],
                                   online.OnlineRun(**asm.fresh("online")), runner,
                                   checkpoint=checkpoint)
    rewards = np.asarray(straight.buffers.transitions.rewards)
    returns = np.asarray(straight.buffers.transitions.returns_to_go)
    for seed in range(2):
        for start in (0, 10):  # by hand: G_t = r_t + 0.5 G_{t+1}, no bootstrap at the time limit
            expected, following = np.zeros(10), 0.0
            for t in reversed(range(10)):
                following = rewards[seed, start + t] + 0.5 * following
                expected[t] = following
            np.testing.assert_allclose(returns[seed, start:start + 10], expected, rtol=1e-6)
        assert np.all(returns[seed, 20:25] == -np.inf)  # the third episode runs on
    assert saved[15].environments["lengths"] == [5, 5] and len(saved[15].environments["rewards"][0]) == 5
    resumed = online.train_online(algo, ctx, prepared.preprocessor, make_env, schedule, [3, 4], saved[15],
                                  runner, checkpoint=checkpoint)
    for a, b in zip(jax.tree.leaves((straight.buffers, straight.states.critic.params)),
                    jax.tree.leaves((resumed.buffers, resumed.states.critic.params)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history == json.loads(json.dumps(straight.history))
