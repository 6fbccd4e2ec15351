"""PPO with `env.num_envs` environments per seed: the rollout (block, num_envs) reaching `update`
whole, GAE per environment and minibatches over all its rows, a return scaler per environment;
environment seeds distinct per (seed, environment) and independent of the seeds beside; exact
resume of a rollout cut by a checkpoint; the same on the compiled backend (env.backend=mjx, the
jax.numpy Pendulum), and Uni-O4's online phase with several environments."""

import json

import flax
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import UNIO4_TINY_RUN, resume_is_exact

from algorithms.core.algorithm import Algorithm, Context, OnlineConfig
from algorithms.core.ppo import PPOConfig, ReturnScaler, init_ppo_state, ppo_update
from algorithms.core.replay import Transitions
from algorithms.ppo import PPO
from envs import Preprocessor
from envs.mjx import PendulumEnv
from envs.preprocessing import Normalizer
from experiments import compiled_episodes, loop, online_compiled, run_parts, seed_axis
from experiments.assembly import Assembly
from experiments.config import ConfigError, compose
from experiments.online import OnlineRun, OnlineSchedule, check_num_envs, environment_spec, train_online
from experiments.train import run


def pendulum_env():
    env = gym.make("Pendulum-v1")
    return gym.wrappers.RescaleAction(env, -np.ones(1, np.float32), np.ones(1, np.float32))


@flax.struct.dataclass
class Seen:
    rewards: jax.Array  # the last rollout update saw, (block, num_envs)
    observations: jax.Array
    step: jax.Array


class Recorder(Algorithm):
    """Keeps the last rollout it was given; acts with a fixed function of the observation."""

    name = "recorder"

    def init(self, key, spec, ctx=None):
        shape = (self.online.block, spec.num_envs)
        return Seen(jnp.zeros(shape), jnp.zeros((*shape, spec.observation_dim)), jnp.zeros((), jnp.int32))

    def update(self, state, batch, key, ctx=None):
        rows = {"rows": jnp.float32(batch.rewards.size)}
        return Seen(batch.rewards, batch.observations, state.step + 1), rows

    def act(self, state, observations, key, deterministic=True):
        return jnp.tanh(observations[..., :1])


def train(algo, steps: int, seeds: list[int], num_envs: int, checkpoint_every: int = 0, checkpoint=None,
          collected=None):
    ctx = Context(None, phase="online")
    state = OnlineRun(**Assembly.from_environment(algo, pendulum_env, seeds, 0, algo.online.block,
                                                  num_envs=num_envs).fresh("online"))
    schedule = OnlineSchedule(steps, eval_every=0, checkpoint_every=checkpoint_every, log_every=0)
    on_collect = None if collected is None else (lambda rows, step: collected.append(rows))
    return train_online(algo, ctx, Preprocessor.identity(3), pendulum_env, schedule, seeds, state,
                        loop.ChunkRunner(algo, "online"), checkpoint=checkpoint, on_collect=on_collect,
                        num_envs=num_envs)


# ---------------------------------------------------------------------------------------------
# The host backend: a vector env of seeds x num_envs gymnasium environments
# ---------------------------------------------------------------------------------------------


