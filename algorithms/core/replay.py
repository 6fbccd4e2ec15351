"""Transitions as training sees them, and drawing batches inside compiled code: from the dataset
held on the device, from a seed's own ring buffer (online replay, model rollouts), or from both.
"""

from __future__ import annotations

from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.core.algorithm import Sampling
from envs.dataset import Dataset


class Transitions(NamedTuple):
    """The rows of the device dataset, of every buffer and of every batch: `envs.Dataset`'s fields
    (preprocessed) plus each transition's discounted Monte-Carlo return-to-go from the dataset's
    trajectory (zero where the algorithm does not ask for it, and for online rows)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    terminals: jax.Array
    timeouts: jax.Array
    returns_to_go: jax.Array

    @classmethod
    def from_dataset(cls, data: Dataset, returns_to_go=None) -> Transitions:
        rtg = np.zeros(np.shape(data.rewards), np.float32) if returns_to_go is None else returns_to_go
        return cls(*data, np.asarray(rtg, np.float32))

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])


def sample_batch(data, key: jax.Array, batch_size: int):
    """Uniformly sample `batch_size` rows (with replacement) from a pytree of arrays that share
    their leading axis."""
    size = jax.tree.leaves(data)[0].shape[0]
    indices = jax.random.randint(key, (batch_size,), 0, size)
    return jax.tree.map(lambda column: column[indices], data)


@flax.struct.dataclass
class ReplayBuffer:
    """A fixed-capacity ring of transitions on the device; the oldest are overwritten first."""

    transitions: Transitions  # every field has leading axis `capacity`
    size: jax.Array  # transitions held, <= capacity
    position: jax.Array  # where the next transition goes

    @classmethod
    def create(cls, capacity: int, observation_dim: int, action_dim: int, num_envs: int = 1) -> ReplayBuffer:
        """An empty ring of `capacity` rows; with `num_envs` > 1 a row is one step of that many
        parallel environments (every field (capacity, num_envs, ...): an on-policy rollout)."""
        def zeros(*shape):
            return jnp.zeros((capacity, *((num_envs,) if num_envs > 1 else ()), *shape), jnp.float32)

        empty = Transitions(zeros(observation_dim), zeros(action_dim), zeros(), zeros(observation_dim),
                            zeros(), zeros(), zeros())
        return cls(empty, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.transitions.rewards.shape[0]

    def add(self, transitions: Transitions) -> ReplayBuffer:
        """Append the rows of `transitions` (in order), wrapping around at capacity."""
        count = transitions.rewards.shape[0]
        indices = (self.position + jnp.arange(count)) % self.capacity
        stored = jax.tree.map(lambda column, new: column.at[indices].set(new),
                              self.transitions, transitions)
        return ReplayBuffer(stored, jnp.minimum(self.size + count, self.capacity),
                            (self.position + count) % self.capacity)

    def add_where(self, transitions: Transitions, keep: jax.Array) -> ReplayBuffer:
        """Append only the rows where `keep` is true (in order), wrapping around at capacity: a
        fixed-shape write for a varying number of rows (model rollouts that terminated early). Of
        more kept rows than the capacity, the last `capacity` are stored."""
        keep = keep.astype(bool)
        count = keep.sum()
        rank = jnp.cumsum(keep) - 1  # the position of each kept row among the kept rows
        keep = keep & (rank >= count - self.capacity)
        indices = jnp.where(keep, (self.position + rank) % self.capacity, self.capacity)  # dropped
        stored = jax.tree.map(lambda column, new: column.at[indices].set(new, mode="drop"),
                              self.transitions, transitions)
        return ReplayBuffer(stored, jnp.minimum(self.size + count, self.capacity).astype(jnp.int32),
                            ((self.position + count) % self.capacity).astype(jnp.int32))

    def sample(self, key: jax.Array, batch_size: int) -> Transitions:
        """Uniform over the rows held (never an unfilled slot)."""
        indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        return jax.tree.map(lambda column: column[indices], self.transitions)

    def ordered(self) -> Transitions:
        """The stored transitions oldest first (host-side use: saving what the buffer held)."""
        size, position = int(self.size), int(self.position)
        start = position - size if size < self.capacity else position
        indices = (start + jnp.arange(size)) % self.capacity
        return jax.tree.map(lambda column: column[indices], self.transitions)


def dataset_rows(batch_size: int, dataset_fraction: float) -> int:
    """Rows of a "mixed" batch drawn from the dataset: exactly round(batch * fraction)."""
    return int(round(batch_size * dataset_fraction))


def draw(sampling: Sampling, data, buffer: ReplayBuffer | None, key: jax.Array, batch_size: int):
    """One batch of `batch_size` rows as `sampling` says (see algorithms.core.algorithm.Sampling)."""
    if sampling.source == "dataset":
        return sample_batch(data, key, batch_size)
    if sampling.source == "buffer":
        return buffer.sample(key, batch_size)
    if sampling.source == "rollout":  # the whole buffer, oldest first (it holds exactly one rollout)
        return buffer.transitions
    if sampling.source == "union":
        # One pool of dataset rows then buffer rows, uniformly: what a buffer pre-filled with the
        # dataset gives, without a copy of the dataset in every seed's buffer. In a ring of
        # `pool_size` rows the dataset's first rows have been overwritten by the online rows beyond
        # the free space: the pool holds the dataset's last `held` rows (the buffer itself holds
        # every online row until there are `pool_size` of them, then it wraps on its own).
        size = data.rewards.shape[0]
        held = size if sampling.pool_size is None else jnp.clip(sampling.pool_size - buffer.size, 0, size)
        indices = jax.random.randint(key, (batch_size,), 0, held + buffer.size)
        from_data = jax.tree.map(lambda column: column[jnp.clip(indices + size - held, 0, size - 1)], data)
        from_buffer = jax.tree.map(
            lambda column: column[jnp.clip(indices - held, 0, buffer.capacity - 1)], buffer.transitions)
        take_data = indices < held
        return jax.tree.map(lambda d, b: jnp.where(take_data.reshape((-1,) + (1,) * (d.ndim - 1)), d, b),
                            from_data, from_buffer)
    if sampling.source == "mixed":
        count = dataset_rows(batch_size, sampling.dataset_fraction)
        data_key, buffer_key = jax.random.split(key)
        parts = [sample_batch(data, data_key, count), buffer.sample(buffer_key, batch_size - count)]
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *parts)
    raise ValueError(f"unknown sampling source '{sampling.source}'")
