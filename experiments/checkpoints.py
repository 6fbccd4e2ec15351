"""Orbax checkpoints of a multi-seed run: named pytrees (algorithm states, per-seed buffers, RNG
keys) and a JSON record (phase, counters, evaluation history, stopped seeds).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and never a half-written one that would load. A
checkpoint damaged later (disk, a careless delete) is skipped on resume for the one before it
(`checkpoint.keep` of them are kept).

Beside the checkpoints, `settings.json` holds the settings that wrote them (`settings.result_settings`)
and their fingerprint, so that `resume=auto` continues only a run of the same settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger("checkpoints")


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _storable(tree) -> dict:
    """Typed PRNG keys as their raw key data (what orbax can write), in a dict (StandardSave takes
    no bare array)."""
    return {"tree": jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)}


def _restored(stored: dict, template):
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x) if _is_key(t) else x, stored["tree"],
                        template)


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, index: int, trees: dict, record: dict) -> None:
        """`trees`: named pytrees (None allowed); `record`: anything JSON can hold."""
        trees = {name: tree for name, tree in trees.items() if tree is not None}
        self.manager.save(index, args=ocp.args.Composite(
            record=ocp.args.JsonSave({**record, "trees": sorted(trees)}),
            **{name: ocp.args.StandardSave(_storable(tree)) for name, tree in trees.items()}))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    @property
    def settings_path(self) -> Path:
        return Path(self.manager.directory) / SETTINGS_FILE

    def write_settings(self, fingerprint: str, settings: dict) -> None:
        """Record the settings the checkpoints of this folder are written with (atomically)."""
        temporary = self.settings_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"fingerprint": fingerprint, "settings": settings}, indent=1))
        temporary.replace(self.settings_path)

    def read_settings(self) -> dict | None:
        """{"fingerprint", "settings"} of the checkpoints here, or None when none was recorded."""
        try:
            saved = json.loads(self.settings_path.read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and "fingerprint" in saved else None

    def clear(self) -> None:
        """Delete every checkpoint (a run starting over in this folder): orbax would otherwise skip
        each new save until it passes the old newest step."""
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def record(self, index: int) -> dict:
        return self.manager.restore(index, args=ocp.args.Composite(record=ocp.args.JsonRestore()))[
            "record"]

    def restore(self, index: int, templates: dict) -> dict:
        """The named pytrees of checkpoint `index`, shaped like `templates` (None: not saved)."""
        wanted = {name: t for name, t in templates.items() if t is not None}
        restored = self.manager.restore(index, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(_storable(t)) for name, t in wanted.items()}))
        return {name: _restored(restored[name], t) if t is not None else None
                for name, t in templates.items()}

    def restore_latest(self, templates_for):
        """(index, record, trees) of the newest checkpoint that can be read, or None if there is
        none; `templates_for(record)` gives the templates (they depend on the phase it was saved
        in). A checkpoint that cannot be read (a damaged or half-deleted file) is named in one
        warning line and the one before it is tried; if none can be read, CheckpointError."""

        def read(index):
            record = self.record(index)
            return index, record, self.restore(index, templates_for(record))

        return restore_newest_readable(self.manager.all_steps(), read, self.manager.directory,
                                       discard=self.manager.delete)

    def wait(self) -> None:
        self.manager.wait_until_finished()


SETTINGS_FILE = "settings.json"


class CheckpointError(ValueError):
    """No checkpoint of the run can be read; the message names the folder and the fix."""


def restore_newest_readable(steps, restore: Callable[[int], tuple], directory,
                            discard: Callable[[int], None] | None = None) -> tuple | None:
    """`restore(step)` for the newest of `steps` that succeeds, whatever a checkpoint holds; each
    failure is one warning line. The unreadable newer steps are then `discard`ed, so that training
    can write those steps again. None without steps; CheckpointError when every step fails."""
    failed = []
    for step in sorted(steps, reverse=True):
        try:
            restored = restore(step)
        except Exception as error:  # orbax and its storage raise many kinds for damaged files
            failed.append((step, f"{type(error).__name__}: {_first_line(error)}"))
            log.warning("checkpoint at step %d in %s cannot be read (%s); trying the one before it",
                        step, directory, failed[-1][1])
            continue
        if failed and discard is not None:  # without `discard` (evaluation) the first line says it all
            log.warning("resuming from the checkpoint at step %d; the unreadable one(s) after it, at "
                        "step(s) %s, are removed", step, ", ".join(str(s) for s, _ in failed))
            for bad, _ in failed:
                discard(bad)
        return restored
    if failed:
        reasons = "; ".join(f"step {step}: {reason}" for step, reason in failed)
        raise CheckpointError(
            f"no checkpoint in {directory} can be read ({reasons}). Move that folder away to start "
            "from scratch, or resume into a fresh hydra.run.dir."
        )
    return None


def _first_line(error: Exception, limit: int = 160) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
