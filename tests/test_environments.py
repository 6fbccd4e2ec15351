"""Evaluation environments match the data: the model D4RL recorded with, D4RL Ant's observation
layout, AntMaze's evaluation maze and success score, the Adroit and Kitchen registrations."""

from __future__ import annotations

import copy

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs
from envs import DatasetError
from envs.environment import evaluation_env_kwargs
from envs.minari_source import complete_info
from envs.registry import ANTMAZE_EVAL_MAPS, KITCHEN_TASKS

ANTMAZE_ID = "D4RL/antmaze/umaze-v1"


def friction(env, geom: str) -> float:
    model = env.unwrapped.model
    return float(model.geom_friction[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom), 0])


def test_d4rl_walker_is_evaluated_on_the_model_it_was_recorded_with():
    """D4RL's walker (gym v2, gymnasium's walker2d.xml) has right foot friction 0.9, left 1.9; v5
    sets both to 1.9. Minari's and the generated walker data were recorded on v5 and stay there."""
    d4rl = envs.make_env(envs.lookup("d4rl", "walker2d-medium-v2"))
    assert d4rl.spec.id == "Walker2d-v4"
    assert (friction(d4rl, "foot_geom"), friction(d4rl, "foot_left_geom")) == (0.9, 1.9)
    for source, name in [("minari", "mujoco/walker2d/medium-v0"), ("local", "walker2d-medium")]:
        v5 = envs.make_env(envs.lookup(source, name))
        assert (friction(v5, "foot_geom"), friction(v5, "foot_left_geom")) == (1.9, 1.9)


@pytest.mark.parametrize("env,obs_dim", [("hopper", 11), ("halfcheetah", 17), ("walker2d", 17),
                                         ("ant", 111)])
def test_d4rl_locomotion_observation_sizes(env, obs_dim):
    info = envs.lookup("d4rl", f"{env}-medium-v2")
    envs.check_observation_dim(info, obs_dim)  # D4RL's file widths
    assert info.env_id.endswith("-v4")


def test_d4rl_ant_observation_is_d4rl_layout_with_zero_contact_forces():
    """D4RL's Ant: positions without x, y (13), velocities (14), 84 contact forces that are zero in
    every D4RL file; its rewards hold no contact cost. Ant-v4 without contact forces plus zeros."""
    ant = envs.make_env(envs.lookup("d4rl", "ant-medium-v2"))
    plain = gym.make("Ant-v4")
    observation, _ = ant.reset(seed=3)
    expected, _ = plain.reset(seed=3)
    assert observation.shape == (111,)
    np.testing.assert_array_equal(observation[:27], expected)
    assert not observation[27:].any()
    action = np.linspace(-0.5, 0.5, 8)
    observation, reward, *_ = ant.step(action)
    expected, expected_reward, *_ = plain.step(action)
    np.testing.assert_array_equal(observation[:27], expected)
    assert reward == expected_reward
    qpos, qvel = plain.unwrapped.data.qpos, plain.unwrapped.data.qvel
    np.testing.assert_allclose(expected, np.concatenate([qpos[2:], qvel]))


@pytest.mark.parametrize("env,obs_dim,act_dim,steps", [("pen", 45, 24, 100), ("hammer", 46, 26, 200),
                                                       ("door", 39, 28, 200), ("relocate", 39, 30, 200)])
def test_adroit_datasets_evaluate_on_gymnasium_robotics(env, obs_dim, act_dim, steps):
    """D4RL's hand_dapg v1 widths and episode lengths; Minari's re-recordings use the same envs."""
    for source, name in [("d4rl", f"{env}-human-v1"), ("minari", f"D4RL/{env}/expert-v2")]:
        info = envs.lookup(source, name)
        made = envs.make_env(info)
        assert made.observation_space.shape == (obs_dim,)
        assert made.action_space.shape == (act_dim,)
        assert made.spec.max_episode_steps == steps
        assert info.family == "adroit" and info.ref_min_score < info.ref_max_score


def test_adroit_hdf5_file_loads(tmp_path, d4rl_steps, write_hdf5):
    steps = d4rl_steps(n=12, obs_dim=45, act_dim=24)
    data, info = envs.load("d4rl", "pen-human-v1", path=str(write_hdf5(tmp_path / "pen.hdf5", steps)))
    assert (data.observation_dim, data.action_dim, info.env_id) == (45, 24, "AdroitHandPen-v1")
    np.testing.assert_array_equal(data.actions, steps["actions"][:-1])  # already in [-1, 1]


