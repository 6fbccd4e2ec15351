"""envs/mjx: the MuJoCo XLA copies of the locomotion environments against gymnasium's C simulator.

Each comparison starts both simulators from the same qpos/qvel (gymnasium's reset state) and feeds
both the same actions; MJX runs in float64 here (`jax.enable_x64`), where the two agree to round-off
(docs/mjx.md has the measured differences, float32's too). Compiling MJX's step takes a minute or
more on a shared CPU, so the integration tier compiles two models (Hopper-v4: contacts, RK4,
termination, the clipped velocities and the time limit; Ant-v4's RK4 with a free joint against
`mj_step`); the others are `slow`.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

pytest.importorskip("mujoco.mjx", reason="the mjx extra is not installed (pip install -e '.[mjx]')")

import jax  # noqa: E402

from envs.dataset import DatasetError  # noqa: E402
from envs.environment import make_env  # noqa: E402
from envs.registry import lookup  # noqa: E402

# Float64 MJX against MuJoCo (float64): round-off only, grown over the steps by the dynamics.
OBSERVATION_TOLERANCE = 1e-6
REWARD_TOLERANCE = 1e-5  # gymnasium squares the float32 action, MJX the float64 one

# One dataset per family and model version: D4RL data is evaluated on v4, generated data on v5.
FAMILIES = {
    "d4rl/hopper-medium-v2": 11, "local/hopper-medium": 11,
    "d4rl/halfcheetah-medium-v2": 17, "local/halfcheetah-medium": 17,
    "d4rl/walker2d-medium-v2": 17, "local/walker2d-medium": 17,
    # D4RL's 111 values: 27 of Ant-v4 and 84 zeros for its contact forces; v5 observes 78 of them
    "d4rl/ant-medium-v2": 111, "local/ant-medium": 105,
}


def info_of(key: str, **changes):
    source, name = key.split("/", 1)
    return dataclasses.replace(lookup(source, name), **changes)


def gymnasium_run(info, actions: np.ndarray, seed: int = 0, velocity_kick=None) -> dict:
    """Reset gymnasium's environment (make_env, as evaluation does) with `seed`, add `velocity_kick`
    to the velocities if given, and step it through every action, on past terminations and the time
    limit as MJX's `step` does."""
    env = make_env(info)
    first, _ = env.reset(seed=seed)
    raw = env.unwrapped
    if velocity_kick is not None:
        raw.set_state(raw.data.qpos.copy(), raw.data.qvel + velocity_kick)
        first = np.concatenate([raw._get_obs(), np.zeros(info.observation_zeros)])
    start = {"qpos": raw.data.qpos.copy(), "qvel": raw.data.qvel.copy(), "first_observation": first}
    rows = {"observation": [], "reward": [], "terminated": [], "truncated": []}
    with warnings.catch_warnings():  # stepping on after the episode ended is deliberate
        warnings.simplefilter("ignore")
        for action in actions:
            observation, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(rows, (observation, reward, terminated, truncated), strict=True):
                rows[key].append(value)
    env.close()
    return {**start, **{key: np.asarray(value) for key, value in rows.items()}}


def mjx_run(info, qpos, qvel, actions: np.ndarray):
    """The MJX copy from the same state through the same actions, in float64."""
    from envs.mjx import make_mjx_env

    with jax.enable_x64(True):
        env = make_mjx_env(info)
        start = env.reset_to(qpos, qvel)
        _, states = jax.jit(env.rollout)(start, actions.astype(np.float64))
        return jax.tree.map(np.asarray, (start, states))


def assert_equivalent(expected: dict, start, states, steps_checked: int | None = None) -> None:
    np.testing.assert_allclose(np.asarray(start.observation), expected["first_observation"], atol=1e-12)
    span = slice(0, steps_checked)
    np.testing.assert_allclose(states.observation[span], expected["observation"][span],
                               atol=OBSERVATION_TOLERANCE)
    np.testing.assert_allclose(states.reward[span], expected["reward"][span], atol=REWARD_TOLERANCE)
    np.testing.assert_array_equal(states.terminated[span], expected["terminated"][span])
    np.testing.assert_array_equal(states.truncated[span], expected["truncated"][span])


