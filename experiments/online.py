"""Online training: gymnasium environments on the host, compiled update scans on the device.

Each seed has its own environment, replay buffer and agent; all seeds step together. Every
`update_every` environment steps the transitions collected meanwhile go to the device in one
transfer and one compiled call runs as many updates per seed (an update-to-data ratio of 1, as
in SAC), vmapped over seeds and scanned over updates. The only Python per environment step is
the environment itself and one batched policy call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.replay import ReplayBuffer
from envs.dataset import Dataset
from envs.environment import episode_seeds, run_episodes
from experiments import loop


@dataclass
class OnlineSchedule:
    total_steps: int  # environment steps per seed
    start_steps: int = 10_000  # uniformly random actions first (SAC's warm-up)
    update_every: int = 50  # environment steps between compiled update calls
    buffer_size: int = 1_000_000
    eval_every: int = 10_000  # environment steps; 0: only at the end
    eval_episodes: int = 5

    def __post_init__(self):
        if self.update_every <= 0 or self.total_steps <= 0:
            raise ValueError("total_steps and update_every must be positive")
        if self.eval_every and self.eval_every % self.update_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of update_every "
                             f"({self.update_every})")


def fold_in_each(keys: jax.Array, data: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def make_actor(algo: Algorithm, deterministic: bool):
    """jit: (states, observations (seeds, n, obs), keys (seeds,), counter) -> actions (seeds, n,
    act); each seed's key is folded with the counter on the device: one dispatch per env step."""

    def act(states, observations, keys, counter):
        axes = loop.seed_axes(states)
        keys = fold_in_each(keys, counter)
        return jax.vmap(lambda s, o, k: algo.act(s, o, k, deterministic), in_axes=(axes, 0, 0))(
            states, observations, keys)

    return jax.jit(act)


def evaluate_policy(actor, states, make_env: Callable, env_seeds: np.ndarray, key) -> np.ndarray:
    """Undiscounted returns, shape env_seeds.shape (seeds, episodes), of `actor` on fresh
    environments reset with `env_seeds` (`envs.environment.episode_seeds`)."""
    counter = iter(range(10**9))

    def policy(observations):
        return np.asarray(actor(states, observations.astype(np.float32), key, next(counter)))

    return run_episodes(policy, make_env, env_seeds)


def initial_run(algo: Algorithm, spec: Spec, seeds: list[int], buffer_size: int) -> dict:
    """A fresh run: one agent and one empty replay buffer per seed, at step 0. Also the template a
    checkpoint is restored into."""
    init_keys, keys = jnp.split(jax.vmap(jax.random.split)(
        jax.vmap(jax.random.key)(np.asarray(seeds))), 2, axis=1)
    states = loop.init_states(algo, spec, None, init_keys[:, 0])
    buffers = jax.vmap(lambda _: ReplayBuffer.create(buffer_size, spec.observation_dim,
                                                     spec.action_dim))(jnp.arange(len(seeds)))
    return {"states": states, "buffers": buffers, "keys": keys[:, 0], "step": 0,
            "history": {"evaluations": [], "episode_returns": []}}


def environment_spec(make_env: Callable, total_steps: int) -> Spec:
    env = make_env()
    spec = Spec(env.observation_space.shape[0], env.action_space.shape[0], total_steps)
    env.close()
    return spec


