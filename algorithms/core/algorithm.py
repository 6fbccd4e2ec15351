"""The contract every algorithm follows: what the training loop calls, and nothing more.

    stages()                                   models trained once on the dataset before the agent
    init(key, spec, ctx) -> state              one seed's agent
    update(state, batch, key, ctx) -> (state, metrics)
    begin_online(state, spec, ctx) -> state    once, when the online phase starts from the offline one
    act(state, observations, key, deterministic) -> actions in [-1, 1]
    sampling(phase) -> Sampling                where each batch comes from
    init_buffer(spec, ctx) / fill_buffer(...)  a per-seed buffer the algorithm fills itself (MOPO)
    buffer_metrics(buffer) -> metrics         logged with each offline update (MOPO's rollouts)
    early_stop(metrics) -> (stop per seed, reason)
    members() / member_state(state, i) / choose(state, scores)   several candidate policies per seed

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
import jax.numpy as jnp
import numpy as np


class Spec(NamedTuple):
    """What an algorithm needs to know about the problem when it builds its networks."""

    observation_dim: int
    action_dim: int  # actions always lie in [-1, 1]; environments are rescaled to match
    total_steps: int  # offline gradient steps, for learning-rate schedules


@dataclass
class RewardConfig:
    """r <- scale * r' + shift, with r' = returns_span * r / (max - min trajectory return) when
    `returns_span` is set, else r' = r. Papers differ per dataset family; each algorithm's config
    states its own convention. Online transitions get the same transform, with the dataset's
    return spread (see envs.Preprocessor)."""

    returns_span: float | None = None
    scale: float = 1.0
    shift: float = 0.0


REPLAYS = ("prefilled", "mixed", "on_policy")


@dataclass
class OnlineConfig:
    """How the algorithm fine-tunes online after its offline steps (run with `online.steps=N`).

    replay: "prefilled" - one buffer holding the dataset and then every online transition, sampled
        uniformly (IQL's and CORL's fine-tuning); "mixed" - the dataset and the
        online transitions kept apart and each batch drawn with exactly `dataset_fraction` of its
        rows from the dataset (Cal-QL, RLPD); "on_policy" - no replay: every `block` environment
        steps per seed are handed whole, in time order, as the batch of one `update` call
        (`Sampling("rollout")`, shape (block, ...) inside update) and then discarded (PPO; Uni-O4's
        online phase). A rollout cut by a checkpoint is kept in the checkpoint and completed on
        resume; the steps after the last full block are never trained on.
    buffer_size: transitions the prefilled buffer holds, dataset included (None: the dataset plus
        every online step, so nothing is evicted). Set, it is the references' ring (CORL, IQL, SPOT,
        d3rlpy: a buffer loaded with the dataset, then the online rows): once full, each online row
        evicts the oldest row held, the dataset's first rows first, then the oldest online rows.
        In "mixed", the online buffer's size (None: every online step; the dataset is kept whole).
        Smaller than the dataset with "prefilled" is refused.
    updates_per_step: the update-to-data ratio (not used by "on_policy").
    block: environment steps collected between compiled update calls (then block * updates_per_step
        updates run at once; "on_policy": the rollout length, one update per block). 1 is the
        references' "one step, one update" order; larger blocks dispatch less often and are faster,
        with slightly staler data.
    """

    replay: str = "prefilled"
    dataset_fraction: float = 0.5
    buffer_size: int | None = None
    updates_per_step: int = 1
    block: int = 1

    def __post_init__(self):
        problems = [(self.replay in REPLAYS, "replay", f"one of {', '.join(REPLAYS)}"),
                     (0.0 <= self.dataset_fraction <= 1.0, "dataset_fraction", "in [0, 1]"),
                     (self.buffer_size is None or self.buffer_size >= 1, "buffer_size", "null or >= 1"),
                     (self.updates_per_step >= 0, "updates_per_step", "an integer >= 0"),
                     (self.block >= 1, "block", "an integer >= 1")]
        for fine, name, requirement in problems:
            if not fine:
                raise SettingsError(f"algo.online.{name} must be {requirement} (got "
                                    f"{getattr(self, name)!r}); fix the override algo.online.{name}=...")


class Sampling(NamedTuple):
    """Where the rows of a batch come from.

    source: "dataset" (the shared device dataset), "buffer" (the seed's own buffer), "union" (the
        dataset and the buffer as one pool, uniformly: a buffer pre-filled with the dataset, without
        copying it into every seed's buffer), "mixed" (exactly round(batch * dataset_fraction)
        rows from the dataset, the rest from the buffer) or "rollout" (the seed's whole buffer, in
        the order it was filled: the on-policy rollout).
    pool_size: "union" only: the rows the pool holds, dataset included; once the dataset and the
        buffer's rows exceed it, the dataset's first rows leave the pool, oldest first (the
        references' ring; the buffer itself holds at most `pool_size` rows). None: nothing evicted."""

    source: str = "dataset"
    dataset_fraction: float = 1.0
    pool_size: int | None = None


@flax.struct.dataclass
class Context:
    """Shared by every seed's `init` and `update`, read-only.

    data: the preprocessed dataset on the device; stages: {stage name: frozen result};
    phase: "offline" or "online"; phase_start: the gradient step at which this phase began;
    host: host-side helpers that are not arrays (PRDC's KD-tree), keyed by name;
    per_seed: the names of the `stages` trained per seed (`Stage.per_seed`): their results carry a
        leading seed axis, which the loop maps with the seeds (`experiments.loop.context_axes`), so
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


class SettingsError(ValueError):
    """A hyperparameter no network or update can use; the message names it and the fix."""


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
    learns_offline: ClassVar[bool] = True  # False: online only, from its own rollouts (steps=0)
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

    def stages(self, spec: Spec) -> list[Stage]:
        """Models to train on the dataset before the agent (see Stage); none for most algorithms."""
        return []

    def host_helpers(self, data) -> dict:
        """Host-side objects built once from the (preprocessed, host) dataset and shared through
        `ctx.host` (PRDC's KD-tree); none for most algorithms."""
        return {}

    def returns_to_go(self, data) -> np.ndarray | None:
        """Each dataset transition's Monte-Carlo return-to-go (`envs.returns_to_go`), computed once
        on the preprocessed dataset and carried in every batch (`batch.returns_to_go`) for
        algorithms that calibrate against it (Cal-QL); None (zeros) for most algorithms."""
        return None

    def online_returns_to_go(self) -> bool:
        """Whether online rows need their return-to-go too: the online loop then computes it with
        `returns_to_go` over each episode when it ends (experiments/online.py); until then a row
        carries -inf. False: online rows carry zeros."""
        return False

    def init(self, key: jax.Array, spec: Spec, ctx: Context) -> Any:
        """The initial state of one seed; `ctx.stages` holds the trained stages' results."""
        raise NotImplementedError

    def update(self, state, batch, key: jax.Array, ctx: Context) -> tuple[Any, dict[str, jax.Array]]:
        """One gradient step on `batch` (a Dataset of `batch_size` transitions)."""
        raise NotImplementedError

    def act(self, state, observations: jax.Array, key: jax.Array, deterministic: bool = True):
        """Actions in [-1, 1] for preprocessed observations; `deterministic=False` explores."""
        raise NotImplementedError

    def sampling(self, phase: str) -> Sampling:
        """Offline: the dataset. Online: as `self.online.replay` says."""
        if phase == "offline":
            return Sampling("dataset")
        if self.online.replay == "mixed":
            return Sampling("mixed", self.online.dataset_fraction)
        if self.online.replay == "on_policy":
            return Sampling("rollout")
        return Sampling("union", pool_size=self.online.buffer_size)

    def begin_online(self, state, spec: Spec, ctx: Context):
        """Called once per seed (vmapped) when the online phase starts from the offline state (not
        when an online checkpoint is resumed): the state to fine-tune from, which may be of another
        type (Uni-O4 builds its PPO state here). `ctx` is the online context."""
        return state

    def init_buffer(self, spec: Spec, ctx: Context):
        """A per-seed buffer for the offline phase, filled by `fill_buffer` (MOPO's model
        rollouts); None for most algorithms. Online, the loop gives every seed a replay buffer."""
        return None

    def fill_buffer(self, state, buffer, key: jax.Array, ctx: Context):
        """Called before each offline batch is drawn; returns the (possibly refreshed) buffer."""
        return buffer

    def buffer_metrics(self, buffer) -> dict[str, jax.Array]:
        """Metrics read from a seed's offline buffer after `fill_buffer`, logged with the update's
        (MOPO: its last refresh's rollout statistics); none for most algorithms."""
        return {}

    def members(self) -> int:
        """Candidate policies per seed that every offline evaluation scores (Uni-O4's ensemble);
        1 for most algorithms (then `member_state` and `choose` are never called)."""
        return 1

    def member_state(self, state, index):
        """`state` acting with member `index` (a traced integer) instead of its chosen one."""
        return state

    def choose(self, state, scores: jax.Array):
        """After each offline evaluation, per seed: `scores` (members,) are every member's real
        evaluation scores; returns (the state acting with the member the algorithm chooses, a dict
        of arrays to record, with "chosen" (the member) and optionally "estimates" (members,), the
        algorithm's own offline estimate of each member)."""
        return state, {"chosen": jnp.zeros((), jnp.int32)}

    def handover_without_evaluation(self) -> str | None:
        """With several members and evaluation off, `choose` never runs: the one warning line the
        run logs then (how the member handed over is chosen instead), or None for nothing to say."""
        return None

    def early_stop(self, metrics: dict) -> tuple[np.ndarray, str]:
        """Checked on the host after every compiled chunk, offline and online, on the chunk's
        metrics ((steps, seeds) arrays): a boolean per seed that must stop training now, and why.
        Stopped seeds keep the parameters they had then and are reported as stopped."""
        seeds = np.shape(next(iter(metrics.values())))[1] if metrics else 0
        return np.zeros(seeds, bool), ""
