"""JAX (MuJoCo XLA) copies of the locomotion evaluation environments (envs/mjx/locomotion.py).

Needs the `mjx` extra (`pip install -e ".[mjx]"`, the `mujoco-mjx` package)."""

from envs.mjx.locomotion import EnvState, MJXEnv, Settings, make_mjx_env, settings_of

__all__ = ["EnvState", "MJXEnv", "Settings", "make_mjx_env", "settings_of"]
