"""The cache of trained stages on disk: one folder per stage, dataset and settings
(`cache_dir`), holding the result (orbax) and its `StageRecord` (record.json). Entries are written
into a temporary folder and renamed into place, so parallel jobs on one dataset never read half a
model; a job that finds the entry written by another meanwhile keeps its own (equal) result, and an
unreadable entry is moved aside and trained again. experiments/stages.py trains what is missing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Stage
from experiments.config import ConfigError

log = logging.getLogger("stages")

# Part of every cache key: bump it when the key's composition or the saved layout changes.
CACHE_FORMAT = 2


@dataclass
class StageRecord:
    """What a run reports about one stage. A per-seed stage reports one record per training seed in
    `seeds` (each with its `seed`); its own fields then sum them up (steps: the most)."""

    stage: str
    steps: int
    cache: str | None
    reused: bool
    seconds: float
    stopped_early_at: int | None = None
    finish: dict = field(default_factory=dict)
    stop_reason: str = ""
    seed: int | None = None
    seeds: list = field(default_factory=list)


def cache_dir(root: str | None, algo: Algorithm, stage: Stage, data, dataset_key) -> Path | None:
    """<root>/<stage>/<dataset>-<hash>: the hash covers the stage's settings and training budget
    (steps, batch size, holdout, validation interval), its code `version`, the dataset's name and a
    fingerprint (shapes and sums) of the columns the stage reads (`Stage.columns`). Not the
    algorithm, nor columns other algorithms add (returns-to-go), nor where the file lies: a stage
    with the same settings on the same data is the same model whichever algorithm asked for it."""
    if not root:
        return None
    data = jax.device_get(data)
    columns = stage.columns if stage.columns is not None else data._fields
    fingerprint = {name: [list(np.shape(value)), float(np.asarray(value, np.float64).sum())]
                   for name, value in zip(data._fields, data, strict=True) if name in columns}
    budget = {"steps": stage.steps, "batch_size": stage.batch_size, "holdout": stage.holdout,
              "max_holdout": stage.max_holdout,
              "validate_every": stage.validate_every if stage.validate is not None else 0}
    identity = {"stage": stage.name, "settings": stage.settings, "budget": budget,
                "version": [CACHE_FORMAT, stage.version], "dataset": list(dataset_key)[:2],
                "data": fingerprint}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{str(dataset_key[1]).replace('/', '-')}-{digest[:16]}"
    return Path(str(root)).expanduser() / stage.name / name


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


def read_cached(folder: Path, stage: Stage, spec: Spec, template):
    """(result restored into `template`, saved record) of a cache entry, or None when it is
    unreadable (then it is moved aside and deleted, with one warning line, and the caller retrains
    it)."""
    try:
        result = restore_result(folder / "result", template, stage.name, spec, f"the cached {folder}")
        saved = json.loads((folder / "record.json").read_text())
        saved = {key: value for key, value in saved.items() if key in StageRecord.__dataclass_fields__}
        return result, saved
    except Exception as error:  # orbax, json and OS errors alike: the entry cannot be used
        log.warning("the cached %s '%s' is unreadable (%s: %s); training it again", stage.name, folder,
                    type(error).__name__, str(error).splitlines()[0][:160] if str(error) else "")
        aside = folder.with_name(f".{folder.name}.corrupt-{uuid.uuid4().hex[:8]}")
        try:
            folder.rename(aside)
        except OSError:  # another job moved or replaced it first
            return None
        shutil.rmtree(aside, ignore_errors=True)
        return None


def write_cached(folder: Path, result, record: StageRecord) -> bool:
    """Save a trained result as `folder`, atomically: written into a temporary folder beside it and
    renamed. False when another job wrote `folder` first (its result is the same model; ours is
    dropped)."""
    import orbax.checkpoint as ocp

    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save((partial / "result").absolute(), result)
            checkpointer.wait_until_finished()
        (partial / "record.json").write_text(json.dumps({**record.__dict__, "cache": str(folder)}, indent=1))
        try:
            os.rename(partial, folder)  # replaces an empty folder, refuses a filled one
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
        return True
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def restore_explicit(stage: Stage, spec: Spec, template, folder: Path):
    """`stage_paths.<name>=<folder>`: a result folder the user names (restored into `template`),
    used for every seed (a per-seed stage gets it on every seed's axis); missing or unreadable: a
    ConfigError."""
    source = f"stage_paths.{stage.name}={folder}"
    if not (folder / "result").exists():
        raise ConfigError(f"{source} holds no trained {stage.name} (no 'result' folder in it): point "
                          "it at a folder a run cached (<pretrain.cache_dir>/<stage>/...) or drop the "
                          "override")
    result = restore_result(folder / "result", template, stage.name, spec, source)
    saved = json.loads((folder / "record.json").read_text()) if (folder / "record.json").exists() else {}
    saved = {key: value for key, value in saved.items() if key in StageRecord.__dataclass_fields__}
    record = StageRecord(**{**saved, "stage": stage.name, "cache": str(folder), "reused": True,
                            "seconds": 0.0})
    return result, record
