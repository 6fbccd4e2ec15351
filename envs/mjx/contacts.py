"""`mjx.forward` with MuJoCo's contact frames for capsules on planes.

A contact's frame orients the friction pyramid (MuJoCo's default cone): rotating it about the normal
changes the friction forces. MuJoCo's `mjc_PlaneCapsule` (src/engine/engine_collision_primitive.c)
hands the capsule's axis to `mju_makeFrame` (src/engine/engine_util_spatial.c) as the first tangent,
which then projects it onto the plane and normalizes it whatever its length. mujoco-mjx 3.17's
`plane_capsule` (`mjx._src.collision_primitive`) does the same only while the projected axis is at
least 0.5 long: for a capsule more than 60 degrees from the plane it takes (0, 1, 0) instead. Hopper,
Walker2d and HalfCheetah move in a vertical plane, where either choice gives the same four pyramid
edges (x and y, in another order); Ant's legs point every way, and its feet meet the floor steeply,
so MJX's friction there differs from MuJoCo's (measured: qacc 43 apart at a contact 0.45 mm off the
floor, docs/mjx.md).

`forward` is `mjx.forward` (`mjx._src.forward.forward`: the same public functions in the same order)
with the frames of plane-capsule contacts recomputed as MuJoCo computes them, between collision
detection and the constraints built from the contacts.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# below this length MuJoCo's mju_normalize3 gives up and returns (1, 0, 0) (mjMINVAL)
MINIMUM_LENGTH = 1e-15


def plane_capsule_frames(model, data, contact):
    """The contact frames (rows: normal, first and second tangent) with every plane-capsule
    contact's first tangent the capsule's axis projected onto the plane, as `mju_makeFrame` makes it."""
    from mujoco import mjx

    geom_types = jnp.asarray(np.asarray(model.geom_type))[contact.geom]
    on_plane = ((geom_types[:, 0] == mjx.GeomType.PLANE)
                & (geom_types[:, 1] == mjx.GeomType.CAPSULE))[:, None]
    normal = contact.frame[:, 0]
    axis = data.geom_xmat[contact.geom[:, 1]][:, :, 2]  # the capsule's z axis, in the world frame
    tangent = axis - normal * jnp.sum(normal * axis, axis=-1, keepdims=True)
    length = jnp.linalg.norm(tangent, axis=-1, keepdims=True)
    unit = tangent / jnp.where(length < MINIMUM_LENGTH, 1.0, length)
    tangent = jnp.where(length < MINIMUM_LENGTH, jnp.asarray([1.0, 0.0, 0.0], unit.dtype), unit)
    frame = jnp.stack([normal, tangent, jnp.cross(normal, tangent)], axis=1)
    return jnp.where(on_plane[:, :, None], frame, contact.frame)


def forward(model, data):
    """`mjx.forward` with MuJoCo's plane-capsule contact frames (see the module docstring)."""
    from mujoco import mjx

    for stage in (mjx.kinematics, mjx.com_pos, mjx.camlight, mjx.tendon, mjx.crb, mjx.tendon_armature,
                  mjx.factor_m, mjx.collision):
        data = stage(model, data)
    contact = data._impl.contact  # MJX 3.17 keeps the JAX implementation's contacts in `_impl`
    if contact.geom.shape[0]:
        data = data.tree_replace({"_impl.contact.frame": plane_capsule_frames(model, data, contact)})
    for stage in (mjx.make_constraint, mjx.transmission, mjx.sensor_pos, mjx.fwd_velocity, mjx.sensor_vel,
                  mjx.fwd_actuation, mjx.fwd_acceleration):
        data = stage(model, data)
    if data._impl.efc_J.size == 0:  # no constraints: mjx.forward skips the solver as well
        return data.replace(qacc=data.qacc_smooth)
    return mjx.sensor_acc(model, mjx.solve(model, data))