def test_the_rollout_is_block_by_num_envs_and_each_environment_is_seeded_apart():
    algo = Recorder(online=OnlineConfig(replay="on_policy", block=64))
    collected, saved = [], []
    # 2 seeds x 2 environments; 512 environment steps per seed = 256 steps of each environment, a
    # rollout (an update) every 128; checkpoints every 80 (mid-rollout) save all four environments
    done = train(algo, 512, [0, 1], 2, checkpoint_every=80, checkpoint=lambda r: saved.append(r.environments),
                 collected=collected)
    rewards = np.concatenate([c["rewards"] for c in collected])  # (256 steps, 4 environments)
    observations = np.concatenate([c["observations"] for c in collected])
    assert rewards.shape == (256, 4) and done.env_step == 512 and int(done.states.step) == 4
    # the last rollout: steps 192..255 of every environment, seed i's environments i*2, i*2 + 1
    np.testing.assert_allclose(np.asarray(done.states.rewards),
                               rewards[192:].reshape(64, 2, 2).swapaxes(0, 1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(done.states.observations),
                               observations[192:].reshape(64, 2, 2, 3).swapaxes(0, 1), rtol=1e-6)
    assert len(saved[0]["snapshots"]) == 4 and len(saved[0]["returns"]) == 4
    # Pendulum's episodes end after 200 steps of each environment: environment step 400 of a seed
    assert [e[:2] for e in done.history["episodes"]] == [[400, 0], [400, 0], [400, 1], [400, 1]]
    # every environment starts apart; seed 1's two are the same when it trains alone
    assert len({tuple(row) for row in observations[0]}) == 4
    alone = []
    train(algo, 128, [1], 2, collected=alone)
    np.testing.assert_array_equal(np.concatenate([c["observations"] for c in alone]), observations[:64, 2:])


def test_one_environment_per_seed_is_todays_rollout():
    """num_envs=1 keeps the rollout (block, ...): the buffers hold no environment axis."""
    algo = PPO(hidden_dims=(16, 16), ppo=PPOConfig(epochs=1, minibatch_size=32),
               online=OnlineConfig(replay="on_policy", block=32))
    done = train(algo, 32, [0], 1)
    assert done.buffers.transitions.rewards.shape == (1, 32)
    assert done.states.scaler.running_return.shape == (1,)  # (seeds,): one scaler


def rollout(steps: int, envs: int, key) -> Transitions:
    """A random rollout (steps, envs, ...) of 3-d observations and 1-d actions; the first
    environment's episode terminates at step 3 and is truncated at step 6."""
    keys = jax.random.split(key, 4)
    shape = (steps, envs)
    terminals = jnp.zeros(shape).at[3, 0].set(1.0)
    timeouts = jnp.zeros(shape).at[6, 0].set(1.0)
    return Transitions(jax.random.normal(keys[0], (*shape, 3)),
                       jax.random.uniform(keys[1], (*shape, 1), minval=-0.9, maxval=0.9),
                       jax.random.normal(keys[2], shape), jax.random.normal(keys[3], (*shape, 3)),
                       terminals, timeouts, jnp.zeros(shape))


def ppo_state(config: PPOConfig, num_envs: int):
    algo = PPO(hidden_dims=(16, 16), ppo=config, online=OnlineConfig(replay="on_policy", block=16))
    actor, critic = algo.networks(1)
    observations = jnp.zeros((1, 3))
    return init_ppo_state(config, actor, actor.init(jax.random.key(1), observations), critic,
                          critic.init(jax.random.key(2), observations), Normalizer.identity(3),
                          num_envs=num_envs)


def test_gae_runs_along_each_environment_and_the_minibatches_over_all_rows():
    """Two environments that saw exactly the same steps: GAE along each one's own time axis gives
    both the single environment's advantages, so one minibatch of all 2T rows is the single
    environment's minibatch of T rows counted twice, and the update is the same. (GAE over the
    rows flattened in time-major order would run across the environments and differ.)"""
    config = PPOConfig(epochs=1, minibatch_size=16, normalize_advantages=False, reward_scaling="dynamic",
                       actor_lr=1e-3, critic_lr=1e-3)
    single = rollout(16, 1, jax.random.key(0))
    doubled = jax.tree.map(lambda x: jnp.concatenate([x, x], axis=1), single)
    one, one_metrics = ppo_update(config, ppo_state(config, 1), jax.tree.map(lambda x: x[:, 0], single),
                                  jax.random.key(3))
    wider = PPOConfig(**{**config.__dict__, "minibatch_size": 32})
    two, two_metrics = ppo_update(wider, ppo_state(config, 2), doubled, jax.random.key(3))
    for name in ("actor_loss", "critic_loss", "value", "scaled_reward"):
        np.testing.assert_allclose(two_metrics[name], one_metrics[name], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves((one.actor.params, one.critic.params)),
                    jax.tree.leaves((two.actor.params, two.critic.params)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # each environment's return scaler went on from the same rewards: both are the single one
    for a, b in zip(jax.tree.leaves(one.scaler), jax.tree.leaves(two.scaler), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.stack([np.asarray(a)] * 2), rtol=1e-6)
    # a different second environment changes the update: its rows are trained on
    other = jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), single,
                         rollout(16, 1, jax.random.key(9)))
    three, _ = ppo_update(wider, ppo_state(config, 2), other, jax.random.key(3))
    assert not np.allclose(jax.tree.leaves(three.actor.params)[0], jax.tree.leaves(two.actor.params)[0])


def test_each_environment_scales_its_rewards_with_its_own_statistics():
    rewards = jnp.array([[1.0, 5.0], [2.0, -1.0], [3.0, 0.5]])
    dones = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    scaler = ReturnScaler.create().per_environment(2)
    both, scaled = scaler.scale(rewards, dones, "dynamic", 0.5)
    for env in range(2):
        alone, expected = ReturnScaler.create().scale(rewards[:, env], dones[:, env], "dynamic", 0.5)
        np.testing.assert_allclose(scaled[:, env], expected, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(both), strict=True):
            np.testing.assert_allclose(np.asarray(b)[env], a, rtol=1e-6)
    assert ReturnScaler.create().per_environment(1).running_return.shape == ()


def test_seeds_with_parallel_environments_train_alone_as_together():
    algo = PPO(hidden_dims=(16, 16), ppo=PPOConfig(clip=0.2, epochs=2, minibatch_size=32, actor_lr=1e-3,
                                                   critic_lr=2e-3, reward_scaling="dynamic"),
               online=OnlineConfig(replay="on_policy", block=32))
    together = train(algo, 192, [4, 7], 2)
    alone = train(algo, 192, [7], 2)
    assert int(together.states.step) == 3 and together.states.scaler.running_return.shape == (2, 2)
    # the third update's learning rates, decayed over the 2 x 64 environment steps before it
    np.testing.assert_allclose(together.states.actor.opt_state.hyperparams["learning_rate"],
                               1e-3 * (1 - 128 / 3e6), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(together.states), jax.tree.leaves(alone.states), strict=True):
        if np.ndim(a) and not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b)[0], rtol=2e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Through experiments.train
