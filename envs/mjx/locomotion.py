"""MuJoCo XLA copies of the locomotion evaluation environments: Hopper, HalfCheetah, Walker2d, Ant.

Each one is built from the gymnasium environment that evaluation builds for the dataset
(`envs.environment`), so it runs the same compiled MuJoCo model (the same XML file, v4's for D4RL
data, v5's for generated and Minari data) with that environment's frame skip, initial state, reset
noise, reward weights and time limit, read from the environment and its constructor's defaults,
not restated here. What gymnasium computes in Python is reproduced with jax.numpy:

- action: in [-1, 1] as `make_env` gives it, rescaled to the model's control range
  (gymnasium's RescaleAction); the control cost is paid on the rescaled action.
- physics: `frame_skip` physics steps, then, when contact forces are observed or paid for
  (Ant-v5, or Ant-v4 with `use_contact_forces`), `mjx.rne_postconstraint` as gymnasium calls
  `mj_rnePostConstraint`. A model whose option is RK4 (Hopper, Walker2d, Ant) steps with
  `envs.mjx.integrator.RungeKutta4`, MuJoCo 4's RK4 around `envs.mjx.contacts.forward`: mujoco-mjx
  3.17's own RK4 integrates a free joint's orientation as MuJoCo did before 4.0, and its contact
  frames for steep capsules on a plane are not MuJoCo's; either parts Ant from MuJoCo (docs/mjx.md).
  Euler models (HalfCheetah) step with `mjx.step`.
- forward velocity: x of qpos (Ant: x and y of the torso's `xpos`, which after a step lags the final
  substep exactly as MuJoCo's does) before and after, over `dt = timestep * frame_skip`.
- healthy reward: v4 pays it on every step (the terminating one too), v5 only while healthy.
- termination: the rule of `envs.termination` (shared with model rollouts), applied to the
  observation's layout before Hopper's and Walker2d's velocity clip, i.e. on gymnasium's raw
  state as gymnasium tests it. Non-default healthy ranges are refused, because those functions
  encode the defaults.
- observation: gymnasium's, in its order (positions without x, or x and y for Ant; velocities,
  clipped to [-10, 10] for Hopper and Walker2d; Ant-v5's clipped external contact forces of every
  body but the world), then the dataset's appended zeros (D4RL Ant's 84 contact forces).
- time limit: `truncated` once `max_episode_steps` steps have been taken since the reset.

`reset(key)` and `step(state, action)` are pure, so `jax.vmap` runs many environments and
`jax.lax.scan` many steps. The reset noise is drawn with `jax.random`, not gymnasium's generator,
so the same seed gives a different (equally distributed) initial state; `reset_to(qpos, qvel)`
starts from a given state.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.dataset import DatasetError
from envs.mjx.integrator import RungeKutta4
from envs.registry import DatasetInfo
from envs.termination import termination_for

# Positions left out of the observation (x; Ant also y), and whether the velocities are clipped.
EXCLUDED_POSITIONS = {"hopper": 1, "walker2d": 1, "halfcheetah": 1, "ant": 2}
VELOCITY_CLIP = {"hopper": 10.0, "walker2d": 10.0}
# Hopper and Walker2d draw their initial velocity noise uniformly, HalfCheetah and Ant normally.
UNIFORM_VELOCITY_NOISE = ("hopper", "walker2d")
HEALTHY_REWARD = ("hopper", "walker2d", "ant")  # HalfCheetah has none and never terminates
# Constructor settings that termination.py encodes (their defaults are the only values allowed),
# and those that must keep their default because the observation layout depends on them.
TERMINATION_SETTINGS = ("healthy_state_range", "healthy_z_range", "healthy_angle_range",
                        "terminate_when_unhealthy")
LAYOUT_SETTINGS = ("exclude_current_positions_from_observation", "main_body")


class EnvState(NamedTuple):
    """One environment's state after a reset or a step (a pytree; vmapped states add a batch axis)."""
    data: object  # mjx.Data: the full simulator state, with MJX's solver warm start
    observation: jax.Array
    reward: jax.Array  # of the step that led here; 0 after a reset
    terminated: jax.Array
    truncated: jax.Array  # the time limit was reached
    steps: jax.Array  # steps since the reset


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the gymnasium environment does in Python, as read from it (see `settings_of`)."""
    name: str  # hopper, halfcheetah, walker2d, ant
    version: int  # 4 or 5
    frame_skip: int
    dt: float
    forward_reward_weight: float
    ctrl_cost_weight: float
    healthy_reward: float
    contact_cost_weight: float  # 0 when contact forces are not paid for
    contact_force_range: tuple[float, float]
    contact_forces_observed: bool
    reset_noise_scale: float
    max_episode_steps: int
    observation_zeros: int


def settings_of(env, info: DatasetInfo) -> Settings:
    """Read the settings from the unwrapped gymnasium environment: its constructor's defaults
    overridden by the keyword arguments it was made with. Raises DatasetError for an environment
    or a setting this module does not reproduce."""
    raw = env.unwrapped
    spec = raw.spec
    name = spec.id.split("-v")[0].lower()
    version = int(spec.id.rsplit("-v", 1)[1])
    if name not in EXCLUDED_POSITIONS or version not in (4, 5):
        raise DatasetError(
            f"env.backend=mjx has no copy of {spec.id} (it has Hopper, HalfCheetah, Walker2d and Ant, "
            "v4 and v5); use env.backend=host for this dataset.")
    defaults = {key: parameter.default
                for key, parameter in inspect.signature(type(raw).__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    given = {**defaults, **spec.kwargs}
    for key in TERMINATION_SETTINGS + LAYOUT_SETTINGS:
        if key in given and given[key] != defaults[key]:
            raise DatasetError(
                f"{spec.id} is made with {key}={given[key]!r}, but env.backend=mjx reproduces only "
                f"the default ({defaults[key]!r}): envs/termination.py and the observation layout "
                "assume it. Use env.backend=host, or drop the setting.")
    paid = given.get("use_contact_forces", version == 5)  # v4's switch; v5 always pays
    observed = given.get("include_cfrc_ext_in_observation", given.get("use_contact_forces", False))
    return Settings(
        name=name, version=version, frame_skip=int(raw.frame_skip), dt=float(raw.dt),
        forward_reward_weight=float(given.get("forward_reward_weight", 1.0)),
        ctrl_cost_weight=float(given["ctrl_cost_weight"]),
        healthy_reward=float(given.get("healthy_reward", 0.0)) if name in HEALTHY_REWARD else 0.0,
        contact_cost_weight=float(given["contact_cost_weight"]) if name == "ant" and paid else 0.0,
        contact_force_range=tuple(given.get("contact_force_range", (-1.0, 1.0))),
        contact_forces_observed=bool(name == "ant" and observed),
        reset_noise_scale=float(given["reset_noise_scale"]),
        max_episode_steps=int(info.max_episode_steps),
        observation_zeros=int(info.observation_zeros),
    )


class MJXEnv:
    """A locomotion environment as pure JAX functions (see the module docstring)."""

    def __init__(self, mj_model, settings: Settings, init_qpos, init_qvel, action_low, action_high):
        import mujoco
        from mujoco import mjx

        self.settings = settings
        self.mj_model = mj_model
        self.model = mjx.put_model(mj_model)
        if mj_model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            runge_kutta = RungeKutta4(mj_model)
            self._physics_step, self._forward_dynamics = runge_kutta.step, runge_kutta.forward
        else:
            self._physics_step, self._forward_dynamics = mjx.step, mjx.forward
        self.init_qpos = jnp.asarray(init_qpos)
        self.init_qvel = jnp.asarray(init_qvel)
        self.action_low = jnp.asarray(action_low)
        self.action_high = jnp.asarray(action_high)
        self._termination = termination_for(settings.name)
        self._needs_contact_forces = settings.contact_forces_observed or settings.contact_cost_weight > 0
        # counted from the model (the equivalence tests check it against the observations)
        forces = 6 * (mj_model.nbody - 1) if settings.contact_forces_observed else 0
        self.observation_size = (mj_model.nq - EXCLUDED_POSITIONS[settings.name] + mj_model.nv + forces
                                 + settings.observation_zeros)
        self.action_size = int(self.action_low.shape[0])
        self.max_episode_steps = settings.max_episode_steps

    # -- the environment's functions -------------------------------------------------------------

    def reset(self, key: jax.Array) -> EnvState:
        """A new episode from gymnasium's initial state plus its reset noise, drawn from `key`."""
        scale = self.settings.reset_noise_scale
        position_key, velocity_key = jax.random.split(key)
        dtype = self.init_qpos.dtype
        qpos = self.init_qpos + jax.random.uniform(
            position_key, self.init_qpos.shape, dtype, -scale, scale)
        if self.settings.name in UNIFORM_VELOCITY_NOISE:
            noise = jax.random.uniform(velocity_key, self.init_qvel.shape, dtype, -scale, scale)
        else:
            noise = scale * jax.random.normal(velocity_key, self.init_qvel.shape, dtype)
        return self.reset_to(qpos, self.init_qvel + noise)

    def reset_to(self, qpos, qvel) -> EnvState:
        """A new episode from the given joint positions and velocities (gymnasium's `set_state`)."""
        from mujoco import mjx

        data = mjx.make_data(self.model)
        qpos = jnp.asarray(qpos, data.qpos.dtype)
        data = self._forward(data.replace(qpos=qpos, qvel=jnp.asarray(qvel, data.qvel.dtype)))
        # MJX's forward normalizes a free joint's quaternion in qpos (Ant's, which the reset noise
        # leaves unnormalized); MuJoCo's mj_forward uses it normalized but leaves qpos as set, and
        # gymnasium observes that. The next step normalizes it in both.
        data = data.replace(qpos=qpos)
        if self.settings.contact_forces_observed:
            # gymnasium's reset observes the zeros MuJoCo's reset leaves (mj_forward does not
            # compute the forces)
            data = data.tree_replace({"_impl.cfrc_ext": jnp.zeros_like(data._impl.cfrc_ext)})
        zero = jnp.zeros((), data.qpos.dtype)
        return EnvState(data, self._observation(data), zero, jnp.zeros((), bool), jnp.zeros((), bool),
                        jnp.zeros((), jnp.int32))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One environment step with `action` in [-1, 1]; the state of an ended episode steps on
        (reset it to start a new one)."""
        from mujoco import mjx

        settings = self.settings
        data = state.data
        ctrl = self.action_low + (self.action_high - self.action_low) * (
            (jnp.asarray(action, data.ctrl.dtype) + 1.0) / 2.0)
        before = self._forward_position(data)
        data = jax.lax.fori_loop(0, settings.frame_skip, lambda _, d: self._physics_step(self.model, d),
                                 data.replace(ctrl=ctrl))
        if self._needs_contact_forces:
            data = mjx.rne_postconstraint(self.model, data)
        velocity = (self._forward_position(data) - before) / settings.dt
        terminated = self._terminated(data)
        healthy_reward = settings.healthy_reward * (1.0 if settings.version == 4 else ~terminated)
        reward = (settings.forward_reward_weight * velocity[0] + healthy_reward
                  - settings.ctrl_cost_weight * jnp.sum(jnp.square(ctrl))
                  - settings.contact_cost_weight * jnp.sum(jnp.square(self._contact_forces(data))))
        steps = state.steps + 1
        return EnvState(data, self._observation(data), reward.astype(data.qpos.dtype), terminated,
                        steps >= settings.max_episode_steps, steps)

    def rollout(self, state: EnvState, actions: jax.Array) -> tuple[EnvState, EnvState]:
        """`step` over actions of shape (steps, action_size) in one `lax.scan`: the last state and
        every step's state stacked (the steps go on through a termination, as `step` does)."""
        return jax.lax.scan(lambda current, action: (self.step(current, action),) * 2, state, actions)

    # -- gymnasium's Python, in jax.numpy --------------------------------------------------------

    def _forward(self, data):
        return self._forward_dynamics(self.model, data)

    def _forward_position(self, data):
        if self.settings.name == "ant":
            return data.xpos[1, :2]  # the torso (gymnasium's main_body 1)
        return data.qpos[:1]

    def _contact_forces(self, data):
        low, high = self.settings.contact_force_range
        # MJX 3.17 keeps the JAX implementation's cfrc_ext in `_impl` (the top-level field is
        # deprecated: MuJoCo Warp's Data lays it out differently)
        return jnp.clip(data._impl.cfrc_ext, low, high)

    def _raw_state(self, data):
        """The observation's positions and unclipped velocities: what termination is tested on."""
        return jnp.concatenate([data.qpos[EXCLUDED_POSITIONS[self.settings.name]:], data.qvel])

    def _terminated(self, data):
        state = self._raw_state(data)[None]
        return self._termination(state, None, state)[0]

    def _observation(self, data):
        settings = self.settings
        velocity = data.qvel
        if settings.name in VELOCITY_CLIP:
            velocity = jnp.clip(velocity, -VELOCITY_CLIP[settings.name], VELOCITY_CLIP[settings.name])
        parts = [data.qpos[EXCLUDED_POSITIONS[settings.name]:], velocity]
        if settings.contact_forces_observed:
            parts.append(self._contact_forces(data)[1:].ravel())
        parts.append(jnp.zeros(settings.observation_zeros, data.qpos.dtype))
        return jnp.concatenate(parts)


def make_mjx_env(info: DatasetInfo) -> MJXEnv:
    """The MJX copy of the environment that evaluates `info`'s dataset (envs.environment)."""
    from envs.environment import _make_raw_env

    env = _make_raw_env(info)
    try:
        settings = settings_of(env, info)
        raw = env.unwrapped
        return MJXEnv(raw.model, settings, np.array(raw.init_qpos), np.array(raw.init_qvel),
                      env.action_space.low, env.action_space.high)
    finally:
        env.close()
