"""D4RL's own AntMaze files evaluate here (envs/d4rl_antmaze.py): D4RL's ant model, mazes, start,
goal, success radius, time limits and 29-value observation; a state-replay check; files written in
D4RL's HDF5 layout train and evaluate end to end with a success rate."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

import envs
from envs.d4rl_antmaze import D4RLAntMaze, dataset_replay_errors, replay_errors
from envs.registry import D4RL_ANTMAZE_MAPS, KITCHEN_TASKS
from envs.snapshot import restore, snapshot

# One step replayed from a state the file records lands this close to the file's next row. The same
# code and MuJoCo build reproduce it bit for bit; the margin covers MuJoCo's solver warm start, the
# one piece of state an observation does not carry.
REPLAY_TOLERANCE = 1e-9
# D4RL's files store float32: the state rounded to float32 moves the replayed step by ~5e-7 (measured
# over 200 random steps); 1e-5 leaves room while a wrong model misses by > 0.1.
FLOAT32_REPLAY_TOLERANCE = 1e-5


def d4rl_walls(maze_map) -> set[tuple[float, float]]:
    """Wall centres in D4RL's frame (maze_env.py: origin at the start cell, y grows with the row)."""
    (start_row, start_col), = [(i, j) for i, row in enumerate(maze_map)
                               for j, value in enumerate(row) if value == "r"]
    return {(4.0 * (j - start_col), 4.0 * (i - start_row))
            for i, row in enumerate(maze_map) for j, value in enumerate(row) if value == 1}


def trajectory(maze: str, steps: int, seed: int = 0):
    """Random actions in D4RL's umaze from a seeded reset: observations, actions, next observations."""
    env = D4RLAntMaze(D4RL_ANTMAZE_MAPS[maze])
    observation, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(steps):
        action = rng.uniform(-1, 1, 8).astype(np.float32)
        next_observation, *_ = env.step(action)
        rows.append((observation, action, next_observation))
        observation = next_observation
    env.close()
    return [np.array(column) for column in zip(*rows, strict=True)]


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_walls_start_and_goal_are_d4rls(maze):
    env = D4RLAntMaze(D4RL_ANTMAZE_MAPS[maze])
    model = env.ant.model
    walls = {tuple(np.round(model.geom_pos[g][:2] - env.origin, 6)) for g in range(model.ngeom)
             if (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or "").startswith("block")}
    assert walls == d4rl_walls(D4RL_ANTMAZE_MAPS[maze])
    goal_cell = {"umaze": (0.0, 8.0), "medium": (20.0, 20.0), "large": (32.0, 24.0)}[maze]
    for seed in range(20):
        observation, _ = env.reset(seed=seed)
        assert observation.shape == (29,) and np.all(np.abs(observation[:2]) <= 0.1)  # reset noise
        # D4RL's goal_sampler: the goal cell's centre plus U(0, 1) + U(0, 0.5) in each coordinate
        assert np.all(env.goal >= goal_cell) and np.all(env.goal <= np.add(goal_cell, 1.5))
    env.close()


def test_the_ant_is_d4rls_model():
    """d4rl/locomotion/assets/ant.xml: 0.02 s timestep (x 5 frames: 0.1 s per step), motors with
    gear 1 and range +-30 (gymnasium: gear 150, range +-1), contact solref .02 1, solimp .8 .8 .01."""
    env = D4RLAntMaze(D4RL_ANTMAZE_MAPS["umaze"])
    model = env.ant.model
    assert (model.opt.timestep, env.ant.frame_skip, model.opt.integrator) == (
        0.02, 5, mujoco.mjtIntegrator.mjINT_RK4)
    np.testing.assert_array_equal(model.actuator_gear[:, 0], 1.0)
    np.testing.assert_array_equal(model.actuator_ctrlrange, np.tile([-30.0, 30.0], (8, 1)))
    np.testing.assert_allclose(model.geom_solref, np.tile([0.02, 1.0], (model.ngeom, 1)))
    np.testing.assert_allclose(model.geom_solimp[:, :3], np.tile([0.8, 0.8, 0.01], (model.ngeom, 1)))
    # the action in [-1, 1] is D4RL's NormalizedBoxEnv's: 0.5 pushes with 15, beyond 1 is clipped
    env.reset(seed=0)
    env.step(np.array([0.5, -2.0, 0, 0, 0, 0, 0, 1.0]))
    np.testing.assert_allclose(env.ant.data.ctrl, [15.0, -30.0, 0, 0, 0, 0, 0, 30.0])
    env.close()


