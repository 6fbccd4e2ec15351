"""A run restored from its folder: its configuration, its dataset's preprocessing and the algorithm
states of one kept checkpoint (no replay buffers, no RNG keys), for `experiments.evaluate`,
`experiments.export` and `offrl.load_policy`.

    restored = restore("runs/2026-12-05_iql_hopper-medium", checkpoint=None)  # the newest readable
    act = restored.acting_function(training=0)   # raw observations (n, obs_dim) -> env actions

A run folder is what `experiments.train` wrote: `.hydra/config.yaml` (the composed settings) and
`checkpoints/` (orbax, one folder per kept checkpoint, named by its index: the gradient step plus
the environment step). The preprocessing (state normalization) is fitted on the dataset again, as
training did, so the dataset must be where the run found it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("restore")

RUN_CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINTS = "checkpoints"


class RunError(ValueError):
    """The folder, checkpoint or settings asked for cannot be restored; the message names the fix."""


@dataclasses.dataclass
class Restored:
    run_dir: Path
    cfg: DictConfig
    algo: object  # the run's algorithm (algorithms.Algorithm); `acting_algorithm` acts in `phase`
    info: object  # envs.DatasetInfo
    preprocessor: object  # envs.Preprocessor
    observation_dim: int
    action_dim: int
    grid: object  # experiments.grid.Grid
    states: object  # every training's states, leading axis: trainings (the shared `step` aside)
    values: dict | None  # grid values per training, or None
    phase: str  # "offline" or "online"
    index: int  # the checkpoint's index (its folder's name)
    record: dict  # the checkpoint's record: phase, step, env_step, history

    @property
    def training_seeds(self) -> list[int]:
        return self.grid.training_seeds

    def select(self, seeds=None, point: dict | None = None) -> list[int]:
        """The indices of the trainings with one of `seeds` (None: any) at grid `point` (a subset of
        the grid's values; empty: every point)."""
        point = dict(point or {})
        unknown = sorted(set(point) - set(self.grid.fields))
        if unknown:
            raise RunError(f"point.{unknown[0]}: the run's grid has "
                           + (f"the fields {', '.join(self.grid.fields)}" if self.grid.fields
                              else "no fields (it trained one setting)") + "; drop or fix the override")
        chosen = [i for i, seed in enumerate(self.training_seeds)
                  if (seeds is None or seed in seeds)
                  and all(np.isclose(self.grid.point_of(i)[name], value) for name, value in point.items())]
        if not chosen:
            raise RunError(f"no training of {self.run_dir} has seed in {list(seeds or [])} at "
                           f"{point or 'any grid point'}: it trained seeds "
                           f"{sorted(set(self.training_seeds))}"
                           + (f" at {list(self.grid.points)}" if self.grid.fields else ""))
        return chosen

    def subset(self, trainings: list[int]):
        """(states, values) of the trainings at `trainings` (indices), in that order."""
        rows = jnp.asarray(trainings)
        states = jax.tree.map(lambda x: x[rows], self.states.replace(step=None)).replace(
            step=self.states.step)
        values = None if self.values is None else {k: v[rows] for k, v in self.values.items()}
        return states, values

    def acting_algorithm(self):
        """The algorithm that acts in the checkpoint's phase: online, the learner the run handed
        over to (Uni-O4: its PPO), else the run's own."""
        from algorithms.core.components import learner

        return learner(self.algo, self.phase)

    def source(self, training: int) -> dict:
        """Where training `training`'s policy comes from: run, checkpoint, phase, steps, seed, grid point."""
        return {"run": str(self.run_dir), "checkpoint": self.index, "phase": self.phase,
                "step": self.record["step"], "env_step": self.record["env_step"],
                "seed": self.training_seeds[training],
                "point": self.grid.point_of(training) if self.grid.fields else None}

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation environment's own action bounds; [-1, 1] when it has none to ask."""
        import envs

        bounds = envs.action_bounds(self.info)
        if bounds is None:
            ones = np.ones(self.action_dim)
            return -ones, ones
        return bounds

    def acting_function(self, training: int = 0, deterministic: bool = True):
        """The pure policy of one training: raw observations (n, obs_dim) float32 [, key] -> actions
        (n, act_dim) in the environment's own bounds, with the state normalization, the network
        parameters and the action rescaling as constants (what `jax.export` bakes in). Acts as the
        run's evaluation does (`policies.policy_program`: normalize, `algo.act`), then maps [-1, 1]
        to [low, high] as the evaluation environment's `RescaleAction` does."""
        from algorithms.core.components import learner
        from experiments.seed_axis import with_values

        states, values = self.subset([training])
        state = jax.tree.map(lambda x: x[0], states.replace(step=None)).replace(step=states.step)
        # the grid's values are the run's algorithm's fields: set them before the hand-over builds
        # the learner from them, in the order of `policies.policy_program`
        algo = learner(with_values(self.algo, None if values is None else {
            k: v[0] for k, v in values.items()}), self.phase)
        mean = jnp.asarray(self.preprocessor.normalizer.mean, jnp.float32)
        std = jnp.asarray(self.preprocessor.normalizer.std, jnp.float32)
        low, high = (jnp.asarray(bound, jnp.float32) for bound in self.action_bounds())

        def act(observations, key=None):
            key = jax.random.key(0) if key is None else key
            actions = algo.act(state, (observations - mean) / std, key, deterministic)
            return low + (jnp.clip(actions, -1.0, 1.0) + 1.0) * 0.5 * (high - low)

        return act


def read_config(run_dir: Path) -> DictConfig:
    """The run's composed settings; RunError when `run_dir` is not a run folder."""
    from experiments.config import register_resolvers

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a folder: give the folder a run wrote "
                       "(runs/<date>_<algorithm>_<dataset>, or its hydra.run.dir)")
    if not (run_dir / RUN_CONFIG).is_file() or not (run_dir / CHECKPOINTS).is_dir():
        missing = RUN_CONFIG if not (run_dir / RUN_CONFIG).is_file() else CHECKPOINTS + "/"
        raise RunError(f"{run_dir} is not a run folder (no {missing} in it): give the folder "
                       "experiments.train wrote (runs/<date>_<algorithm>_<dataset>); a sweep's runs are "
                       "its job folders (multirun/<date>/<job>)")
    register_resolvers()
    return OmegaConf.load(run_dir / RUN_CONFIG)


