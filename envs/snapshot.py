"""Snapshots of a running environment, so that an episode in progress continues exactly after the
process stops: the online phase saves them in its checkpoints instead of ending the episodes there.

    saved = snapshot(env)        # plain JSON (arrays as base64), any time between steps
    restore(fresh_env, saved)    # the same env id and settings; it then steps exactly as `env` would

What an environment needs to continue is its simulator state, the Python attributes its `step`
reads (a goal, a counter), its random generator (the next reset's initial state) and the
counters of its wrappers (TimeLimit's steps). Supported, and refused with a SnapshotError
otherwise (the caller says what to do instead):

- **wrappers**: TimeLimit (its step counter), OrderEnforcing (its reset flag) and the stateless
  PassiveEnvChecker, RescaleAction, ClipAction, TransformObservation, TransformAction;
- **classic control** (`gymnasium.envs.classic_control`: Pendulum, CartPole, ...): the instance's
  plain attributes (`state`, counters) and its random generator;
- **MuJoCo** (`gymnasium.envs.mujoco`, the locomotion environments): the plain attributes, the
  random generator and every array of `mjData`, derived quantities included. qpos, qvel, act, time
  and the solver's warm start would be enough for the physics, but an environment's `step` also
  reads quantities the last `mj_step` computed before integrating (Ant's torso `xpos` for its
  forward velocity), which a forward pass at the restored qpos would not reproduce;
- **gymnasium-robotics' mazes** (AntMaze, PointMaze): the maze's plain attributes (goal, reset
  position) and its inner MuJoCo environment as above. Only the goal marker's site in the model
  (drawn, never simulated) is not restored;
- **D4RL's AntMaze** (`envs.d4rl_antmaze`): the same, its goal and its inner Ant-v4 on D4RL's model.

Adroit and Kitchen (gymnasium-robotics) change their MjModel at reset (targets, object positions)
or keep task lists; they are refused rather than restored approximately. Imports neither
`algorithms` nor `experiments` (envs/__init__.py).
"""

from __future__ import annotations

import base64
import numbers

import numpy as np

# wrapper class name -> the attributes that change while an episode runs
WRAPPER_STATE = {
    "TimeLimit": ("_elapsed_steps",),
    "OrderEnforcing": ("_has_reset",),
    "PassiveEnvChecker": (),
    "RescaleAction": (),
    "ClipAction": (),
    "TransformObservation": (),
    "TransformAction": (),
}
SUPPORTED_MODULES = ("gymnasium.envs.classic_control", "gymnasium.envs.mujoco",
                     "gymnasium_robotics.envs.maze", "envs.d4rl_antmaze")


class SnapshotError(ValueError):
    """The environment's state cannot be saved exactly; the message names the environment."""


def snapshot(env) -> dict:
    """The state of `env` (a gymnasium environment with its wrappers) as plain JSON."""
    layers = []
    while hasattr(env, "env") and env is not env.unwrapped:
        name = type(env).__name__
        if name not in WRAPPER_STATE:
            raise SnapshotError(f"the wrapper {name} of {env.unwrapped.spec and env.unwrapped.spec.id} "
                                "is not known to envs/snapshot.py, so its state cannot be saved")
        layers.append({field: encode(getattr(env, field)) for field in WRAPPER_STATE[name]})
        env = env.env
    return {"wrappers": layers, "env": _snapshot_base(env)}


def restore(env, saved: dict) -> None:
    """Put `env` (made like the one `saved` came from, and reset once) in the saved state."""
    for layer in saved["wrappers"]:
        if not hasattr(env, "env") or env is env.unwrapped:
            raise SnapshotError("the snapshot has more wrappers than the environment it is restored to")
        for field, value in layer.items():
            setattr(env, field, decode(value))
        env = env.env
    _restore_base(env, saved["env"])


def check(env) -> None:
    """SnapshotError now if `env` could not be snapshot (before any training depends on it)."""
    snapshot(env)


def _snapshot_base(env) -> dict:
    module = type(env).__module__
    if not module.startswith(SUPPORTED_MODULES):
        spec = getattr(env, "spec", None)
        raise SnapshotError(
            f"{spec.id if spec else type(env).__name__} ({module}.{type(env).__name__}) cannot be "
            "snapshot: envs/snapshot.py restores classic-control, gymnasium MuJoCo and "
            "gymnasium-robotics maze environments and D4RL's AntMaze (envs/d4rl_antmaze.py) only")
    saved = {"attributes": {}, "nested": {}, "random": None, "mujoco": None}
    for name, value in vars(env).items():
        if _plain(value):
            saved["attributes"][name] = encode(value)
        elif _is_env(value):  # a maze's inner robot
            saved["nested"][name] = _snapshot_base(value)
    if getattr(env, "_np_random", None) is not None:
        saved["random"] = env._np_random.bit_generator.state
    data = vars(env).get("data")
    if type(data).__name__ == "MjData":
        saved["mujoco"] = {"time": float(data.time),
                           **{name: encode(array) for name, array in _mujoco_arrays(data)}}
    return saved


def _restore_base(env, saved: dict) -> None:
    for name, value in saved["attributes"].items():
        setattr(env, name, decode(value))
    for name, nested in saved["nested"].items():
        _restore_base(getattr(env, name), nested)
    if saved["random"] is not None:
        env.np_random.bit_generator.state = saved["random"]
    if saved["mujoco"] is not None:
        data = env.data
        arrays = dict(_mujoco_arrays(data))
        for name, value in saved["mujoco"].items():
            if name == "time":
                data.time = value
                continue
            stored = decode(value)
            # Arrays in mjData's arena are sized by this step's contacts and constraints; the next
            # mj_step recomputes them from the state, so a differently sized one is left as it is.
            if arrays[name].shape == stored.shape:
                arrays[name][...] = stored


def _mujoco_arrays(data):
    for name in dir(data):
        if not name.startswith("_"):
            value = getattr(data, name)
            if isinstance(value, np.ndarray) and value.flags.writeable:
                yield name, value


def _is_env(value) -> bool:
    import gymnasium as gym

    return isinstance(value, gym.Env)


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, numbers.Number, np.ndarray, np.generic))


def encode(value):
    """An array, a NumPy scalar or a float as exact JSON (arrays as base64 bytes); others as they are."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        return {"dtype": array.dtype.str, "shape": list(array.shape),
                "bytes": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")}
    if isinstance(value, float):  # JSON writes floats exactly (repr); inf/nan as strings to be safe
        return {"float": repr(value)}
    return value


def decode(value):
    """The value `encode` was given."""
    if isinstance(value, dict) and "bytes" in value:
        array = np.frombuffer(base64.b64decode(value["bytes"]), np.dtype(value["dtype"]))
        array = array.reshape(value["shape"]).copy()
        return array[()] if not value["shape"] else array
    if isinstance(value, dict) and "float" in value:
        return float(value["float"])
    return value