# ---------------------------------------------------------------------------------------------

TINY = ["algo=ppo", "steps=0", "dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]",
        "algo.online.block=32", "algo.ppo.minibatch_size=16", "algo.ppo.epochs=2", "online.episodes=1",
        "seeds=2"]


@pytest.mark.parametrize("checkpoint_every", [40, 80])
@pytest.mark.integration
def test_host_resume_in_the_middle_of_a_rollout_of_two_environments(offline_data, tmp_path, checkpoint_every):
    # 2 environments: an update every 64 environment steps (64, 128, 192); the crash comes at 128,
    # inside the second rollout. Checkpoints every 40: the last at 120 (or 80, if the kill beat
    # its asynchronous write); every 80: at 80, so the resumed run's line at 120, before any update
    # of its own, must still report the losses of the update at 64 (kept in the checkpoint)
    settings = [*TINY, "env.num_envs=2", "online.steps=192", "online.eval_every=40", "online.log_every=40",
                f"online.checkpoint_every={checkpoint_every}"]
    lines = resume_is_exact(settings, 2, tmp_path).lines
    train_lines = [line for line in lines if line["type"] == "train"]
    assert [(line["step"], line["env_step"]) for line in train_lines] == [(0, 40), (1, 80), (1, 120),
                                                                          (2, 160)]
    evaluations = [line["env_step"] for line in lines if line["type"] == "eval"]
    assert evaluations == [40, 80, 120, 160, 192]


