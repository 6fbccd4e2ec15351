"""Training an algorithm's stages (models fit on the dataset before the agent, shared by every seed
or one per training seed): compiled chunks, an optional holdout with validation and early stopping,
a finish step, and a cache on disk (experiments/stage_cache.py) keyed by the stage's settings and a
fingerprint of the columns it reads, so that every later run with the same data and settings (any
algorithm, any seed count) reuses the result.
"""

from __future__ import annotations

import dataclasses
import logging
import time
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
from experiments.stage_cache import StageRecord, cache_dir, read_cached, restore_explicit, write_cached

log = logging.getLogger("stages")


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
    chunks, step, stopped_at, reasons = {}, 0, None, []
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
                reasons = [name.removeprefix("stop_") for name, value in checks.items()
                           if name.startswith("stop_") and value > 0]
        shown.update(step, **means, **checks)
        if stopped_at is not None:
            break
    shown.close(f"stopped early at step {stopped_at}" if stopped_at is not None else "")
    finish = {}
    if stage.finish is not None:
        state, finish = jax.jit(stage.finish)(state, holdout)
        finish = _to_json(finish)
    if stopped_at is None:
        reason = f"ran its step budget ({stage.steps} updates)"
    else:
        reason = f"its validation stopped it at step {step}" + (f" ({', '.join(reasons)})" if reasons else "")
    seconds = time.perf_counter() - tic
    record = StageRecord(stage.name, step, None, False, seconds, stopped_at, finish, reason,
                         int(stage.settings.get("seed", 0)))
    log.info("stage %s (seed %d): %s, %.0f s", stage.name, record.seed, reason, seconds)
    return stage.result(state), record


def abstract_result(stage: Stage, spec: Spec, data):
    """The shapes of `stage.result(...)`, to restore a cached result into."""
    _, holdout = split_holdout(stage, data)

    def build(key):
        state = stage.init(key, spec, data)
        if stage.finish is not None:
            state, _ = stage.finish(state, holdout)
        return stage.result(state)

    return jax.eval_shape(build, jax.random.key(0))


def stage_for_seed(stage: Stage, training_seed: int | None) -> Stage:
    """The stage as trained for one training seed: a per-seed stage starts from its own seed plus
    the training seed; a shared one (`training_seed` None) from its own seed."""
    if training_seed is None:
        return stage
    seed = int(stage.settings.get("seed", 0)) + int(training_seed)
    return dataclasses.replace(stage, settings={**stage.settings, "seed": seed})


def rows_known(data, unknown_next):
    """`data` without the rows flagged in `unknown_next` (None: all of it)."""
    if unknown_next is None or not np.any(unknown_next):
        return data
    keep = jnp.asarray(np.flatnonzero(~np.asarray(unknown_next, bool)))
    return jax.tree.map(lambda column: column[keep], data)


def obtain(stage: Stage, spec: Spec, data, folder: Path | None, log_every: int, progress):
    """One stage's (result, record): read from the cache folder when it holds a readable entry,
    else trained (and cached when `folder` is given)."""
    if folder is not None and folder.exists():
        cached = read_cached(folder, stage, spec, abstract_result(stage, spec, data))
        if cached is not None:
            result, saved = cached
            log.info("stage %s: reused from %s", stage.name, folder)
            return result, StageRecord(**{**saved, "stage": stage.name, "cache": str(folder),
                                          "reused": True, "seconds": 0.0})
    result, record = train_stage(stage, spec, data, log_every, progress)
    if folder is not None:
        write_cached(folder, result, record)
        record.cache = str(folder)
    return result, record


def stack_seeds(results: list):
    """Per-seed results stacked along a new leading (seed) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *results)


def train_stages(algo: Algorithm, spec: Spec, data, *, cache_root: str | None, dataset_key,
                 log_every: int, seeds=(0,), progress=None, paths: dict | None = None,
                 unknown_next=None):
    """Every stage of `algo`: restored from `paths[name]` (an explicit result folder) or from the
    cache when present, else trained and cached. A per-seed stage (`Stage.per_seed`) is obtained
    once for each distinct training seed in `seeds` (one per training, in order) and its results
    are stacked along a leading seed axis in that order (`Context.per_seed`). `unknown_next`: a
    mask of the rows whose next state is not known, left out of stages that fit next states.
    Returns ({name: result}, [StageRecord])."""
    results, records = {}, []
    names = [stage.name for stage in algo.stages(spec)]
    unknown = sorted(set(paths or {}) - set(names))
    if unknown:
        raise ConfigError(f"stage_paths.{unknown[0]} does nothing: {algo.name} has "
                          + (f"the stages {', '.join(names)}" if names else "no pretraining stages")
                          + "; drop the override")
    for stage in algo.stages(spec):
        explicit = (paths or {}).get(stage.name)
        stage_data = rows_known(data, unknown_next) if stage.fits_next_states else data
        if explicit:
            result, record = restore_explicit(stage, spec, abstract_result(stage, spec, stage_data),
                                              Path(explicit))
            results[stage.name] = stack_seeds([result] * len(seeds)) if stage.per_seed else result
            records.append(record)
            continue
        stage_progress = None if progress is None else (
            lambda step, means, kind, name=stage.name: progress(name, step, means, kind))
        if not stage.per_seed:
            folder = cache_dir(cache_root, algo, stage, stage_data, dataset_key)
            results[stage.name], record = obtain(stage, spec, stage_data, folder, log_every, stage_progress)
            records.append(record)
            continue
        by_seed, seed_records = {}, []
        for seed in dict.fromkeys(int(seed) for seed in seeds):
            seeded = stage_for_seed(stage, seed)
            folder = cache_dir(cache_root, algo, seeded, stage_data, dataset_key)
            seed_progress = None if progress is None else (  # lines say whose model they are
                lambda step, means, kind, name=stage.name, seed=seed:
                progress(name, step, {**means, "stage_seed": seed}, kind))
            by_seed[seed], record = obtain(seeded, spec, stage_data, folder, log_every, seed_progress)
            seed_records.append(record.__dict__)
        results[stage.name] = stack_seeds([by_seed[int(seed)] for seed in seeds])
        records.append(StageRecord(
            stage.name, max(r["steps"] for r in seed_records), None,
            all(r["reused"] for r in seed_records), sum(r["seconds"] for r in seed_records),
            stop_reason="trained per seed (see seeds)", seeds=seed_records))
    return results, records


def abstract_stages(algo: Algorithm, spec: Spec, data, seeds=(0,), unknown_next=None) -> dict:
    """{name: the shapes of the stage's result} as `train_stages` would give them (a per-seed stage's
    with a leading seed axis), without training or reading anything: what a restored run's
    checkpoint templates and policy need."""
    out = {}
    for stage in algo.stages(spec):
        shapes = abstract_result(stage, spec, rows_known(data, unknown_next) if stage.fits_next_states
                                 else data)
        out[stage.name] = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((len(seeds), *leaf.shape),
                                                                         leaf.dtype), shapes) if (
            stage.per_seed) else shapes
    return out


def per_seed_names(algo: Algorithm, spec: Spec) -> tuple[str, ...]:
    """The stages whose results carry a seed axis (`Context.per_seed`)."""
    return tuple(stage.name for stage in algo.stages(spec) if stage.per_seed)
