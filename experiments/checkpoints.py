"""Orbax checkpoints of a multi-seed run: algorithm states, RNG keys, step and evaluation history.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and never a half-written one that would load.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


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
        """(states, keys, step, history) from the newest checkpoint, or None if there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            states=ocp.args.StandardRestore(template_states),
            keys=ocp.args.StandardRestore({"keys": jax.random.key_data(template_keys)}),
            history=ocp.args.JsonRestore(),
        ))
        keys = jax.random.wrap_key_data(restored["keys"]["keys"])
        return restored["states"], keys, step, restored["history"]

    def wait(self) -> None:
        self.manager.wait_until_finished()