def train_online(algo: Algorithm, make_env: Callable, schedule: OnlineSchedule, seeds: list[int],
                 *, run: dict | None = None, on_evaluation: Callable | None = None,
                 on_collect: Callable | None = None, progress: Callable | None = None) -> dict:
    """Train one agent per seed online; returns the run {"states", "buffers", "keys", "step",
    "history"}. `make_env()` must give an environment with actions in [-1, 1].

    run: where to start (default `initial_run`; or one restored from a checkpoint). Environments
        restart from fresh episodes on resuming (their simulator state is not saved).
    on_evaluation(run, returns): after each evaluation, including one at step 0 (returns: (seeds,
        episodes), deterministic actions); the place to snapshot or checkpoint;
    on_collect(transitions, step): every batch of collected transitions, as host arrays of shape
        (update_every, seeds, ...), before they enter the buffers;
    progress(step, record): after each compiled update call, with the latest losses.
    """
    num_seeds = len(seeds)
    spec = environment_spec(make_env, schedule.total_steps)
    run = dict(run or initial_run(algo, spec, seeds, schedule.buffer_size))
    envs = gym.vector.SyncVectorEnv([make_env for _ in seeds],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    chunk = loop.make_train_chunk(algo, schedule.update_every, replay=True)
    add = jax.jit(jax.vmap(ReplayBuffer.add), donate_argnums=0)  # in place: no buffer copy
    explore = make_actor(algo, deterministic=False)
    exploit = make_actor(algo, deterministic=True)
    states, buffers, keys, step, history = (run[k] for k in ("states", "buffers", "keys", "step",
                                                             "history"))
    rng = np.random.default_rng([*seeds, step])
    observations, _ = envs.reset(seed=[s * 7_919 + step for s in seeds])
    running_returns = np.zeros(num_seeds)
    # Per seed, folded with the step count: a seed acts the same alone or batched with others.
    act_key, eval_key = (jax.vmap(lambda s, i=i: jax.random.fold_in(jax.random.key(s), i))(
        np.asarray(seeds)) for i in (1, 2))
    eval_every = schedule.eval_every or schedule.total_steps

    def evaluate(key):
        env_seeds = episode_seeds(seeds, len(history["evaluations"]), schedule.eval_episodes)
        returns = evaluate_policy(exploit, states, make_env, env_seeds, key=key)
        history["evaluations"].append({"step": step, "returns": returns.tolist()})
        if on_evaluation is not None:
            on_evaluation({"states": states, "buffers": buffers, "keys": keys, "step": step,
                           "history": history}, returns)

    if step == 0 and schedule.eval_episodes > 0:
        evaluate(fold_in_each(eval_key, 0))
    started, started_step = time.perf_counter(), step
    while step < schedule.total_steps:
        length = min(schedule.update_every, schedule.total_steps - step)
        batch = {name: [] for name in Dataset._fields}
        for _ in range(length):
            if step < schedule.start_steps:
                actions = rng.uniform(-1.0, 1.0, (num_seeds, spec.action_dim))
            else:
                actions = np.asarray(explore(states, observations[:, None].astype(np.float32),
                                             act_key, step))[:, 0]
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            done = terminated | truncated
            final = next_obs.copy()
            if done.any():  # SAME_STEP autoreset: next_obs already starts the next episode
                final[done] = np.stack(info["final_obs"][done])
            for name, value in zip(Dataset._fields, (observations, actions, rewards, final,
                                                     terminated, truncated & ~terminated),
                                   strict=True):
                batch[name].append(np.asarray(value, np.float32))
            running_returns += rewards
            for i in np.flatnonzero(done):
                history["episode_returns"].append([step + 1, int(i), float(running_returns[i])])
                running_returns[i] = 0.0
            observations = next_obs
            step += 1
        transitions = Dataset(*(np.stack(batch[name]) for name in Dataset._fields))
        if on_collect is not None:
            on_collect(transitions, step)
        # (time, seeds, ...) -> (seeds, time, ...): each seed appends its own rows.
        buffers = add(buffers, jax.tree.map(
            lambda x: jnp.asarray(np.swapaxes(x, 0, 1)), transitions))
        if step >= schedule.start_steps and length == schedule.update_every:
            states, keys, metrics = chunk(states, buffers, keys)
            if progress is not None:
                record = {name: float(np.mean(value[-1])) for name, value in metrics.items()}
                recent = [r for _, _, r in history["episode_returns"][-10 * num_seeds:]]
                record["episode_return"] = float(np.mean(recent)) if recent else math.nan
                record["env_steps_per_second"] = (step - started_step) / max(
                    time.perf_counter() - started, 1e-9)
                progress(step, record)
        if schedule.eval_episodes > 0 and (step % eval_every == 0 or step == schedule.total_steps):
            evaluate(fold_in_each(eval_key, step))
    envs.close()
    return {"states": states, "buffers": buffers, "keys": keys, "step": step, "history": history}
