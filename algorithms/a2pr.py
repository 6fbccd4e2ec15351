"""A2PR, Adaptive Advantage-guided Policy Regularization (Liu et al., 2024), as in `ltlhuuu/A2PR`
(A2PR.py).

A TD3 backbone (algorithms/td3_bc.py: twin critics, target smoothing 0.2 / 0.5, delay 2, Polyak
targets) plus a state value V and a conditional VAE (algorithms/core/vae.py) trained with the agent.
With v = V(s) taken before this step's V update, one update is:
    critic: TD3's.  a~' = clip(pibar(s') + clip(eps, -0.5, 0.5), -1, 1)
    value:  y = min(r + g (1 - d) min_j Qbar_j(s', a~'),  r + g (1 - d) min_j Q_j(s', a~'))
            (target critics and the just-updated online critics), L_V = E[(V(s) - y)^2]
    VAE:    L = E[vae_weight 1[Q_1(s, a) - v > eps_A] mean_dims (D(s, z) - a)^2] + 0.5 E[mean_latent KL]
    actor (every `policy_freq` steps):
            a~ = VAE(s, pi(s)) (encode, sample z, decode; differentiable in pi)
            A~ = Q_1(s, a~) - v,  A = Q_1(s, a) - v
            a^ = a~ if A~ >= A else a;   m = mask (1[A~ >= eps_A] + 1[A > eps_A])  in {0, mask, 2 mask}
            L_pi = -lambda E[Q_1(s, pi(s))] + E[m (pi(s) - a^)^2],  lambda = alpha / sg(E|Q_1(s, pi(s))|)
            (a^ is not detached: the gradient also flows through the VAE into pi, as in the code)
Q_1 is the just-updated critic; the VAE the actor uses is the just-updated one. The value step is
computed before the actor step and applied after it, which is the code's order in effect (nothing
else in the step reads the new V; its targets use the target critic before the actor step's Polyak
update).

Where paper and code differ: the paper's indicator 1[A > eps_A] has no eps in the code (eps_A = 0);
`advantage_threshold` is eps_A (default 0, the code). `mask` and `vae_weight` are the code's weights.
Which V and Q enter the VAE's indicator is not pinned down by the paper; we use the same v as the
actor and the updated critic. States are standardized (always on in the code). Networks as in the
code: actor 3x256, critics and V 4x256, VAE 750-750 with latent 2|A| (Adam 1e-3, torch's default).

Per dataset (configs/algo/a2pr.yaml), from the README, which covers the medium datasets only:
halfcheetah alpha 40, vae_weight 1, mask 1; hopper alpha 2.5, vae_weight 1, mask 0.4, gamma 0.995;
walker2d alpha 2.5, vae_weight 1.5, mask 1. We use each environment's values for all its datasets;
elsewhere the argparse defaults (alpha 2.5, vae_weight 1, mask 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Context, Spec
from algorithms.core.networks import DeterministicActor, ValueNetwork, critic_ensemble
from algorithms.core.training import create_train_state
from algorithms.core.vae import create_vae_state, vae_step
from algorithms.td3_bc import TD3BC, delayed


@flax.struct.dataclass
class A2PRState:
    actor: TrainState
    critic: TrainState
    value: TrainState
    vae: TrainState
    target_actor_params: dict
    target_critic_params: dict
    step: jax.Array


def a2pr_actor_loss(pi, q_pi, q_augmented, q_data, v, augmented, actions, alpha: float, mask: float,
                    threshold: float = 0.0):
    """-lambda mean Q(s, pi) + mean(m (pi - a^)^2) with a^ and m chosen by advantage (module docstring).
    Returns (loss, (bc term, fraction of targets taken from the VAE))."""
    lmbda = jax.lax.stop_gradient(alpha / jnp.abs(q_pi).mean())
    advantage_augmented, advantage_data = q_augmented - v, q_data - v
    use_augmented = advantage_augmented >= advantage_data
    targets = jnp.where(use_augmented[:, None], augmented, actions)
    weights = mask * ((advantage_augmented >= threshold).astype(pi.dtype)
                      + (advantage_data > threshold).astype(pi.dtype))
    bc = (weights[:, None] * (pi - targets) ** 2).mean()
    return -lmbda * q_pi.mean() + bc, (bc, use_augmented.mean())


def value_target(rewards, terminals, discount, next_q_target, next_q_online):
    """min of the target-critic and online-critic TD targets (each already a min over the twins)."""
    backup = lambda next_q: rewards + discount * (1.0 - terminals) * next_q
    return jnp.minimum(backup(next_q_target), backup(next_q_online))


@register
@dataclass
class A2PR(TD3BC):
    name = "a2pr"
    hidden_dims: tuple[int, ...] = (256, 256, 256)  # actor
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256, 256)  # critics and V
    value_lr: float = 3e-4
    alpha: float = 2.5
    mask: float = 0.5
    vae_weight: float = 1.0
    advantage_threshold: float = 0.0  # eps_A of the paper; the code has none (0)
    vae_hidden_dims: tuple[int, ...] = (750, 750)
    vae_lr: float = 1e-3
    vae_kl_weight: float = 0.5

    def networks(self, spec: Spec):
        return (DeterministicActor(self.hidden_dims, spec.action_dim, init_scheme="torch"),
                critic_ensemble(2, self.critic_hidden_dims, init_scheme="torch"))

    def init(self, key, spec: Spec, ctx: Context | None = None) -> A2PRState:
        td3_key, value_key, vae_key = jax.random.split(key, 3)
        td3 = super().init(td3_key, spec, ctx)
        value_net = ValueNetwork(self.critic_hidden_dims, init_scheme="torch")
        value_params = value_net.init(value_key, jnp.zeros((1, spec.observation_dim)))
        return A2PRState(
            actor=td3.actor, critic=td3.critic,
            value=create_train_state(value_net, value_params, self.value_lr),
            vae=create_vae_state(vae_key, spec.observation_dim, spec.action_dim, self.vae_hidden_dims,
                                 self.vae_lr),
            target_actor_params=td3.target_actor_params, target_critic_params=td3.target_critic_params,
            step=td3.step)

    def update(self, state: A2PRState, batch, key, ctx: Context | None = None):
        noise_key, vae_key, actor_key = jax.random.split(key, 3)
        v = state.value.apply_fn(state.value.params, batch.observations)  # before this step's V update
        state, metrics = self.critic_step(state, batch, noise_key)

        next_actions = self.smoothed_target_actions(state, batch.next_observations, noise_key)  # critic's a~'
        target = value_target(
            batch.rewards, batch.terminals, self.discount,
            state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_actions).min(0),
            state.critic.apply_fn(state.critic.params, batch.next_observations, next_actions).min(0))

        q_data = state.critic.apply_fn(state.critic.params, batch.observations, batch.actions)[0]
        weights = self.vae_weight * (q_data - v > self.advantage_threshold).astype(v.dtype)
        vae, vae_metrics = vae_step(state.vae, batch.observations, batch.actions, vae_key,
                                    self.vae_kl_weight, weights)
        state = state.replace(vae=vae)

        def actor_step(state):
            return self.actor_step(state, batch, actor_key, v=v)

        state, actor_metrics = delayed(state.step % self.policy_freq == 0, actor_step, state)

        def value_loss(params):
            return ((state.value.apply_fn(params, batch.observations) - target) ** 2).mean()

        v_loss, grads = jax.value_and_grad(value_loss)(state.value.params)
        state = state.replace(value=state.value.apply_gradients(grads=grads), step=state.step + 1)
        return state, {**metrics, "value_loss": v_loss, "v": v.mean(),
                       "vae_weight_fraction": (weights > 0).mean(), **vae_metrics, **actor_metrics}

    def actor_loss(self, params, state: A2PRState, batch, key, v=None):
        pi = state.actor.apply_fn(params, batch.observations)
        augmented, _, _ = state.vae.apply_fn(state.vae.params, batch.observations, pi, key)
        q = lambda actions: state.critic.apply_fn(state.critic.params, batch.observations, actions)[0]
        loss, (bc, from_vae) = a2pr_actor_loss(pi, q(pi), q(augmented), q(batch.actions), v,
                                               augmented, batch.actions, self.alpha, self.mask,
                                               self.advantage_threshold)
        return loss, {"bc_loss": bc, "vae_target_fraction": from_vae}
