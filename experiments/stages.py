"""Training an algorithm's stages (models fit once on the dataset before the agent, shared by every
seed): compiled chunks, an optional holdout with validation and early stopping, a finish step, and
a cache on disk keyed by the stage's settings and a fingerprint of the data, so that every later
run with the same data and settings (any algorithm, any seed count) reuses the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Stage
from algorithms.core.replay import sample_batch
from experiments.config import ConfigError
from experiments.loop import TrainingDiverged, chunk_schedule
from experiments.progress import Progress

log = logging.getLogger("stages")


@dataclass
class StageRecord:
    """What a run reports about one stage."""

    stage: str
    steps: int
    cache: str | None
    reused: bool
    seconds: float
    stopped_early_at: int | None = None
    finish: dict = field(default_factory=dict)


def make_stage_chunk(stage: Stage, length: int):
    """A jitted function running `length` steps of a stage (one model, not vmapped):
    (state, data, key) -> (state, key, metrics) with metrics of shape (length,)."""

    def chunk(state, data, key):
        def body(carry, _):
            state, key = carry
            key, sample_key, update_key = jax.random.split(key, 3)
            state, metrics = stage.update(state, sample_batch(data, sample_key, stage.batch_size),
                                          update_key)
            return (state, key), metrics

        (state, key), metrics = jax.lax.scan(body, (state, key), None, length=length)
        return state, key, metrics

    return jax.jit(chunk, donate_argnums=(0,))


def split_holdout(stage: Stage, data):
    """(training rows, holdout rows or None): a fixed random `holdout` fraction of the dataset,
    at most `max_holdout` rows, drawn with the stage's seed."""
    size = jax.tree.leaves(data)[0].shape[0]
    count = int(size * stage.holdout)
    if stage.max_holdout is not None:
        count = min(count, stage.max_holdout)
    if count == 0:
        return data, None
    order = np.random.default_rng(int(stage.settings.get("seed", 0))).permutation(size)
    take = lambda rows: jax.tree.map(lambda column: column[jnp.asarray(rows)], data)
    return take(order[count:]), take(order[:count])


def _means(metrics) -> dict:
    return {name: float(np.mean(np.asarray(values, np.float64)))
            for name, values in jax.device_get(metrics).items()}


def _to_json(tree) -> dict:
    return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


def train_stage(stage: Stage, spec: Spec, data, log_every: int, progress=None,
                progress_seconds: float = 30.0):
    """Train `stage` from its seed (`settings["seed"]`, default 0). `progress(step, metrics,
    kind)` after each chunk ("train") and validation ("validate"). A bar and a log line at most
    every `progress_seconds` show the step, the latest losses (holdout ones included) and the time
    left (an upper bound for a stage that stops early). Returns (result, record)."""
    tic = time.perf_counter()
    train, holdout = split_holdout(stage, data)
    key = jax.random.key(int(stage.settings.get("seed", 0)))
    init_key, key = jax.random.split(key)
    state = jax.jit(stage.init, static_argnums=1)(init_key, spec, train)
    validate = jax.jit(stage.validate) if stage.validate is not None else None
    validate_every = stage.validate_every if validate is not None else 0
    chunks, step, stopped_at = {}, 0, None
    shown = Progress(f"stage {stage.name}", stage.steps, seconds=progress_seconds,
                     bounded=validate is not None, logger=log)
    for stop in chunk_schedule(0, stage.steps, log_every, validate_every):
        length = stop - step
        if length not in chunks:
            chunks[length] = make_stage_chunk(stage, length)
        state, key, metrics = chunks[length](state, train, key)
        step = stop
        means = _means(metrics)
        if not all(np.isfinite(list(means.values()))):
            raise TrainingDiverged(f"pretraining stage '{stage.name}' diverged before step {step}: "
                                   f"{means}. Lower its learning rate or check the data.")
        if progress is not None:
            progress(step, means, "train")
        checks = {}
        if validate_every and step % validate_every == 0:
            state, finished, checks = validate(state, holdout)
            checks = _means(checks)
            if progress is not None:
                progress(step, checks, "validate")
            if bool(finished):
                stopped_at = step
        shown.update(step, **means, **checks)
        if stopped_at is not None:
            break
    shown.close(f"stopped early at step {stopped_at}" if stopped_at is not None else "")
    finish = {}
    if stage.finish is not None:
        state, finish = jax.jit(stage.finish)(state, holdout)
        finish = _to_json(finish)
    record = StageRecord(stage.name, step, None, False, time.perf_counter() - tic, stopped_at, finish)
    return stage.result(state), record


