"""One copy of what several test modules need: random batches, tiny algorithms, the commands' and the
logs' readers, a constant dynamics model, and the exact-resume check. Test modules import from here,
never from one another (`import helpers`; pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Spec
from envs.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent
SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)  # the hand-made batches' shapes


def random_batch(key, size: int = 16, spec: Spec = SPEC) -> Dataset:
    """A random Dataset of `size` rows drawn with `key`; the first row is terminal."""
    keys = jax.random.split(key, 4)
    return Dataset(
        observations=jax.random.normal(keys[0], (size, spec.observation_dim)),
        actions=jax.random.uniform(keys[1], (size, spec.action_dim), minval=-1, maxval=1),
        rewards=jax.random.normal(keys[2], (size,)),
        next_observations=jax.random.normal(keys[3], (size, spec.observation_dim)),
        terminals=jnp.zeros(size).at[0].set(1.0),
        timeouts=jnp.zeros(size),
    )


def numpy_batch(size: int = 16, seed: int = 0) -> Dataset:
    """A host (numpy) Dataset of `size` rows, 3-d observations and 2-d actions, no terminals; the
    next observations are the observations reversed."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(size, 3)).astype(np.float32)
    zeros = np.zeros(size, np.float32)
    return Dataset(obs, rng.uniform(-1, 1, (size, 2)).astype(np.float32),
                   rng.normal(size=size).astype(np.float32), obs[::-1].copy(), zeros, zeros)


def tiny(name: str, width: int = 8, batch_size: int = 16, **overrides):
    """Algorithm `name` with two hidden layers of `width` (where it has `hidden_dims`) and
    `batch_size`: what a test of shapes, gradients or determinism needs, compiled in seconds."""
    import algorithms

    cls = algorithms.get(name)
    widths = {"hidden_dims": (width, width)} if "hidden_dims" in cls.__dataclass_fields__ else {}
    return cls(**{**widths, "batch_size": batch_size, **overrides})


# ---- the command line ------------------------------------------------------------------------


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


# ---- data files ---------------------------------------------------------------------------------


def d4rl_arrays(n: int = 10, obs_dim: int = 11, act_dim: int = 3, seed: int = 0) -> dict:
    """D4RL-style step arrays (hopper-shaped by default): observations, actions, rewards, terminals,
    timeouts; random but seeded."""
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1.0, 1.0, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }


def write_hdf5(path: Path, arrays: dict) -> Path:
    """`arrays` written to an HDF5 file; keys may be nested ('infos/qpos' creates the group, as
    D4RL's files have it)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            h5.create_dataset(key, data=value)
    return path


# ---- what a run wrote --------------------------------------------------------------------------

WALL_CLOCK = ("seconds", "env_steps_per_second")


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines without their wall-clock fields: what two runs that computed the same
    numbers share."""
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_CLOCK} for line in lines]


class Interrupted(Exception):
    """Raised from the runner's `after_chunk` hook to kill a run mid-way (the resume tests)."""


def resume_is_exact(settings: list[str], crash_at: int, tmp_path: Path, skip_types=()) -> SimpleNamespace:
    """Train `settings` straight through; train them again, killed after the chunk ending at step
    `crash_at` (loop.ChunkRunner's `after_chunk` hook: nothing of that chunk is logged or saved);
    resume that run with resume=true. Asserts that the killed run wrote no results, and that the
    resumed run's results and metrics lines (wall-clock fields and lines of `skip_types` aside)
    are the straight run's. Returns the straight run's results and lines."""
    import pytest

    from experiments.config import compose
    from experiments.train import run

    straight = run(compose(settings), tmp_path / "straight")
    killed = tmp_path / "killed"

    def crash(step: int) -> None:
        if step == crash_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(compose(settings), killed, after_chunk=crash)
    assert not (killed / "results.json").exists()
    resumed = run(compose([*settings, "resume=true"]), killed)
    assert resumed["seeds"] == straight["seeds"]
    kept = lambda folder: [line for line in logged(folder) if line["type"] not in skip_types]
    lines = kept(tmp_path / "straight")
    assert kept(killed) == lines
    return SimpleNamespace(results=straight, lines=lines)


# ---- reports ----------------------------------------------------------------------------------


def assert_positive(row: dict, *keys: str) -> None:
    """The benchmark reports' schema check: every key in `keys` is present and a finite number > 0
    (rates, times, FLOPs, memory). Derived figures (a total from a per-seed rate) are the report's
    own arithmetic and are not restated."""
    for key in keys:
        value = row[key]
        assert np.ndim(value) == 0 and not isinstance(value, bool | str), (key, value)
        assert np.isfinite(float(value)) and float(value) > 0, (key, value)


# ---- a dynamics model with known outputs -------------------------------------------------------


def softplus(x):
    return np.logaddexp(0.0, x)


def soft_clamp(logvar, low=-10.0, high=0.5):
    """The ensemble's soft clamp of a raw log-variance into [low, high], in numpy."""
    logvar = high - softplus(high - logvar)
    return low + softplus(logvar - low)


def constant_model(means: np.ndarray, raw_logvars: np.ndarray, elites, observation_dim=2, action_dim=1):
    """A `DynamicsModel` whose member i predicts `means[i]` and log-variance soft_clamp(raw[i]) for
    every input: zero kernels, so every hidden unit is swish(0) = 0 and the output is the bias."""
    from algorithms.core import dynamics

    members, outputs = means.shape
    config = dynamics.DynamicsConfig(num_members=members, num_elites=len(elites), hidden_dims=(4,),
                                     weight_decays=(0.0, 0.0))
    network = dynamics.ensemble_network(config, Spec(observation_dim, action_dim, 0))
    params = network.init(jax.random.key(0), jnp.zeros((1, observation_dim + action_dim)))
    params = jax.tree.map(jnp.zeros_like, params)
    bias = np.concatenate([means, raw_logvars], axis=1)[:, None, :]
    params["params"]["layer_1"]["bias"] = jnp.asarray(bias, jnp.float32)
    params["params"]["max_logvar"] = jnp.full((outputs,), 0.5)
    params["params"]["min_logvar"] = jnp.full((outputs,), -10.0)
    scaler = dynamics.Scaler(jnp.zeros(observation_dim + action_dim), jnp.ones(observation_dim + action_dim))
    return dynamics.DynamicsModel(params, jnp.asarray(elites), scaler, network)


# Uni-O4's tiny command-line run (2 seeds on local/pendulum-mixed, every stage cut to a few steps),
# shared by its own end-to-end tests and the evaluation tests.
UNIO4_TINY_RUN = ["algo=unio4", "dataset=local/pendulum-mixed", "seeds=2", "log_every=20", "eval.every=20",
                  "eval.episodes=2", "pretrain.cache_dir=null", "algo.critic_steps=20", "algo.bc_steps=20",
                  "algo.dynamics.max_steps=20", "algo.eval_step=10", "algo.rollout_length=5",
                  "algo.rollout_batch=16", "algo.q_hidden_dims=[16]", "algo.v_hidden_dims=[16]",
                  "algo.policy_hidden_dims=[16]", "algo.dynamics.hidden_dims=[16,16,16,16]"]
