"""Hyperparameters as a batch axis beside seeds: `grid.algo.<field>=[v1,v2,...]`.

    python -m experiments.train algo=td3_bc seeds=5 'grid.algo.alpha=[1.0,2.5,5.0,10.0]'  # 20 trainings

The grid is the cartesian product of the listed values; every (grid point, seed) pair is one
training, and all trainings run in the one compiled program exactly as seeds do (vmapped, sharded
over devices, point-major: point 0's seeds, then point 1's, ...). Each training keeps its seed's
keys, evaluation episodes and online environments, so it is the run `algo.<field>=<value> seed=<s>`
would make (to float rounding: XLA rounds a vmapped program slightly differently per batch size).

Inside the program, a training's update, init and policy see the algorithm with its grid values in
place of those fields, as traced scalars (`seed_axis.with_values`): the algorithm file is unchanged and
reads `self.alpha` as before. That works for a field that only enters arithmetic. A field is
refused, with one error line, when
  * it is not a float (integers are sizes, counts, delays and step numbers; booleans, strings,
    lists and nested settings shape the program or the data);
  * the algorithm reads it on the host, once for every training: in `stages()` (a pretrained model
    shared by all trainings), in where batches come from (`driver()`, `model_data()`: "sampling"),
    or in `derive()` (its returns-to-go or host-side helpers);
  * tracing the program with it as a traced value fails (it is used in Python control flow, as a
    shape, or captured by an optimiser schedule).
Those stay Hydra multirun sweeps (`-m algo.<field>=a,b,c`). Learning rates work: Adam keeps a
constant learning rate in its state (algorithms/core/training.py), not a scheduled one (IQL's
cosine actor learning rate). The early stop runs per grid point with that point's algorithm.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from algorithms import Algorithm, SettingsError, Spec
from experiments import loop, policies
from experiments.config import ConfigError

# What tracing raises when a traced value meets Python control flow, a shape, or leaves its trace.
TRACING_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError, jax.errors.UnexpectedTracerError, TypeError)


class GridError(ConfigError):
    """A grid the program cannot batch; the message names the field and the fix."""


def _sweep_instead(name: str) -> str:
    return f"sweep it with Hydra multirun instead: -m algo.{name}=a,b,c"


def _kind(annotation: str, value) -> str | None:
    """Why a field of this annotation and value cannot be traced, or None when it is a float."""
    if "float" in annotation and not isinstance(value, bool | str | tuple | list):
        return None
    if dataclasses.is_dataclass(value):
        return "a group of settings"
    if isinstance(value, bool) or annotation == "bool":
        return "a boolean (a switch in the program)"
    if isinstance(value, str) or "str" in annotation:
        return "a string (a choice in the program)"
    if isinstance(value, tuple | list):
        return "a list (e.g. layer widths)"
    return "an integer (a size, count, delay or number of steps)"


@dataclass(frozen=True)
class Grid:
    """The trainings of one run: every grid point with every seed (no grid: one empty point)."""

    seeds: tuple[int, ...]
    fields: tuple[str, ...] = ()
    points: tuple[dict, ...] = ({},)

    @property
    def trainings(self) -> int:
        return len(self.points) * len(self.seeds)

    @property
    def training_seeds(self) -> list[int]:
        """The seed of each training, point-major; what keys, evaluations and environments use."""
        return [seed for _ in self.points for seed in self.seeds]

    def point_of(self, training: int) -> dict:
        return self.points[training // len(self.seeds)]

    def values(self) -> dict | None:
        """{field: float32 array (trainings,)} for the compiled program; None without a grid."""
        if not self.fields:
            return None
        return {name: jnp.asarray([self.point_of(i)[name] for i in range(self.trainings)], jnp.float32)
                for name in self.fields}

    def columns(self) -> dict:
        """What metrics.jsonl lines carry beside their per-training lists: each training's seed
        and grid values, in the same order ({} without a grid)."""
        if not self.fields:
            return {}
        return {"seed": self.training_seeds,
                "grid": {name: [self.point_of(i)[name] for i in range(self.trainings)]
                         for name in self.fields}}

    def algorithms(self, algo: Algorithm) -> list[Algorithm]:
        """One checked algorithm per grid point (for host-side rules such as the early stop)."""
        return [dataclasses.replace(algo, **point) for point in self.points]

    def early_stop(self, algo: Algorithm):
        """The early-stop rule over all trainings: each grid point's algorithm on its columns."""
        if not self.fields:
            return algo.early_stop
        per_point, width = self.algorithms(algo), len(self.seeds)

        def rule(metrics: dict):
            flags, reasons = [], []
            for index, point_algo in enumerate(per_point):
                columns = {k: np.asarray(v)[:, index * width:(index + 1) * width] for k, v in metrics.items()}
                stop, reason = point_algo.early_stop(columns)
                flags.append(np.asarray(stop, bool))
                if np.any(stop):
                    reasons.append(f"at {describe(self.points[index])}: {reason}")
            return np.concatenate(flags), "; ".join(reasons)

        return rule


def describe(point: dict) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in point.items()) or "the configured values"


