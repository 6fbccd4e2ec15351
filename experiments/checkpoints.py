"""Orbax checkpoints of a multi-seed run: algorithm states, RNG keys, step and evaluation history.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and never a half-written one that would load. A
checkpoint damaged later (disk, a careless delete) is skipped on resume for the one before it
(`checkpoint.keep` of them are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("checkpoints")


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, states, keys: jax.Array, history: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            states=ocp.args.StandardSave(states),
            keys=ocp.args.StandardSave({"keys": jax.random.key_data(keys)}),
            history=ocp.args.JsonSave(history),
        ))

    def restore_latest(self, template_states, template_keys):
        """(states, keys, step, history) from the newest checkpoint that can be read, or None if
        there is none. A checkpoint that cannot be read (a damaged or half-deleted file) is named in
        one warning line and the one before it is tried; if none can be read, CheckpointError."""
        return restore_newest_readable(
            self.manager.all_steps(), lambda step: self._restore(step, template_states, template_keys),
            self.manager.directory, discard=self.manager.delete)

    def _restore(self, step: int, template_states, template_keys):
        restored = self.manager.restore(step, args=ocp.args.Composite(
            states=ocp.args.StandardRestore(template_states),
            keys=ocp.args.StandardRestore({"keys": jax.random.key_data(template_keys)}),
            history=ocp.args.JsonRestore(),
        ))
        keys = jax.random.wrap_key_data(restored["keys"]["keys"])
        return restored["states"], keys, step, restored["history"]

    def wait(self) -> None:
        self.manager.wait_until_finished()


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
        if failed:
            log.warning("resuming from the checkpoint at step %d; the unreadable one(s) after it, at "
                        "step(s) %s, are removed", step, ", ".join(str(s) for s, _ in failed))
            for bad, _ in failed:
                if discard is not None:
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
