"""Sampling transitions inside compiled code: from a dataset held on the device, and from a ring
replay buffer that online training fills."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from envs.dataset import Dataset


def sample_batch(data, key: jax.Array, batch_size: int):
    """Uniformly sample `batch_size` transitions (with replacement) from a pytree of arrays that
    share their leading axis, e.g. an `envs.Dataset` already on the device."""
    size = jax.tree.leaves(data)[0].shape[0]
    indices = jax.random.randint(key, (batch_size,), 0, size)
    return jax.tree.map(lambda column: column[indices], data)


@flax.struct.dataclass
class ReplayBuffer:
    """A fixed-capacity ring of transitions on the device; the oldest are overwritten first."""

    transitions: Dataset  # every field has leading axis `capacity`
    size: jax.Array  # transitions held, <= capacity
    position: jax.Array  # where the next transition goes

    @classmethod
    def create(cls, capacity: int, observation_dim: int, action_dim: int) -> ReplayBuffer:
        def zeros(*shape):
            return jnp.zeros((capacity, *shape), jnp.float32)

        empty = Dataset(zeros(observation_dim), zeros(action_dim), zeros(), zeros(observation_dim),
                        zeros(), zeros())
        return cls(empty, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.transitions.rewards.shape[0]

    def add(self, transitions: Dataset) -> ReplayBuffer:
        """Append the rows of `transitions` (in order), wrapping around at capacity."""
        count = transitions.rewards.shape[0]
        indices = (self.position + jnp.arange(count)) % self.capacity
        stored = jax.tree.map(lambda column, new: column.at[indices].set(new),
                              self.transitions, transitions)
        return ReplayBuffer(stored, jnp.minimum(self.size + count, self.capacity),
                            (self.position + count) % self.capacity)

    def add_where(self, transitions: Dataset, keep: jax.Array) -> ReplayBuffer:
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

    def sample(self, key: jax.Array, batch_size: int) -> Dataset:
        indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        return jax.tree.map(lambda column: column[indices], self.transitions)

    def ordered(self) -> Dataset:
        """The stored transitions oldest first (host-side use: saving what the buffer held)."""
        size, position = int(self.size), int(self.position)
        start = position - size if size < self.capacity else position
        indices = (start + jnp.arange(size)) % self.capacity
        return jax.tree.map(lambda column: column[indices], self.transitions)