def test_kitchen_evaluation_protocol_is_d4rls():
    """Minari's Kitchen data was recorded keeping completed tasks, never terminating, 450 steps;
    D4RL's evaluation counts each target task once and ends when all are done, within 280 steps
    (return 0..4). The recorded env is used with D4RL's protocol on top."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    for split, tasks in KITCHEN_TASKS.items():
        recorded = copy.deepcopy(gym.spec("FrankaKitchen-v1"))
        recorded.kwargs = {"tasks_to_complete": ["kettle"], "remove_task_when_completed": False,
                           "terminate_on_tasks_completed": False, "object_noise_ratio": 0.0005}
        recorded.max_episode_steps = 450
        info = complete_info(envs.lookup("minari", f"D4RL/kitchen/{split}-v2"),
                             {"env_spec": recorded.to_json()})
        assert evaluation_env_kwargs(info) == {
            "tasks_to_complete": tasks, "remove_task_when_completed": True,
            "terminate_on_tasks_completed": True, "object_noise_ratio": 0.0005}
        assert (info.env_id, info.max_episode_steps, info.ref_max_score) == ("FrankaKitchen-v1", 280, 4.0)
        assert info.observation_keys == ("observation",)


def test_d4rl_kitchen_files_load_and_evaluate_in_d4rls_view_of_franka_kitchen(tmp_path, d4rl_steps,
                                                                              write_hdf5):
    file = write_hdf5(tmp_path / "kitchen.hdf5", d4rl_steps(n=12, obs_dim=60, act_dim=9))
    data, info = envs.load("d4rl", "kitchen-mixed-v0", path=str(file))
    assert (data.observation_dim, data.action_dim, info.ref_max_score) == (60, 9, 4.0)
    env = envs.make_env(info)
    assert env.observation_space.shape == (60,) and env.spec.max_episode_steps == 280
    env.close()


def test_an_environment_that_fails_to_build_is_one_clear_error():
    class Broken(gym.Env):
        def __init__(self):
            raise AssertionError("joint type")

    gym.register("OffrlBrokenForTest-v0", entry_point=Broken)
    info = envs.DatasetInfo("broken", "minari", "OffrlBrokenForTest-v0", "toy", None, None)
    with pytest.raises(DatasetError, match="cannot create the evaluation env 'OffrlBrokenForTest-v0'.*"
                                           "AssertionError: joint type.*eval.episodes=0"):
        envs.make_env(info)


@pytest.fixture(scope="module")
def antmaze_dataset(tmp_path_factory):
    """A small Minari AntMaze dataset recorded as Minari's D4RL scripts record theirs: the
    continuing-task env of the dataset's maze (start bottom left, goal top left), random actions,
    and as `eval_env` the same env with D4RL's evaluation maze (one reset and one goal cell)."""
    import minari

    root = tmp_path_factory.mktemp("minari-antmaze")
    dataset_maze = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1],
                    [1, 1, 1, 1, 1]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        envs.environment._register_robotics(envs.lookup("minari", ANTMAZE_ID))
        recording = gym.make("AntMaze_UMaze-v4", maze_map=dataset_maze, continuing_task=True,
                             reset_target=False, max_episode_steps=15)
        eval_spec = copy.deepcopy(recording.spec)
        eval_spec.kwargs["maze_map"] = ANTMAZE_EVAL_MAPS["umaze"]
        eval_spec.max_episode_steps = 700
        collector = minari.DataCollector(recording)
        collector.action_space.seed(0)
        for seed in range(3):
            collector.reset(seed=seed)
            truncated = False
            while not truncated:
                *_, truncated, _ = collector.step(collector.action_space.sample())
        collector.create_dataset(ANTMAZE_ID, eval_env=eval_spec, algorithm_name="random",
                                 author="tests", author_email="none", code_permalink="tests")
        collector.close()
    return root


@pytest.mark.xdist_group("antmaze_dataset")
def test_antmaze_is_evaluated_on_the_datasets_evaluation_maze(antmaze_dataset):
    data, info = envs.load("minari", ANTMAZE_ID, path=str(antmaze_dataset))
    assert data.observation_dim == 2 + 27 + 2 and data.size == 45
    assert info.env_kwargs["maze_map"] == ANTMAZE_EVAL_MAPS["umaze"]  # from the dataset's record
    envs.check_observation_dim(info, data.observation_dim)
    env = envs.make_env(info)
    maze = env.unwrapped.maze
    assert len(maze.unique_goal_locations) == len(maze.unique_reset_locations) == 1
    goal, start = maze.unique_goal_locations[0], maze.unique_reset_locations[0]
    noise = 0.25 * maze.maze_size_scaling  # gymnasium-robotics' uniform position noise
    for seed in range(4):  # one start and one goal cell every episode, as in D4RL
        observation, _ = env.reset(seed=seed)
        assert np.abs(observation[:2] - start).max() <= noise + 0.1  # achieved goal: the ant
        assert np.abs(observation[-2:] - goal).max() <= noise  # desired goal
    # the default maze would draw both from all seven free cells
    assert len(gym.make("AntMaze_UMaze-v4").unwrapped.maze.unique_goal_locations) == 7


@pytest.mark.xdist_group("antmaze_dataset")
def test_antmaze_score_is_the_success_rate(antmaze_dataset):
    """An episode that reaches the goal ends there with return 1, one that does not returns 0: the
    normalized score (reference scores 0 and 1) is the success rate x 100."""
    _, info = envs.load("minari", ANTMAZE_ID, path=str(antmaze_dataset))
    env = envs.make_env(info)
    env.reset(seed=0)
    zeros = np.zeros(8)
    _, reward, terminated, truncated, _ = env.step(zeros)
    assert (reward, terminated, truncated) == (0.0, False, False)
    ant = env.unwrapped.ant_env
    qpos = ant.data.qpos.copy()
    qpos[:2] = env.unwrapped.goal  # put the ant on the goal
    ant.set_state(qpos, ant.data.qvel.copy())
    _, reward, terminated, _, info_step = env.step(zeros)
    assert (reward, terminated, info_step["success"]) == (1.0, True, True)
    returns = envs.evaluate(lambda obs: np.zeros(obs.shape[:-1] + (8,)), info,
                            envs.episode_seeds([0], 0, 1), observation_dim=31)
    assert returns.tolist() == [[0.0]]  # standing still never reaches the goal
    assert envs.normalized_score([1.0, 0.0, 1.0, 1.0], info).mean() == 75.0
