"""One run, assembled once from its configuration: every check before any training, then the
algorithm, its grid, the prepared data, the stages' results, a context per phase, the seeds and
their keys. Training (experiments/train.py), the grid's trace probe, evaluation of a finished run,
behaviour training and the benchmarks all build their runs here.

    asm = Assembly.build(cfg)                      # checks, loads, trains (or restores) the stages
    trees = asm.fresh()                            # {"states", "buffers", "keys"}, sharded over devices
    runner = asm.runner("offline")                 # loop.ChunkRunner of the phase
    act = asm.policy()(trees["states"])            # observations (seeds, n, obs_dim) -> actions

A finished run: `Assembly.build(its config, stages="abstract")` (the stages' results as shapes
only, nothing trained) and `Checkpointer(run/"checkpoints").restore(index, asm.templates()[phase])`.
A run that starts online, with no configuration (behaviour training's SAC, PPO from scratch):
`Assembly.from_environment(algo, make_env, seeds, steps, capacity)`, then `fresh("online")`.
The parts themselves are made in experiments/run_parts.py, experiments/seed_axis.py and loop.py.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import jax
from omegaconf import DictConfig, OmegaConf

import envs
from algorithms import Algorithm, SettingsError, Spec
from algorithms.core.algorithm import Context, Sampling
from algorithms.core.components import learner
from experiments import (
    compiled_episodes,
    compiled_evaluation,
    loop,
    online,
    online_compiled,
    policies,
    run_parts,
    seed_axis,
)
from experiments import grid as grids
from experiments.config import ConfigError, make_algorithm
from experiments.data import load
from experiments.settings import check_run_settings
from experiments.stages import abstract_stages, per_seed_names, train_stages

log = logging.getLogger("train")

STAGES = ("train", "abstract")


@dataclass
class Assembly:
    cfg: DictConfig
    algo: Algorithm
    grid: grids.Grid
    spec: Spec
    info: envs.DatasetInfo
    raw: envs.Dataset
    prepared: run_parts.PreparedData
    seeds: list[int]  # one per training: every grid point's seeds, point-major
    values: dict | None  # the trainings' grid values (None: no grid)
    contexts: dict[str, Context]  # {"offline": ctx, "online": ctx}, sharded as the seeds
    keys: tuple[jax.Array, jax.Array]  # (init keys, training keys), one per training
    online_steps: int
    capacity: int  # rows of each seed's online buffer (0 without an online phase)
    stage_records: list
    make_env: Callable  # () -> the evaluation and online environment (the dataset's)
    watchdog_seconds: float = 0.0  # a compiled chunk running longer stops the process (0: off)

    @classmethod
    def build(cls, cfg: DictConfig, stages: str = "train", progress: Callable | None = None) -> Assembly:
        """Check every setting, load and prepare the data, and obtain the stages' results: trained
        or read from the cache (`stages="train"`; `progress(name, step, means, kind)` sees their
        lines), or their shapes only (`stages="abstract"`: enough for checkpoint templates and
        policies of a restored run; the grid's traceability is then not checked again). Raises
        ConfigError, SettingsError or envs.DatasetError with the one-line message."""
        if stages not in STAGES:
            raise ValueError(f"stages must be one of {', '.join(STAGES)} (got {stages!r})")
        check_run_settings(cfg)
        algo = make_algorithm(cfg.algo)
        if not algo.driver().learns_offline and cfg.steps:
            raise SettingsError(f"algo={algo.name} learns online only, from its own rollouts (got steps="
                                f"{cfg.steps} offline steps); set steps=0 online.steps=N")
        grid = grids.make_grid(cfg, algo, list(range(cfg.seed, cfg.seed + cfg.seeds)))
        raw, info = load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path, cfg.dataset.download)
        if OmegaConf.select(cfg, "dataset.last_rows") is not None:  # e.g. MOPO's authors' 1M-row pool
            raw = envs.last_rows(raw, int(cfg.dataset.last_rows))
        online_steps = int(cfg.online.steps)
        evaluating = cfg.eval.every > 0 and cfg.eval.episodes > 0
        candidates = algo.candidates()
        if not evaluating and candidates is not None and candidates.count > 1 and (
                candidates.without_evaluation):  # the choice falls back on the algorithm's own estimate
            log.warning(candidates.without_evaluation)
        if evaluating or online_steps:  # fail now, not after hours of training, if the env does not fit
            envs.check_observation_dim(info, raw.observation_dim)  # (actions: checked by load)
            compiled_evaluation.check(cfg, info)  # eval.backend=mjx: the dataset has a JAX environment
        online.check_num_envs(num_envs(cfg), learner(algo, "online").driver(), online_steps)
        prepared = run_parts.prepare(algo, raw)
        spec = Spec(raw.observation_dim, raw.action_dim, int(cfg.steps), num_envs(cfg))
        grids.check_host_fields(grid, algo, spec, raw)
        seeds = grid.training_seeds
        capacity = 0
        if online_steps:  # before any training: a buffer too small for the dataset is refused now
            capacity = run_parts.buffer_capacity(algo, prepared.data.size, online_steps,
                                                 int(cfg.online.start_steps))
            if OmegaConf.select(cfg, "env.backend", default="host") == "mjx":
                online_compiled.check(algo, online_schedule(cfg), int(cfg.env.num_envs))
                compiled_env(info)  # the dataset's compiled environment exists (built again when used)
            else:
                online.check_environments(lambda: envs.make_env(info), online_schedule(cfg))
        results, records = cls._stage_results(cfg, algo, spec, prepared, info, raw, seeds, stages, progress)
        per_seed = per_seed_names(algo, spec)
        offline = run_parts.make_context(algo, prepared, results, per_seed=per_seed)
        contexts = {"offline": offline,
                    "online": run_parts.make_context(algo, prepared, results, "online", int(cfg.steps),
                                                     host=dict(offline.host), per_seed=per_seed)}
        asm = cls(cfg, algo, grid, spec, info, raw, prepared, seeds, grid.values(), contexts,
                  seed_axis.seed_keys(seeds), online_steps, capacity, records,
                  lambda: envs.make_env(info), float(cfg.watchdog_seconds))
        if stages == "train":
            grids.check_traceable(asm)
            asm.contexts = {phase: seed_axis.shard_context(ctx) for phase, ctx in contexts.items()}
        return asm

    @classmethod
    def from_environment(cls, algo: Algorithm, make_env: Callable, seeds: list[int], steps: int,
                         capacity: int, prepared: run_parts.PreparedData | None = None,
                         num_envs: int = 1) -> Assembly:
        """A run that starts online, from new agents (`fresh("online")`), with no offline phase and
        no configuration: behaviour training's SAC, PPO from scratch. `steps`: the algorithm's
        `spec.steps`; `capacity`: rows of each seed's online buffer; `prepared`: a dataset the online
        learner also draws from (None: none, so an off-policy learner samples its own buffer only
        and observations are not preprocessed); `num_envs`: environments per seed (on-policy)."""
        spec = online.environment_spec(make_env, steps)._replace(num_envs=num_envs)
        if prepared is None:
            prepared = run_parts.PreparedData(None, envs.Preprocessor.identity(spec.observation_dim))
        seeds = list(seeds)
        contexts = {"online": run_parts.make_context(algo, prepared, phase="online")}
        return cls(None, algo, grids.Grid(tuple(seeds)), spec, None, None, prepared, seeds, None,
                   contexts, seed_axis.seed_keys(seeds), steps, capacity, [], make_env)

    @staticmethod
    def _stage_results(cfg, algo, spec, prepared, info, raw, seeds, mode, progress):
        unknown_next = None if info.next_at_terminals else raw.terminals > 0
        if mode == "abstract":
            return abstract_stages(algo, spec, prepared.data, seeds, unknown_next), []
        return train_stages(
            algo, spec, prepared.data, cache_root=OmegaConf.select(cfg, "pretrain.cache_dir"),
            dataset_key=(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path),
            log_every=int(cfg.log_every), seeds=seeds, progress=progress,
            paths=OmegaConf.to_container(cfg.stage_paths) if "stage_paths" in cfg else None,
            unknown_next=unknown_next)

    # ---- what a run is made of --------------------------------------------------------------------

    def fresh(self, phase: str = "offline") -> dict:
        """New trees of `phase`: {"states", "buffers", "keys"}, sharded over the devices. Online:
        the algorithm's fresh states handed to the online learner (`begin`), empty replay buffers."""
        init_keys, train_keys = self.keys
        start = self.contexts.get("offline", self.contexts["online"])  # (`from_environment`: online)
        states = run_parts.init_states(self.algo, self.spec, start, init_keys, values=self.values)
        buffers = loop.init_buffers(self.algo, self.spec, start, len(self.seeds))
        trees = {"states": states, "buffers": buffers, "keys": train_keys}
        return self.shard(trees) if phase == "offline" else self.begin_online(trees)  # (sharded there)

    def begin_online(self, trees: dict) -> dict:
        """The online phase's trees from the offline phase's: the learner's states
        (`run_parts.begin`), fresh replay buffers, the same keys."""
        states = run_parts.begin(self.algo, self.spec, self.contexts["online"], trees["states"], self.values)
        return self.shard({"states": states, "keys": trees["keys"],
                           "buffers": seed_axis.replay_buffers(self.capacity, self.spec, len(self.seeds))})

    def shard(self, trees: dict) -> dict:
        """`trees` (and the grid values, which go with the seeds) spread over the devices."""
        states, buffers, self.values, keys = seed_axis.shard_seeds(trees["states"], trees["buffers"],
                                                                   self.values, trees["keys"])
        return {**trees, "states": states, "buffers": buffers, "keys": keys}

    def templates(self) -> dict[str, dict]:
        """{phase: trees as shapes} to restore a checkpoint of that phase into (`Checkpointer`); the
        grid's trace probe traces the programs on them (`grid.check_traceable`)."""
        init_keys, train_keys = self.keys
        start = self.contexts.get("offline", self.contexts["online"])
        trainings = len(self.seeds)
        # the grid values go in as arguments: the trace probe's are shapes, traced as the run's are
        states = jax.eval_shape(lambda ctx, values: run_parts.init_states(
            self.algo, self.spec, ctx, init_keys, values=values), start, self.values)
        out = {}
        if "offline" in self.contexts:
            out["offline"] = {"states": states, "keys": train_keys, "buffers": jax.eval_shape(
                lambda ctx: loop.init_buffers(self.algo, self.spec, ctx, trainings), start)}
        if self.online_steps:
            out["online"] = {"keys": train_keys,
                             "states": jax.eval_shape(lambda s, ctx, values: run_parts.begin(
                                 self.algo, self.spec, ctx, s, values), states, self.contexts["online"],
                                 self.values),
                             "buffers": jax.eval_shape(lambda: seed_axis.replay_buffers(
                                 self.capacity, self.spec, trainings))}
            if self.backend == "mjx":  # the running episodes of the compiled environments
                out["online"]["environments"] = compiled_episodes.stored(jax.eval_shape(
                    lambda: compiled_episodes.fresh_episodes(
                        self.jax_env, self.seeds, int(self.cfg.env.num_envs),
                        record_steps=compiled_episodes.record_steps(self.algo, self.jax_env))))
        return out

    def first_training(self, values: dict | None) -> Assembly:
        """This run narrowed to its first training, with `values` as its grid values (the grid's
        trace probe: shapes only)."""
        return dataclasses.replace(
            self, seeds=self.seeds[:1], values=values, keys=tuple(keys[:1] for keys in self.keys),
            contexts={phase: seed_axis.first_seeds(ctx, 1) for phase, ctx in self.contexts.items()})

    def runner(self, phase: str, stopped: dict | None = None, after_chunk=None) -> loop.ChunkRunner:
        """The phase's `loop.ChunkRunner` (the grid's per-point early stop, the run's watchdog)."""
        sampling = None  # as the algorithm says
        if self.prepared.data is None:  # no dataset: an off-policy learner samples its own buffer
            drawn = loop.batch_sampling(self.algo, phase)
            sampling = drawn if drawn.source == "rollout" else Sampling("buffer")
        return loop.ChunkRunner(self.algo, phase, self.watchdog_seconds, stopped, sampling=sampling,
                                values=self.values, early_stop=self.grid.early_stop(self.algo),
                                after_chunk=after_chunk)

    def policy(self, phase: str = "offline", deterministic: bool = True, members: int = 1):
        """`policies.make_policy` of this run: bind(states, keys=None) -> act(raw observations);
        online, the learner the algorithm hands over to acts; `members` > 1: every candidate."""
        return policies.make_policy(self.algo, self.prepared.preprocessor, deterministic, self.values,
                                    members=members, phase=phase)

    def online_schedule(self) -> online.OnlineSchedule:
        return online_schedule(self.cfg)

    @property
    def backend(self) -> str:
        """Where the online phase's environments run: "host" (gymnasium) or "mjx" (compiled)."""
        if self.cfg is None:  # a run built from an environment (`from_environment`): gymnasium's
            return "host"
        return OmegaConf.select(self.cfg, "env.backend", default="host")

    @cached_property
    def jax_env(self):
        """The dataset's compiled environment (`envs.mjx.make_jax_env`; env.backend=mjx), built once;
        ConfigError when it has none."""
        return compiled_env(self.info)


def compiled_env(info: envs.DatasetInfo):
    from envs.mjx import make_jax_env

    try:
        return make_jax_env(info)
    except envs.DatasetError as error:
        raise ConfigError(str(error)) from None


def online_schedule(cfg: DictConfig) -> online.OnlineSchedule:
    """The online phase's schedule in whole steps of the `env.num_envs` environments of a seed."""
    schedule = online.OnlineSchedule(int(cfg.online.steps), int(cfg.online.eval_every),
                                     int(cfg.checkpoint.every and cfg.online.checkpoint_every),
                                     int(cfg.online.log_every), int(cfg.online.start_steps))
    return schedule.in_steps_of(num_envs(cfg))


def num_envs(cfg: DictConfig) -> int:
    """`env.num_envs`: online environments per seed (1 in a configuration written before the key)."""
    return OmegaConf.select(cfg, "env.num_envs", default=1)