def make_run_algorithm(cfg: DictConfig):
    import algorithms
    from experiments.config import make_algorithm

    name = cfg.algo.name
    if name not in algorithms.available():
        raise RunError(f"the run was trained with algo={name}, which this version of the code does not "
                       f"have (it has {', '.join(algorithms.available())}); evaluate it with the version "
                       "that trained it")
    return make_algorithm(cfg.algo)


def restore(run_dir, checkpoint: int | None = None) -> Restored:
    """The run in `run_dir` at its kept checkpoint `checkpoint` (None: the newest). A checkpoint that
    cannot be read is named in one warning line and the kept one before it is restored instead
    (as training's resume does); nothing in the folder is changed."""
    from experiments.checkpoints import Checkpointer, restore_newest_readable

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    algo = make_run_algorithm(cfg)
    kept = sorted(int(path.name) for path in (run_dir / CHECKPOINTS).iterdir()
                  if path.is_dir() and path.name.isdigit())
    if not kept:
        raise RunError(f"{run_dir / CHECKPOINTS} holds no checkpoint (the run stopped before its first "
                       "one); train it further (resume=true) or pick another run")
    if checkpoint is not None and checkpoint not in kept:
        raise RunError(f"checkpoint={checkpoint} was not kept in {run_dir / CHECKPOINTS}: the kept ones are "
                       f"{', '.join(map(str, kept))} (training keeps the last checkpoint.keep="
                       f"{OmegaConf.select(cfg, 'checkpoint.keep')}); pick one of them or drop the option")
    chosen = kept[-1] if checkpoint is None else checkpoint
    assembly, templates = _rebuild(cfg)
    checkpointer = Checkpointer(run_dir / CHECKPOINTS, keep=len(kept) + 1)

    def read(index):
        record = checkpointer.record(index)
        if record["phase"] not in templates:
            raise RunError(f"checkpoint {index} is of the {record['phase']} phase, which the run's "
                           "settings (.hydra/config.yaml) do not have")
        trees = checkpointer.restore(index, {"states": templates[record["phase"]]["states"]})
        return index, record, trees["states"]

    index, record, states = restore_newest_readable([i for i in kept if i <= chosen], read,
                                                    run_dir / CHECKPOINTS)
    return Restored(run_dir, cfg, algo, assembly.info, assembly.prepared.preprocessor,
                    assembly.spec.observation_dim, assembly.spec.action_dim, assembly.grid, states,
                    assembly.values, record["phase"], index, record)


def _rebuild(cfg: DictConfig):
    """The run rebuilt from its settings by the Assembly (experiments/assembly.py) with the stages'
    results as shapes only: the same data, preprocessing, grid and checkpoint templates as training
    built, nothing trained or initialised. Returns (assembly, templates {phase: trees})."""
    from hydra.core.hydra_config import HydraConfig

    from experiments.assembly import Assembly

    # Inside `experiments.evaluate` (a Hydra app) the settings check would read that command's
    # overrides (eval.workers=...) as if they had trained the run: check the run's file alone.
    hydra_config, HydraConfig.instance().cfg = HydraConfig.instance().cfg, None
    try:
        assembly = Assembly.build(cfg, stages="abstract")
    finally:
        HydraConfig.instance().cfg = hydra_config
    return assembly, assembly.templates()
