"""The running episodes of the compiled online phase (experiments/online_compiled.py): every seed's
environments' states, returns and lengths (with online returns-to-go, the record of their
preprocessed rewards: experiments/returns_to_go.py), one step of them with same-step autoreset as
the host path steps its vector env (experiments/online.py), their checkpointed form, and the
episodes that ended, in the host's history format."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm
from algorithms.core.components import learner
from envs import Dataset

ENV_SALT = 0x0411  # the host path's reset stream (experiments/online.py, environment_seed)


class Episodes(NamedTuple):
    """Every seed's running episodes, (seeds, num_envs, ...): a checkpointed tree."""

    states: object  # the environments' EnvState
    returns: jax.Array  # float32: the rewards summed since the reset
    lengths: jax.Array  # int32: steps since the reset
    # with online returns-to-go: the preprocessed rewards of the steps since the reset, (..., time
    # limit), zero past `lengths` (experiments/returns_to_go.py); None without
    record: jax.Array | None = None


def record_steps(algo: Algorithm, env) -> int:
    """The length of the episodes' `record`: the time limit where the algorithm asks for online
    returns-to-go (no episode runs longer), else 0 (no record)."""
    return int(env.max_episode_steps) if learner(algo, "online").driver().returns_to_go else 0


def fresh_episodes(env, seeds, num_envs: int, env_step: int = 0, record_steps: int = 0) -> Episodes:
    """New episodes for every seed's `num_envs` environments, reset from keys of the seed and
    `env_step` alone; with `record_steps`, an empty record of that many rewards each."""
    def one_seed(seed):
        states = jax.vmap(env.reset)(reset_keys(jax.random.key(seed), jnp.asarray(env_step), num_envs))
        record = jnp.zeros((num_envs, record_steps), jnp.float32) if record_steps else None
        return Episodes(states, jnp.zeros(num_envs, jnp.float32), jnp.zeros(num_envs, jnp.int32), record)

    return jax.jit(jax.vmap(one_seed))(jnp.asarray(seeds))


def stored(episodes) -> dict:
    """The checkpointed form of `episodes` (arrays or their shapes): its leaves but the empty ones,
    which orbax cannot write (MJX's Data has some: `act` of a model without activations)."""
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(episodes)) if np.prod(leaf.shape)}


def unstored(leaves: dict, template) -> Episodes:
    """`stored`'s inverse, shaped like `template` (the episodes' shapes)."""
    shapes = jax.tree.leaves(template)
    return jax.tree.unflatten(jax.tree.structure(template), [
        leaves[str(i)] if np.prod(t.shape) else jnp.zeros(t.shape, t.dtype) for i, t in enumerate(shapes)])


def reset_keys(seed_key, env_step, num_envs: int):
    """The keys that reset a seed's environments after `env_step` steps."""
    return jax.random.split(jax.random.fold_in(jax.random.fold_in(seed_key, ENV_SALT), env_step), num_envs)


def step_environments(env, episodes: Episodes, actions, reset_key):
    """One step of one seed's environments (num_envs,) with same-step autoreset: returns the
    episodes going on, the raw rows (a Dataset of (num_envs, ...)) and what ended (done, return,
    length), as experiments/online.py records them."""
    stepped = jax.vmap(env.step)(episodes.states, actions)
    done = stepped.terminated | stepped.truncated
    returns, lengths = episodes.returns + stepped.reward.astype(jnp.float32), episodes.lengths + 1
    fresh = jax.vmap(env.reset)(jax.random.split(reset_key, done.shape[0]))
    states = jax.tree.map(lambda new, old: jnp.where(done.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                          fresh, stepped)
    rows = Dataset(episodes.states.observation, actions, stepped.reward, stepped.observation,
                   stepped.terminated, stepped.truncated & ~stepped.terminated)
    rows = Dataset(*(jnp.asarray(column, jnp.float32) for column in rows))
    going_on = episodes._replace(states=states, returns=jnp.where(done, 0.0, returns),
                                 lengths=jnp.where(done, 0, lengths))
    return going_on, rows, (done, returns, lengths)


def finished_episodes(ended, start: int, block: int, num_envs: int = 1) -> list[list]:
    """[env_step, seed index, return, length, success=None] of every episode that ended in a chunk
    starting at `start`, in the host's order (by step, then seed, then environment); `ended`: (done,
    return, length), each (blocks, seeds, block / num_envs, num_envs); `block`, `start`, env_step:
    environment steps of all a seed's environments."""
    done, returns, lengths = (np.moveaxis(np.asarray(x), 1, 2) for x in ended)  # (blocks, block, seeds, envs)
    return [[int(start + (b * block // num_envs + s + 1) * num_envs), int(seed),
             float(returns[b, s, seed, e]), int(lengths[b, s, seed, e]), None]
            for b, s, seed, e in np.argwhere(done)]
