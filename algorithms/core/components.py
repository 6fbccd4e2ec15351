"""The optional parts of an algorithm: small dataclasses it declares, each with all its loop-side
code in one module of experiments/.

    driver()     -> OffPolicy | OnPolicy  the online phase's collection and updates (experiments/phases.py)
    model_data() -> ModelData | None      model rollouts beside the dataset (MOPO; experiments/loop.py)
    candidates() -> Candidates | None     policies per seed, one chosen (Uni-O4; experiments/members.py)
    hand_over()  -> Handover | None       another learner online (Uni-O4 -> PPO; components.learner)
    derive(data) -> Derived               computed on the host from the dataset (experiments/run_parts.py)

The defaults (`Algorithm`) are the off-policy driver of `algo.online` and None for the rest, so a
new algorithm declares nothing. The classes hold bound methods of the algorithm rather than copies
of its fields: the loop calls them on the algorithm with a training's grid values in place
(experiments/grid.py), so a field they read is traced exactly where the algorithm reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # type hints only: algorithm.py imports this module
    from algorithms.core.algorithm import Algorithm


class SettingsError(ValueError):
    """A hyperparameter no network or update can use; the message names it and the fix."""


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


REPLAYS = ("prefilled", "mixed", "on_policy")


@dataclass
class OnlineConfig:
    """The settings of the online phase's driver (`algo.online.*`; run with `online.steps=N`).

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

    def driver(self) -> OffPolicy | OnPolicy:
        """The driver these settings describe."""
        if self.replay == "on_policy":
            return OnPolicy(self.block)
        return OffPolicy(self.replay, self.dataset_fraction, self.buffer_size, self.updates_per_step,
                         self.block)


@dataclass(frozen=True)
class OffPolicy:
    """Online with replay: every `block` environment steps the new rows enter each seed's buffer
    and `block * updates_per_step` updates run, on batches drawn from the dataset and the buffer
    (`replay`: "prefilled" one pool, "mixed" at `dataset_fraction`; see OnlineConfig).
    returns_to_go: online rows get their episode's Monte-Carlo return-to-go when it ends (Cal-QL's
    online calibration; experiments/phases.py)."""

    replay: str = "prefilled"
    dataset_fraction: float = 0.5
    buffer_size: int | None = None
    updates_per_step: int = 1
    block: int = 1
    returns_to_go: bool = False
    learns_offline: bool = True  # an off-policy learner also trains on the dataset
    random_warmup: bool = True  # `online.start_steps` random actions are rows it can learn from
    rows_in_program: bool = True  # the new rows are appended inside the compiled update call

    def capacity(self, dataset_size: int, steps: int) -> int:
        """Rows of each seed's online buffer. "prefilled": the buffer holds the dataset (drawn from
        the shared device copy) and then online rows, `buffer_size` in all (None: nothing evicted;
        set: a ring that evicts the dataset's first rows, then the oldest online rows, so the online
        rows alone need at most `buffer_size` slots; `replay.draw`). "mixed": the online rows alone."""
        size = self.buffer_size
        if self.replay == "prefilled" and dataset_size:
            if size is None:
                return max(steps, 1)
            if size < dataset_size:
                raise SettingsError(
                    f"algo.online.buffer_size={size} cannot hold the dataset ({dataset_size} transitions) "
                    "that the pre-filled replay starts from; raise it (null: dataset + online.steps) or "
                    "use algo.online.replay=mixed.")
            return max(min(size, steps), 1)
        return max(size or steps, 1)

    def sampling(self) -> Sampling:
        if self.replay == "mixed":
            return Sampling("mixed", self.dataset_fraction)
        return Sampling("union", pool_size=self.buffer_size)

    def updates(self, rows: int, env_step: int, start_steps: int = 0) -> int:
        """Updates after collecting `rows` steps per seed up to `env_step` (none during the warm-up)."""
        return self.updates_per_step * rows if env_step >= start_steps else 0


@dataclass(frozen=True)
class OnPolicy:
    """Online without replay: the buffer is the rollout of `block` steps per seed; every time it is
    full (at environment steps that are multiples of `block`) the whole rollout, in time order, is
    the batch of one update, then it is overwritten. learns_offline=False: the learner trains on no
    dataset (PPO from scratch; `steps` must be 0). minibatch_size: the rollout's rows (block x
    `env.num_envs`) split into minibatches of this many (PPO's; checked where num_envs is known)."""

    block: int
    learns_offline: bool = True
    minibatch_size: int = 1
    returns_to_go = False
    random_warmup = False  # uniformly random actions are not the policy's: nothing to learn from
    rows_in_program = False  # rollouts of any length share one compiled update

    def capacity(self, dataset_size: int, steps: int) -> int:
        return self.block

    def sampling(self) -> Sampling:
        return Sampling("rollout")

    def updates(self, rows: int, env_step: int, start_steps: int = 0) -> int:
        return int(env_step % self.block == 0)


@dataclass(frozen=True)
class ModelData:
    """A per-seed buffer of model-generated transitions beside the dataset, offline (MOPO): offline
    batches take `real_ratio` of their rows from the dataset and the rest from the buffer.

    init(spec, ctx) -> one seed's empty buffer (checkpointed with the state);
    refresh(state, buffer, key, ctx) -> (buffer, metrics): inside the compiled step, before every
        offline batch is drawn; the metrics (scalars) are logged with the update's."""

    real_ratio: float
    init: Callable[..., Any]
    refresh: Callable[..., tuple[Any, dict]]

    def sampling(self) -> Sampling:
        return Sampling("mixed", self.real_ratio)


@dataclass(frozen=True)
class Candidates:
    """Several candidate policies per seed, scored by every offline evaluation; the algorithm
    chooses the one its seed acts with (Uni-O4's ensemble and AM-Q; experiments/members.py).

    count: candidates per seed;
    state_of(state, index) -> the state acting with candidate `index` (a traced integer);
    choose(state, scores (count,)) -> (the state acting with the chosen one, a record of arrays with
        "chosen" and optionally "estimates" (count,): the algorithm's own estimate of each);
    without_evaluation: the warning logged when evaluation is off and `choose` never runs (None:
        nothing to say)."""

    count: int
    state_of: Callable[[Any, Any], Any]
    choose: Callable[[Any, Any], tuple[Any, dict]]
    without_evaluation: str | None = None


@dataclass(frozen=True)
class Handover:
    """The online phase trains another learner (Uni-O4 hands over to PPO).

    learner: the algorithm whose `update`, `act` and `driver` the online phase runs;
    begin(state, spec, ctx) -> the learner's state, built once per seed from the offline state
        when the online phase starts (not when an online checkpoint is resumed); `ctx` is the online
        context."""

    learner: Algorithm
    begin: Callable[..., Any]


@dataclass(frozen=True)
class Derived:
    """What an algorithm computes once from the preprocessed host dataset (`derive`).

    host: host-side objects shared through `ctx.host` (PRDC's KD-tree);
    returns_to_go: each transition's Monte-Carlo return-to-go, carried in every batch
        (`batch.returns_to_go`; Cal-QL's calibration, Uni-O4's SARSA critic); None: zeros."""

    host: dict = field(default_factory=dict)
    returns_to_go: np.ndarray | None = None


def learner(algo: Algorithm, phase: str) -> Algorithm:
    """The algorithm that trains and acts in `phase`: online, the one it hands over to, if any."""
    handover = algo.hand_over() if phase == "online" else None
    return algo if handover is None else handover.learner
