"""D4RL's Kitchen evaluation environment (`kitchen-{complete,partial,mixed}-v0`) on the maintained
`mujoco` bindings.

D4RL's own environment (d4rl/kitchen/kitchen_envs.py on adept_envs' KitchenTaskRelaxV1) needs
mujoco-py. gymnasium-robotics' FrankaKitchen-v1 (`KitchenEnv`) is its port: the same models (D4RL's
franka_kitchen_jntpos_act_ab.xml and FrankaKitchen-v1's kitchen_env_model.xml, both compiled with
MuJoCo 4, have the same joints, ranges, damping, armature, friction loss, actuators, masses and
collision geoms, but for one collision cylinder FrankaKitchen-v1 adds at the robot's base, radius
0.12, 1.8 m tall, and D4RL's massless, non-colliding teleoperation mocap body), the same controller
(an action in [-1, 1] is a joint velocity of twice that, clipped to the velocity and position bounds
of franka_config.xml, aimed from the last *observed*, noisy joint positions), 40 frames of 2 ms per
step, the same initial pose, the same seven task elements with their goals and the 0.3 completion
threshold. This class gives D4RL's view of it:

- **D4RL's 60-value observation**: the robot's 9 joint positions, the 21 object positions, then the
  30-value goal (zeros but for the target tasks' goal values at their positions, D4RL's
  `_get_task_goal`; constant in an episode and in D4RL's files, which were relabelled with it).
  FrankaKitchen-v1's 59 values also hold velocities and no goal.
- **D4RL's observation noise**: D4RL adds `0.1 x` each joint's noise amplitude (franka_config.xml)
  to the robot's and the objects' observed positions (`robot_noise_ratio = 0.1`, used for both);
  FrankaKitchen-v1 defaults to 0.01 (robot) and 0.0005 (objects), set here to 0.1 and 0.1.
- **D4RL's scoring**: the four target tasks of the file (`envs.registry.KITCHEN_TASKS`), each
  rewarded once (+1) on the step it first comes within 0.3 of its goal, the episode ending when all
  four are done, at most 280 steps: the return is D4RL's 0..4 score.

Differences that remain: D4RL tests completion on the noisy observation, FrankaKitchen-v1 on the
noise-free positions (the noise is at most 0.01 on the task elements, against the 0.3 threshold);
FrankaKitchen-v1 reads the objects' noise amplitudes one joint earlier than D4RL's robot does (the
kettle's first quaternion entry gets a position's amplitude); and MuJoCo 2.0 (D4RL) against the
installed MuJoCo. D4RL's files hold no velocities and carry observation noise, so a one-step replay
from a row (as for AntMaze) cannot be exact: `replay_errors` measures it anyway, with velocities
taken as zero, and docs/datasets.md says what to expect.

Imports neither `algorithms` nor `experiments`; needs gymnasium-robotics (the `robotics` extra).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs import robotics_compat

D4RL_NOISE_RATIO = 0.1  # adept_envs KitchenV0.robot_noise_ratio, applied to robot and objects
ROBOT_JOINTS, OBJECT_POSITIONS, GOAL_SIZE = 9, 21, 30
# FrankaKitchen-v1's observation: robot qpos 9, robot qvel 9, object qpos 21, object qvel 20
OBJECT_START = 2 * ROBOT_JOINTS


class D4RLKitchen(gym.Env):
    """D4RL's kitchen with `tasks_to_complete` (see the module docstring)."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 12}

    def __init__(self, tasks_to_complete, render_mode: str | None = None):
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import (
            OBS_ELEMENT_GOALS,
            OBS_ELEMENT_INDICES,
            KitchenEnv,
        )

        robotics_compat.install()  # FrankaKitchen-v1 on mujoco 4
        self.kitchen = KitchenEnv(
            tasks_to_complete=list(tasks_to_complete), terminate_on_tasks_completed=True,
            remove_task_when_completed=True, object_noise_ratio=D4RL_NOISE_RATIO,
            robot_noise_ratio=D4RL_NOISE_RATIO, render_mode=render_mode)
        self.goal = np.zeros(GOAL_SIZE)
        for task in tasks_to_complete:
            self.goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        self.render_mode = render_mode
        self.action_space = self.kitchen.action_space
        self.observation_space = gym.spaces.Box(
            -np.inf, np.inf, (ROBOT_JOINTS + OBJECT_POSITIONS + GOAL_SIZE,), np.float64)

    def observation(self, kitchen_obs: dict) -> np.ndarray:
        values = kitchen_obs["observation"]
        return np.concatenate([values[:ROBOT_JOINTS],
                               values[OBJECT_START:OBJECT_START + OBJECT_POSITIONS], self.goal])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        kitchen_obs, info = self.kitchen.reset(seed=seed)
        return self.observation(kitchen_obs), info

    def step(self, action):
        kitchen_obs, reward, terminated, truncated, info = self.kitchen.step(action)
        return self.observation(kitchen_obs), float(reward), terminated, truncated, info

    def set_state_from_observation(self, observation) -> None:
        """The positions a 60-value observation records (noise included), velocities zero: all the
        state D4RL's files keep."""
        qpos = np.asarray(observation[:ROBOT_JOINTS + OBJECT_POSITIONS], dtype=np.float64)
        robot = self.kitchen.robot_env
        robot.set_state(qpos, np.zeros(robot.model.nv))
        robot._last_robot_qpos = qpos[:ROBOT_JOINTS].copy()  # the controller aims from the last observation

    def render(self):
        return self.kitchen.render()

    def close(self):
        self.kitchen.close()
        super().close()


def replay_errors(env, observations, actions, next_observations) -> np.ndarray:
    """For each row: set `env` (a D4RLKitchen, possibly wrapped) to the row's positions (velocities
    zero), step with the row's action, and return the largest absolute difference from the row's next
    observation's 30 positions, shape (rows,)."""
    kitchen = env.unwrapped
    errors = []
    for observation, action, target in zip(observations, actions, next_observations, strict=True):
        kitchen.set_state_from_observation(observation)
        next_observation, *_ = kitchen.step(action)
        positions = ROBOT_JOINTS + OBJECT_POSITIONS
        errors.append(float(np.max(np.abs(next_observation[:positions] - np.asarray(target[:positions])))))
    return np.array(errors)
