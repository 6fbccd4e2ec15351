"""The training axis: one training per seed (and grid point), side by side in every compiled call.

Every tree of a run (states, buffers, keys, grid values, the per-seed stages' results) carries the
trainings along its leading axis, except a state's shared `step`. This module says how that axis is
made (keys from the seeds alone), mapped (`jax.vmap` axes), padded to a multiple of the devices and
spread over them (`shard_seeds`); experiments/loop.py runs the compiled chunks over it.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Context
from algorithms.core.replay import ReplayBuffer


def seed_keys(seeds) -> tuple[jax.Array, jax.Array]:
    """(init keys, training keys), one of each per training seed: a function of the seed alone, so
    a seed trains the same alone or beside others."""
    return jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(jnp.asarray(seeds)))


def context_axes(ctx: Context):
    """vmap axes for the context: the per-seed stages' results along axis 0, everything else
    shared (None: the whole context is shared)."""
    if not ctx.per_seed:
        return None
    return ctx.replace(data=None, stages={name: 0 if name in ctx.per_seed else None
                                          for name in ctx.stages})


def seed_axes(states):
    """vmap axes for a batch of algorithm states: every leaf along axis 0, except the shared `step`."""
    return jax.tree.map(lambda _: 0, states).replace(step=None)


def with_values(algo: Algorithm, values: dict | None) -> Algorithm:
    """`algo` with the fields named in `values` replaced by those (traced) values: one training's
    grid point inside the compiled program (experiments/grid.py). A shallow copy that skips
    `__post_init__`, whose checks need concrete numbers: the grid's values are checked on the host."""
    if not values:
        return algo
    specialised = copy.copy(algo)
    for name, value in values.items():
        object.__setattr__(specialised, name, value)
    return specialised


def replay_buffers(capacity: int, spec: Spec, seeds: int) -> ReplayBuffer:
    """One empty online replay buffer per seed (rows of `spec.num_envs` environments' steps)."""
    return jax.vmap(lambda _: ReplayBuffer.create(capacity, spec.observation_dim, spec.action_dim,
                                                  spec.num_envs))(jnp.arange(seeds))


def seed_padding(seeds: int) -> int:
    """How many trainings to add to `seeds` for the seed axis to divide over the devices (0 on one
    device or when it divides already): 5 seeds on 4 GPUs train 8, 3 of them discarded."""
    return -seeds % jax.device_count()


def pad_seeds(tree, padding: int):
    """`tree` with `padding` copies of its first training appended along the seed axis (the shared
    `step` of a state aside); copies of a real training stay finite, and are discarded (`unpad_seeds`)."""
    if tree is None or not padding:
        return tree
    extra = jnp.zeros(padding, jnp.int32)
    grow = lambda x: jnp.concatenate([x, x[extra]])  # noqa: E731
    if hasattr(tree, "step"):
        return jax.tree.map(grow, tree.replace(step=None)).replace(step=tree.step)
    return jax.tree.map(grow, tree)


def unpad_seeds(tree, seeds: int):
    """The first `seeds` trainings of a padded `tree`."""
    if tree is None:
        return None
    if hasattr(tree, "step"):
        return jax.tree.map(lambda x: x[:seeds], tree.replace(step=None)).replace(step=tree.step)
    return jax.tree.map(lambda x: x[:seeds], tree)


def shard_seeds(*trees):
    """Spread the seed axis of `trees` (states, buffers, keys) over all devices (GPUs, TPU cores,
    or forced host devices) when it divides evenly; shared values stay replicated. On one device
    this changes nothing; a count that does not divide is padded for each compiled call instead
    (`ChunkRunner`)."""
    devices = jax.devices()
    seeds = jax.tree.leaves(trees[-1])[0].shape[0]
    if len(devices) == 1 or seeds % len(devices):
        return trees
    mesh = jax.sharding.Mesh(np.asarray(devices), ("seeds",))
    by_seed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(tree):
        if tree is None:
            return None
        shardings = jax.tree.map(lambda _: by_seed, tree)
        if hasattr(tree, "step"):
            shardings = shardings.replace(step=replicated)
        return jax.device_put(tree, shardings)

    return tuple(place(tree) for tree in trees)


def first_seeds(ctx: Context, count: int) -> Context:
    """The context of the first `count` trainings (their per-seed stage results)."""
    if not ctx.per_seed:
        return ctx
    return ctx.replace(stages={name: jax.tree.map(lambda x: x[:count], result) if name in ctx.per_seed
                               else result for name, result in ctx.stages.items()})


def pad_context(ctx: Context, padding: int) -> Context:
    """The per-seed stages' results padded as `pad_seeds` pads the seeds (copies of the first)."""
    if not ctx.per_seed or not padding:
        return ctx
    seeded = {name: ctx.stages[name] for name in ctx.per_seed}
    placed, _ = shard_seeds(pad_seeds(seeded, padding), pad_seeds(jax.tree.leaves(seeded)[0], padding))
    return ctx.replace(stages={**ctx.stages, **placed})


def shard_context(ctx: Context) -> Context:
    """The per-seed stages' results spread over the devices as `shard_seeds` spreads the seeds."""
    if not ctx.per_seed:
        return ctx
    seeded = {name: ctx.stages[name] for name in ctx.per_seed}
    placed, _ = shard_seeds(seeded, jax.tree.leaves(seeded)[0])
    return ctx.replace(stages={**ctx.stages, **placed})