def test_the_schedule_counts_the_steps_of_all_environments(offline_data, tmp_path):
    """online.steps rounds down to whole steps of every environment, the intervals up; num_envs
    beside an off-policy learner, or more environments than steps, is refused with the fix."""
    schedule = OnlineSchedule(1000, eval_every=300, checkpoint_every=0, log_every=100).in_steps_of(64)
    assert (schedule.steps, schedule.eval_every, schedule.checkpoint_every, schedule.log_every) == (
        960, 320, 0, 128)
    assert OnlineSchedule(1000, 300).in_steps_of(1) == OnlineSchedule(1000, 300)
    with pytest.raises(ConfigError, match="env.num_envs=2: off-policy algorithms step one environment"):
        run(compose(["algo=iql", "steps=10", "online.steps=10", "env.num_envs=2"]), tmp_path / "iql")
    with pytest.raises(ConfigError, match="online.steps=3 is fewer than one step of each"):
        run(compose([*TINY, "online.steps=3", "env.num_envs=4"]), tmp_path / "few")


# ---------------------------------------------------------------------------------------------
# The compiled backend (env.backend=mjx): the jax.numpy Pendulum
# ---------------------------------------------------------------------------------------------


def test_the_compiled_rollout_is_the_environments_steps_whole():
    """One compiled chunk of two blocks, 2 seeds x 3 environments: the second rollout `update` sees
    is what the jax Pendulum gives for the Recorder's actions, step after step, per environment."""
    algo = Recorder(online=OnlineConfig(replay="on_policy", block=8))
    env = PendulumEnv(200)
    spec = environment_spec(pendulum_env, 0)._replace(num_envs=3)
    ctx = Context(None, phase="online")
    seeds = [0, 1]
    init_keys, keys = seed_axis.seed_keys(seeds)
    states = run_parts.init_states(algo, spec, ctx, init_keys)
    episodes = compiled_episodes.fresh_episodes(env, seeds, 3)
    start = jax.tree.map(jnp.copy, episodes.states)  # the chunk takes over (donates) its arguments
    chunk = online_compiled.make_online_chunk(algo, env, Preprocessor.identity(3), 2, 3, 0, True)
    buffers = seed_axis.replay_buffers(8, spec, 2)
    states, buffers, _, episodes, metrics, _ = chunk(states, buffers, keys, episodes, jnp.asarray(seeds),
                                                     jnp.asarray(0), ctx, None)
    assert int(states.step) == 2 and metrics["rows"].shape == (2, 2, 1)  # (blocks, seeds, updates)
    assert float(metrics["rows"][1, 0, 0]) == 24  # 8 steps x 3 environments

    def by_hand(state):
        def one(state, _):
            stepped = jax.vmap(env.step)(state, jnp.tanh(state.observation[:, :1]))
            return stepped, (stepped.reward, state.observation)
        return jax.lax.scan(one, state, None, length=16)[1]

    rewards, observations = jax.vmap(by_hand)(start)  # (seeds, 16 steps, 3 environments)
    np.testing.assert_allclose(states.rewards, rewards[:, 8:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states.observations, observations[:, 8:], rtol=1e-5, atol=1e-6)
    assert buffers.transitions.rewards.shape == (2, 8, 3)


MJX = [*TINY, "env.backend=mjx"]


@pytest.mark.parametrize("num_envs", [1, 4])
@pytest.mark.integration
def test_compiled_ppo_from_scratch_resumes_exactly(offline_data, tmp_path, num_envs):
    # an update every 32 x num_envs environment steps; checkpoints with the evaluations at each;
    # killed after the chunk ending at the second update
    every = 32 * num_envs
    settings = [*MJX, f"env.num_envs={num_envs}", f"online.steps={3 * every}", f"online.eval_every={every}",
                f"online.log_every={every}"]
    lines = resume_is_exact(settings, 2, tmp_path).lines
    train_lines = [line for line in lines if line["type"] == "train"]
    assert [(line["step"], line["env_step"]) for line in train_lines] == [(1, every), (2, 2 * every),
                                                                          (3, 3 * every)]
    assert all(np.isfinite(line["actor_loss"]).all() for line in train_lines)


def test_compiled_blocks_are_whole_steps_of_every_environment(offline_data, tmp_path, caplog):
    """Blocks of 32 x 4 = 128 environment steps: online.steps=300 runs 256 (rounded down), the
    evaluations every 64 come every 128 (rounded up), said in one info line; fewer steps than one
    block are refused."""
    with caplog.at_level("INFO", logger="train"):
        run(compose([*MJX, "env.num_envs=4", "online.steps=300", "online.log_every=128",
                     "online.eval_every=64"]), tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "whole blocks" in r.getMessage()]
    assert said == ["env.backend=mjx runs whole blocks of algo.online.block=32 x env.num_envs=4 = 128 "
                    "environment steps: online.steps down to 256, online.eval_every up to 128, "
                    "online.checkpoint_every up to 128"]  # (it follows the evaluations)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["env_step"] for line in lines if line["type"] == "train"] == [128, 256]
    assert [line["env_step"] for line in lines if line["type"] == "eval"] == [128, 256]
    with pytest.raises(ConfigError, match=r"online.steps=96 is fewer than one block of algo.online.block=32 "
                                          r"x env.num_envs=4"):
        run(compose([*MJX, "env.num_envs=4", "online.steps=96"]), tmp_path / "few")


def test_the_rollout_of_every_environment_splits_into_minibatches():
    """The rollout is block x num_envs rows: 16 x 4 splits into minibatches of 64 though 16 alone
    does not; 16 x 3 does not, and is refused naming both settings."""
    ppo = PPO(online=OnlineConfig(replay="on_policy", block=16), ppo=PPOConfig(minibatch_size=64))
    check_num_envs(4, ppo.driver(), 1000)
    with pytest.raises(ConfigError, match=r"^algo.online.block=16 x env.num_envs=3 = 48 rows \(the rollout\) "
                                          r"must be a multiple of algo.ppo.minibatch_size=64; fix one"):
        check_num_envs(3, ppo.driver(), 1000)
    with pytest.raises(ConfigError, match=r"^algo.online.block=16 \(the rollout\) must be a multiple of "
                                          r"algo.ppo.minibatch_size=64"):
        check_num_envs(1, ppo.driver(), 1000)


# ---------------------------------------------------------------------------------------------
# Uni-O4: its online phase is PPO after the hand-over
# ---------------------------------------------------------------------------------------------

UNIO4_ONLINE = [*UNIO4_TINY_RUN, "steps=20", "algo.online.block=32", "algo.ppo.minibatch_size=32",
                "algo.ppo.reward_scaling=dynamic", "algo.value_refit_steps=20",
                "algo.value_refit_hidden_dims=[16]"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["host", "mjx"])
def test_unio4_online_with_four_environments_resumes_exactly(offline_data, tmp_path, backend):
    """Offline BPPO, the hand-over (every environment's return scaler starts from the V re-fit's
    pass over the dataset), then PPO on rollouts of 32 steps x 4 environments; killed after the
    second update and resumed."""
    settings = [*UNIO4_ONLINE, f"env.backend={backend}", "env.num_envs=4", "online.steps=384",
                "online.eval_every=128", "online.log_every=128"]
    # the resumed run trains its stages again (no cache here): their lines are logged twice
    lines = resume_is_exact(settings, 2, tmp_path, skip_types=("pretrain", "validate")).lines
    online = [line for line in lines if line["type"] == "train" and line.get("phase") == "online"]
    assert [(line["step"], line["env_step"]) for line in online] == [(1, 128), (2, 256), (3, 384)]
    assert all(np.isfinite(line["actor_loss"]).all() and min(line["actor_lr"]) > 0 for line in online)
