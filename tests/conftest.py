"""Shared fixtures: data folders in tmp (never the home directory) and small data files on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# Every place the data sources read or write: the generated datasets, Minari's and D4RL's caches.
DATA_ENV_VARS = {"offrl": "OFFRL_DATA_DIR", "minari": "MINARI_DATASETS_PATH", "d4rl": "D4RL_DATASET_DIR"}

MINARI_TEST_ID = "test/hopper/random-v0"
HOPPER_REF = (-20.272305, 3234.3)  # D4RL's hopper reference returns (random, expert)
REPO = Path(__file__).resolve().parent.parent
REPO_ROOT = str(REPO)


def cli_env(**variables: str) -> dict:
    """The environment for running our commands in a subprocess: this repository importable, JAX on
    the CPU, Hydra's errors as its short messages (no HYDRA_FULL_ERROR), plus `variables`."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    return {**env, **variables}


def run_cli(overrides: list[str], run_dir: Path, env: dict) -> subprocess.CompletedProcess:
    """`python -m experiments.train <overrides>` writing into `run_dir`."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300,
    )


class Interrupted(Exception):
    """Raised from a patched checkpoint call to kill a run mid-way (the resume tests)."""


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines without their wall-clock fields: what two runs that computed the same
    numbers share."""
    import json

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("seconds", "env_steps_per_second")}
            for line in lines]


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_home(tmp_path_factory):
    """For the whole session, every data folder lies in tmp; a test that needs fresh, empty folders
    asks for `data_dirs`. Subprocesses inherit these variables."""
    root = tmp_path_factory.mktemp("data-home")
    with pytest.MonkeyPatch.context() as patch:
        for key, variable in DATA_ENV_VARS.items():
            patch.setenv(variable, str(root / key))
        # Commands the tests start (`python -m experiments.train`) import this checkout's code.
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
        yield root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A folder holding a small local/pendulum-mixed (10 episodes), generated once per session."""
    from envs import generated

    root = tmp_path_factory.mktemp("pendulum-mixed")
    generated.ensure_pendulum_mixed(root, episodes=10)
    return root


@pytest.fixture
def offline_data(data_dir, monkeypatch):
    """OFFRL_DATA_DIR pointed at `data_dir`: `dataset=local/pendulum-mixed` trains on it."""
    monkeypatch.setenv("OFFRL_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def data_dirs(tmp_path, monkeypatch):
    """Fresh, existing, empty data folders for one test: `.offrl`, `.minari`, `.d4rl`."""
    dirs = {}
    for key, variable in DATA_ENV_VARS.items():
        folder = tmp_path / f"{key}-data"
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
        dirs[key] = folder
    return SimpleNamespace(**dirs)


def _d4rl_steps(n: int = 10, obs_dim: int = 11, act_dim: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1.0, 1.0, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }


def _write_hdf5(path: Path, arrays: dict) -> Path:
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():  # "infos/qpos" creates the group as D4RL's files have
            h5.create_dataset(key, data=value)
    return path


@pytest.fixture
def d4rl_steps():
    """Factory of D4RL-style step arrays (hopper-shaped by default): observations, actions, rewards,
    terminals, timeouts; random but seeded."""
    return _d4rl_steps


@pytest.fixture
def write_hdf5():
    """Factory writing a dict of arrays (keys may be nested, 'infos/qpos') to an HDF5 file."""
    return _write_hdf5


@pytest.fixture(scope="session")
def minari_hopper(tmp_path_factory):
    """A Minari dataset recorded with Minari's own DataCollector on Hopper-v5 with random actions:
    episodes that end by termination and by truncation (max_episode_steps=25), and a last episode
    still running when the recording stops. Returns the datasets folder, the id, and the episodes
    as the collection loop saw them."""
    import gymnasium as gym
    import minari

    root = tmp_path_factory.mktemp("minari-hopper")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        env = minari.DataCollector(gym.make("Hopper-v5", max_episode_steps=25))
        env.action_space.seed(0)
        episodes = []
        for seed, limit in [(0, None), (1, None), (2, None), (3, None), (4, None), (5, None), (6, 4)]:
            observation, _ = env.reset(seed=seed)
            episode = {"observations": [observation], "actions": [], "rewards": [],
                       "terminations": [], "truncations": []}
            while True:
                action = env.action_space.sample()
                observation, reward, terminated, truncated, _ = env.step(action)
                for key, value in (("observations", observation), ("actions", action),
                                   ("rewards", reward), ("terminations", terminated),
                                   ("truncations", truncated)):
                    episode[key].append(value)
                if terminated or truncated or len(episode["actions"]) == limit:
                    break
            episodes.append({key: np.asarray(value) for key, value in episode.items()})
        env.create_dataset(
            MINARI_TEST_ID, eval_env="Hopper-v5", algorithm_name="random", author="tests",
            author_email="none", code_permalink="tests/conftest.py",
            ref_min_score=HOPPER_REF[0], ref_max_score=HOPPER_REF[1],
            description="Hopper-v5, random actions, for the loader tests.",
        )
        env.close()
    return SimpleNamespace(root=root, dataset_id=MINARI_TEST_ID, episodes=episodes)
