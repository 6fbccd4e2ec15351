"""D4RL HDF5 files: find (explicit path, D4RL's cache, or download), read, and build transitions.

No `d4rl` import: the package needs mujoco-py, which does not install on a current stack. The file
format is plain HDF5 with the keys D4RL writes, and the transition rule is reproduced in
`envs.dataset.qlearning_transitions`.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import urllib.request
from pathlib import Path

import numpy as np

from envs.dataset import Dataset, DatasetError, qlearning_transitions
from envs.registry import DatasetInfo

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")


def cache_dir() -> Path:
    """D4RL's own cache location, so files downloaded by D4RL itself are found too."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def locate(info: DatasetInfo, path: str | None = None, download: bool = True) -> Path:
    if path:
        file = Path(path).expanduser()
        if file.is_dir():
            hdf5 = sorted(child.name for child in file.glob("*.hdf5"))[:3]
            raise DatasetError(
                f"dataset.path '{file}' is a folder, not a D4RL file"
                + (f" (it holds {', '.join(hdf5)})" if hdf5 else "")
                + ". Give the .hdf5 file itself: dataset.path=FILE."
            )
        if not file.is_file():
            raise DatasetError(
                f"dataset file '{file}' does not exist. Fix dataset.path=... or drop it to use "
                f"D4RL's cache directory ({cache_dir()})."
            )
        return file
    if info.url is None:
        raise DatasetError(f"d4rl/{info.name} has no download address; give dataset.path=FILE.")
    file = cache_dir() / info.url.rsplit("/", 1)[-1]
    if file.is_file():
        return file
    if not download:
        raise DatasetError(
            f"'{file}' is not cached and downloads are off. Put the file there, set "
            "D4RL_DATASET_DIR, or pass dataset.path=FILE."
        )
    return _download(info.url, file)


def _download(url: str, file: Path) -> Path:
    from tqdm import tqdm

    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(
            f"cannot create D4RL's cache folder '{file.parent}' ({error.strerror}). Set "
            "D4RL_DATASET_DIR to a writable folder, or pass dataset.path=FILE."
        ) from None
    partial = file.with_suffix(file.suffix + ".part")  # renamed only once complete
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            written = 0
            with open(partial, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {file.name}"
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            if total is not None and written != total:  # urllib ends a cut connection silently
                raise OSError(f"connection closed after {written} of {total} bytes")
    except (OSError, http.client.HTTPException) as error:  # HTTPException: e.g. IncompleteRead
        partial.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url} ({error}). Download it elsewhere and pass "
            f"dataset.path=FILE, or place it at {file}."
        ) from None
    partial.replace(file)
    return file


def read(file: Path, info: DatasetInfo) -> tuple[Dataset, DatasetInfo]:
    """Read a D4RL HDF5 file and build transitions as `d4rl.qlearning_dataset` does, with the file's
    own `next_observations` at terminal rows where it has them (`qlearning_transitions`). Returns
    the data and `info`, whose `next_at_terminals` says whether those rows' next states are true
    (a locomotion file without the array: the next episode's first state)."""
    import h5py

    source = f"D4RL file '{file}'"
    try:
        with h5py.File(file, "r") as h5:
            missing = [key for key in REQUIRED_KEYS if key not in h5]
            if missing:
                raise DatasetError(
                    f"{source} lacks the required key(s) {missing} (it has {sorted(h5.keys())}). "
                    "It is not a D4RL dataset, or it is incomplete: re-download it."
                )
            arrays = {key: np.asarray(h5[key]) for key in REQUIRED_KEYS}
            timeouts = np.asarray(h5["timeouts"]) if "timeouts" in h5 else None
            next_observations = np.asarray(h5["next_observations"]) if "next_observations" in h5 else None
    except OSError as error:
        raise DatasetError(
            f"{source} is not a readable HDF5 file ({error}). Replace it with a complete copy "
            "(re-download or re-create it)."
        ) from None
    data = qlearning_transitions(
        arrays["observations"], arrays["actions"], arrays["rewards"], arrays["terminals"],
        timeouts, max_episode_steps=info.max_episode_steps, source=source,
        next_observations=next_observations,
    )
    # AntMaze's recordings ran on through the goal (its terminals only mark goal rows), so s_{i+1}
    # is the true next state there too.
    known = next_observations is not None or info.family == "antmaze"
    return data, dataclasses.replace(info, next_at_terminals=known)


def load(info: DatasetInfo, path: str | None = None, download: bool = True) -> tuple[Dataset, DatasetInfo]:
    return read(locate(info, path, download), info)
