"""Datasets this project makes itself, offline and deterministically, written with Minari's API.

`local/pendulum-mixed` is the default dataset: it needs no network and trains in minutes on a CPU.
Pendulum-v1 swing-up, where a quarter of the episodes come from a scripted energy-pumping + PD
controller (with Gaussian action noise) and three quarters from uniformly random actions. Behaviour
cloning averages the two and fails to swing up; offline RL can pick out the good actions. Its
reference scores, as D4RL defines them, are the measured mean returns of the random policy
(min) and of the noise-free controller (max) on separate evaluation episodes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.dataset import DatasetError

PENDULUM_MAX_TORQUE = 2.0


def data_dir() -> Path:
    return Path(os.environ.get("OFFRL_DATA_DIR", "~/.cache/offrl-jax/datasets")).expanduser()


def pendulum_controller(observation: np.ndarray) -> np.ndarray:
    """Energy pumping far from upright, PD stabilisation near it; returns torque in [-2, 2].

    Pendulum-v1 obeys th'' = 3g/(2l) sin th + 3u/(ml^2) with th = 0 upright, so the energy
    E = w^2/2 + 15 (cos th - 1) is 0 at the upright rest point; pumping u ~ -E sign(w) drives it there.
    """
    cos, sin, velocity = observation[..., 0], observation[..., 1], observation[..., 2]
    angle = np.arctan2(sin, cos)
    energy = 0.5 * velocity**2 + 15.0 * (cos - 1.0)
    torque = np.where(cos > 0.9, -(10.0 * angle + 2.0 * velocity), -energy * np.sign(velocity + 1e-6))
    return np.clip(torque, -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)[..., None]


def _rollout(env, policy, seed: int) -> dict:
    observation, _ = env.reset(seed=seed)
    episode = {"observations": [observation], "actions": [], "rewards": [],
               "terminations": [], "truncations": []}
    while True:
        action = policy(observation).astype(np.float32)
        observation, reward, terminated, truncated, _ = env.step(action)
        episode["observations"].append(observation)
        episode["actions"].append(action)
        episode["rewards"].append(reward)
        episode["terminations"].append(terminated)
        episode["truncations"].append(truncated)
        if terminated or truncated:
            return {key: np.asarray(value) for key, value in episode.items()}


def pendulum_mixed_episodes(episodes: int, expert_fraction: float, noise: float, seed: int):
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    is_expert = rng.permutation(episodes) < round(expert_fraction * episodes)

    def noisy_controller(obs):
        action = pendulum_controller(obs) + noise * PENDULUM_MAX_TORQUE * rng.normal(size=1)
        return np.clip(action, -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)

    def random_policy(obs):
        return rng.uniform(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE, size=1)

    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, expert in enumerate(is_expert):
        episode_seed = seed * 100_003 + i
        episode = _rollout(env, noisy_controller if expert else random_policy, episode_seed)
        buffers.append(EpisodeBuffer(id=i, seed=episode_seed, **episode))
    # Reference returns on evaluation seeds disjoint from the data's.
    eval_seeds = range(10**6 + seed, 10**6 + seed + 50)
    ref_min = float(np.mean([_rollout(env, random_policy, s)["rewards"].sum() for s in eval_seeds]))
    ref_max = float(np.mean([_rollout(env, pendulum_controller, s)["rewards"].sum()
                             for s in eval_seeds]))
    env.close()
    return buffers, ref_min, ref_max


PENDULUM_MIXED_ID = "local/pendulum/mixed-v0"


def dataset_complete(root: Path, dataset_id: str) -> bool:
    # A dataset folder only ever appears whole (it is renamed into place when complete).
    return (Path(root) / dataset_id / "data" / "metadata.json").is_file()


def write_minari_dataset(root: Path, dataset_id: str, buffers: list, **metadata) -> None:
    """`minari.create_dataset_from_buffers(dataset_id, buffers, **metadata)` into the Minari
    datasets folder `root`, through a staging folder renamed into place when complete: an
    interrupted run never leaves a dataset that loads as if it were whole."""
    import minari

    root = Path(root)
    target = root / dataset_id
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    except OSError as error:
        raise DatasetError(
            f"cannot write datasets to '{root}' ({error.strerror}). Set OFFRL_DATA_DIR (or "
            "dataset.path) to a writable folder."
        ) from None
    previous = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(staging)
        minari.create_dataset_from_buffers(dataset_id, buffers, author="offrl-jax",
                                           author_email="none", **metadata)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # absent, incomplete, or being replaced
        (staging / dataset_id).rename(target)
        # Minari also keeps per-namespace metadata files; copy them once.
        for meta in staging.rglob("namespace_metadata.json"):
            destination = root / meta.relative_to(staging)
            if not destination.exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(meta, destination)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(staging, ignore_errors=True)


def ensure_pendulum_mixed(root: Path | None = None, *, episodes: int = 200,
                          expert_fraction: float = 0.25, noise: float = 0.1, seed: int = 0) -> Path:
    """Generate `local/pendulum-mixed` into `root` (a Minari datasets folder) unless present."""
    root = Path(root or data_dir())
    if dataset_complete(root, PENDULUM_MIXED_ID):
        return root
    buffers, ref_min, ref_max = pendulum_mixed_episodes(episodes, expert_fraction, noise, seed)
    write_minari_dataset(
        root, PENDULUM_MIXED_ID, buffers, env="Pendulum-v1", eval_env="Pendulum-v1",
        algorithm_name="scripted-mixed", code_permalink="envs/generated.py",
        ref_min_score=ref_min, ref_max_score=ref_max,
        description=(
            f"Pendulum-v1 swing-up, {episodes} episodes: {expert_fraction:.0%} from a scripted "
            f"controller with N(0, {noise}*max_torque) action noise, the rest uniformly "
            f"random; seed {seed}. Generated by offrl-jax envs/generated.py."
        ),
    )
    return root


# D4RL-protocol datasets from SAC behaviour policies (experiments/generate.py makes them).


@dataclass(frozen=True)
class BehaviourEnv:
    env_id: str
    max_episode_steps: int = 1000
    family: str = "locomotion"
    default_size: int = 1_000_000  # transitions in random, medium and expert (D4RL's 1M)


BEHAVIOUR_ENVS = {
    "hopper": BehaviourEnv("Hopper-v5"),
    "halfcheetah": BehaviourEnv("HalfCheetah-v5"),
    "walker2d": BehaviourEnv("Walker2d-v5"),
    "ant": BehaviourEnv("Ant-v5"),
    # A small task for tests and quick experiments: its behaviour policy trains in a minute.
    "pendulum": BehaviourEnv("Pendulum-v1", 200, family="toy", default_size=20_000),
}
SPLITS = ("random", "medium", "expert", "medium-replay", "medium-expert")


# The README's first run: small enough to generate (~30 s) and train on (a few minutes) on a CPU.
QUICKSTART = "hopper-medium-50k"
# Generated datasets of a fixed, non-default size registered under `local/<env>-<split>-<N>k`.
SIZED = {QUICKSTART: ("hopper", "medium", 50_000)}


def behaviour_dataset_id(env: str, split: str, size: int | None = None) -> str:
    """Minari id of a split; `size` names a fixed-size variant (`SIZED`) apart from the default."""
    return f"local/{env}/{split}-v0" if size is None else f"local/{env}/{split}-{size // 1000}k-v0"


class NotGenerated(DatasetError):
    """A local dataset that has not been generated yet. `envs` cannot run a behaviour policy (that
    needs the algorithms); the command-line layer (experiments.data.load) generates it and loads
    again."""

    def __init__(self, name: str, env: str, split: str, size: int | None, root: Path):
        super().__init__(f"local/{name} has not been generated in {root}: run `python -m "
                         f"experiments.generate env={env} splits=[{split}]`, or load it through "
                         "experiments.data.load, which generates it on first use.")
        self.env, self.split, self.size, self.root = env, split, size, root

    @property
    def generate_size(self) -> int:
        return self.size or BEHAVIOUR_ENVS[self.env].default_size


def behaviour_dataset_root(name: str, root: Path | None = None) -> Path:
    """The folder holding `local/<name>` (`<env>-<split>` at the environment's default size, or
    one of `SIZED`); NotGenerated when it is not there yet."""
    env, split, size = SIZED.get(name) or (*name.split("-", 1), None)
    root = Path(root or data_dir())
    if not dataset_complete(root, behaviour_dataset_id(env, split, size)):
        raise NotGenerated(name, env, split, size, root)
    return root
