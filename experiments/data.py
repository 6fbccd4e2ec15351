"""Loading a dataset for a run: `envs.load`, plus generating a local dataset on first use (running
its shipped behaviour policy needs the algorithms, so it happens here and not in `envs`)."""

from __future__ import annotations

from pathlib import Path

import envs
from envs import generated


def ensure_generated(name: str, root: Path | None = None) -> Path:
    """The folder holding `local/<name>`, generating it first (experiments.splits) if needed."""
    try:
        return generated.behaviour_dataset_root(name, root)
    except envs.NotGenerated as missing:
        from experiments.splits import generate

        generate(missing.env, splits=(missing.split,), size=missing.generate_size, root=missing.root,
                 sized_name=missing.size is not None)
        return missing.root


def load(source: str, name: str, path: str | None = None, download: bool = True):
    """(Dataset with actions in [-1, 1], DatasetInfo), as `envs.load`; a `local/<env>-<split>`
    dataset that is not there yet is generated first."""
    try:
        return envs.load(source, name, path, download)
    except envs.NotGenerated:
        ensure_generated(name, path)
        return envs.load(source, name, path, download)
