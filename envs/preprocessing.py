"""Explicit data preprocessing: reward conventions and state normalization.

Every transform is chosen in the algorithm's config (per dataset family where papers differ), and
the same state normalization is applied to the dataset and to observations during evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from envs.dataset import Dataset, episode_returns


class Normalizer(NamedTuple):
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    @classmethod
    def from_dataset(cls, data: Dataset, eps: float = 1e-3) -> Normalizer:
        """Mean and std + eps of the dataset's states (TD3+BC's convention, eps = 1e-3)."""
        mean = data.observations.mean(axis=0, dtype=np.float64)
        std = data.observations.std(axis=0, dtype=np.float64) + eps
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, observations):
        return (observations - self.mean) / self.std


def normalize_states(data: Dataset, normalizer: Normalizer) -> Dataset:
    return data._replace(
        observations=normalizer(data.observations).astype(np.float32),
        next_observations=normalizer(data.next_observations).astype(np.float32),
    )


def transform_rewards(data: Dataset, returns_span: float | None, scale: float, shift: float):
    """r <- scale * r' + shift, where r' = returns_span * r / (max return - min return) when
    `returns_span` is set (IQL's locomotion convention uses 1000) and r' = r otherwise."""
    rewards = data.rewards.astype(np.float64)
    if returns_span is not None:
        returns = episode_returns(data)
        spread = float(returns.max() - returns.min())
        if spread > 0:
            rewards = rewards * returns_span / spread
    return data._replace(rewards=(scale * rewards + shift).astype(np.float32))


def rescale_actions(data: Dataset, low: np.ndarray, high: np.ndarray) -> Dataset:
    """Map actions from the environment's [low, high] to [-1, 1], where every policy acts."""
    if np.all(low == -1.0) and np.all(high == 1.0):
        return data
    actions = 2.0 * (data.actions - low) / (high - low) - 1.0
    return data._replace(actions=np.clip(actions, -1.0, 1.0).astype(np.float32))
