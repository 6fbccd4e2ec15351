"""Sampling transitions inside compiled code from a dataset held on the device."""

from __future__ import annotations

import jax


def sample_batch(data, key: jax.Array, batch_size: int):
    """Uniformly sample `batch_size` transitions (with replacement) from a pytree of arrays that
    share their leading axis, e.g. an `envs.Dataset` already on the device."""
    size = jax.tree.leaves(data)[0].shape[0]
    indices = jax.random.randint(key, (batch_size,), 0, size)
    return jax.tree.map(lambda column: column[indices], data)
