"""Soft Actor-Critic with automatic entropy temperature (Haarnoja et al. 2018, "SAC: Algorithms and
Applications"), on the shared critic ensemble and tanh-Gaussian actor.

    critic:  L_Q = sum_i E[(Q_i(s, a) - y)^2],
             y = r + gamma (1 - d) (min_i Qbar_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    actor:   L_pi = E[alpha log pi(a~|s) - min_i Q_i(s, a~)],  a~ ~ pi(.|s) reparameterised
    alpha:   L_alpha = -E[log alpha (log pi(a~|s) + H_target)],  H_target = -|A|
    targets: Qbar <- (1 - tau) Qbar + tau Q

The actor and temperature losses use the critic before this step's critic update, as in the
paper's simultaneous gradient steps. It is the online learner that trains the project's behaviour
policies (`experiments.generate`) and the policy learner MOPO reuses; run on a fixed dataset
(`algo=sac`) it is the offline SAC baseline of the D4RL papers, which usually fails there.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, Spec
from algorithms.core.networks import TanhGaussianActor, critic_ensemble
from algorithms.core.training import copy_params, create_train_state, scalar_state, soft_update


@flax.struct.dataclass
class SACState:
    actor: TrainState
    critic: TrainState
    target_critic_params: dict
    log_alpha: TrainState
    step: jax.Array


def temperature_loss(log_alpha: jax.Array, log_probs: jax.Array, target_entropy: float) -> jax.Array:
    """Raises alpha while the policy's entropy -log pi is below the target, lowers it above."""
    return -(log_alpha * jax.lax.stop_gradient(log_probs + target_entropy)).mean()


@register
@dataclass
class SAC(Algorithm):
    name = "sac"
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 5e-3
    num_critics: int = 2
    init_temperature: float = 1.0
    target_entropy: float | None = None  # None: -|A|

    def init(self, key, spec: Spec, ctx: Context | None = None) -> SACState:
        actor_key, critic_key = jax.random.split(key)
        actor_net = TanhGaussianActor(self.hidden_dims, spec.action_dim)
        critic_net = critic_ensemble(self.num_critics, self.hidden_dims)
        obs = jnp.zeros((1, spec.observation_dim))
        critic_params = critic_net.init(critic_key, obs, jnp.zeros((1, spec.action_dim)))
        return SACState(
            actor=create_train_state(actor_net, actor_net.init(actor_key, obs), self.actor_lr),
            critic=create_train_state(critic_net, critic_params, self.critic_lr),
            target_critic_params=copy_params(critic_params),
            log_alpha=scalar_state(jnp.log(self.init_temperature), self.alpha_lr),
            step=jnp.zeros((), jnp.int32),
        )

    def update(self, state: SACState, batch, key, ctx: Context | None = None):
        next_key, actor_key = jax.random.split(key)
        alpha = jnp.exp(state.log_alpha.params["value"])
        action_dim = batch.actions.shape[-1]
        target_entropy = -action_dim if self.target_entropy is None else self.target_entropy

        next_actions, next_log_probs = state.actor.apply_fn(
            state.actor.params, batch.next_observations).sample_and_log_prob(seed=next_key)
        next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations,
                                       next_actions).min(axis=0)
        td_target = batch.rewards + self.discount * (1.0 - batch.terminals) * (
            next_q - alpha * next_log_probs)

        def critic_loss(params):
            q = state.critic.apply_fn(params, batch.observations, batch.actions)  # (N, B)
            return ((q - td_target) ** 2).mean(axis=1).sum(), q

        (q_loss, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(state.critic.params)
        critic = state.critic.apply_gradients(grads=grads)

        def actor_loss(params):
            actions, log_probs = state.actor.apply_fn(params, batch.observations).sample_and_log_prob(
                seed=actor_key)
            q_pi = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(axis=0)
            return (alpha * log_probs - q_pi).mean(), log_probs

        (pi_loss, log_probs), grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor.params)
        actor = state.actor.apply_gradients(grads=grads)

        grads = jax.grad(lambda p: temperature_loss(p["value"], log_probs, target_entropy))(
            state.log_alpha.params)
        log_alpha = state.log_alpha.apply_gradients(grads=grads)

        new_state = SACState(
            actor=actor, critic=critic,
            target_critic_params=soft_update(state.target_critic_params, critic.params, self.tau),
            log_alpha=log_alpha, step=state.step + 1)
        metrics = {"critic_loss": q_loss, "q": q.mean(), "actor_loss": pi_loss, "alpha": alpha,
                   "entropy": -log_probs.mean()}
        return new_state, metrics

    def act(self, state: SACState, observations, key, deterministic: bool = True):
        dist = state.actor.apply_fn(state.actor.params, observations)
        return dist.mode() if deterministic else dist.sample(seed=key)