def random_actions(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (count, size)).astype(np.float32)


# -- construction: no compilation ------------------------------------------------------------------


@pytest.mark.parametrize("key", list(FAMILIES))
def test_settings_and_sizes_come_from_the_evaluation_environment(key):
    from envs.mjx import make_mjx_env

    info = info_of(key)
    env = make_mjx_env(info)
    gym_env = make_env(info)
    raw = gym_env.unwrapped
    assert env.observation_size == FAMILIES[key] == gym_env.observation_space.shape[0]
    assert env.action_size == gym_env.action_space.shape[0]
    assert env.settings.frame_skip == raw.frame_skip and env.settings.dt == raw.dt
    assert env.settings.version == (4 if key.startswith("d4rl/") else 5)
    assert env.settings.max_episode_steps == gym_env.spec.max_episode_steps == 1000
    np.testing.assert_array_equal(np.asarray(env.init_qpos), raw.init_qpos.astype(np.float32))
    assert env.settings.ctrl_cost_weight == raw._ctrl_cost_weight
    assert env.settings.reset_noise_scale == raw._reset_noise_scale
    gym_env.close()


def test_refuses_what_it_does_not_reproduce():
    from envs.mjx import make_mjx_env

    changed = info_of("local/hopper-medium", env_kwargs={"healthy_z_range": (0.5, 2.0)})
    with pytest.raises(DatasetError, match="healthy_z_range.*env.backend=host"):
        make_mjx_env(changed)
    with pytest.raises(DatasetError, match="no copy of Pendulum-v1"):
        make_mjx_env(info_of("local/pendulum-mixed"))


# -- MuJoCo 4's RK4 (envs/mjx/integrator.py) -----------------------------------------------------------


def test_quaternion_integration_is_mujocos():
    import mujoco

    from envs.mjx.integrator import quaternion_integrate

    rng = np.random.default_rng(0)
    for speed in (0.0, 1e-9, 1.0, 30.0):
        quaternion, velocity = rng.normal(size=4), speed * rng.normal(size=3)
        expected = quaternion.copy()
        mujoco.mju_quatIntegrate(expected, velocity, 0.01)
        with jax.enable_x64(True):
            turned = np.asarray(quaternion_integrate(quaternion, velocity, 0.01))
        np.testing.assert_allclose(turned, expected, atol=1e-15)


def test_the_stage_correction_is_dexpinv():
    """About the rotation vector's own axis the correction changes nothing; across it, it is
    w + 1/2 theta x w + c theta x (theta x w), with c = 1/12 at small angles and the closed form
    (1 - (x/2) cot(x/2)) / x^2 at large ones (the series and the formula meet at |theta| = 1.75);
    rotation vectors longer than pi are wrapped as MuJoCo does (2 pi + x turns as x)."""
    from envs.mjx.integrator import correct_angular_velocity, dexpinv_coefficient

    with jax.enable_x64(True):
        theta = np.array([0.3, -0.2, 0.5])
        np.testing.assert_allclose(np.asarray(correct_angular_velocity(theta, 2.0 * theta)), 2.0 * theta,
                                   atol=1e-15)
        for angle in (0.5, 1.75 - 1e-9, 1.75, 2.5, 3.0):
            closed = (1.0 - 0.5 * angle / np.tan(0.5 * angle)) / angle**2
            np.testing.assert_allclose(float(dexpinv_coefficient(np.asarray(angle**2))), closed, rtol=1e-13)
        # where the closed form cancels, the series' first terms: 1/12 + x^2/720 + x^4/30240
        for angle in (0.0, 1e-4, 0.01):
            taylor = 1 / 12 + angle**2 / 720 + angle**4 / 30240
            np.testing.assert_allclose(float(dexpinv_coefficient(np.asarray(angle**2))), taylor, rtol=1e-15)
        omega = np.array([1.0, 2.0, -0.5])
        cross = np.cross(theta, omega)
        expected = omega + 0.5 * cross + dexpinv_coefficient(theta @ theta) * np.cross(theta, cross)
        np.testing.assert_allclose(np.asarray(correct_angular_velocity(theta, omega)), expected, atol=1e-15)
        axis = theta / np.linalg.norm(theta)
        np.testing.assert_allclose(np.asarray(correct_angular_velocity((2 * np.pi + 0.4) * axis, omega)),
                                   np.asarray(correct_angular_velocity(0.4 * axis, omega)), atol=1e-12)