def test_reaching_within_half_a_unit_of_the_goal_scores_one_and_ends():
    env = D4RLAntMaze(D4RL_ANTMAZE_MAPS["umaze"])
    observation, _ = env.reset(seed=0)
    near = observation.copy()
    near[:2] = env.goal + [0.3, 0.3]  # 0.42 from the goal, still after one step's drift
    env.set_state_from_observation(near)
    _, reward, terminated, truncated, info = env.step(np.zeros(8))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    far = observation.copy()
    far[:2] = env.goal + [0.6, 0.0]
    env.set_state_from_observation(far)
    _, reward, terminated, _, _ = env.step(np.zeros(8))
    assert (reward, terminated) == (0.0, False)
    env.close()


@pytest.mark.parametrize("name, steps", [
    ("antmaze-umaze-v2", 700), ("antmaze-umaze-diverse-v0", 700), ("antmaze-medium-play-v2", 1000),
    ("antmaze-large-diverse-v0", 1000)])
def test_d4rl_antmaze_names_evaluate_with_no_option(name, steps):
    env = envs.make_env(envs.lookup("d4rl", name))
    assert env.spec.max_episode_steps == steps and env.observation_space.shape == (29,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    env.close()


def test_one_step_replayed_from_a_recorded_state_reproduces_the_next_observation():
    observations, actions, next_observations = trajectory("umaze", 60)
    other = D4RLAntMaze(D4RL_ANTMAZE_MAPS["umaze"])
    other.reset(seed=123)  # another episode: only the replayed state may matter
    errors = replay_errors(other, observations, actions, next_observations)
    assert errors.shape == (60,) and errors.max() <= REPLAY_TOLERANCE
    # and the check sees a wrong model: gymnasium's ant (5x the torque, half the timestep) does not
    gymnasium_like = D4RLAntMaze(D4RL_ANTMAZE_MAPS["umaze"])
    gymnasium_like.reset(seed=0)
    gymnasium_like.control_low, gymnasium_like.control_high = -150.0, 150.0
    assert replay_errors(gymnasium_like, observations, actions, next_observations).max() > 0.1


def test_an_episode_snapshot_continues_exactly():
    info = envs.lookup("d4rl", "antmaze-umaze-v2")
    env, fresh = envs.make_env(info), envs.make_env(info)
    env.reset(seed=1)
    fresh.reset(seed=2)
    for _ in range(3):
        env.step(np.full(8, 0.4))
    restore(fresh, snapshot(env))
    for action in np.random.default_rng(0).uniform(-1, 1, (5, 8)):
        np.testing.assert_array_equal(env.step(action)[0], fresh.step(action)[0])
    assert fresh.unwrapped.goal.tolist() == env.unwrapped.goal.tolist()


@pytest.fixture
def antmaze_file(tmp_path, write_hdf5):
    """A D4RL-layout antmaze-umaze file (the keys D4RL's generate_ant_maze_datasets.py writes)
    recorded in this environment: two 40-step episodes of random actions, the second's last step
    flagged as a timeout."""
    episodes = [trajectory("umaze", 40, seed) for seed in (0, 1)]
    observations = np.concatenate([o for o, _, _ in episodes]).astype(np.float32)
    actions = np.concatenate([a for _, a, _ in episodes]).astype(np.float32)
    n = len(observations)
    timeouts = np.zeros(n, bool)
    timeouts[[39, 79]] = True
    return write_hdf5(tmp_path / "antmaze-umaze-v2.hdf5", {
        "observations": observations, "actions": actions, "rewards": np.zeros(n, np.float32),
        "terminals": np.zeros(n, bool), "timeouts": timeouts,
        "infos/goal": np.tile([0.5, 8.5], (n, 1)), "infos/qpos": observations[:, :15],
        "infos/qvel": observations[:, 15:]}), episodes


def test_a_d4rl_layout_file_loads_and_passes_the_replay_check(antmaze_file):
    file, episodes = antmaze_file
    data, info = envs.load("d4rl", "antmaze-umaze-v2", path=str(file))
    assert (data.observation_dim, data.action_dim) == (29, 8)
    np.testing.assert_array_equal(data.actions[:39], episodes[0][1][:39])  # not rescaled: already D4RL's
    errors = dataset_replay_errors(data, info.env_kwargs["maze_map"], rows=30)
    assert errors.shape == (30,) and errors.max() <= FLOAT32_REPLAY_TOLERANCE


@pytest.mark.integration
def test_a_d4rl_antmaze_file_trains_and_evaluates_with_a_success_rate(antmaze_file, tmp_path):
    """Offline, then online fine-tuning whose checkpoints snapshot the running episodes."""
    from experiments.config import compose
    from experiments.train import run

    file, _ = antmaze_file
    results = run(compose(["algo=iql", "dataset=d4rl/antmaze-umaze-v2", f"dataset.path={file}",
                           "algo.hidden_dims=[16,16]", "algo.batch_size=16", "steps=10",
                           "log_every=10", "eval.every=10", "eval.episodes=2", "online.steps=20",
                           "online.eval_every=10", "online.log_every=10"]), tmp_path / "run")
    (seed,) = results["seeds"]
    returns = seed["episode_returns"][10]
    assert len(returns) == 2 and set(returns) <= {0.0, 1.0}  # D4RL's 0/1 success per episode
    assert seed["offline_score"] == pytest.approx(100.0 * np.mean(returns))  # success rate x 100
    online = seed["online_episode_returns"]
    assert sorted(online) == [10, 20] and all(set(r) <= {0.0, 1.0} for r in online.values())


def test_franka_kitchen_builds_on_the_installed_mujoco():
    """FrankaKitchen-v1 of gymnasium-robotics 1.4.2 asserted on its hinge joints' type with mujoco 4
    (envs/robotics_compat.py); Minari's Kitchen datasets now evaluate, D4RL's protocol on top."""
    from gymnasium_robotics.utils import mujoco_utils

    env = envs.make_env(envs.lookup("minari", "D4RL/kitchen/mixed-v2"))
    observation, _ = env.reset(seed=0)
    assert observation.shape == (59,) and env.spec.max_episode_steps == 280
    _, reward, *_ = env.step(np.zeros(9))
    assert reward == 0.0  # no target task done by standing still
    model, data = env.unwrapped.model, env.unwrapped.data
    kettle = model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "kettle")]
    np.testing.assert_array_equal(mujoco_utils.get_joint_qpos(model, data, "kettle"),
                                  data.qpos[kettle:kettle + 7])  # a free joint: 7 values
    np.testing.assert_array_equal(mujoco_utils.get_joint_qpos(model, data, "robot:panda0_joint2"),
                                  data.qpos[[1]])
    env.close()


