"""Small training utilities: optimiser state, target networks."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

_ADAM_STATIC = tuple(set(inspect.signature(optax.adam).parameters) - {"learning_rate"})


def adam(learning_rate, **adam_kwargs) -> optax.GradientTransformation:
    """optax.adam; a constant learning rate is kept in the optimiser state (optax's
    inject_hyperparams), not in the (static) update function, so that it may differ between the
    trainings of one compiled program (experiments/grid.py). A schedule stays in the function."""
    if callable(learning_rate):
        return optax.adam(learning_rate, **adam_kwargs)
    return optax.inject_hyperparams(optax.adam, static_args=_ADAM_STATIC)(
        learning_rate=learning_rate, **adam_kwargs)


def create_train_state(module, params, learning_rate, **adam_kwargs) -> TrainState:
    """Adam over `params`; `learning_rate` may be a float or an optax schedule."""
    return TrainState.create(apply_fn=module.apply, params=params,
                             tx=adam(learning_rate, **adam_kwargs))


def scalar_state(value: float, learning_rate: float) -> TrainState:
    """A learned scalar (a log temperature, a Lagrange multiplier) with its own Adam, as
    `params["value"]` (TrainState wants a dict)."""
    return TrainState.create(apply_fn=None, params={"value": jnp.asarray(value, jnp.float32)},
                             tx=adam(learning_rate))


def soft_update(target_params, online_params, tau: float):
    """Polyak averaging: target <- tau * online + (1 - tau) * target."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target_params, online_params)


def copy_params(params):
    """A distinct copy, so target and online parameters never share (donated) buffers."""
    return jax.tree.map(lambda x: x.copy(), params)