def make_grid(cfg, algo: Algorithm, seeds: list[int]) -> Grid:
    """The grid `cfg.grid.algo` asks for, its names, types and values checked (fails before any
    data is loaded); every grid point's settings pass the algorithm's own checks."""
    requested = {name: value for name, value in (OmegaConf.to_container(
        OmegaConf.select(cfg, "grid.algo") or {}, resolve=True)).items() if value is not None}
    fields = {item.name: item for item in dataclasses.fields(algo)}
    for name, values in requested.items():
        if name not in fields:
            raise GridError(f"grid.algo.{name}: {algo.name} has no hyperparameter '{name}'; its numeric "
                            f"ones are {', '.join(griddable_fields(algo))}")
        if (not isinstance(values, list) or not values
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values)):
            raise GridError(f"grid.algo.{name} must be a non-empty list of numbers, e.g. "
                            f"'grid.algo.{name}=[0.1,0.2]' (got {values!r})")
        kind = _kind(str(fields[name].type), getattr(algo, name))
        if kind:
            raise GridError(f"grid.algo.{name} cannot be a grid axis: it is {kind}, fixed when the "
                            f"program is built; {_sweep_instead(name)}")
    names = tuple(requested)
    points = tuple(dict(zip(names, (float(v) for v in combination), strict=True))
                   for combination in itertools.product(*requested.values()))
    grid = Grid(tuple(seeds), names, points) if names else Grid(tuple(seeds))
    for point in grid.points:
        try:
            dataclasses.replace(algo, **point)
        except SettingsError as error:
            raise GridError(f"grid point {describe(point)}: {error.args[0]}".replace(
                "fix the override algo.", "fix the list grid.algo.")) from None
    return grid


def griddable_fields(algo: Algorithm) -> list[str]:
    return [item.name for item in dataclasses.fields(algo)
            if _kind(str(item.type), getattr(algo, item.name)) is None]


def fields_read_on_host(algo: Algorithm, spec: Spec, raw) -> dict[str, str]:
    """{field: what} for the fields the algorithm reads on the host, once for every training:
    "stages" (`stages()`), "sampling" (`driver()` and `model_data()`: where batches come from), and
    in `derive()` (on the first rows of the dataset `raw`) "returns_to_go" or "host_helpers", after
    what it derived."""
    names = {item.name for item in dataclasses.fields(algo)}
    read: dict[str, str] = {}
    current = {"hook": ""}

    class Recorder(type(algo)):  # the same algorithm, noting every field it reads
        def __getattribute__(self, name):
            if name in names:
                read.setdefault(name, current["hook"])
            return object.__getattribute__(self, name)

    spy = copy.copy(algo)
    spy.__class__ = Recorder
    rows = type(raw)(*(np.asarray(column[:64]) for column in raw))
    current["hook"] = "stages"
    spy.stages(spec)
    current["hook"] = "sampling"
    spy.driver(), spy.model_data()
    current["hook"] = "derive"
    derived = spy.derive(rows)
    part = ("returns_to_go" if derived.returns_to_go is not None else "host_helpers" if derived.host
            else "derive")
    return {name: part if hook == "derive" else hook for name, hook in read.items()}


def check_host_fields(grid: Grid, algo: Algorithm, spec: Spec, raw) -> None:
    """Refuse grid fields that the algorithm uses once for every training (before the stages)."""
    read = fields_read_on_host(algo, spec, raw) if grid.fields else {}
    for name in grid.fields:
        if name in read:
            raise GridError(f"grid.algo.{name} cannot be a grid axis: {algo.name} reads it in "
                            f"{read[name]}(), once for every training; {_sweep_instead(name)}")


def check_traceable(asm) -> None:
    """Trace (without running) the programs of the run `asm` (an `experiments.assembly.Assembly`
    before its contexts are sharded): init, the update chunk of every phase and the policy, with
    the grid fields as traced values; refuse the first field that fails."""
    grid, algo = asm.grid, asm.algo
    if not grid.fields:
        return
    problem = _trace_problem(asm, grid.fields)
    if problem is None:
        return
    for name in grid.fields:
        alone = problem if len(grid.fields) == 1 else _trace_problem(asm, (name,))
        if alone is not None:
            raise GridError(f"grid.algo.{name} cannot be a grid axis: {algo.name} uses it where the "
                            f"compiled program needs a fixed number ({alone}); {_sweep_instead(name)}")
    raise GridError(f"grid.algo.{', '.join(grid.fields)} cannot be grid axes together ({problem}); "
                    "grid one of them and sweep the others with Hydra multirun")


def _trace_problem(asm, names) -> str | None:
    values = {name: jax.ShapeDtypeStruct((1,), jnp.float32) for name in names}
    one = asm.first_training(values)
    observations = jax.ShapeDtypeStruct((1, 1, one.spec.observation_dim), jnp.float32)
    try:
        # Separate traces, as the run's separate programs (the templates trace init and the
        # hand-over apart): a traced value that init hides in a static place (an optimiser
        # schedule) and the update then reads fails here too.
        for phase, trees in one.templates().items():
            states, keys = trees["states"], trees["keys"]
            jax.eval_shape(loop.make_train_chunk(one.algo, 1, phase), states, trees["buffers"], keys,
                           one.contexts[phase], None, values)
            # evaluation acts deterministically in both phases; online collection explores
            for deterministic in (True, False) if phase == "online" else (True,):
                program = policies.policy_program(one.algo, one.prepared.preprocessor, deterministic,
                                                  phase=phase)
                jax.eval_shape(program, states, observations, keys, 0, values)
    except TRACING_ERRORS as error:
        return str(error).strip().splitlines()[0]
    return None
