"""Online returns-to-go (`OffPolicy.returns_to_go`: Cal-QL with `online_calibration=true`), one rule
for the host backend (experiments/online.py) and the compiled one (experiments/online_compiled.py).

Every online row enters its seed's buffer as it arrives, with `UNFINISHED` (-inf: a row of an
unfinished episode is trained on but sets no bound, max(Q, -inf) = Q) as its return-to-go. When
its episode ends (a termination or a time limit: no bootstrap after either, as the dataset's
truncated episodes and Cal-QL's sampler), every row of the episode gets the Monte-Carlo
return-to-go that the algorithm's `derive` gives the episode's preprocessed rewards (its discount
and failure rule, as for the dataset): the rows of the block being inserted in their column, the
earlier rows written over where they lie in the ring buffer (those not overwritten since). An
episode still running when the phase ends keeps -inf.

The host computes each episode's values with `derive` itself (`EpisodeReturns`). The compiled
phase cannot call it; it computes the discounted return with the algorithm's discount and failure
rule in jax.numpy (`episode_returns`, on a fixed-size record of the running episode's rewards,
bounded by the time limit), after `compiled_rule` has checked on probe episodes that this is what
`derive` computes (else the algorithm is refused on the compiled backend).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm
from algorithms.core.replay import ReplayBuffer
from envs import Dataset
from experiments.config import ConfigError

UNFINISHED = -np.inf  # the return-to-go of a row whose episode runs on


def derived_returns(algo: Algorithm, rewards: np.ndarray) -> np.ndarray:
    """The algorithm's own returns-to-go of one whole episode's preprocessed rewards (`derive`)."""
    length = len(rewards)
    zeros = np.zeros((length, 1), np.float32)
    ends = np.zeros(length, np.float32)
    ends[-1] = 1.0
    return algo.derive(Dataset(zeros, zeros, np.asarray(rewards, np.float32), zeros, ends * 0,
                               ends)).returns_to_go


class EpisodeReturns:
    """The host backend's returns-to-go: holds each seed's running episode's preprocessed rewards
    (checkpointed as lists), and gives each block's returns and writes when episodes end."""

    def __init__(self, algo: Algorithm, running: list[list[float]]):
        self.algo, self.running = algo, [list(rewards) for rewards in running]

    def block(self, rewards: np.ndarray, ended: np.ndarray, position: int, capacity: int):
        """rewards, ended: the block's preprocessed rewards and episode ends, (steps, seeds); the
        block's rows go to buffer slots position, position + 1, ... (mod capacity). Returns the
        block's returns-to-go (steps, seeds; UNFINISHED where the episode runs on) and the writes
        (seed, slot, value) of the earlier rows of the episodes that ended, still in the buffer."""
        steps = rewards.shape[0]
        returns = np.full(rewards.shape, UNFINISHED, np.float32)
        writes = []
        for seed, episode in enumerate(self.running):
            for step in range(steps):
                episode.append(float(rewards[step, seed]))
                if not ended[step, seed]:
                    continue
                length = len(episode)
                values = derived_returns(self.algo, np.asarray(episode, np.float32))
                first = step - length + 1  # the episode's first row, relative to this block
                # rows of this block; earlier ones unless overwritten since (capacity exceeded)
                for row in range(max(first, steps - capacity), step + 1):
                    if row >= 0:
                        returns[row, seed] = values[row - first]
                    else:
                        writes.append((seed, (position + row) % capacity, values[row - first]))
                episode.clear()
        return returns, writes


@jax.jit
def _write_returns(buffers: ReplayBuffer, seeds, slots, values) -> ReplayBuffer:
    """Set returns_to_go[seed, slot] = value in every seed's buffer (padding rows: slot out of range)."""
    column = buffers.transitions.returns_to_go.at[seeds, slots].set(values, mode="drop")
    return buffers.replace(transitions=buffers.transitions._replace(returns_to_go=column))


def fill_returns(buffers: ReplayBuffer, writes: list) -> ReplayBuffer:
    """The host's writes (seed, slot, value) into the seeds' buffers (seeds, capacity)."""
    if not writes:
        return buffers
    size = 1 << (len(writes) - 1).bit_length()  # padded to a power of two: few compiled shapes
    capacity = buffers.transitions.rewards.shape[1]
    seeds, slots, values = (np.zeros(size, np.int32), np.full(size, capacity, np.int32),
                            np.zeros(size, np.float32))
    for i, (seed, slot, value) in enumerate(writes):
        seeds[i], slots[i], values[i] = seed, slot, value
    return _write_returns(buffers, seeds, slots, values)


