"""The contract every algorithm follows, and the data-preprocessing choices it declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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


@dataclass(frozen=True)
class PretrainStage:
    """A model trained on the dataset before the agent and frozen or reused afterwards (SPOT's VAE; a
    BC ensemble; a dynamics model). The loop runs it as its own compiled scan, once per dataset and
    `settings` (the result is cached on disk and reused by later runs), then passes its final state to
    `Algorithm.init(..., pretrained=state)`. Not vmapped over seeds: all seeds share it.

    init(key, spec, dataset) -> state;  update(state, batch, key) -> (state, metrics)
    settings: everything besides the data that determines the result (hyperparameters, steps,
    batch size, seed); part of the cache key."""

    name: str
    steps: int
    batch_size: int
    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict]]
    settings: dict


class SettingsError(ValueError):
    """A hyperparameter no network or update can use; the message names it and the fix."""


def check_settings(algo) -> None:
    """Reject settings that cannot train, by what each field is: layer widths (`*hidden_dims`) and
    counts (integers: batch sizes, numbers of critics and samples, delays) >= 1, step counts and seeds
    (`*_steps`, `*_seed`) >= 0, learning rates (`*_lr`) > 0, `discount` in [0, 1], `tau` in (0, 1],
    `expectile` in (0, 1), dropout rates (`*_dropout`) in [0, 1)."""
    for item in dataclasses.fields(algo):
        value = getattr(algo, item.name)
        requirement = _unmet_requirement(item.name, str(item.type), value)
        if requirement:
            raise SettingsError(f"algo.{item.name} must be {requirement} (got {value!r}); fix the "
                                f"override algo.{item.name}=...")


def _unmet_requirement(name: str, annotation: str, value) -> str | None:
    """What `value` of field `name` must be, when it is not; else None."""
    if name.endswith("hidden_dims"):
        widths_ok = all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
        return None if widths_ok else "a list of layer widths, each an integer >= 1, e.g. [256,256]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if name.endswith(("_steps", "_seed")):
        return None if value >= 0 else "an integer >= 0"
    if annotation == "int":
        return None if value >= 1 else "an integer >= 1"
    ranges = [(name.endswith("_lr"), value > 0, "a learning rate > 0"),
              (name == "discount", 0 <= value <= 1, "in [0, 1]"),
              (name == "tau", 0 < value <= 1, "in (0, 1]"),
              (name == "expectile", 0 < value < 1, "in (0, 1)"),
              (name.endswith("_dropout"), 0 <= value < 1, "a dropout rate in [0, 1)")]
    return next((text for applies, ok, text in ranges if applies and not ok), None)


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

    def __post_init__(self):
        """Subclasses that check more call this first."""
        check_settings(self)

    def init(self, key: jax.Array, spec: Spec, dataset) -> Any:
        """The initial state. Algorithms with a `pretraining` stage take `pretrained=` as well."""
        raise NotImplementedError

    def pretraining(self) -> PretrainStage | None:
        """A stage the loop trains before the agent (see PretrainStage); None for most algorithms."""
        return None

    def bind_dataset(self, dataset) -> Algorithm:
        """Host-side preparation that needs the concrete training data (e.g. a KD-tree over it),
        called once by the loop before compiling; returns the algorithm to train with."""
        return self

    def update_with_data(self, state, batch, key: jax.Array, dataset):
        """What the loop calls: `update`, for algorithms that also read the whole (device) dataset
        in their update (PRDC's nearest-neighbour search) instead of only the sampled batch."""
        return self.update(state, batch, key)

    def stop_reason(self, metrics: dict) -> str | None:
        """Checked by the host after each compiled chunk on its metrics ((steps, seeds) arrays): a
        message to stop training early (e.g. SPOT's Q > 1e4 abort), else None."""
        return None

    def update(self, state, batch, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """One gradient step on `batch` (a Dataset of `batch_size` transitions)."""
        raise NotImplementedError

    def act(self, state, observations: jax.Array, key: jax.Array, deterministic: bool = True):
        raise NotImplementedError
