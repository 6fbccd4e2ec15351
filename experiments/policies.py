"""The one batched policy of the project: every seed's (and every member's) actions in one compiled
call per environment step, for evaluation, online exploration and dataset generation alike, with
observations preprocessed exactly as the training data was."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import Algorithm
from algorithms.core.components import learner
from experiments.seed_axis import seed_axes, with_values


def policy_program(algo: Algorithm, preprocessor: envs.Preprocessor, deterministic: bool = True,
                   members: int = 1, phase: str = "offline"):
    """The jitted batched policy: (states, raw observations (seeds, n, obs_dim), keys (seeds,),
    counter, values) -> actions (seeds, n, act_dim); see `make_policy`. With `members` > 1 the rows
    are (seeds x members) instead, member m of seed i at row i * members + m (the algorithm's
    `candidates().state_of`). `phase="online"`: the states are those of the learner the algorithm
    hands over to, if any (`components.learner`)."""
    mean = jnp.asarray(preprocessor.normalizer.mean)
    std = jnp.asarray(preprocessor.normalizer.std)

    def seed_act(state, observations, key, values):
        algo_here = learner(with_values(algo, values), phase)
        if members == 1:
            return algo_here.act(state, observations, key, deterministic)
        state_of = algo_here.candidates().state_of
        return jax.vmap(lambda o, m: algo_here.act(state_of(state, m), o, jax.random.fold_in(key, m),
                                                   deterministic))(observations, jnp.arange(members))

    @jax.jit
    def act(states, observations, keys, counter, values=None):
        axes = seed_axes(states)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, counter)
        observations = (observations - mean) / std
        rows = observations.shape[0]
        observations = observations.reshape(rows // members, members, *observations.shape[1:]) if (
            members > 1) else observations
        actions = jax.vmap(seed_act, in_axes=(axes, 0, 0, 0))(states, observations, keys, values)
        return actions.reshape(rows, *actions.shape[-2:])

    return act


def make_policy(algo: Algorithm, preprocessor: envs.Preprocessor, deterministic: bool = True,
                values: dict | None = None, members: int = 1, phase: str = "offline"):
    """The one batched policy of the project: `policy(states)` gives a function of raw observations
    (seeds, n, obs_dim) [, per-seed keys (seeds,), counter] -> actions (seeds, n, act_dim) as host
    arrays, with observations preprocessed exactly as the training data was. Exploring
    (`deterministic=False`), each seed's key is folded with the counter on the device, so a seed
    acts the same alone or batched with others; one dispatch per environment step. `values`: the
    trainings' grid values (`with_values`). `members` > 1: every member of every seed, rows
    (seeds x members) as `policy_program` says. `phase`: as `policy_program` says."""
    act = policy_program(algo, preprocessor, deterministic, members, phase)

    def bind(states, keys=None):
        if keys is None:
            keys = jax.vmap(jax.random.key)(jnp.zeros(jax.tree.leaves(states.replace(step=None))[0]
                                                      .shape[0], jnp.uint32))
        return lambda observations, counter=0: np.asarray(
            act(states, jnp.asarray(observations, jnp.float32), keys, counter, values))

    return bind

