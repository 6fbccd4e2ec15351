"""Behaviour cloning: a deterministic tanh policy regressed onto dataset actions,
L = E[(pi(s) - a)^2], on standardized states (the BC baseline of TD3+BC and CORL)."""

from __future__ import annotations

from dataclasses import dataclass

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, Spec
from algorithms.core.networks import DeterministicActor
from algorithms.core.training import create_train_state


@flax.struct.dataclass
class BCState:
    actor: TrainState
    step: jax.Array


@register
@dataclass
class BC(Algorithm):
    name = "bc"
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    normalize_states: bool = True

    def init(self, key, spec: Spec, ctx: Context | None = None) -> BCState:
        net = DeterministicActor(self.hidden_dims, spec.action_dim, init_scheme="torch")
        params = net.init(key, jnp.zeros((1, spec.observation_dim)))
        return BCState(create_train_state(net, params, self.actor_lr), jnp.zeros((), jnp.int32))

    def update(self, state: BCState, batch, key, ctx: Context | None = None):
        def bc_loss(params):
            pi = state.actor.apply_fn(params, batch.observations)
            return ((pi - batch.actions) ** 2).mean()

        loss, grads = jax.value_and_grad(bc_loss)(state.actor.params)
        actor = state.actor.apply_gradients(grads=grads)
        return BCState(actor, state.step + 1), {"bc_loss": loss}

    def act(self, state: BCState, observations, key, deterministic: bool = True):
        return state.actor.apply_fn(state.actor.params, observations)
