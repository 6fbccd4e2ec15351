"""Minari datasets, through Minari's own API (local, or downloaded when the hub is reachable)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from envs.dataset import Dataset, DatasetError, from_episodes
from envs.registry import DatasetInfo


def flatten_observation(observation, keys: tuple[str, ...]) -> np.ndarray:
    """Dict observations (e.g. AntMaze's) become one vector, keys concatenated in `keys` order."""
    if isinstance(observation, dict):
        order = keys or tuple(sorted(observation))
        return np.concatenate([np.asarray(observation[k]) for k in order], axis=-1)
    return np.asarray(observation)


def open_dataset(dataset_id: str, path: str | None = None, download: bool = True):
    if not path:
        return _open_dataset(dataset_id, download)
    # a folder holding Minari datasets (what MINARI_DATASETS_PATH would name), for this call only
    root = Path(path).expanduser()
    if root.is_file():
        raise DatasetError(f"dataset.path '{root}' is a file; for Minari datasets give the folder that "
                           "holds them (what MINARI_DATASETS_PATH would name).")
    if not root.is_dir():
        raise DatasetError(f"Minari datasets folder '{root}' does not exist; fix dataset.path.")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        return _open_dataset(dataset_id, download)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _open_dataset(dataset_id: str, download: bool):
    import minari

    try:
        return minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError:
        if not download:
            raise DatasetError(
                f"Minari dataset '{dataset_id}' is not in the local Minari folder; run "
                f"`minari download {dataset_id}` or set dataset.path to the folder that has it."
            ) from None
    except Exception as error:  # Minari raises assorted errors for damaged files
        raise DatasetError(
            f"Minari dataset '{dataset_id}' could not be read ({type(error).__name__}: {error}). "
            f"Delete it (`minari delete {dataset_id}`) and download or generate it again."
        ) from None
    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as error:
        raise DatasetError(
            f"Minari dataset '{dataset_id}' is not local and could not be downloaded "
            f"({type(error).__name__}). Install minari[all] and check the network, or copy the "
            "dataset into the Minari folder and set dataset.path to it."
        ) from None


def load(info: DatasetInfo, path: str | None = None, download: bool = True):
    """Return the flattened `Dataset` and `info` completed from the dataset's own metadata."""
    minari_dataset = open_dataset(info.minari_id or info.name, path, download)
    source = f"Minari dataset '{info.minari_id or info.name}'"

    def episodes():
        for episode in minari_dataset.iterate_episodes():
            yield {
                "observations": flatten_observation(episode.observations, info.observation_keys),
                "actions": episode.actions,
                "rewards": episode.rewards,
                "terminations": episode.terminations,
                "truncations": episode.truncations,
            }

    try:
        data: Dataset = from_episodes(episodes(), source=source)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(
            f"{source} could not be read ({type(error).__name__}: {error}). Delete and re-create it."
        ) from None
    return data, complete_info(info, minari_dataset.storage.metadata)


def complete_info(info: DatasetInfo, metadata: dict) -> DatasetInfo:
    """`info` completed from what the dataset records about itself.

    Reference scores: the dataset's own when it has them (computed in the environment it was
    recorded in), else the registry's. Evaluation environment: the one the dataset names for
    evaluation (`eval_env_spec`, what `MinariDataset.recover_environment(eval_env=True)` builds; else
    the recording env `env_spec`), id and keyword arguments (e.g. AntMaze's evaluation maze); the
    registry's `eval_overrides` (the family's evaluation protocol) still apply on top, and a
    registered dataset keeps the protocol's episode length."""
    updates = {}
    for key in ("ref_min_score", "ref_max_score"):
        if metadata.get(key) is not None:
            updates[key] = float(metadata[key])
    spec = recorded_env_spec(metadata)
    if spec is not None:
        updates["env_id"] = spec.id
        updates["env_kwargs"] = dict(spec.kwargs or {})
        if spec.max_episode_steps and info.env_id is None:  # not registered: the data's own length
            updates["max_episode_steps"] = int(spec.max_episode_steps)
    return dataclasses.replace(info, **updates)


def recorded_env_spec(metadata: dict):
    """The EnvSpec the dataset names for evaluation (else the one it was recorded in), or None.
    Specs written by older gymnasium versions carry keys gymnasium 1.x dropped; they are ignored."""
    import gymnasium as gym

    spec_json = metadata.get("eval_env_spec") or metadata.get("env_spec")
    if not spec_json:
        return None
    fields = {f.name for f in dataclasses.fields(gym.envs.registration.EnvSpec) if f.init}
    parsed = {key: value for key, value in json.loads(spec_json).items() if key in fields}
    parsed.setdefault("additional_wrappers", [])
    return gym.envs.registration.EnvSpec.from_json(json.dumps(parsed))
