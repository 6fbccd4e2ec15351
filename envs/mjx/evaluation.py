"""Evaluation episodes in a JAX environment (`eval.backend=mjx`): many episodes vmapped, one `lax.scan`
over the time limit, the return summed until each episode ends.

The compiled counterpart of `envs.evaluate` (the host's, the reference): the same contract for the
policy (raw observations (seeds, episodes, obs_dim) -> actions (seeds, episodes, act_dim) in
[-1, 1]), the same episodes per evaluation (`episode_keys` turns `envs.episode_seeds` into the
environments' reset keys) and the same returns, up to float32 round-off, from the same initial
states (tests/test_mjx_evaluation.py). Pure functions of JAX arrays: call them inside `jax.jit`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def episode_key_data(env_seeds) -> np.ndarray:
    """The threefry key data (..., 2) uint32 of each episode's reset key: its 64-bit host seed
    (`envs.episode_seeds`) split into its high and low words, as `jax.random.key` splits a 64-bit
    seed. So an episode depends on its seed alone, as on the host (a training seed
    meets the same episodes whichever seeds are evaluated beside it); the states drawn from a key are
    `jax.random`'s, equally distributed, not gymnasium's."""
    seeds = np.asarray(env_seeds, np.uint64)
    return np.stack([seeds >> np.uint64(32), seeds & np.uint64(0xFFFFFFFF)], axis=-1).astype(np.uint32)


def reset(env, key_data: jax.Array):
    """Every episode's initial state, with the key data's leading axes (`episode_key_data`)."""
    keys = jax.random.wrap_key_data(key_data, impl="threefry2x32")
    flat = jax.vmap(env.reset)(keys.reshape(-1))
    return jax.tree.map(lambda x: x.reshape(*keys.shape, *x.shape[1:]), flat)


def play(env, policy: Callable[[jax.Array], jax.Array], states) -> tuple[jax.Array, jax.Array]:
    """Every episode from its initial state in `states` (an EnvState with leading axes (seeds,
    episodes)), acting with `policy`, until it terminates or reaches the environment's time limit:
    (returns, lengths), each (seeds, episodes). The scan runs `env.max_episode_steps` steps for all;
    an episode that has ended steps on (its environment is not reset) and adds nothing to its
    return."""
    shape = states.steps.shape
    count = int(np.prod(shape))
    flat = jax.tree.map(lambda x: x.reshape(count, *x.shape[len(shape):]), states)

    def one_step(carry, _):
        states, returns, lengths, running = carry
        actions = policy(states.observation.reshape(*shape, -1)).reshape(count, -1)
        states = jax.vmap(env.step)(states, actions)
        returns = returns + jnp.where(running, states.reward, 0.0)
        lengths = lengths + running.astype(jnp.int32)
        running = running & ~(states.terminated | states.truncated)
        return (states, returns, lengths, running), None

    start = (flat, jnp.zeros(count, jnp.float32), jnp.zeros(count, jnp.int32), jnp.ones(count, bool))
    (_, returns, lengths, _), _ = jax.lax.scan(one_step, start, None, length=env.max_episode_steps)
    return returns.reshape(shape), lengths.reshape(shape)