# ---- the compiled backend ------------------------------------------------------------------------


class Rule(NamedTuple):
    """What `derive` computes, as the compiled phase computes it: G_t = r_t + discount G_{t+1} to the
    episode's end; with `failure_reward`, an episode of nothing but that reward gets
    failure_reward / (1 - discount) everywhere (envs.returns_to_go)."""

    discount: float
    failure_reward: float | None


def episode_returns(rule: Rule, rewards: jax.Array, length) -> jax.Array:
    """The returns-to-go of an episode's first `length` rewards of the record `rewards` (T,)
    (zero past them), in float32; associative, so log T deep rather than T."""
    inside = jnp.arange(rewards.shape[0]) < length
    rewards = jnp.where(inside, rewards, 0.0)
    # G_t = r_t + discount G_{t+1} as pairs (a, b): x -> a x + b, composed from the end
    decay = jnp.where(inside, jnp.float32(rule.discount), 0.0)

    def compose(later, earlier):
        (a_late, b_late), (a_early, b_early) = later, earlier
        return a_early * a_late, b_early + a_early * b_late

    _, returns = jax.lax.associative_scan(compose, (decay, rewards), reverse=True)
    if rule.failure_reward is not None:
        failed = jnp.all(jnp.where(inside, rewards == rule.failure_reward, True))
        returns = jnp.where(failed, rule.failure_reward / (1.0 - rule.discount), returns)
    return jnp.where(inside, returns, 0.0)


def compiled_rule(algo: Algorithm) -> Rule:
    """The algorithm's rule (its `discount` and `failure_reward`), checked against its `derive` on
    probe episodes; ConfigError (use the host backend) where they differ."""
    rule = Rule(float(algo.discount), getattr(algo, "failure_reward", None))
    probes = [np.random.default_rng(0).normal(size=7).astype(np.float32), np.ones(3, np.float32)]
    if rule.failure_reward is not None:
        probes.append(np.full(5, rule.failure_reward, np.float32))
    for rewards in probes:
        padded = np.zeros(len(rewards) + 2, np.float32)
        padded[:len(rewards)] = rewards
        ours = np.asarray(episode_returns(rule, jnp.asarray(padded), len(rewards)))[:len(rewards)]
        if not np.allclose(ours, derived_returns(algo, rewards), rtol=1e-5, atol=1e-5):
            raise ConfigError(f"algo={algo.name}'s online returns-to-go (its derive()) are not the "
                              "discounted returns the compiled phase computes; use env.backend=host")
    return rule


def record_block(rule: Rule, record: jax.Array, length, rewards: jax.Array, ended: jax.Array,
                 returns_column: jax.Array, position) -> tuple:
    """One seed's block of rows (one environment), compiled: `record` (T,) holds the running
    episode's first `length` preprocessed rewards; `rewards`, `ended` (block,) the block's; the
    block's rows go to buffer slots position, ... (mod capacity) of `returns_column` (capacity,), the
    buffer's returns-to-go before the block enters. Returns (record, length) after the block, the
    block's returns-to-go (block,) and the column with the earlier rows of the episodes that ended
    written over (`EpisodeReturns.block`'s rule)."""
    steps, capacity, limit = rewards.shape[0], returns_column.shape[0], record.shape[0]
    offsets = jnp.arange(limit)

    def one(carry, step):
        record, length, block_returns, column = carry
        record = record.at[jnp.minimum(length, limit - 1)].set(rewards[step])
        length = length + 1
        done = ended[step]
        values = episode_returns(rule, record, length)
        rows = step - length + 1 + offsets  # each record entry's row, relative to the block
        # rows older than the ring's last `capacity` are gone: their slots hold newer rows (of this
        # episode too, which a scatter with repeated slots may write in any order), so skip them
        valid = done & (offsets < length) & (rows >= steps - capacity)
        block_returns = block_returns.at[jnp.where(valid & (rows >= 0), rows, steps)].set(
            values, mode="drop")
        column = column.at[jnp.where(valid & (rows < 0), (position + rows) % capacity, capacity)].set(
            values, mode="drop")
        record = jnp.where(done, 0.0, record)
        return (record, jnp.where(done, 0, length), block_returns, column), None

    block_returns = jnp.full((steps,), UNFINISHED, jnp.float32)
    (record, length, block_returns, column), _ = jax.lax.scan(
        one, (record, length, block_returns, returns_column), jnp.arange(steps))
    return record, length, block_returns, column