@pytest.mark.integration  # compiles MJX's Ant step: a minute or more on a CPU (docs/testing.md)
def test_rk4_steps_ants_free_joint_as_mujoco_4_does():
    """150 physics steps of Ant-v4's model (RK4, a free joint), float64, from gymnasium's reset
    state with the torso spinning, under random controls: through the first contacts of steep
    legs with the floor, qpos and qvel stay within round-off of MuJoCo's `mj_step` (measured:
    2e-13 over the first 100 steps, 1e-11 by step 200). mujoco-mjx 3.17's own step is 1e-5 apart
    after one step, and 7e-2 at the first steep contact (docs/mjx.md)."""
    import mujoco
    from mujoco import mjx

    from envs.mjx.integrator import RungeKutta4

    info = info_of("d4rl/ant-medium-v2")
    env = make_env(info)
    env.reset(seed=0)
    model = env.unwrapped.model
    data = mujoco.MjData(model)
    data.qpos[:] = env.unwrapped.data.qpos
    data.qvel[:] = env.unwrapped.data.qvel + np.r_[0, 0, 0, 3.0, -2.0, 5.0, np.zeros(model.nv - 6)]
    env.close()
    mujoco.mj_forward(model, data)
    controls = np.random.default_rng(0).uniform(-1.0, 1.0, (150, model.nu))
    with jax.enable_x64(True):
        mjx_model = mjx.put_model(model)
        runge_kutta = RungeKutta4(model)
        start = mjx.make_data(mjx_model).replace(qpos=jax.numpy.asarray(data.qpos),
                                                 qvel=jax.numpy.asarray(data.qvel))

        def physics_step(state, control):
            state = runge_kutta.step(mjx_model, state.replace(ctrl=control))
            return state, (state.qpos, state.qvel, state._impl.contact.dist)

        _, (qpos, qvel, distances) = jax.jit(lambda s, c: jax.lax.scan(physics_step, s, c))(start, controls)
    contacts = 0
    for step, control in enumerate(controls):
        data.ctrl[:] = control
        mujoco.mj_step(model, data)
        contacts += data.ncon
        np.testing.assert_allclose(qpos[step], data.qpos, atol=1e-11, err_msg=f"qpos after step {step + 1}")
        np.testing.assert_allclose(qvel[step], data.qvel, atol=1e-11, err_msg=f"qvel after step {step + 1}")
    assert contacts > 0 and (np.asarray(distances) < 0).any()  # the legs touched the floor


# -- equivalence with gymnasium ---------------------------------------------------------------------


@pytest.mark.integration  # compiling MJX's step takes minutes on a CPU (docs/testing.md)
def test_hopper_v4_matches_gymnasium_through_falls_and_the_time_limit():
    """200 random steps from a state whose foot spins at 15 rad/s: the observation clips it to 10,
    the hopper falls (termination, contacts with the floor), and a 150-step limit truncates."""
    info = info_of("d4rl/hopper-medium-v2", max_episode_steps=150)
    actions = random_actions(200, 3)
    expected = gymnasium_run(info, actions, velocity_kick=np.eye(6)[5] * 15.0)
    assert expected["first_observation"][10] == 10.0  # clipped
    assert expected["terminated"].any() and not expected["terminated"].all()
    start, states = mjx_run(info, expected["qpos"], expected["qvel"], actions)
    assert_equivalent(expected, start, states)
    # the check can fail: a step of v5's healthy-reward rule instead of v4's would differ by 1
    assert np.abs(states.reward - expected["reward"]).max() < 0.5


