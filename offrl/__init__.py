"""The project from Python: load a trained policy, evaluate a run, train (docs/python-api.md).

    import offrl
    result = offrl.train(algo="iql", dataset="local/pendulum-mixed", seeds=2, steps=2000)
    policy = offrl.load_policy(result.run_dir, seed=0)   # raw observation(s) -> action(s)
    action = policy(observation)

The topmost layer: it imports `experiments` (which imports `algorithms`, which imports `envs`),
never the other way round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Policy", "TrainResult", "evaluate", "load_policy", "train"]


class Policy:
    """One training's policy: raw observations, single (obs_dim,) or batched (n, obs_dim), numpy or
    JAX, to actions in the evaluation environment's own bounds, (act_dim,) or (n, act_dim). NumPy in,
    NumPy out; a JAX array (or a tracer, inside your own `jax.jit`) in, a JAX array out. The state
    normalization is inside; the call is compiled once per batch size.

    `function(observations (n, obs_dim) float32, key)` is the pure function (parameters as
    constants) that `experiments.export` serializes; `low`, `high`: the action bounds."""

    def __init__(self, function, observation_dim: int, action_dim: int, low, high, deterministic: bool,
                 source: dict):
        self.function = function
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.low, self.high = np.asarray(low), np.asarray(high)
        self.deterministic = deterministic
        self.source = source  # run, checkpoint, phase, step, env_step, seed, grid point
        self._jitted = jax.jit(function)
        self._calls = 0

    def __call__(self, observations, key: jax.Array | None = None):
        given_jax = isinstance(observations, jax.Array)
        batch = jnp.asarray(observations, jnp.float32) if given_jax else np.asarray(observations, np.float32)
        if batch.ndim not in (1, 2) or batch.shape[-1] != self.observation_dim:
            raise ValueError(f"observations must have shape ({self.observation_dim},) or (n, "
                             f"{self.observation_dim}) for this policy (got {tuple(batch.shape)})")
        single = batch.ndim == 1
        if key is None:  # exploring without a key: a new one every call (deterministic: unused)
            key = jax.random.fold_in(jax.random.key(int(self.source.get("seed") or 0)), self._calls)
            self._calls += 1
        actions = self._jitted(batch[None] if single else batch, key)
        actions = actions[0] if single else actions
        return actions if given_jax else np.asarray(actions)

    def __repr__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.source.items() if v not in (None, {}))
        return f"Policy({where}; {self.observation_dim} observation -> {self.action_dim} action values)"


def load_policy(run_dir, seed: int | None = None, checkpoint: int | None = None, point: dict | None = None,
                deterministic: bool = True) -> Policy:
    """The policy of training seed `seed` (None: the run's first) at grid `point` (grid runs: a
    subset of the grid's values; None: the first matching training) from kept checkpoint
    `checkpoint` (None: the newest readable one) of the run in `run_dir`. Raises
    experiments.restored.RunError (a ValueError naming the fix) for a folder that is not a run, a
    checkpoint not kept, a seed not trained."""
    from experiments.restored import restore

    restored = restore(run_dir, checkpoint)
    training = restored.select(None if seed is None else [int(seed)], point)[0]
    low, high = restored.action_bounds()
    return Policy(restored.acting_function(training, deterministic), restored.observation_dim,
                  restored.action_dim, low, high, deterministic, restored.source(training))


def evaluate(run_dir, **options) -> dict:
    """`python -m experiments.evaluate run_dir ...` from Python: the options of
    configs/evaluate.yaml as keywords (checkpoint=, episodes=, seeds=, deterministic=, env=,
    video={"record": True, "episodes": 2}, out=None to write nothing); returns the record it
    writes (evaluation.json)."""
    from experiments.evaluate import evaluate_run

    return evaluate_run(run_dir, **options)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path  # the run folder, as the command line writes it (results.json, checkpoints/, .hydra/)
    results: dict  # results.json
    scores: list  # each training's final score (normalized where the dataset has reference scores)

    @property
    def summary(self) -> dict | None:
        return self.results["summary"]


def overrides_of(options: dict) -> list[str]:
    """Hydra override strings from keyword options: {"algo": "iql", "algo.expectile": 0.8,
    "grid.algo.tau": [0.005, 0.01], "online.steps": 0} -> ["algo=iql", "algo.expectile=0.8", ...]."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if value is None:
            return "null"
        if isinstance(value, list | tuple):
            return "[" + ",".join(text(v) for v in value) + "]"
        return str(value)

    return [f"{key}={text(value)}" for key, value in options.items()]


def train(run_dir=None, **options) -> TrainResult:
    """`python -m experiments.train <options>` from Python: the same Hydra config (keyword options,
    dotted keys through **{"algo.expectile": 0.8}), the same run folder (`run_dir`, else
    runs/<date>_<algorithm>_<dataset> as train.yaml names it) with the same files, results.json
    included; continues a run of the same settings in `run_dir` as the command line does
    (resume=auto). Raises the command line's errors as exceptions (ConfigError, DatasetError, ...)."""
    import logging

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from experiments.config import CONFIG_DIR, setup
    from experiments.train import run

    overrides = overrides_of(options)
    setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    folder = Path(run_dir if run_dir is not None else OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)  # as Hydra writes it: what restores read
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    results = run(cfg, folder)
    scores = [seed["final_score"] for seed in results["seeds"]]
    return TrainResult(folder, results, scores)
