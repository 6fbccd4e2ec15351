"""The contract every algorithm follows, and the data-preprocessing choices it declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import jax


class Spec(NamedTuple):
    """What an algorithm needs to know about the problem when it builds its networks."""

    observation_dim: int
    action_dim: int  # actions always lie in [-1, 1]; environments are rescaled to match
    total_steps: int  # length of training, for learning-rate schedules


@dataclass
class RewardConfig:
    """r <- scale * r' + shift, with r' = returns_span * r / (max - min trajectory return) when
    `returns_span` is set, else r' = r. Papers differ per dataset family; each algorithm's config
    states its own convention."""

    returns_span: float | None = None
    scale: float = 1.0
    shift: float = 0.0


@dataclass
class Algorithm:
    """Base class: hyperparameters are dataclass fields (defaults are the paper's), methods are pure.

    A state is a `flax.struct.dataclass` pytree with an integer `step` field. The training loop
    vmaps `init`, `update` and `act` over seeds; `step` is the one field it keeps shared between
    seeds, so `jax.lax.cond(state.step % k == 0, ...)` stays a real branch under vmap.
    """

    name: ClassVar[str] = ""
    batch_size: int = 256
    normalize_states: bool = False  # standardize states with dataset mean / (std + 1e-3)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def init(self, key: jax.Array, spec: Spec, dataset) -> Any:
        raise NotImplementedError

    def update(self, state, batch, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """One gradient step on `batch` (a Dataset of `batch_size` transitions)."""
        raise NotImplementedError

    def act(self, state, observations: jax.Array, key: jax.Array, deterministic: bool = True):
        raise NotImplementedError
