"""Exact nearest-neighbour search inside compiled code (PRDC's dataset constraint).

The keys are the rows of a dataset, optionally built from several column groups, each scaled:
key_i = [c_1 x1_i, c_2 x2_i, ...] (PRDC: [beta s_i, a_i]); the dataset is never copied or padded.
The search runs over blocks of `block_size` rows with `lax.scan`, keeping a running minimum, so memory
is O(queries x block) whatever the dataset size. Ties go to the lowest index (numpy's argmin).

Methods (distances are squared Euclidean):
    "direct": sum_j (q_j - k_j)^2 for every pair; exact, elementwise work (B x N x D).
    "matmul": |k|^2 - 2 q.k by matrix product (BLAS speed) to pick the `candidates` closest rows of
              each block, then "direct" distances of those candidates re-rank them. The result is the
              exact neighbour unless more than `candidates` rows of one block lie within the rounding
              error of the expansion (|q|^2 + |k|^2) * ~1e-7 of the true neighbour's distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

METHODS = ("direct", "matmul")


def _key_block(columns: Sequence[jax.Array], scales: Sequence[float], start, size: int) -> jax.Array:
    return jnp.concatenate([scale * jax.lax.dynamic_slice_in_dim(column, start, size)
                            for column, scale in zip(columns, scales, strict=True)], axis=-1)


def _squared_distances(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """(..., D) against (..., K, D) -> (..., K), exact elementwise form."""
    return ((queries[..., None, :] - keys) ** 2).sum(-1)


def nearest_neighbour(queries: jax.Array, columns: Sequence[jax.Array],
                      scales: Sequence[float] | None = None, block_size: int = 8192,
                      method: str = "direct", candidates: int = 8) -> tuple[jax.Array, jax.Array]:
    """Index (int32) and squared distance of the nearest key row for each query row (B, D)."""
    if method not in METHODS:
        raise ValueError(f"unknown neighbour search method '{method}'; use one of {METHODS}")
    scales = [1.0] * len(columns) if scales is None else list(scales)
    size = columns[0].shape[0]
    block = min(block_size, size)
    starts = jnp.arange(-(-size // block), dtype=jnp.int32) * block
    starts = jnp.minimum(starts, size - block)  # the last block overlaps its predecessor instead of padding
    batch = queries.shape[0]

    def search_block(best, start):
        best_distance, best_index = best
        keys = _key_block(columns, scales, start, block)
        if method == "direct":
            distances = _squared_distances(queries, keys)  # (B, block)
            local = jnp.argmin(distances, axis=-1)
            distance = jnp.take_along_axis(distances, local[:, None], -1)[:, 0]
        else:
            approximate = (keys**2).sum(-1)[None, :] - 2.0 * queries @ keys.T
            _, nearest = jax.lax.top_k(-approximate, min(candidates, block))  # (B, c)
            exact = _squared_distances(queries, keys[nearest])
            distance = exact.min(-1)
            local = jnp.min(jnp.where(exact == distance[:, None], nearest, block), axis=-1)
        index = (start + local).astype(jnp.int32)
        better = distance < best_distance  # strict: an earlier block keeps its ties
        return (jnp.where(better, distance, best_distance), jnp.where(better, index, best_index)), None

    initial = (jnp.full((batch,), jnp.inf, queries.dtype), jnp.zeros((batch,), jnp.int32))
    (distance, index), _ = jax.lax.scan(search_block, initial, starts)
    return index, distance
