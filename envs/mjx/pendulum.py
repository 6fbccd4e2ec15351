"""gymnasium's Pendulum-v1 in jax.numpy, with the protocol of `MJXEnv` (envs/mjx/locomotion.py).

The same dynamics, reward and observation as gymnasium's classic-control code (g = 10, m = l = 1,
dt = 0.05, speed clipped to 8, torque to 2): the observation is [cos th, sin th, th'] and the reward
-(angle_normalize(th)^2 + 0.1 th'^2 + 0.001 u^2). Actions come in [-1, 1], as `envs.make_env`
gives them, and are rescaled to [-2, 2] as its RescaleAction does. The time limit is the dataset's
(`max_episode_steps`, 200 for local/pendulum-mixed); the pendulum never terminates. A reset draws
(th, th') uniformly in [-pi, pi] x [-1, 1] with `jax.random` (gymnasium's distribution, not its
numbers). It compiles in seconds, so the tests of the compiled online phase run on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs.mjx.locomotion import EnvState

GRAVITY, MASS, LENGTH, DT = 10.0, 1.0, 1.0, 0.05
MAX_SPEED, MAX_TORQUE = 8.0, 2.0
RESET_HIGH = (jnp.pi, 1.0)  # gymnasium's DEFAULT_X, DEFAULT_Y


def angle_normalize(angle):
    return ((angle + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class PendulumEnv:
    """Pendulum-v1 as pure JAX functions; `EnvState.data` is (th, th')."""

    observation_size = 3
    action_size = 1

    def __init__(self, max_episode_steps: int = 200):
        self.max_episode_steps = max_episode_steps

    def reset(self, key: jax.Array) -> EnvState:
        high = jnp.asarray(RESET_HIGH)
        return self.reset_to(jax.random.uniform(key, (2,), jnp.float32, -high, high))

    def reset_to(self, data) -> EnvState:
        """A new episode from (th, th') (gymnasium's `env.unwrapped.state`)."""
        data = jnp.asarray(data, jnp.float32)
        zero = jnp.zeros((), jnp.float32)
        return EnvState(data, self._observation(data), zero, jnp.zeros((), bool), jnp.zeros((), bool),
                        jnp.zeros((), jnp.int32))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One step with `action` in [-1, 1]; an ended episode steps on (the caller resets it)."""
        theta, speed = state.data[0], state.data[1]
        # RescaleAction's affine map from [-1, 1] to [-2, 2] (gradient 2, intercept 0), then the clip
        torque = jnp.clip(MAX_TORQUE * jnp.asarray(action, jnp.float32)[0], -MAX_TORQUE, MAX_TORQUE)
        cost = angle_normalize(theta) ** 2 + 0.1 * speed**2 + 0.001 * torque**2
        speed = speed + (3 * GRAVITY / (2 * LENGTH) * jnp.sin(theta) + 3.0 / (MASS * LENGTH**2) * torque) * DT
        speed = jnp.clip(speed, -MAX_SPEED, MAX_SPEED)
        data = jnp.stack([theta + speed * DT, speed])
        steps = state.steps + 1
        return EnvState(data, self._observation(data), -cost, jnp.zeros((), bool),
                        steps >= self.max_episode_steps, steps)

    @staticmethod
    def _observation(data):
        return jnp.stack([jnp.cos(data[0]), jnp.sin(data[0]), data[1]])
