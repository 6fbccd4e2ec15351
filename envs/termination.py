"""When an episode terminates, as a function of (s, a, s') on raw observations, for model rollouts.

Each function maps batches (B, |S|), (B, |A|), (B, |S|) to a boolean (B,) array and is written with
jax.numpy, so it runs inside compiled rollouts. They reproduce the `terminated` rule of gymnasium's
v5 environments, which evaluate every dataset here (checked against the real environments on
generated trajectories in tests/test_dynamics.py), with the default observation layout (x, and for
Ant x and y, excluded):

    Hopper-v5      unhealthy unless 0.7 < z, -0.2 < angle < 0.2 and -100 < s'[1:] < 100
                   (z = s'[0], angle = s'[1]; all strict)
    Walker2d-v5    unhealthy unless 0.8 < z < 2.0 and -1 < angle < 1 (strict)
    Ant-v5         unhealthy unless s' is finite and 0.2 <= z <= 1.0 (z = s'[0]; closed)
    HalfCheetah-v5, Pendulum-v1: never terminate.

These are also gym v3's rules (v5 changed rewards and observations, not termination). The reference
MOPO codes differ: OfflineRL-Kit (`utils/termination_fns.py`) checks Hopper's state range only from
above (`abs(s' < 100)`), adds a |s'| < 100 rule to Walker2d and ends HalfCheetah rollouts when
|s'| >= 100; the MOPO authors' Walker2d has no range check either. We follow the environments.

One difference from the environments cannot be removed: Hopper-v5 tests its range on the raw
velocities while its observation clips them to [-10, 10], so a velocity beyond +-100 terminates the
real environment but not this function. Measured: with random velocity kicks of up to +-200 (far
beyond any data) 7 of 3000 rows disagreed, each with a velocity over 100.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

Termination = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def hopper(observations, actions, next_observations):
    height, angle = next_observations[:, 0], next_observations[:, 1]
    rest = next_observations[:, 1:]
    healthy = (jnp.all((rest > -100.0) & (rest < 100.0), axis=-1) & (height > 0.7)
               & (angle > -0.2) & (angle < 0.2))
    return ~healthy


def walker2d(observations, actions, next_observations):
    height, angle = next_observations[:, 0], next_observations[:, 1]
    healthy = (height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def ant(observations, actions, next_observations):
    height = next_observations[:, 0]
    healthy = jnp.all(jnp.isfinite(next_observations), axis=-1) & (height >= 0.2) & (height <= 1.0)
    return ~healthy


def never(observations, actions, next_observations):
    return jnp.zeros(next_observations.shape[:1], bool)


TERMINATIONS: dict[str, Termination] = {
    "hopper": hopper, "walker2d": walker2d, "ant": ant, "halfcheetah": never, "pendulum": never,
}


def termination_for(name: str) -> Termination:
    """The function for an environment, by short name ("hopper") or gymnasium id ("Hopper-v5")."""
    key = name.split("-v")[0].lower().replace("_", "")
    if key not in TERMINATIONS:
        raise KeyError(f"no termination function for environment '{name}'; known: "
                       f"{', '.join(sorted(TERMINATIONS))} (AntMaze has none)")
    return TERMINATIONS[key]
