"""JAX copies of the evaluation environments: MuJoCo XLA for the locomotion models
(envs/mjx/locomotion.py) and jax.numpy for Pendulum (envs/mjx/pendulum.py).

The locomotion copies need the `mjx` extra (`pip install -e ".[mjx]"`, the `mujoco-mjx` package)."""

from envs.dataset import DatasetError
from envs.mjx.locomotion import EnvState, MJXEnv, Settings, make_mjx_env, settings_of
from envs.mjx.pendulum import PendulumEnv
from envs.registry import DatasetInfo

__all__ = ["EnvState", "MJXEnv", "PendulumEnv", "Settings", "make_jax_env", "make_mjx_env", "settings_of"]


def make_jax_env(info: DatasetInfo) -> MJXEnv | PendulumEnv:
    """The compiled copy of the environment that evaluates `info`'s dataset (`env.backend=mjx`):
    Pendulum-v1 in jax.numpy, Hopper, HalfCheetah, Walker2d and Ant in MJX. Anything else raises one
    DatasetError naming env.backend=host."""
    if info.env_id == "Pendulum-v1":
        return PendulumEnv(int(info.max_episode_steps))
    if info.env_id is None:
        raise DatasetError(f"{info.key} has no environment to run compiled; use env.backend=host")
    try:
        import mujoco.mjx  # noqa: F401
    except ImportError as error:
        raise DatasetError(f"env.backend=mjx needs the mjx extra for {info.env_id} ({error}); install it "
                           "(pip install -e \".[mjx]\") or use env.backend=host") from None
    return make_mjx_env(info)
