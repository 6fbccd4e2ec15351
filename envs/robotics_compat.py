"""FrankaKitchen-v1 (gymnasium-robotics <= 1.4.2, and its main branch as of 2026-07) fails to build
with mujoco 4: its joint getters and setters (`gymnasium_robotics.utils.mujoco_utils.get_joint_qpos`,
`get_joint_qvel`, `set_joint_qpos`, `set_joint_qvel`) end with

    assert joint_type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)

where `joint_type` is a NumPy int32 read from `model.jnt_type`. `x in (a, b)` compares `a == x`
with the tuple's item on the left, and mujoco 4's enums (pybind11) answer False to an equality with
a NumPy integer (`mjJNT_HINGE == np.int32(3)` is False, `np.int32(3) == mjJNT_HINGE` is True), so
the assertion fails for every hinge and slide joint. FrankaKitchen's observation reads the robot's
joints through these functions at construction, hence the AssertionError. The other comparisons in
those functions put the NumPy value on the left and are right.

`install()` (called before any gymnasium-robotics environment is made) replaces the four functions,
only where this mujoco's enums show the problem, by versions that compare plain ints and otherwise
do what the originals do (same slices, same shape checks). gymnasium-robotics' other environments
(AntMaze, Adroit) never reach those assertions: their joints are read without the type check.
"""

from __future__ import annotations

import numpy as np


def comparison_is_broken() -> bool:
    """True when this mujoco's joint-type enum does not equal the NumPy integer of the same value."""
    import mujoco

    return not (mujoco.mjtJoint.mjJNT_HINGE == np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)))


def _joint_slice(model, name: str, velocity: bool) -> slice:
    import mujoco

    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
    kind = int(model.jnt_type[joint_id])
    if kind == int(mujoco.mjtJoint.mjJNT_FREE):
        width = 6 if velocity else 7
    elif kind == int(mujoco.mjtJoint.mjJNT_BALL):
        width = 3 if velocity else 4
    else:
        assert kind in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
        width = 1
    start = int((model.jnt_dofadr if velocity else model.jnt_qposadr)[joint_id])
    return slice(start, start + width)


def get_joint_qpos(model, data, name):
    return data.qpos[_joint_slice(model, name, velocity=False)].copy()


def get_joint_qvel(model, data, name):
    return data.qvel[_joint_slice(model, name, velocity=True)].copy()


def _set(array, where: slice, name: str, value) -> None:
    value = np.array(value)
    width = where.stop - where.start
    assert width == 1 or value.shape == (width,), f"Value has incorrect shape {name}: {value}"
    array[where] = value


def set_joint_qpos(model, data, name, value):
    _set(data.qpos, _joint_slice(model, name, velocity=False), name, value)


def set_joint_qvel(model, data, name, value):
    _set(data.qvel, _joint_slice(model, name, velocity=True), name, value)


def install() -> None:
    """Replace gymnasium-robotics' four joint accessors where mujoco's enums need it (see above)."""
    if not comparison_is_broken():
        return
    from gymnasium_robotics.utils import mujoco_utils

    for function in (get_joint_qpos, get_joint_qvel, set_joint_qpos, set_joint_qvel):
        setattr(mujoco_utils, function.__name__, function)
