"""D4RL's AntMaze evaluation environment (`antmaze-*-v2`, `-v0`) on the maintained `mujoco` bindings.

D4RL's own environment (d4rl/locomotion/ant.py, maze_env.py, goal_reaching_env.py) needs mujoco-py.
This one rebuilds it from gymnasium-robotics' maze builder (`Maze.make_maze`: the same wall blocks
as D4RL's) and gymnasium's Ant-v4 class (`AntEnv`: the same 15 qpos + 14 qvel and the same reset
noise, 0.1 uniform on qpos and 0.1 Gaussian on qvel), with D4RL's choices on top:

- **D4RL's ant model**, not gymnasium's: gymnasium-robotics' AntMaze uses gymnasium's ant.xml, whose
  physics differ from D4RL's d4rl/locomotion/assets/ant.xml in three places, all three undone here
  (`d4rl_ant_xml`): the timestep (D4RL 0.02 s, so one step is 0.1 s of simulation; gymnasium 0.01 s),
  the motors (D4RL: gear 1, control range +-30; gymnasium: gear 150, range +-1, so the same
  normalized action pushes 5 times harder in gymnasium's) and the contact softness of every geom,
  the maze walls included (D4RL: solref .02 1, solimp .8 .8 .01; gymnasium: MuJoCo's defaults).
  What remains different is cosmetic (colours, a tracking camera, the goal marker, a site that is
  never simulated).
- **D4RL's coordinates**: D4RL puts the origin at the centre of the reset cell `r` and lets y grow
  with the row index; gymnasium-robotics centres the maze and lets y shrink with the row. The layout
  is built upside down (rows reversed) so that the two frames differ by a translation only (no
  mirror: the ant's dynamics are unchanged), and the observation's x, y are shifted into D4RL's frame.
- **D4RL's actions**: in [-1, 1], mapped linearly onto the motors' +-30 and clipped there (D4RL's
  `NormalizedBoxEnv`, which its files' actions are recorded under).
- **D4RL's 29-value observation**: qpos[:15] then qvel[:14] (the torso's x, y first), no goal
  (D4RL's `eval=True`).
- **D4RL's evaluation**: the ant starts at the reset cell's centre (plus the ant's reset noise), the
  goal is the goal cell's centre plus U(0, 1) + U(0, 0.5) in each coordinate (D4RL's goal_sampler:
  always towards larger x and y), the reward is 1 within 0.5 of the goal and the episode ends there,
  so the return is D4RL's 0/1 success. The time limit (700 umaze, 1000 others) is the TimeLimit of
  `gym.make`. The goal is drawn again at every reset from the environment's seed, as antmaze-v2 does
  (`v2_resets`); D4RL's v0/v1 drew it once per process from NumPy's global generator, the same
  distribution per episode but shared by all of a process's episodes.

What cannot be undone: D4RL ran MuJoCo 2.0 through mujoco-py, this runs MuJoCo 3+/4 (solver and
contact changes between versions). `replay_errors` measures how far one simulated step from a
file's row lands from the file's next row (docs/datasets.md gives the check to run on a real file).

Imports neither `algorithms` nor `experiments`; needs gymnasium-robotics (the `robotics` extra).
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.ant_v4 import AntEnv

MAZE_SIZE_SCALING = 4.0  # D4RL's maze_size_scaling: one cell is 4 x 4
MAZE_HEIGHT = 0.5
SUCCESS_RADIUS = 0.5  # D4RL's goal_reaching_env: sparse reward and episode end within 0.5
RESET_NOISE = 0.1  # D4RL AntEnv.reset_model: qpos + U(-0.1, 0.1), qvel + 0.1 N(0, 1)
ANT_QPOS, ANT_QVEL = 15, 14
# d4rl/locomotion/assets/ant.xml, where it differs from gymnasium's ant.xml in the physics
D4RL_TIMESTEP = "0.02"
D4RL_CONTACT = {"solref": ".02 1", "solimp": ".8 .8 .01"}
D4RL_MOTOR = {"gear": "1", "ctrlrange": "-30.0 30.0"}


def write_d4rl_ant_xml(folder: str) -> str:
    """Write gymnasium's ant.xml with D4RL's timestep, contact softness and motors (see the module
    docstring) into `folder`; returns the file's path."""
    tree = ET.parse(os.path.join(os.path.dirname(gym.envs.mujoco.__file__), "assets", "ant.xml"))
    tree.find("option").set("timestep", D4RL_TIMESTEP)
    for name, value in D4RL_CONTACT.items():
        tree.find("default/geom").set(name, value)
    for motor in tree.iter("motor"):
        for name, value in D4RL_MOTOR.items():
            motor.set(name, value)
    path = os.path.join(folder, "d4rl_ant.xml")
    tree.write(path)
    return path


def _cell(maze_map, kind: str) -> tuple[int, int]:
    cells = [(i, j) for i, row in enumerate(maze_map) for j, value in enumerate(row) if value == kind]
    if len(cells) != 1:
        raise ValueError(f"a D4RL evaluation maze has exactly one '{kind}' cell, this one has {len(cells)}")
    return cells[0]


class D4RLAnt(AntEnv):
    """Ant-v4's class on D4RL's model: 10 steps per second of simulation (D4RL's 0.02 s x 5)."""

    metadata = {**AntEnv.metadata, "render_fps": 10}


