"""Dataset names -> where the data comes from, the environment that evaluates it, reference scores.

A score is comparable with the papers' only when the evaluation environment is the one the data was
recorded in, so each family is evaluated on its own recording environment:

- **D4RL locomotion** (`d4rl/hopper-*`, ...): gymnasium's MuJoCo **v4** environments. D4RL recorded
  on gym's v2 classes (mujoco-py); v4 is the same model, observation, reward and termination on the
  maintained `mujoco` bindings. v5 is not: its Walker2d gives the right foot friction 1.9 instead of
  0.9 (gymnasium's walker2d_v5.py version notes) and its Hopper, Walker2d and Ant stop paying the
  healthy reward on the terminating step. D4RL's Ant observation has 111 values: gym Ant-v2's
  positions (13), velocities (14) and 84 contact forces, which MuJoCo 2.0 left at zero in every
  D4RL file (Farama-Foundation/D4RL issue 143) and which therefore added no contact cost to the
  rewards. Ant-v4 without contact forces (27 values, no contact cost) with 84 zeros appended is that
  environment; Ant-v4 with `use_contact_forces=True` would feed the policy forces it never saw.
- **D4RL Adroit** (`d4rl/pen-human-v1`, ...): gymnasium-robotics' AdroitHand*-v1, its port of the
  same models (same observation, action and dense reward), with D4RL's episode lengths (pen 100,
  the others 200). One difference remains: D4RL's pen ends an episode when the pen drops, v1 goes on
  with the -5 penalty every step, so a policy that drops the pen scores lower than in D4RL.
- **D4RL AntMaze** (`d4rl/antmaze-*-v2`, `-v0`): D4RL's own environment needs mujoco-py; it is
  rebuilt on gymnasium-robotics' maze and gymnasium's Ant-v4 with D4RL's ant model, evaluation
  mazes, start, goal noise, 0.5 success radius and 29-value observation (`envs.d4rl_antmaze`, whose
  docstring lists what matches and what cannot). The return is D4RL's 0/1 success.
- **D4RL Kitchen** (`d4rl/kitchen-*-v0`): D4RL's own environment needs mujoco-py; FrankaKitchen-v1
  is its port (same models, controller and initial pose), seen here as D4RL saw it: the 60-value
  observation (positions and the goal vector), D4RL's observation noise and its four target tasks
  (`envs.d4rl_kitchen`). The return is D4RL's 0..4 score.
- **Minari** (`minari/...`): the environment the dataset itself records for evaluation
  (`eval_env_spec`, else the recording env; `envs.minari_source.complete_info`), with the family's
  evaluation protocol on top (`eval_overrides`): AntMaze with the dataset's evaluation maze (one
  fixed start and goal cell) and the episode ending at the goal, so the return is D4RL's 0/1 success
  and the normalized score the success rate x 100; Kitchen with D4RL's four target tasks, each
  counted once, ending when all are done, at most 280 steps (return 0..4, as in D4RL).
  `mujoco/*` datasets and the generated `local/*` ones were recorded on v5 and are evaluated on v5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the name after the source prefix, e.g. "hopper-medium-v2"
    source: str  # "d4rl", "minari" or "local"
    env_id: str | None  # gymnasium id of the evaluation environment
    family: str  # "locomotion", "antmaze", "adroit", "kitchen", "toy": per-family settings
    ref_min_score: float | None  # D4RL normalization: return of the random policy
    ref_max_score: float | None  # ... and of the expert policy
    url: str | None = None  # D4RL download address
    minari_id: str | None = None
    max_episode_steps: int = 1000
    env_kwargs: dict = field(default_factory=dict)  # of the evaluation env, unless the data records one
    protocol: dict = field(default_factory=dict)  # overrides of the family's steps / evaluation
    observation_keys: tuple[str, ...] = ()  # order in which dict observations are concatenated
    eval_overrides: dict = field(default_factory=dict)  # the evaluation protocol's env kwargs, applied
    # over whatever environment the dataset records
    observation_zeros: int = 0  # zeros appended to every observation (D4RL Ant's contact forces)
    no_env_reason: str | None = None  # why there is no evaluation environment (env_id None)
    # Whether next_observations at terminal rows are the states the episodes ended in; False for a
    # D4RL file without a next_observations array (there they are the next episode's first state,
    # and stages that fit next states leave those rows out). Set by the loader.
    next_at_terminals: bool = True

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"


# D4RL's infos.py: REF_MIN_SCORE / REF_MAX_SCORE (v2 reuses the -random-v0 values, Adroit v1 the
# -human-v0 values, Kitchen 0 and 4: the number of target tasks).
D4RL_REFERENCE = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "door": (-56.512833, 2880.5693087298737),
    "relocate": (-6.425911, 4233.877797728884),
    "kitchen": (0.0, 4.0),
}
# The environment D4RL's locomotion data was recorded in (see the module docstring).
D4RL_LOCOMOTION_ENVS = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4",
                        "ant": "Ant-v4"}
D4RL_ANT_CONTACT_FORCES = 84  # 14 bodies x 6, all zero in D4RL's files
MINARI_LOCOMOTION_ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5",
                          "ant": "Ant-v5"}
D4RL_SPLITS = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
ANTMAZE_FILES = {  # D4RL antmaze v2 (the "_fixed" re-collection that fixed v0's timeouts); the v0
    # files are the same names without "_fixed", in ant_maze_new/ (IQL's and FamO2O's tables)
    "umaze": "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5",
    "umaze-diverse": "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "medium-play": "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "medium-diverse": "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
    "large-play": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5",
    "large-diverse": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
}
# Adroit: gymnasium-robotics' port of D4RL's hand_dapg models, with D4RL's episode lengths
# (hand_manipulation_suite/__init__.py: MAX_STEPS).
ADROIT_ENVS = {"pen": ("AdroitHandPen-v1", 100), "hammer": ("AdroitHandHammer-v1", 200),
               "door": ("AdroitHandDoor-v1", 200), "relocate": ("AdroitHandRelocate-v1", 200)}
ADROIT_SPLITS = ("human", "cloned", "expert")
# Kitchen: D4RL's files and target tasks (d4rl/kitchen/__init__.py, kitchen_envs.py).
KITCHEN_FILES = {
    "complete": "mini_kitchen_microwave_kettle_light_slider-v0.hdf5",
    "partial": "kitchen_microwave_kettle_light_slider-v0.hdf5",
    "mixed": "kitchen_microwave_kettle_bottomburner_light-v0.hdf5",
}
KITCHEN_TASKS = {
    "complete": ["microwave", "kettle", "light switch", "slide cabinet"],
    "partial": ["microwave", "kettle", "light switch", "slide cabinet"],
    "mixed": ["microwave", "kettle", "bottom burner", "light switch"],
}
KITCHEN_EPISODE_STEPS = 280
# AntMaze on gymnasium-robotics: the environment each Minari dataset was recorded in, and D4RL's
# evaluation mazes (one reset cell "r", one goal cell "g"), as Minari's dataset scripts record them in
# each dataset's eval_env_spec (used when a dataset does not carry its own).
R, G = "r", "g"
ANTMAZE_EVAL_MAPS = {
    "umaze": [[1, 1, 1, 1, 1],
              [1, 0, 0, R, 1],
              [1, 0, 1, 1, 1],
              [1, 0, 0, G, 1],
              [1, 1, 1, 1, 1]],
    "medium": [[1, 1, 1, 1, 1, 1, 1, 1],
               [1, R, 0, 1, 1, 0, 0, 1],
               [1, 0, 0, 1, 0, 0, 0, 1],
               [1, 1, 0, 0, 0, 1, 1, 1],
               [1, 0, 0, 1, 0, 0, 0, 1],
               [1, 0, 1, 0, 0, 1, 0, 1],
               [1, 0, 0, 0, 1, 0, G, 1],
               [1, 1, 1, 1, 1, 1, 1, 1]],
    "large": [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
              [1, R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
              [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
              [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
              [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
              [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
              [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
}
# D4RL's AntMaze evaluation mazes (d4rl/locomotion/maze_env.py U_MAZE_TEST, BIG_MAZE_TEST,
# HARDEST_MAZE_TEST, which every antmaze-v0/v1/v2 registration evaluates on), in D4RL's row order:
# the start cell "r" top left, one goal cell "g".
D4RL_ANTMAZE_MAPS = {
    "umaze": [[1, 1, 1, 1, 1],
              [1, R, 0, 0, 1],
              [1, 1, 1, 0, 1],
              [1, G, 0, 0, 1],
              [1, 1, 1, 1, 1]],
    # gymnasium-robotics' medium and large evaluation mazes are D4RL's, row for row
    "medium": ANTMAZE_EVAL_MAPS["medium"],
    "large": ANTMAZE_EVAL_MAPS["large"],
}
# The gymnasium ids of D4RL's environments rebuilt here (registered by envs.environment on first use).
D4RL_ENVS = {"D4RLAntMaze-v2": "envs.d4rl_antmaze:D4RLAntMaze",
             "D4RLKitchen-v0": "envs.d4rl_kitchen:D4RLKitchen"}
D4RL_ANTMAZE_ENV, D4RL_KITCHEN_ENV = D4RL_ENVS
MINARI_ANTMAZES = {  # dataset -> recording environment (play: the non-diverse mazes)
    "umaze": "AntMaze_UMaze-v4", "umaze-diverse": "AntMaze_UMaze-v4",
    "medium-play": "AntMaze_Medium-v4", "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
    "large-play": "AntMaze_Large-v4", "large-diverse": "AntMaze_Large_Diverse_GR-v4",
}
# D4RL's AntMaze evaluation (eval=True) ends the episode at the goal: the return is 1 or 0. Here the
# same with gymnasium-robotics: not a continuing task, sparse reward (1 within 0.45 of the goal).
ANTMAZE_EVALUATION = {"continuing_task": False, "reset_target": False, "reward_type": "sparse"}

REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    REGISTRY[info.key] = info
    return info


def _register_d4rl() -> None:
    for env, env_id in D4RL_LOCOMOTION_ENVS.items():
        low, high = D4RL_REFERENCE[env]
        zeros = D4RL_ANT_CONTACT_FORCES if env == "ant" else 0
        for split in D4RL_SPLITS:
            name = f"{env}-{split}-v2"
            url = f"{D4RL_URL}/gym_mujoco_v2/{env}_{split.replace('-', '_')}-v2.hdf5"
            register(DatasetInfo(name, "d4rl", env_id, "locomotion", low, high, url=url,
                                 observation_zeros=zeros))
    for maze, filename in ANTMAZE_FILES.items():
        size = maze.split("-")[0]
        for version, folder, file in (("v2", "ant_maze_v2", filename),
                                      ("v0", "ant_maze_new", filename.replace("_fixed", ""))):
            register(DatasetInfo(
                f"antmaze-{maze}-{version}", "d4rl", D4RL_ANTMAZE_ENV, "antmaze", 0.0, 1.0,
                url=f"{D4RL_URL}/{folder}/{file}",
                max_episode_steps=700 if size == "umaze" else 1000,
                env_kwargs={"maze_map": D4RL_ANTMAZE_MAPS[size]},
            ))
    for env, (env_id, steps) in ADROIT_ENVS.items():
        for split in ADROIT_SPLITS:
            name = f"{env}-{split}-v1"
            register(DatasetInfo(name, "d4rl", env_id, "adroit", *D4RL_REFERENCE[env],
                                 url=f"{D4RL_URL}/hand_dapg_v1/{name}.hdf5", max_episode_steps=steps))
    for split, filename in KITCHEN_FILES.items():
        register(DatasetInfo(
            f"kitchen-{split}-v0", "d4rl", D4RL_KITCHEN_ENV, "kitchen", *D4RL_REFERENCE["kitchen"],
            url=f"{D4RL_URL}/kitchen/{filename}", max_episode_steps=KITCHEN_EPISODE_STEPS,
            env_kwargs={"tasks_to_complete": KITCHEN_TASKS[split]},
        ))


def _register_minari() -> None:
    # Minari's MuJoCo datasets store their reference scores in the dataset metadata; the loader
    # prefers those, so none are repeated here.
    for env, env_id in MINARI_LOCOMOTION_ENVS.items():
        for split in ("simple", "medium", "expert"):
            register(DatasetInfo(f"mujoco/{env}/{split}-v0", "minari", env_id, "locomotion",
                                 None, None, minari_id=f"mujoco/{env}/{split}-v0"))
    for dataset, env_id in MINARI_ANTMAZES.items():
        size = dataset.split("-")[0]
        for version in ("v1", "v2"):
            name = f"D4RL/antmaze/{dataset}-{version}"
            register(DatasetInfo(
                name, "minari", env_id, "antmaze", 0.0, 1.0, minari_id=name,
                max_episode_steps=700 if size == "umaze" else 1000,
                observation_keys=("achieved_goal", "observation", "desired_goal"),
                env_kwargs={"maze_map": ANTMAZE_EVAL_MAPS[size]}, eval_overrides=ANTMAZE_EVALUATION,
            ))
    for env, (env_id, steps) in ADROIT_ENVS.items():
        for split in ADROIT_SPLITS:
            name = f"D4RL/{env}/{split}-v2"
            register(DatasetInfo(name, "minari", env_id, "adroit", *D4RL_REFERENCE[env],
                                 minari_id=name, max_episode_steps=steps))
    for split, tasks in KITCHEN_TASKS.items():
        name = f"D4RL/kitchen/{split}-v2"
        register(DatasetInfo(
            name, "minari", "FrankaKitchen-v1", "kitchen", *D4RL_REFERENCE["kitchen"], minari_id=name,
            max_episode_steps=KITCHEN_EPISODE_STEPS, observation_keys=("observation",),
            eval_overrides={"tasks_to_complete": tasks, "remove_task_when_completed": True,
                            "terminate_on_tasks_completed": True},
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
