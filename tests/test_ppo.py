"""PPO and the on-policy online driver: GAE, the clipped losses and the return scaler against hand
computations; rollouts reaching `update` whole and in time order; seeds batched = single runs; a
run resumed from a checkpoint in the middle of a rollout gives the same numbers; bad settings."""

import math

import flax
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_env, resume_is_exact, run_cli

from algorithms.core.algorithm import Algorithm, Handover, OnlineConfig, SettingsError
from algorithms.core.ppo import PPOConfig, ReturnScaler, clipped_surrogate, clipped_value_loss, gae
from algorithms.ppo import PPO
from envs import Preprocessor
from envs.environment import episode_seeds, run_episodes
from experiments import loop, policies
from experiments.assembly import Assembly
from experiments.config import ConfigError, compose
from experiments.online import OnlineRun, OnlineSchedule, train_online
from experiments.train import run

# ---------------------------------------------------------------------------------------------
# The pure functions, by hand
# ---------------------------------------------------------------------------------------------


def test_gae_bootstraps_truncations_not_terminations_and_is_cut_at_episode_ends():
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0])
    values = jnp.array([0.5, 1.0, 1.5, 2.0])
    next_values = jnp.array([1.0, 9.0, 2.0, 7.0])  # row 1's s' is the true final observation
    terminals = jnp.array([0.0, 0.0, 0.0, 1.0])  # row 3 terminates
    dones = jnp.array([0.0, 1.0, 0.0, 1.0])  # row 1 is truncated
    advantages, returns = gae(rewards, values, next_values, terminals, dones, 0.9, 0.5)
    # deltas: 1 + .9*1 - .5 = 1.4;  2 + .9*9 - 1 = 9.1 (bootstrapped);  3 + .9*2 - 1.5 = 3.3;
    # 4 - 2 = 2 (terminal: V(s') = 7 unused).  A_3 = 2;  A_2 = 3.3 + .45*2 = 4.2;  A_1 = 9.1 (its
    # episode ends: A_2 does not flow in);  A_0 = 1.4 + .45*9.1 = 5.495
    np.testing.assert_allclose(advantages, [5.495, 9.1, 4.2, 2.0], rtol=1e-6)
    np.testing.assert_allclose(returns, [5.995, 10.1, 5.7, 4.0], rtol=1e-6)


def test_clipped_surrogate_and_value_loss_by_hand():
    ratios = jnp.array([1.5, 0.5, 1.5, 0.5])
    advantages = jnp.array([2.0, 2.0, -1.0, -1.0])
    old = jnp.array([0.3, -0.2, 0.0, 1.0])
    # min(rho A, clip(rho, .8, 1.2) A): min(3, 2.4), min(1, 1.6), min(-1.5, -1.2), min(-.5, -.8)
    loss = clipped_surrogate(old + jnp.log(ratios), old, advantages, 0.2)
    np.testing.assert_allclose(loss, -(2.4 + 1.0 - 1.5 - 0.8) / 4, rtol=1e-6)
    values, old_values, returns = jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0]), jnp.array([3.0, 0.0])
    # row 0: (1 - 3)^2 = 4, clipped (0 + .5 - 3)^2 = 6.25 -> 6.25;  row 1: 4 either way
    np.testing.assert_allclose(clipped_value_loss(values, old_values, returns, 0.5), (6.25 + 4) / 2)
    np.testing.assert_allclose(clipped_value_loss(values, old_values, returns, 0.5, clipped=False), 4.0)


