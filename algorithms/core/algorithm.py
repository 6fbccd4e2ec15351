"""The contract every algorithm follows: what the training loop calls, and nothing more.

    init(key, spec, ctx) -> state                        one seed's agent
    update(state, batch, key, ctx) -> (state, metrics)   one gradient step
    act(state, observations, key, deterministic) -> actions in [-1, 1]
    stages(spec) -> [Stage]                               models trained once on the dataset first
    early_stop(metrics) -> (stop per seed, reason)        checked after every compiled chunk
    derive(data) -> Derived                               computed once from the dataset on the host

plus the optional components of algorithms/core/components.py, which an algorithm declares by
overriding the method that returns it: `driver()` (the online phase: off-policy with replay, the
default, or on-policy rollouts), `model_data()` (MOPO's rollout buffer), `candidates()` (Uni-O4's
ensemble) and `hand_over()` (another learner online).

`ctx` is the shared, read-only `Context` (the device dataset, the frozen stage results, host-side
helpers such as PRDC's KD-tree): every seed reads the same one and it never enters a seed's state
or a checkpoint. Hyperparameters are dataclass fields whose defaults are the paper's; the methods
are pure functions of pytrees, so the loop can jit, scan, vmap (seeds) and shard them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import flax
import jax
import numpy as np

from algorithms.core.components import (
    Candidates,
    Derived,
    Handover,
    ModelData,
    OffPolicy,
    OnlineConfig,
    OnPolicy,
    Sampling,
    SettingsError,
)

__all__ = ["Algorithm", "Candidates", "Context", "Derived", "Handover", "ModelData", "OffPolicy",
           "OnPolicy", "OnlineConfig", "RewardConfig", "Sampling", "SettingsError", "Spec", "Stage",
           "check_settings"]


class Spec(NamedTuple):
    """What an algorithm needs to know about the problem when it builds its networks."""

    observation_dim: int
    action_dim: int  # actions always lie in [-1, 1]; environments are rescaled to match
    total_steps: int  # offline gradient steps, for learning-rate schedules
    num_envs: int = 1  # online environments per seed (`env.num_envs`): an on-policy rollout's width


@dataclass
class RewardConfig:
    """r <- scale * r' + shift, with r' = returns_span * r / (max - min trajectory return) when
    `returns_span` is set, else r' = r. Papers differ per dataset family; each algorithm's config
    states its own convention. Online transitions get the same transform, with the dataset's
    return spread (see envs.Preprocessor)."""

    returns_span: float | None = None
    scale: float = 1.0
    shift: float = 0.0


@flax.struct.dataclass
class Context:
    """Shared by every seed's `init` and `update`, read-only.

    data: the preprocessed dataset on the device; stages: {stage name: frozen result};
    phase: "offline" or "online"; phase_start: the gradient step at which this phase began;
    host: host-side helpers that are not arrays (PRDC's KD-tree), keyed by name;
    per_seed: the names of the `stages` trained per seed (`Stage.per_seed`): their results carry a
        leading seed axis, which the loop maps with the seeds (`experiments.seed_axis.context_axes`), so
        inside a seed's `init`/`update` `ctx.stages[name]` is that seed's own result."""

    data: Any
    stages: dict = flax.struct.field(default_factory=dict)
    phase: str = flax.struct.field(pytree_node=False, default="offline")
    phase_start: int = flax.struct.field(pytree_node=False, default=0)
    host: tuple = flax.struct.field(pytree_node=False, default=())
    per_seed: tuple = flax.struct.field(pytree_node=False, default=())

    def helper(self, name: str):
        return dict(self.host).get(name)


@dataclass(frozen=True)
class Stage:
    """A model trained on the dataset before the agent and frozen afterwards (SPOT's VAE, a dynamics
    ensemble, a BC ensemble, value functions). The loop trains it in compiled chunks from
    `settings["seed"]`, once per fingerprint of the data it reads and `settings` (cached on disk),
    and gives `result(state)` to the seeds as `ctx.stages[name]`: one result shared by every seed,
    or with `per_seed` one result per training seed, trained from seed `settings["seed"] + training
    seed` (the references' protocol, where each run trains its own model, so the spread over seeds
    includes the model's own variance).

    init(key, spec, data) -> state;  update(state, batch, key) -> (state, metrics)
    holdout: fraction of the dataset held out (at most `max_holdout` rows) for `validate`;
    validate(state, holdout) -> (state, stop, metrics), every `validate_every` steps: may keep a
        best snapshot in the state and asks to stop early (bool); metrics named `stop_<reason>`
        that are > 0 when it asks say why (logged and recorded as the stage's `stop_reason`);
    finish(state, holdout) -> (state, record): after the last step (elite selection); `record` (a
        dict of arrays) is written to the run's results;
    settings: everything besides the data that determines the result; part of the cache key
        (with `steps`, `batch_size`, the holdout and `validate_every`, which the loop adds);
    columns: the dataset columns (`Transitions` fields) the stage reads; only they are
        fingerprinted for the cache (None: every column);
    fits_next_states: a model of s' from (s, a) (a dynamics model): rows whose next state the data
        does not know (D4RL terminal rows in a file without `next_observations`) are left out;
    version: bumped when the stage's code changes its result, so older cached results are not reused."""

    name: str
    steps: int
    batch_size: int
    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict]]
    settings: dict
    result: Callable[[Any], Any] = lambda state: state
    holdout: float = 0.0
    max_holdout: int | None = None
    validate_every: int = 0
    validate: Callable[..., tuple[Any, Any, dict]] | None = None
    finish: Callable[..., tuple[Any, dict]] | None = None
    per_seed: bool = False
    columns: tuple[str, ...] | None = None
    fits_next_states: bool = False
    version: int = 1


def check_settings(algo) -> None:
    """Reject settings that cannot train, by what each field is: layer widths (`*hidden_dims`) and
    counts (integers: batch sizes, numbers of critics and samples, delays) >= 1, step counts, seeds
    and lengths (`*_steps`, `*_seed`, `*_length`) >= 0, learning rates (`*_lr`) > 0, `discount` in
    [0, 1], `tau` in (0, 1], `expectile` in (0, 1), dropout rates (`*_dropout`) in [0, 1)."""
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
    if name.endswith(("_steps", "_seed", "_length")):
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
    # Offline gradient steps when the run does not set `steps` (None: the dataset family's protocol);
    # for algorithms whose protocol fixes them (Uni-O4's 10 000 BPPO updates, FamO2O-CQL's 2M).
    default_steps: int | None = None
    normalize_states: bool = False  # standardize states with dataset mean / (std + 1e-3)
    reward: RewardConfig = field(default_factory=RewardConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def __post_init__(self):
        """Subclasses that check more call this first."""
        check_settings(self)

    # ---- what every algorithm has ----------------------------------------------------------------

    def init(self, key: jax.Array, spec: Spec, ctx: Context) -> Any:
        """The initial state of one seed; `ctx.stages` holds the trained stages' results."""
        raise NotImplementedError

    def update(self, state, batch, key: jax.Array, ctx: Context) -> tuple[Any, dict[str, jax.Array]]:
        """One gradient step on `batch` (a Dataset of `batch_size` transitions)."""
        raise NotImplementedError

    def act(self, state, observations: jax.Array, key: jax.Array, deterministic: bool = True):
        """Actions in [-1, 1] for preprocessed observations; `deterministic=False` explores."""
        raise NotImplementedError

    def stages(self, spec: Spec) -> list[Stage]:
        """Models to train on the dataset before the agent (see Stage); none for most algorithms."""
        return []

    def early_stop(self, metrics: dict) -> tuple[np.ndarray, str]:
        """Checked on the host after every compiled chunk, offline and online, on the chunk's
        metrics ((steps, seeds) arrays): a boolean per seed that must stop training now, and why.
        Stopped seeds keep the parameters they had then and are reported as stopped."""
        seeds = np.shape(next(iter(metrics.values())))[1] if metrics else 0
        return np.zeros(seeds, bool), ""

    def derive(self, data) -> Derived:
        """What is computed once on the host from the preprocessed dataset `data` (an
        `envs.Dataset`; also each finished online episode, for its returns-to-go): host-side helpers
        shared through `ctx.host` (PRDC's KD-tree) and each transition's return-to-go (Cal-QL);
        nothing for most algorithms."""
        return Derived()

    # ---- optional components (algorithms/core/components.py) -------------------------------------

    def driver(self) -> OffPolicy | OnPolicy:
        """How the online phase collects and trains: as `self.online` says (replay by default)."""
        return self.online.driver()

    def model_data(self) -> ModelData | None:
        """A per-seed buffer of model rollouts offline (MOPO); None for most algorithms."""
        return None

    def candidates(self) -> Candidates | None:
        """Several policies per seed, one chosen after each offline evaluation (Uni-O4); None."""
        return None

    def hand_over(self) -> Handover | None:
        """Another learner for the online phase (Uni-O4 hands over to PPO); None: this one."""
        return None