@pytest.mark.integration  # compiling MJX's step takes minutes on a CPU (docs/testing.md)
def test_reset_is_pure_and_vmaps():
    """reset(key) draws gymnasium's noise (uniform for Hopper): the same key, the same state;
    different keys, different states, all within the noise scale of the initial state."""
    from envs.mjx import make_mjx_env

    env = make_mjx_env(info_of("local/hopper-medium"))
    reset = jax.jit(jax.vmap(env.reset))
    keys = jax.random.split(jax.random.key(0), 8)
    states, reversed_states = reset(keys), reset(keys[::-1])
    qpos = np.asarray(states.data.qpos)
    np.testing.assert_array_equal(qpos[::-1], np.asarray(reversed_states.data.qpos))
    assert len({row.tobytes() for row in qpos}) == 8
    offset = qpos - np.asarray(env.init_qpos)
    assert np.abs(offset).max() <= env.settings.reset_noise_scale
    assert states.observation.shape == (8, 11) and not np.asarray(states.terminated).any()


# Steps over which the two simulators agree to OBSERVATION_TOLERANCE under random actions: past
# them chaotic contacts amplify the round-off of float64 (measured, docs/mjx.md): Hopper and
# Walker2d stay within 1e-8 for 500 steps; HalfCheetah (time step 0.01, a body bouncing on the
# floor) grows from 1e-15 to 1e-9 by step 40 and to 1 by step 75; Ant-v4 (four legs on the floor,
# where the solver's stopping rule turns round-off into 1e-7 at times) stays within 1e-11 for 50
# steps and passes 1e-6 at step 77.
AGREEING_STEPS = {"hopper": 300, "walker2d": 300, "halfcheetah": 35, "ant": 60}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_model_matches_gymnasium_until_chaos_parts_them(key):
    """Every family's model and version, from gymnasium's reset state, with a time limit inside the
    compared steps."""
    steps = AGREEING_STEPS[key.split("/")[1].split("-")[0]]
    info = info_of(key, max_episode_steps=steps - 5)
    env = make_env(info)
    actions = random_actions(steps, env.action_space.shape[0])
    env.close()
    expected = gymnasium_run(info, actions)
    start, states = mjx_run(info, expected["qpos"], expected["qvel"], actions)
    assert_equivalent(expected, start, states)
    assert states.truncated[steps - 6] and not states.truncated[steps - 7]


# -- one fixed policy's normalized score over 20 episodes on each backend ----------------------------

# Each backend resets its own 20 episodes (gymnasium with evaluation's episode seeds, MJX with
# jax.random) and MJX runs in float32, as training would: the trajectories part (chaotic contacts,
# above), so the two means are compared as samples, with Welch's t-test. Margin: the difference of
# the means lies inside Welch's 99% confidence interval (p > 0.01), and the policy moves the robot.
SCORE_EPISODES = 20
WELCH_LEVEL = 0.01
MOVING_SCORE = 5.0  # normalized: D4RL's random policy scores 0 by definition


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAMILIES))
def test_a_fixed_policy_scores_the_same_on_both_backends(key):
    from benchmarks.mjx_scores import compare

    row = compare(info_of(key), SCORE_EPISODES, seed=0)
    host, mjx = np.asarray(row["host_scores"]), np.asarray(row["mjx_scores"])
    assert host.shape == mjx.shape == (SCORE_EPISODES,)
    assert host.mean() > MOVING_SCORE and mjx.mean() > MOVING_SCORE, row
    assert row["welch_p"] > WELCH_LEVEL, row