def test_dynamic_return_scaling_by_hand_and_across_rollouts():
    rewards, dones = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 0.0])
    scaler, scaled = ReturnScaler.create().scale(rewards, dones, "dynamic", 0.5)
    # R: 1 | 0.5 + 2 = 2.5 (episode ends: R restarts) | 3.  Running mean/std of R (sum of squares
    # starting at 1; the std stays 1 for the first value):
    #   n=1: mean 1, S 1, std 1;  n=2: mean 1.75, S = 1 + 1.5 * .75 = 2.125, std = sqrt(2.125 / 2);
    #   n=3: mean = 1.75 + 1.25 / 3, S = 2.125 + 1.25 * (3 - mean), std = sqrt(S / 3)
    mean3 = 1.75 + 1.25 / 3
    s3 = 2.125 + 1.25 * (3 - mean3)
    stds = [1.0, math.sqrt(2.125 / 2), math.sqrt(s3 / 3)]
    np.testing.assert_allclose(scaled, np.array([1.0, 2.0, 3.0]) / (np.array(stds) + 1e-8), rtol=1e-6)
    # the next rollout goes on from there: R = .5 * 3 + 4 = 5.5, n = 4
    scaler, scaled = scaler.scale(jnp.array([4.0]), jnp.array([0.0]), "dynamic", 0.5)
    mean4 = mean3 + (5.5 - mean3) / 4
    s4 = s3 + (5.5 - mean3) * (5.5 - mean4)
    np.testing.assert_allclose(scaled, [4.0 / math.sqrt(s4 / 4)], rtol=1e-6)
    np.testing.assert_allclose(scaler.running_return, 5.5)
    # the reference's pass over the offline data leaves episode ends out: row 1 neither counted nor
    # scaled, R restarts; row 2 is then the second value: R = 3, mean 2, S = 1 + 2 * 1 = 3
    offline, scaled = ReturnScaler.create().scale(rewards, dones, "dynamic", 0.5, skip_episode_ends=True)
    np.testing.assert_allclose(scaled, [1.0, 2.0, 3.0 / math.sqrt(3 / 2)], rtol=1e-6)
    assert int(offline.count) == 2 and float(offline.running_return) == 3.0
    assert ReturnScaler.create().scale(rewards, dones, "number", 0.5)[1].tolist() == pytest.approx(
        [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(ReturnScaler.create().scale(rewards, dones, "none", 0.5)[1], rewards)


# ---------------------------------------------------------------------------------------------
# The on-policy driver
# ---------------------------------------------------------------------------------------------


def pendulum_env():
    env = gym.make("Pendulum-v1")
    return gym.wrappers.RescaleAction(env, -np.ones(1, np.float32), np.ones(1, np.float32))


@flax.struct.dataclass
class Seen:
    rewards: jax.Array  # the last rollout update saw
    timeouts: jax.Array
    step: jax.Array


class Recorder(Algorithm):
    """Keeps the last batch it was given; acts with a fixed function of the observation."""

    name = "recorder"

    def init(self, key, spec, ctx=None):
        return Seen(jnp.zeros(self.online.block), jnp.zeros(self.online.block), jnp.zeros((), jnp.int32))

    def update(self, state, batch, key, ctx=None):
        return Seen(batch.rewards, batch.timeouts, state.step + 1), {"rows": jnp.float32(batch.rewards.size)}

    def act(self, state, observations, key, deterministic=True):
        return jnp.tanh(observations[..., :1])


def train(algo, steps: int, seeds: list[int], checkpoint_every: int = 0, checkpoint=None, collected=None):
    asm = Assembly.from_environment(algo, pendulum_env, seeds, 0, algo.online.block)
    ctx = asm.contexts["online"]
    state = OnlineRun(**asm.fresh("online"))
    schedule = OnlineSchedule(steps, eval_every=0, checkpoint_every=checkpoint_every, log_every=0)
    on_collect = None if collected is None else (lambda rows, step: collected.append(rows))
    return train_online(algo, ctx, Preprocessor.identity(3), pendulum_env, schedule, seeds, state,
                        loop.ChunkRunner(algo, "online"), checkpoint=checkpoint, on_collect=on_collect)


def test_each_rollout_reaches_update_whole_and_in_time_order():
    algo = Recorder(online=OnlineConfig(replay="on_policy", block=64))
    collected = []
    done = train(algo, 150, [0, 1], checkpoint_every=40, checkpoint=lambda r: None, collected=collected)
    rewards = np.concatenate([c["rewards"] for c in collected])  # (150, seeds), raw = preprocessed
    timeouts = np.concatenate([c["timeouts"] for c in collected])
    assert int(done.states.step) == 2  # two full rollouts; the last 22 steps are never trained on
    np.testing.assert_allclose(np.asarray(done.states.rewards).T, rewards[64:128], rtol=1e-6)
    # the checkpoints at steps 40, 80 and 120 cut no episode: Pendulum's first ends at step 200
    assert not np.asarray(done.states.timeouts).any()
    np.testing.assert_array_equal(np.asarray(done.states.timeouts).T, timeouts[64:128])
    assert np.asarray(done.buffers.size).tolist() == [64, 64] and int(done.buffers.position[0]) == 150 % 64


def small_ppo(**changes) -> PPO:
    ppo = PPOConfig(**{"clip": 0.2, "epochs": 2, "minibatch_size": 32, "actor_lr": 1e-3, "critic_lr": 2e-3,
                       "reward_scaling": "dynamic", **changes})
    return PPO(hidden_dims=(16, 16), ppo=ppo, online=OnlineConfig(replay="on_policy", block=64))


def test_seeds_trained_together_equal_seeds_trained_alone():
    algo = small_ppo()
    together = train(algo, 192, [4, 7])
    alone = train(algo, 192, [7])
    assert int(together.states.step) == 3
    # the third update's learning rates, decayed linearly over the 2 x 64 steps before it
    for network, rate in ((together.states.actor, 1e-3), (together.states.critic, 2e-3)):
        np.testing.assert_allclose(network.opt_state.hyperparams["learning_rate"],
                                   rate * (1 - 128 / 3e6), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(together.states), jax.tree.leaves(alone.states), strict=True):
        if np.ndim(a) and not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b)[0], rtol=2e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Through experiments.train
# ---------------------------------------------------------------------------------------------

TINY = ["algo=ppo", "steps=0", "dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]",
        "algo.online.block=32", "algo.ppo.minibatch_size=16", "algo.ppo.epochs=2", "online.steps=96",
        "online.eval_every=40", "online.log_every=40", "online.episodes=1", "seeds=2"]


@pytest.mark.integration
def test_resume_in_the_middle_of_a_rollout_gives_the_same_numbers(offline_data, tmp_path, monkeypatch):
    # begin_online runs once, when the online phase starts: here it zeroes the critic, so the first
    # update's values are exactly 0, and calling it again on resume would change every number after
    def begin_online(self, state, spec, ctx):
        return state.replace(critic=state.critic.replace(
            params=jax.tree.map(jnp.zeros_like, state.critic.params)))

    monkeypatch.setattr(PPO, "hand_over", lambda self: Handover(self, begin_online.__get__(self)))
    # killed after the third update (environment step 96), after the checkpoint at step 80
    lines = resume_is_exact(TINY, 3, tmp_path).lines
    train_lines = [line for line in lines if line["type"] == "train"]
    assert [(line["step"], line["env_step"]) for line in train_lines] == [(1, 40), (2, 80)]  # log_every 40
    assert train_lines[0]["value"] == [0.0, 0.0]  # begin_online's critic
    assert set(train_lines[0]) >= {"actor_loss", "critic_loss", "entropy", "clip_fraction", "approx_kl"}
    assert all(0 <= fraction < 1 for fraction in train_lines[-1]["clip_fraction"])


def test_ppo_refuses_offline_steps_and_warm_up_steps(offline_data, tmp_path):
    with pytest.raises(SettingsError, match="steps=0 online.steps=N"):
        run(compose([*TINY[:1], "steps=10", *TINY[2:]]), tmp_path / "offline")
    with pytest.raises(ConfigError, match="online.start_steps=0"):
        run(compose([*TINY, "online.start_steps=10"]), tmp_path / "warm-up")
    with pytest.raises(SettingsError, match="algo.ppo.reward_scaling"):
        PPOConfig(reward_scaling="dynamc")
    with pytest.raises(SettingsError, match="algo.online.replay must be on_policy"):
        PPO(online=OnlineConfig(replay="mixed"))


@pytest.mark.integration
def test_a_minibatch_larger_than_the_rollout_is_one_error_line(offline_data, tmp_path):
    result = run_cli([*TINY, "algo.ppo.minibatch_size=64"], tmp_path / "run", cli_env())
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: algo.online.block=32 (the rollout) must be a multiple of "
                           "algo.ppo.minibatch_size=64"), result.stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_ppo_learns_pendulum():
    algo = PPO()  # algo=ppo's defaults: rollouts of 2048 steps, 10 epochs of minibatches of 64
    done = train(algo, 150_000, [0])
    policy = policies.make_policy(algo, Preprocessor.identity(3))
    seeds = episode_seeds([0], 123, 10)
    start = run_episodes(policy(Assembly.from_environment(algo, pendulum_env, [0], 0, 1).fresh("online")
                                ["states"]), pendulum_env, seeds).mean()
    end = run_episodes(policy(done.states), pendulum_env, seeds).mean()
    print(f"PPO on Pendulum-v1, 150k environment steps: return {start:.0f} -> {end:.0f}")
    assert end > -800 and end > start + 500, (start, end)  # swung up and held: about -200
