"""Evaluation environments, normalized scores, and batched evaluation of many seeds at once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.dataset import DatasetError
from envs.registry import DatasetInfo


def make_env(info: DatasetInfo):
    """The evaluation environment, with actions in [-1, 1] and dict observations flattened in the
    same key order as the dataset's (so a policy sees the same vectors in training and evaluation)."""
    import gymnasium as gym

    from envs.minari_source import flatten_observation

    if info.env_id is None:
        raise DatasetError(
            f"{info.key} has no evaluation environment on the current gymnasium stack (D4RL's "
            "AntMaze needs mujoco-py). Train with eval.episodes=0, or use the Minari re-recording "
            "of the same task (dataset=minari/D4RL/antmaze/...)."
        )
    if info.family == "antmaze":
        try:
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
        except ImportError:
            raise DatasetError(
                f"{info.key} is evaluated in gymnasium-robotics' {info.env_id}; "
                "`pip install gymnasium-robotics` to use it."
            ) from None
    try:
        env = gym.make(info.env_id, max_episode_steps=info.max_episode_steps, **info.env_kwargs)
    except gym.error.Error as error:
        raise DatasetError(f"cannot create evaluation env '{info.env_id}': {error}") from None
    if isinstance(env.observation_space, gym.spaces.Dict):
        keys = info.observation_keys or tuple(sorted(env.observation_space.spaces))
        size = sum(int(np.prod(env.observation_space[k].shape)) for k in keys)
        space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: flatten_observation(obs, keys), space
        )
    ones = np.ones(env.action_space.shape, env.action_space.dtype)
    return gym.wrappers.RescaleAction(env, -ones, ones)


def action_bounds(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """Low and high action bounds of the evaluation env (None when there is no env)."""
    import gymnasium as gym

    if info.env_id is None or info.family == "antmaze":
        return None  # D4RL/Minari AntMaze actions already lie in [-1, 1]
    space = gym.spec(info.env_id)
    env = gym.make(space.id, **info.env_kwargs)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    return low.astype(np.float64), high.astype(np.float64)


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


def check_environment(info: DatasetInfo, observation_dim: int, action_dim: int) -> None:
    """`check_observation_dim`, and the same for the action size (online fine-tuning acts in it)."""
    check_observation_dim(info, observation_dim)
    env = make_env(info)
    env_dim = int(np.prod(env.action_space.shape))
    env.close()
    if env_dim != action_dim:
        raise DatasetError(
            f"the dataset's actions have {action_dim} values but {info.env_id} takes {env_dim}: the "
            "data was recorded on another environment. Pick the matching dataset or environment.")


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


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    info: DatasetInfo,
    env_seeds: np.ndarray,
    observation_dim: int,
) -> np.ndarray:
    """Run one episode per entry of `env_seeds` (shape (seeds, episodes), from `episode_seeds`),
    all in one vector env.

    `policy` maps raw observations of shape (seeds, episodes, obs_dim) to actions of shape
    (seeds, episodes, act_dim) in [-1, 1]: one batched call per environment step for all seeds.
    Returns the undiscounted return of every episode, shape (seeds, episodes).
    """
    check_observation_dim(info, observation_dim)
    return run_episodes(policy, lambda: make_env(info), env_seeds)


def run_episodes(policy: Callable[[np.ndarray], np.ndarray], env_factory: Callable,
                 env_seeds: np.ndarray) -> np.ndarray:
    """`evaluate` for any environment factory: returns of shape env_seeds.shape, the episode at
    [i, e] started by resetting its environment with seed env_seeds[i, e]."""
    import gymnasium as gym

    num_seeds, episodes = np.shape(env_seeds)
    count = num_seeds * episodes
    envs = gym.vector.SyncVectorEnv(
        [env_factory for _ in range(count)], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    observations, _ = envs.reset(seed=np.asarray(env_seeds).reshape(count).tolist())
    returns = np.zeros(count)
    running = np.ones(count, dtype=bool)
    while running.any():
        actions = policy(observations.reshape(num_seeds, episodes, -1)).reshape(count, -1)
        observations, rewards, terminated, truncated, _ = envs.step(np.asarray(actions))
        returns += np.where(running, rewards, 0.0)
        running &= ~(terminated | truncated)
    envs.close()
    return returns.reshape(num_seeds, episodes)
