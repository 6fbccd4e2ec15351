"""Orbax checkpoints of a multi-seed run: named pytrees (algorithm states, per-seed buffers, RNG
keys) and a JSON record (phase, counters, evaluation history, stopped seeds).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and never a half-written one that would load.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


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
        """(index, record, trees) of the newest checkpoint, or None if there is none;
        `templates_for(record)` gives the templates (they depend on the phase it was saved in)."""
        index = self.latest()
        if index is None:
            return None
        record = self.record(index)
        return index, record, self.restore(index, templates_for(record))

    def wait(self) -> None:
        self.manager.wait_until_finished()
