"""Dataset names -> where the data comes from, the environment that evaluates it, reference scores.

Evaluation environments are gymnasium's MuJoCo **v5** environments. D4RL recorded its data on gym's
v2/v3 environments, which need mujoco-py and a MuJoCo 2.1 binary that no longer install on a
current stack; v5 is the maintained version on the `mujoco` bindings, has the same observation and
action layout for Hopper, HalfCheetah and Walker2d, and fixes bugs of v3 (see gymnasium's MuJoCo
changelog), so returns are close to, but not identical with, the v2 numbers in papers.
D4RL's Ant observation (111 values) does not match Ant-v5 (105); its datasets load, but evaluation
stops with a clear error from the observation-size check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the name after the source prefix, e.g. "hopper-medium-v2"
    source: str  # "d4rl", "minari" or "local"
    env_id: str | None  # gymnasium id of the evaluation environment
    family: str  # "locomotion", "antmaze", "toy": selects per-family hyperparameters
    ref_min_score: float | None  # D4RL normalization: return of the random policy
    ref_max_score: float | None  # ... and of the expert policy
    url: str | None = None  # D4RL download address
    minari_id: str | None = None
    max_episode_steps: int = 1000
    env_kwargs: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)  # overrides of the family's steps / evaluation
    observation_keys: tuple[str, ...] = ()  # order in which dict observations are concatenated

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"


# D4RL's infos.py: REF_MIN_SCORE / REF_MAX_SCORE (v2 reuses the -random-v0 values).
D4RL_REFERENCE = {
    "halfcheetah": (-280.178953, 12135.0, "HalfCheetah-v5"),
    "hopper": (-20.272305, 3234.3, "Hopper-v5"),
    "walker2d": (1.629008, 4592.3, "Walker2d-v5"),
    "ant": (-325.6, 3879.7, "Ant-v5"),
}
D4RL_SPLITS = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
ANTMAZE_FILES = {  # D4RL antmaze v2 (the "_fixed" re-collection that fixed v0's timeouts)
    "umaze": "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5",
    "umaze-diverse": "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "medium-play": "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "medium-diverse": "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "large-play": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "large-diverse": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
}
MINARI_MAZES = {"umaze": "AntMaze_UMaze-v4", "medium": "AntMaze_Medium_Diverse_GR-v4",
                "large": "AntMaze_Large_Diverse_GR-v4"}

REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    REGISTRY[info.key] = info
    return info


def _register_d4rl() -> None:
    for env, (low, high, env_id) in D4RL_REFERENCE.items():
        for split in D4RL_SPLITS:
            name = f"{env}-{split}-v2"
            url = f"{D4RL_URL}/gym_mujoco_v2/{env}_{split.replace('-', '_')}-v2.hdf5"
            register(DatasetInfo(name, "d4rl", env_id, "locomotion", low, high, url=url))
    for maze, filename in ANTMAZE_FILES.items():
        size = maze.split("-")[0]
        register(
            DatasetInfo(
                f"antmaze-{maze}-v2", "d4rl", None, "antmaze", 0.0, 1.0,
                url=f"{D4RL_URL}/ant_maze_v2/{filename}",
                max_episode_steps=700 if size == "umaze" else 1000,
            )
        )


def _register_minari() -> None:
    # Minari's MuJoCo datasets store their reference scores in the dataset metadata; the loader
    # prefers those, so none are repeated here.
    for env in ("halfcheetah", "hopper", "walker2d", "ant"):
        env_id = D4RL_REFERENCE[env][2]
        for split in ("simple", "medium", "expert"):
            register(DatasetInfo(f"mujoco/{env}/{split}-v0", "minari", env_id, "locomotion",
                                 None, None, minari_id=f"mujoco/{env}/{split}-v0"))
    for maze, env_id in MINARI_MAZES.items():
        for kind in ("", "-diverse") if maze == "umaze" else ("-play", "-diverse"):
            name = f"D4RL/antmaze/{maze}{kind}-v1"
            register(DatasetInfo(
                name, "minari", env_id, "antmaze", 0.0, 1.0, minari_id=name,
                max_episode_steps=700 if maze == "umaze" else 1000,
                observation_keys=("achieved_goal", "observation", "desired_goal"),
                env_kwargs={"continuing_task": True, "reset_target": False},
            ))


def _register_local() -> None:
    # Pendulum swing-up with a scripted controller: the dataset that needs no network (see
    # envs/generated.py). Reference scores are measured returns of the random and scripted policies.
    register(DatasetInfo("pendulum-mixed", "local", "Pendulum-v1", "toy", None, None,
                         max_episode_steps=200))
    # D4RL-protocol splits from SAC behaviour policies (experiments/generate.py); reference scores
    # come from the dataset metadata.
    from envs.generated import BEHAVIOUR_ENVS, QUICKSTART, SIZED, SPLITS, behaviour_dataset_id

    for env, spec in BEHAVIOUR_ENVS.items():
        for split in SPLITS:
            register(DatasetInfo(f"{env}-{split}", "local", spec.env_id, spec.family, None, None,
                                 minari_id=behaviour_dataset_id(env, split),
                                 max_episode_steps=spec.max_episode_steps))
    for name, (env, split, size) in SIZED.items():
        spec = BEHAVIOUR_ENVS[env]
        # The quickstart trains for minutes, not the locomotion protocol's 1M steps.
        protocol = ({"steps": 20_000, "eval_every": 10_000, "eval_episodes": 10}
                    if name == QUICKSTART else {})
        register(DatasetInfo(name, "local", spec.env_id, spec.family, None, None,
                             minari_id=behaviour_dataset_id(env, split, size),
                             max_episode_steps=spec.max_episode_steps, protocol=protocol))


_register_d4rl()
_register_minari()
_register_local()


def lookup(source: str, name: str) -> DatasetInfo:
    key = f"{source}/{name}"
    if key in REGISTRY:
        return REGISTRY[key]
    if source == "minari":  # any Minari id works; its metadata supplies env and scores
        return DatasetInfo(name, "minari", None, "locomotion", None, None, minari_id=name)
    known = ", ".join(sorted(k for k in REGISTRY if k.startswith(source + "/"))[:12])
    raise KeyError(
        f"unknown dataset '{key}'. Known {source} datasets include: {known} ... "
        "(list them all with `python -m experiments.train --help`)."
    )
