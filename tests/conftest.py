"""Shared fixtures: data folders in tmp (never the home directory) and small data files on demand."""

from __future__ import annotations

import os
from types import SimpleNamespace

import helpers
import numpy as np
import pytest

# Re-exported for test modules written before tests/helpers.py; new code imports them from helpers.
from helpers import REPO, Interrupted, cli_env, logged, run_cli  # noqa: F401

# Every place the data sources read or write: the generated datasets, Minari's and D4RL's caches.
DATA_ENV_VARS = {"offrl": "OFFRL_DATA_DIR", "minari": "MINARI_DATASETS_PATH", "d4rl": "D4RL_DATASET_DIR"}

MINARI_TEST_ID = "test/hopper/random-v0"
HOPPER_REF = (-20.272305, 3234.3)  # D4RL's hopper reference returns (random, expert)
REPO_ROOT = str(REPO)


def selects_slow_tests(markexpr: str | None) -> bool:
    """Whether `-m markexpr` selects a test marked `slow` alone: true for `slow`, `slow or
    integration` and no expression; false for the default tier's `not slow and not integration`,
    `integration` and CI's `not slow`. Read with pytest's own parser of `-m` (not public API: an
    expression it cannot read, or a pytest without it, counts as selecting them)."""
    if not markexpr:
        return True
    try:
        from _pytest.mark.expression import Expression

        return bool(Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "slow"))
    except Exception:  # noqa: BLE001 - any doubt keeps XLA's optimisations, the slow tier's setting
        return True


def pytest_configure(config):
    """JAX's persistent compilation cache for the test run and every command it starts: a program
    compiled once (by any test, xdist worker or subprocess, in this run or an earlier one) is loaded
    instead of compiled again. It lies in pytest's cache folder (`pytest --cache-clear` empties it);
    off with `-p no:cacheprovider` or OFFRL_TEST_COMPILATION_CACHE=0, and a JAX_COMPILATION_CACHE_DIR
    of your own is kept. docs/testing.md has the measurements."""
    if not selects_slow_tests(config.option.markexpr) and os.environ.get("OFFRL_TEST_XLA_OPTIMIZE") != "1":
        # Tests outside the slow tier are bound by compiling, not by running: XLA's CPU backend
        # without LLVM's optimisation passes compiles about 5x faster (IQL's init: 9.1 s -> 1.8 s)
        # and runs slower. Set before JAX starts its backend; inherited by the commands tests start.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    if os.environ.get("OFFRL_TEST_COMPILATION_CACHE") == "0" or getattr(config, "cache", None) is None:
        return
    import jax

    folder = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(config.cache.mkdir("jax-compilation")))
    # Every program, however fast it compiles (JAX's default keeps those over 1 s only).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


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


@pytest.fixture
def d4rl_steps():
    """Factory of D4RL-style step arrays (hopper-shaped by default): observations, actions, rewards,
    terminals, timeouts; random but seeded."""
    return helpers.d4rl_arrays


@pytest.fixture
def write_hdf5():
    """Factory writing a dict of arrays (keys may be nested, 'infos/qpos') to an HDF5 file."""
    return helpers.write_hdf5


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
