"""Explicit data preprocessing: reward conventions and state normalization.

Every transform is chosen in the algorithm's config (per dataset family where papers differ), and
the same state normalization is applied to the dataset and to observations during evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    fitted = Preprocessor.fit(data, normalize_states=False, returns_span=returns_span, scale=scale,
                              shift=shift)
    return data._replace(rewards=fitted.rewards(data.rewards))


def rescale_actions(data: Dataset, low: np.ndarray, high: np.ndarray) -> Dataset:
    """Map actions from the environment's [low, high] to [-1, 1], where every policy acts."""
    if np.all(low == -1.0) and np.all(high == 1.0):
        return data
    actions = 2.0 * (data.actions - low) / (high - low) - 1.0
    return data._replace(actions=np.clip(actions, -1.0, 1.0).astype(np.float32))


@dataclass(frozen=True)
class Preprocessor:
    """The dataset's state normalization and reward transform, fitted once on the dataset and then
    applied identically to training batches, evaluation and exploration observations, and online
    transitions (whose rewards must be on the dataset's scale, or fine-tuning starts from values
    learnt for other rewards).

    rewards: r <- scale * r * multiplier + shift, where multiplier = returns_span / (max - min
    trajectory return of the dataset) when a span is given, else 1 (IQL's convention)."""

    normalizer: Normalizer
    reward_multiplier: float = 1.0
    reward_scale: float = 1.0
    reward_shift: float = 0.0

    @classmethod
    def identity(cls, observation_dim: int) -> Preprocessor:
        """Raw states and rewards (online training from scratch, without a dataset)."""
        return cls(Normalizer.identity(observation_dim))

    @classmethod
    def fit(cls, data: Dataset, *, normalize_states: bool, returns_span: float | None = None,
            scale: float = 1.0, shift: float = 0.0) -> Preprocessor:
        normalizer = (Normalizer.from_dataset(data) if normalize_states
                      else Normalizer.identity(data.observation_dim))
        multiplier = 1.0
        if returns_span is not None:
            returns = episode_returns(data)
            spread = float(returns.max() - returns.min())
            if spread > 0:
                multiplier = returns_span / spread
        return cls(normalizer, multiplier, scale, shift)

    def observations(self, observations):
        return self.normalizer(observations)

    def rewards(self, rewards):
        rewards = np.asarray(rewards, np.float64) * self.reward_multiplier
        return (self.reward_scale * rewards + self.reward_shift).astype(np.float32)

    def __call__(self, data: Dataset) -> Dataset:
        """Transitions (a dataset, or online rows with leading axes of any shape) as training
        sees them."""
        return data._replace(
            observations=self.observations(data.observations).astype(np.float32),
            next_observations=self.observations(data.next_observations).astype(np.float32),
            rewards=self.rewards(data.rewards),
        )
