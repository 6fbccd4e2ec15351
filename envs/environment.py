"""Evaluation environments, normalized scores, and batched evaluation of many seeds at once."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from envs import robotics_compat
from envs.dataset import DatasetError
from envs.registry import D4RL_ENVS, DatasetInfo

# `eval.workers=auto` gives each worker process at least this many environments, so that a step's
# pipe round trip to a worker is spread over at least this many MuJoCo steps, and one or two
# seeds' D4RL evaluation (10 episodes each) stays on the main process. A choice, not a measured
# break-even (the shared 2-core development machine was too busy to measure one:
# benchmarks/evaluation.md).
AUTO_ENVIRONMENTS_PER_WORKER = 16


def make_env(info: DatasetInfo):
    """The evaluation environment (see envs/registry.py for which one each family uses), with actions
    in [-1, 1] and dict observations flattened in the same key order as the dataset's (so a policy
    sees the same vectors in training and evaluation)."""
    import gymnasium as gym

    from envs.minari_source import flatten_observation

    env = _make_raw_env(info)
    if isinstance(env.observation_space, gym.spaces.Dict):
        keys = info.observation_keys or tuple(sorted(env.observation_space.spaces))
        size = sum(int(np.prod(env.observation_space[k].shape)) for k in keys)
        space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: flatten_observation(obs, keys), space
        )
    if info.observation_zeros:
        zeros = np.zeros(info.observation_zeros)
        size = int(np.prod(env.observation_space.shape)) + info.observation_zeros
        space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: np.concatenate([obs, zeros]), space
        )
    ones = np.ones(env.action_space.shape, env.action_space.dtype)
    return gym.wrappers.RescaleAction(env, -ones, ones)


def _make_raw_env(info: DatasetInfo):
    """gym.make of the evaluation environment with the dataset's and the protocol's settings."""
    import gymnasium as gym

    if info.env_id is None:
        raise DatasetError(info.no_env_reason or (
            f"{info.key} has no evaluation environment; train with eval.episodes=0."))
    _register_robotics(info)
    try:
        with warnings.catch_warnings():  # the older version is chosen on purpose (envs/registry.py)
            warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
            return gym.make(info.env_id, max_episode_steps=info.max_episode_steps,
                            **evaluation_env_kwargs(info))
    except Exception as error:  # gymnasium's own errors, and whatever an environment's code raises
        raise DatasetError(
            f"cannot create the evaluation env '{info.env_id}' for {info.key} ({type(error).__name__}: "
            f"{error}). Check that the installed gymnasium / gymnasium-robotics / mujoco versions "
            "work together, or train with eval.episodes=0."
        ) from None


def evaluation_env_kwargs(info: DatasetInfo) -> dict:
    """The environment's keyword arguments: the dataset's (or the registry's), then the family's
    evaluation protocol over them."""
    return {**info.env_kwargs, **info.eval_overrides}


def _register_robotics(info: DatasetInfo) -> None:
    """Environments gymnasium does not know come from gymnasium-robotics (AntMaze, Adroit, Kitchen),
    or are built on it here (D4RL's AntMaze and Kitchen: envs/d4rl_antmaze.py, envs/d4rl_kitchen.py)."""
    import sys

    import gymnasium as gym

    if info.env_id not in gym.registry:
        try:
            import gymnasium_robotics
        except ImportError:
            raise DatasetError(
                f"{info.key} is evaluated in an environment built on gymnasium-robotics ({info.env_id}); "
                "install it with `pip install -e \".[robotics]\"` (or train with eval.episodes=0)."
            ) from None
        gym.register_envs(gymnasium_robotics)
        for env_id, entry_point in D4RL_ENVS.items():
            if env_id not in gym.registry:
                gym.register(env_id, entry_point=entry_point)
    if "gymnasium_robotics" in sys.modules:  # whoever registered its environments
        robotics_compat.install()  # FrankaKitchen-v1 on mujoco 4 (see envs/robotics_compat.py)


def action_bounds(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """Low and high action bounds of the evaluation env; None when there is no env to ask (none
    exists, or gymnasium-robotics is not installed: evaluation then says so)."""
    if info.env_id is None:
        return None
    try:
        env = _make_raw_env(info)
    except DatasetError:
        return None
    low, high = env.action_space.low, env.action_space.high
    env.close()
    return low.astype(np.float64), high.astype(np.float64)


def check_action_dim(info: DatasetInfo, action_dim: int, bounds: tuple[np.ndarray, np.ndarray]) -> None:
    """Fail early, with the fix, when the environment's actions do not match the dataset's."""
    env_dim = int(np.prod(bounds[0].shape))
    if env_dim != action_dim:
        raise DatasetError(
            f"the dataset's actions have {action_dim} values but {info.env_id} takes {env_dim}: "
            f"the data was not recorded in this environment. Pick the dataset name that matches the "
            "file (see envs/registry.py), or check dataset.path."
        )


def normalized_score(returns, info: DatasetInfo):
    """D4RL's normalized score x 100: 0 is the random policy, 100 the expert."""
    if info.ref_min_score is None or info.ref_max_score is None:
        return None
    span = info.ref_max_score - info.ref_min_score
    return 100.0 * (np.asarray(returns, dtype=np.float64) - info.ref_min_score) / span


def check_observation_dim(info: DatasetInfo, observation_dim: int) -> None:
    """Fail early, with the fix, when the environment's observations do not match the dataset's."""
    env = make_env(info)
    env_dim = int(np.prod(env.observation_space.shape))
    env.close()
    if env_dim != observation_dim:
        raise DatasetError(
            f"the dataset's observations have {observation_dim} values but {info.env_id} gives "
            f"{env_dim}: the data was recorded on another environment or version. Pick the "
            "matching dataset or environment (see envs/registry.py), or set eval.episodes=0."
        )


def episode_seeds(training_seeds, evaluation_index: int, episodes: int) -> np.ndarray:
    """The environment seed of every evaluation episode, shape (len(training_seeds), episodes).

    Episode `e` of evaluation number `evaluation_index` (0, 1, ... in the order a run evaluates) of
    the policy trained with seed `s` resets its environment with
    `SeedSequence([s, evaluation_index, e]).generate_state(1, uint64)[0]`: a hash of those three
    numbers and nothing else. So a seed evaluates on the same episodes whichever seeds are trained
    beside it (seed 1 of `seed=0 seeds=2` meets exactly the episodes of `seed=1 seeds=1`), and runs
    with different seeds, or one seed's successive evaluations, do not share episodes (a 64-bit
    hash: a collision is as unlikely as any two random 64-bit numbers being equal).

    Phases that evaluate separately (e.g. online fine-tuning after offline training) count their
    evaluations on from the last index used before them, so that no episode repeats an earlier one.
    """
    seeds = [int(seed) for seed in training_seeds]
    return np.array([[np.random.SeedSequence([seed, int(evaluation_index), episode])
                      .generate_state(1, np.uint64)[0] for episode in range(episodes)]
                     for seed in seeds], dtype=np.uint64).reshape(len(seeds), episodes)


def worker_count(workers, environments: int) -> int:
    """The processes that step `environments` environments for `eval.workers` (`auto` or an
    integer >= 1), never more than the environments; 1 steps them on the main process.

    `auto`: one per idle core (the cores this process may use less the 1-minute load average, the
    evaluating process itself not counted), at most one per AUTO_ENVIRONMENTS_PER_WORKER
    environments. Idle, because the workers wait for each other at every step: on a busy machine
    a descheduled worker holds up all of them, and there evaluating on the main process was the
    faster (benchmarks/evaluation.md). The returns do not depend on the number of workers."""
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        idle = cores - max(int(os.getloadavg()[0]) - 1, 0) if hasattr(os, "getloadavg") else cores
        return max(1, min(idle, environments // AUTO_ENVIRONMENTS_PER_WORKER))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DatasetError(f"eval.workers must be 'auto' or an integer >= 1 (got {workers!r}); fix the "
                           "override eval.workers=...")
    return max(1, min(workers, environments))


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    info: DatasetInfo,
    env_seeds: np.ndarray,
    observation_dim: int,
    workers: int | str = "auto",
) -> np.ndarray:
    """Run one episode per entry of `env_seeds` (shape (seeds, episodes), from `episode_seeds`),
    all stepped together, over `workers` processes (`worker_count`).

    `policy` maps raw observations of shape (seeds, episodes, obs_dim) to actions of shape
    (seeds, episodes, act_dim) in [-1, 1]: one batched call per environment step for all seeds.
    Returns the undiscounted return of every episode, shape (seeds, episodes): the same whatever
    the number of workers.
    """
    worker_count(workers, 1)  # a bad setting fails before any environment is built
    check_observation_dim(info, observation_dim)
    return run_episodes(policy, lambda: make_env(info), env_seeds, workers)


def run_episodes(policy: Callable[[np.ndarray], np.ndarray], env_factory: Callable,
                 env_seeds: np.ndarray, workers: int | str = "auto") -> np.ndarray:
    """`evaluate` for any environment factory: returns of shape env_seeds.shape, the episode at
    [i, e] started by resetting its environment with seed env_seeds[i, e].

    With one worker, one gymnasium vector env on the main process holds every environment; with
    more, each worker process holds a contiguous share of them (envs/parallel.py). Each
    environment's episode depends on its seed and its actions only, so the returns do not depend
    on the split. A failure in a worker is raised as one DatasetError; workers are always closed.
    """
    from envs.parallel import Share, WorkerEnvs

    num_seeds, episodes = np.shape(env_seeds)
    count = num_seeds * episodes
    processes = worker_count(workers, count)
    environments = (Share(env_factory, slice(None)) if processes == 1
                    else WorkerEnvs(env_factory, count, processes))
    try:
        observations = environments.start(np.asarray(env_seeds).reshape(count).tolist())
        returns = np.zeros(count)
        running = np.ones(count, dtype=bool)
        while running.any():
            actions = policy(observations.reshape(num_seeds, episodes, -1)).reshape(count, -1)
            observations, rewards, ended = environments.advance(np.asarray(actions))
            returns += np.where(running, rewards, 0.0)
            running &= ~ended
    finally:
        environments.close()
    return returns.reshape(num_seeds, episodes)