# D4RL's kitchen (envs/d4rl_kitchen.py): goal values at their positions in the 30-value state
MIXED_GOAL = {11: -0.88, 12: -0.01, 17: -0.69, 18: -0.05, 22: -0.75, 23: -0.23, 24: 0.75, 25: 1.62,
              26: 0.99, 29: -0.06}  # bottom burner, light switch, microwave, kettle


def test_d4rl_kitchen_observation_is_positions_then_the_goal():
    from envs.d4rl_kitchen import D4RLKitchen

    env = D4RLKitchen(KITCHEN_TASKS["mixed"])
    observation, _ = env.reset(seed=0)
    goal = np.zeros(30)
    goal[list(MIXED_GOAL)] = list(MIXED_GOAL.values())
    np.testing.assert_array_equal(observation[30:], goal)  # D4RL's _get_task_goal for the file's tasks
    state = env.kitchen.data.qpos
    # positions with D4RL's noise: 0.1 x amplitude 0.1 on the robot, at most 0.1 x 0.1 on the objects
    assert np.all(np.abs(observation[:30] - state) <= 0.01 + 1e-12)
    assert np.any(observation[:9] != state[:9])
    env.close()


def test_d4rl_kitchen_scores_each_target_task_once_and_ends_when_all_are_done():
    from envs.d4rl_kitchen import D4RLKitchen

    env = D4RLKitchen(KITCHEN_TASKS["mixed"])
    observation, _ = env.reset(seed=0)
    done_microwave = observation.copy()
    done_microwave[22] = -0.75
    env.set_state_from_observation(done_microwave)
    _, reward, terminated, *_ = env.step(np.zeros(9))
    assert (reward, terminated) == (1.0, False)
    _, reward, *_ = env.step(np.zeros(9))
    assert reward == 0.0  # counted once
    all_done = done_microwave.copy()
    all_done[list(MIXED_GOAL)] = list(MIXED_GOAL.values())
    env.set_state_from_observation(all_done)
    _, reward, terminated, *_ = env.step(np.zeros(9))
    assert (reward, terminated) == (3.0, True)  # the other three, and the episode ends: return 4
    env.close()


