"""MuJoCo 4's RK4 integrator in JAX, around MJX's forward dynamics (`envs.mjx.contacts.forward`).

MuJoCo 4.0.0 made RK4 fourth-order accurate for the orientations of free and ball joints (its
changelog, 4.0.0 item 5: "the angular velocities of the Runge-Kutta stages were combined without the
Runge-Kutta-Munthe-Kaas correction"). mujoco-mjx 3.17 (`mjx._src.forward.rungekutta4`) still combines
them the old way, so a model with a free joint and RK4 (Ant) parts from MuJoCo's C simulator from
the first step on (6e-8 in the quaternion after one substep, docs/mjx.md). `RungeKutta4` is MuJoCo
4's `mj_RungeKutta(m, d, 4)` (src/engine/engine_forward.c) with JAX arrays; `step` is `mj_step` for a
model whose option is RK4 (`mj_forward`, then the integrator).

The correction, as MuJoCo 4.0.1's `mj_RungeKutta` computes it (read from the shipped library's
machine code, since no 4.x source was at hand, and matched to the last bit by the same algorithm in
numpy around `mj_forward`): stage i's positions are `qpos0 (+) h * a_i * K_{i-1}` (`mj_integratePos`)
as before, but the stage velocity K_i that later stages and the final combination use is, for each
free joint's angular part and each ball joint, `dexpinv` of the stage's angular velocity w at the
stage's rotation vector theta = h * a_i * K_{i-1}:

    K_i = w + 1/2 theta x w + c(|theta|) theta x (theta x w),   c(x) = (1 - (x/2) cot(x/2)) / x^2,

with theta first wrapped to |theta| <= pi. The stage's forward dynamics still see w itself (MuJoCo
copies the velocity into mjData before correcting its copy). The final step integrates the positions
by h * sum_i b_i K_i and the velocities by h * sum_i b_i qacc_i, as before. The sign (+1/2) is that of
MuJoCo's body-frame angular velocities: `mju_quatIntegrate` multiplies the rotation on the right.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from envs.mjx import contacts

# The classic RK4 tableau (MuJoCo's RK4_A and RK4_B): stage i depends on stage i-1 alone, with the
# weight A[i][i-1] = STAGE_WEIGHTS[i-1], at time t + STAGE_WEIGHTS[i-1] * h.
STAGE_WEIGHTS = (0.5, 0.5, 1.0)
FINAL_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)

# c(x) = (1 - (x/2) cot(x/2)) / x^2 = sum_{n>=1} |B_2n| x^(2n-2) / (2n)!  (B: Bernoulli numbers).
# Below |theta| = 1.75 (MuJoCo's switch too) the series replaces the formula, whose 1 - (x/2)cot(x/2)
# cancels catastrophically for small angles (in float32 above all). Twelve terms leave a relative
# error under 1e-15 at the switch (the next term is 2e-21 x^24 with x^2 <= 3.0625).
_BERNOULLI_ABS = (Fraction(1, 6), Fraction(1, 30), Fraction(1, 42), Fraction(1, 30), Fraction(5, 66),
                  Fraction(691, 2730), Fraction(7, 6), Fraction(3617, 510), Fraction(43867, 798),
                  Fraction(174611, 330), Fraction(854513, 138), Fraction(236364091, 2730))
_SERIES = tuple(float(bernoulli / np.prod(np.arange(1, 2 * n + 1, dtype=object)))
                for n, bernoulli in enumerate(_BERNOULLI_ABS, start=1))
SERIES_LIMIT_SQUARED = 1.75**2


def dexpinv_coefficient(angle_squared: jax.Array) -> jax.Array:
    """c(x) of the module docstring at x^2 = `angle_squared` (x in [0, pi])."""
    series = jnp.zeros_like(angle_squared)
    for coefficient in reversed(_SERIES):  # Horner's rule in x^2
        series = series * angle_squared + coefficient
    large = angle_squared >= SERIES_LIMIT_SQUARED
    safe_squared = jnp.where(large, angle_squared, 1.0)  # keeps the unused branch finite
    half = 0.5 * jnp.sqrt(safe_squared)
    formula = (1.0 - half / jnp.tan(half)) / safe_squared
    return jnp.where(large, formula, series)


def correct_angular_velocity(theta: jax.Array, omega: jax.Array) -> jax.Array:
    """dexpinv at the rotation vectors `theta` of the angular velocities `omega` (both (..., 3)):
    the stage velocity whose combination moves the orientation to fourth order."""
    angle_squared = jnp.sum(theta * theta, axis=-1, keepdims=True)
    # a rotation vector longer than pi is the same rotation as a shorter one: wrap it (as MuJoCo
    # does), where the series and the formula hold
    wrapping = angle_squared > np.pi**2
    angle = jnp.sqrt(jnp.where(wrapping, angle_squared, 1.0))
    turns = jnp.floor(angle / (2 * np.pi) + 0.5)
    theta = jnp.where(wrapping, theta * ((angle - 2 * np.pi * turns) / angle), theta)
    angle_squared = jnp.sum(theta * theta, axis=-1, keepdims=True)
    cross = jnp.cross(theta, omega)
    return omega + 0.5 * cross + dexpinv_coefficient(angle_squared) * jnp.cross(theta, cross)


def quaternion_multiply(left: jax.Array, right: jax.Array) -> jax.Array:
    """Hamilton products of (..., 4) quaternions stored (w, x, y, z), as MuJoCo stores them."""
    w1, x1, y1, z1 = jnp.moveaxis(left, -1, 0)
    w2, x2, y2, z2 = jnp.moveaxis(right, -1, 0)
    return jnp.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                      w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                      w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                      w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def quaternion_integrate(quaternion: jax.Array, omega: jax.Array, scale) -> jax.Array:
    """MuJoCo's `mju_quatIntegrate`: the normalized quaternion turned by `omega * scale` in its own
    (body) frame, i.e. multiplied on the right by that rotation."""
    speed_squared = jnp.sum(omega * omega, axis=-1, keepdims=True)
    moving = speed_squared > 0
    speed = jnp.sqrt(jnp.where(moving, speed_squared, 1.0))
    half_angle = 0.5 * scale * speed
    axis = jnp.where(moving, omega / speed, 0.0)  # no rotation: the identity below
    rotation = jnp.concatenate([jnp.where(moving, jnp.cos(half_angle), 1.0),
                                jnp.sin(half_angle) * axis], axis=-1)
    unit = quaternion / jnp.linalg.norm(quaternion, axis=-1, keepdims=True)
    return quaternion_multiply(unit, rotation)


class RungeKutta4:
    """`mj_RungeKutta(m, d, 4)` of MuJoCo 4 for one model, whose joint layout is read once from the
    MuJoCo model (`mj_model`); `step(model, data)` is then a pure function of the MJX model and data.
    `forward(model, data)` evaluates the stages: `envs.mjx.contacts.forward` by default (mjx.forward
    with MuJoCo's contact frames)."""

    def __init__(self, mj_model, forward=None):
        import mujoco

        if mj_model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4:
            raise ValueError("RungeKutta4 is for models whose option is integrator=RK4")
        if mj_model.na:
            # activations would need MuJoCo's clamped, filter-exact advance; none of the locomotion
            # models has them
            raise ValueError(f"RungeKutta4 does not integrate activations (the model has na={mj_model.na})")
        self.forward = forward or contacts.forward
        linear_positions, linear_velocities, quaternions, angular_velocities = [], [], [], []
        for joint_type, position, velocity in zip(mj_model.jnt_type, mj_model.jnt_qposadr,
                                                  mj_model.jnt_dofadr, strict=True):
            if joint_type == mujoco.mjtJoint.mjJNT_FREE:
                linear_positions += range(position, position + 3)
                linear_velocities += range(velocity, velocity + 3)
                quaternions.append(position + 3)
                angular_velocities.append(velocity + 3)
            elif joint_type == mujoco.mjtJoint.mjJNT_BALL:
                quaternions.append(position)
                angular_velocities.append(velocity)
            else:  # hinge and slide: one coordinate, moved by its velocity
                linear_positions.append(position)
                linear_velocities.append(velocity)
        self._linear_positions = np.asarray(linear_positions, dtype=np.int32)
        self._linear_velocities = np.asarray(linear_velocities, dtype=np.int32)
        self._quaternions = np.asarray(quaternions, dtype=np.int32).reshape(-1, 1) + np.arange(4)
        self._angular = np.asarray(angular_velocities, dtype=np.int32).reshape(-1, 1) + np.arange(3)

    def integrate_positions(self, qpos: jax.Array, qvel: jax.Array, timestep) -> jax.Array:
        """MuJoCo's `mj_integratePos`: qpos moved by qvel over `timestep`, quaternions on the sphere."""
        qpos = qpos.at[self._linear_positions].add(timestep * qvel[self._linear_velocities])
        if not self._quaternions.size:
            return qpos
        turned = quaternion_integrate(qpos[self._quaternions], qvel[self._angular], timestep)
        return qpos.at[self._quaternions].set(turned)

    def _stage_velocity(self, qvel: jax.Array, rotation: jax.Array) -> jax.Array:
        """The velocity a stage contributes: qvel with its angular parts corrected at the stage's
        rotation vectors (`rotation` = h * the velocity its positions were integrated with)."""
        if not self._angular.size:
            return qvel  # hinge and slide joints need no correction (Hopper, Walker2d)
        corrected = correct_angular_velocity(rotation[self._angular], qvel[self._angular])
        return qvel.at[self._angular].set(corrected)

    def integrate(self, model, data):
        """One RK4 step from `data` after `mjx.forward` (as `mj_RungeKutta` expects mj_forward's
        results): the three later stages in one `lax.scan`, so the forward dynamics compile once for them."""
        timestep = model.opt.timestep
        qpos0, qvel0, time0 = data.qpos, data.qvel, data.time

        def stage(carry, weights):
            previous_velocity, previous_acceleration, velocity_sum, acceleration_sum, current = carry
            weight, final_weight = weights
            position_step = weight * previous_velocity
            qpos = self.integrate_positions(qpos0, position_step, timestep)
            qvel = qvel0 + (weight * previous_acceleration) * timestep
            current = current.replace(qpos=qpos, qvel=qvel, time=time0 + weight * timestep)
            current = self.forward(model, current)
            velocity = self._stage_velocity(qvel, timestep * position_step)
            return (velocity, current.qacc, velocity_sum + final_weight * velocity,
                    acceleration_sum + final_weight * current.qacc, current), None

        dtype = qvel0.dtype
        weights = (jnp.asarray(STAGE_WEIGHTS, dtype), jnp.asarray(FINAL_WEIGHTS[1:], dtype))
        first = FINAL_WEIGHTS[0]
        carry = (qvel0, data.qacc, first * qvel0, first * data.qacc, data)
        (_, _, velocity_sum, acceleration_sum, last), _ = jax.lax.scan(stage, carry, weights)
        # mj_advance from the initial state: velocities by the combined accelerations, positions by
        # the combined (corrected) velocities; the last stage's qacc warm-starts the next solve
        return last.replace(qpos=self.integrate_positions(qpos0, velocity_sum, timestep),
                            qvel=qvel0 + acceleration_sum * timestep, time=time0 + timestep,
                            qacc_warmstart=last.qacc)

    def step(self, model, data):
        """`mj_step` for an RK4 model: the forward dynamics at `data`, then `integrate`."""
        return self.integrate(model, self.forward(model, data))