def cache_dir(root: str | None, algo: Algorithm, stage: Stage, data, dataset_key) -> Path | None:
    """<root>/<stage>/<dataset>-<hash>: the hash covers the stage's settings, the dataset's identity
    and a fingerprint of the data it trains on (sizes and sums). Not the algorithm: a stage with
    the same settings on the same data is the same model whichever algorithm asked for it."""
    if not root:
        return None
    data = jax.device_get(data)
    fingerprint = {name: [list(np.shape(value)), float(np.asarray(value, np.float64).sum())]
                   for name, value in zip(data._fields, data, strict=True)}
    identity = {"stage": stage.name, "settings": stage.settings, "dataset": list(dataset_key),
                "data": fingerprint}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{str(dataset_key[1]).replace('/', '-')}-{digest[:16]}"
    return Path(str(root)).expanduser() / stage.name / name


def abstract_result(stage: Stage, spec: Spec, data):
    """The shapes of `stage.result(...)`, to restore a cached result into."""
    _, holdout = split_holdout(stage, data)

    def build(key):
        state = stage.init(key, spec, data)
        if stage.finish is not None:
            state, _ = stage.finish(state, holdout)
        return stage.result(state)

    return jax.eval_shape(build, jax.random.key(0))


def restore_result(path: Path, template, name: str, spec: Spec, source: str):
    """A saved stage result, restored into `template`'s structure; a folder that is corrupt or holds
    arrays of other shapes (another problem's sizes or settings) is a ConfigError, checked on the
    saved metadata before any array is read."""
    import orbax.checkpoint as ocp

    def refuse(reason: str):
        return ConfigError(f"{source} does not hold a {name} for this problem ({spec.observation_dim} "
                           f"observation and {spec.action_dim} action values, these settings): {reason}. "
                           f"Point it at a {name} trained with them, or drop the override (a corrupt "
                           "cache folder: delete it)")

    absl = logging.getLogger("absl")
    level = absl.level
    with ocp.StandardCheckpointer() as checkpointer:
        absl.setLevel(logging.ERROR)  # orbax warns about missing metadata files before we can say so
        try:
            saved = checkpointer.metadata(path.absolute())
        except (ValueError, FileNotFoundError, OSError) as error:
            raise refuse(f"unreadable ({str(error).splitlines()[0][:160]})") from None
        finally:
            absl.setLevel(level)
        saved = getattr(saved, "item_metadata", saved)
        shapes = lambda tree: sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))
        if not shapes(saved):
            raise refuse("no saved arrays in it (corrupt or incomplete)")
        if shapes(saved) != shapes(template):
            raise refuse(f"its arrays have shapes {shapes(saved)[:6]}..., expected {shapes(template)[:6]}...")
        return checkpointer.restore(path.absolute(), template)


def train_stages(algo: Algorithm, spec: Spec, data, *, cache_root: str | None, dataset_key,
                 log_every: int, progress=None, paths: dict | None = None):
    """Every stage of `algo`: restored from `paths[name]` (an explicit result folder) or from the
    cache when present, else trained and cached. Returns ({name: result}, [StageRecord])."""
    import orbax.checkpoint as ocp

    results, records = {}, []
    names = [stage.name for stage in algo.stages(spec)]
    unknown = sorted(set(paths or {}) - set(names))
    if unknown:
        raise ConfigError(f"stage_paths.{unknown[0]} does nothing: {algo.name} has "
                          + (f"the stages {', '.join(names)}" if names else "no pretraining stages")
                          + "; drop the override")
    for stage in algo.stages(spec):
        explicit = (paths or {}).get(stage.name)
        folder = Path(explicit) if explicit else cache_dir(cache_root, algo, stage, data, dataset_key)
        if folder is not None and (folder / "result").exists():
            template = abstract_result(stage, spec, data)
            results[stage.name] = restore_result(folder / "result", template, stage.name, spec,
                                                 f"stage_paths.{stage.name}={explicit}" if explicit
                                                 else f"the cached {folder}")
            saved = json.loads((folder / "record.json").read_text()) if (
                folder / "record.json").exists() else {}
            records.append(StageRecord(**{**saved, "stage": stage.name, "cache": str(folder),
                                          "reused": True, "seconds": 0.0}))
            log.info("stage %s: reused from %s", stage.name, folder)
            continue
        if explicit:
            raise ConfigError(f"stage_paths.{stage.name}={explicit} holds no trained {stage.name} "
                              "(no 'result' folder in it): point it at a folder a run cached "
                              "(<pretrain.cache_dir>/<stage>/...) or drop the override")
        stage_progress = None if progress is None else (
            lambda step, means, kind, name=stage.name: progress(name, step, means, kind))
        result, record = train_stage(stage, spec, data, log_every, stage_progress)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save((folder / "result").absolute(), result)  # orbax writes a temporary
            checkpointer.wait_until_finished()                         # folder, renamed when done
            (folder / "record.json").write_text(json.dumps(record.__dict__, indent=1))
            record.cache = str(folder)
        results[stage.name] = result
        records.append(record)
    return results, records