class D4RLAntMaze(gym.Env):
    """D4RL's AntMaze evaluation (see the module docstring). `maze_map`: D4RL's layout, rows as D4RL
    writes them (1 wall, 0 free, "r" the start cell, "g" the goal cell)."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 10}

    def __init__(self, maze_map, render_mode: str | None = None):
        from gymnasium_robotics.envs.maze.maze_v4 import Maze

        reset_row, reset_col = _cell(maze_map, "r")
        goal_row, goal_col = _cell(maze_map, "g")
        rows = len(maze_map)
        upside_down = [[1 if value == 1 else 0 for value in row] for row in reversed(maze_map)]
        with tempfile.TemporaryDirectory() as folder:
            self.maze, xml_file = Maze.make_maze(write_d4rl_ant_xml(folder), upside_down,
                                                 MAZE_SIZE_SCALING, MAZE_HEIGHT)
        # the simulator's position of D4RL's origin (the reset cell's centre)
        self.origin = self.maze.cell_rowcol_to_xy(np.array([rows - 1 - reset_row, reset_col]))
        self.goal_cell = MAZE_SIZE_SCALING * np.array([goal_col - reset_col, goal_row - reset_row], float)
        try:
            self.ant = D4RLAnt(xml_file=xml_file, exclude_current_positions_from_observation=False,
                               reset_noise_scale=RESET_NOISE, render_mode=render_mode)
        finally:  # compiled into the model by now; gymnasium-robotics leaves it in the temp folder
            os.remove(xml_file)
        self.ant.init_qpos[:2] = self.origin
        self.goal = self.goal_cell.copy()
        self.render_mode = render_mode
        self.control_low, self.control_high = self.ant.action_space.low, self.ant.action_space.high
        self.action_space = gym.spaces.Box(-1.0, 1.0, self.ant.action_space.shape, np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (ANT_QPOS + ANT_QVEL,), np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # D4RL's goal_sampler: cell + U(0, scaling / 4) + U(0, 0.5) * scaling / 4, then max(., 0)
        quarter = MAZE_SIZE_SCALING / 4
        noise = self.np_random.uniform(0, quarter, 2) + self.np_random.uniform(0, 0.5, 2) * quarter
        self.goal = np.maximum(self.goal_cell + noise, 0.0)
        ant_obs, _ = self.ant.reset(seed=None if seed is None else int(self.np_random.integers(2**31)))
        return self.observation(ant_obs), {"success": self.reached(ant_obs)}

    def step(self, action):
        low, high = self.control_low, self.control_high  # D4RL's NormalizedBoxEnv
        control = np.clip(low + (np.asarray(action, np.float64) + 1.0) * 0.5 * (high - low), low, high)
        ant_obs, _, _, _, _ = self.ant.step(control)  # the ant's own reward and health are not D4RL's
        success = self.reached(ant_obs)
        return self.observation(ant_obs), float(success), success, False, {"success": success}

    def observation(self, ant_obs: np.ndarray) -> np.ndarray:
        """D4RL's 29 values from Ant-v4's qpos and qvel: x, y moved into D4RL's frame."""
        obs = np.array(ant_obs, dtype=np.float64)
        obs[:2] -= self.origin
        return obs

    def reached(self, ant_obs: np.ndarray) -> bool:
        return bool(np.linalg.norm(ant_obs[:2] - self.origin - self.goal) <= SUCCESS_RADIUS)

    def set_state_from_observation(self, observation) -> None:
        """Put the simulator in the state a 29-value D4RL observation records (qpos with x, y in
        D4RL's frame, then qvel)."""
        qpos = np.array(observation[:ANT_QPOS], dtype=np.float64)
        qpos[:2] += self.origin
        self.ant.set_state(qpos, np.array(observation[ANT_QPOS:ANT_QPOS + ANT_QVEL], dtype=np.float64))

    def render(self):
        return self.ant.render()

    def close(self):
        self.ant.close()
        super().close()


def replay_errors(env, observations, actions, next_observations) -> np.ndarray:
    """For each row: set `env` (a D4RLAntMaze, possibly wrapped) to the row's observation, take one
    step with the row's action (in [-1, 1], as D4RL's files store them), and return the largest
    absolute difference from the row's next observation, shape (rows,). Rows must not end an
    episode (their next observation then starts another one)."""
    maze = env.unwrapped
    errors = []
    for observation, action, target in zip(observations, actions, next_observations, strict=True):
        maze.set_state_from_observation(observation)
        next_observation, *_ = maze.step(action)
        errors.append(float(np.max(np.abs(next_observation - np.asarray(target, np.float64)))))
    return np.array(errors)


def dataset_replay_errors(data, maze_map, rows: int = 200, seed: int = 0) -> np.ndarray:
    """`replay_errors` on `rows` random transitions of a loaded D4RL AntMaze `envs.Dataset` that do
    not end an episode: how well this environment reproduces the file's own dynamics. On a real file:

        data, info = envs.load("d4rl", "antmaze-umaze-v2")
        errors = dataset_replay_errors(data, info.env_kwargs["maze_map"])
    """
    candidates = np.flatnonzero(~data.episode_ends)
    chosen = np.random.default_rng(seed).choice(candidates, min(rows, candidates.size), replace=False)
    env = D4RLAntMaze(maze_map)
    env.reset(seed=seed)
    try:
        return replay_errors(env, data.observations[chosen], data.actions[chosen],
                             data.next_observations[chosen])
    finally:
        env.close()