def test_d4rl_kitchen_replay_from_positions_is_close_and_sees_a_wrong_controller():
    """D4RL's kitchen files hold positions only (no velocities) with observation noise, so one step
    replayed from a row is not exact: within 0.05 of the next row's positions on this environment's
    own trajectory (measured: about 0.03 at most over 50 random steps), where a controller with half
    D4RL's velocity scale misses by more."""
    from envs.d4rl_kitchen import D4RLKitchen
    from envs.d4rl_kitchen import replay_errors as kitchen_replay_errors

    env = D4RLKitchen(KITCHEN_TASKS["mixed"])
    observation, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(50):
        action = rng.uniform(-1, 1, 9)
        next_observation, *_ = env.step(action)
        rows.append((observation, action, next_observation))
        observation = next_observation
    observations, actions, next_observations = (np.array(column) for column in zip(*rows, strict=True))
    replay = D4RLKitchen(KITCHEN_TASKS["mixed"])
    replay.reset(seed=1)
    assert kitchen_replay_errors(replay, observations, actions, next_observations).max() <= 0.05
    replay.kitchen.robot_env.act_rng = np.ones(9)  # half D4RL's 2 rad/s per unit of action
    assert kitchen_replay_errors(replay, observations, actions, next_observations).max() > 0.05
    env.close()


@pytest.mark.integration
def test_a_d4rl_kitchen_file_trains_and_evaluates_with_a_task_score(tmp_path, d4rl_steps, write_hdf5):
    from experiments.config import compose
    from experiments.train import run

    file = write_hdf5(tmp_path / "kitchen.hdf5", d4rl_steps(n=60, obs_dim=60, act_dim=9))
    results = run(compose(["algo=iql", "dataset=d4rl/kitchen-partial-v0", f"dataset.path={file}",
                           "algo.hidden_dims=[16,16]", "algo.batch_size=16", "steps=10",
                           "log_every=10", "eval.every=10", "eval.episodes=2"]), tmp_path / "run")
    (seed,) = results["seeds"]
    returns = seed["episode_returns"][10]
    assert len(returns) == 2 and set(returns) <= {0.0, 1.0, 2.0, 3.0, 4.0}  # tasks done, 0..4
    assert seed["final_score"] == pytest.approx(100.0 * np.mean(returns) / 4.0)
