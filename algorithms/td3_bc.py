"""TD3+BC (Fujimoto & Gu, 2021), as in `sfujim/TD3_BC`.

Critic (every step), with target policy smoothing:
    a' = clip(pibar(s') + clip(eps, -c, c), -1, 1),  eps ~ N(0, sigma^2)
    L_Q = sum_i E[(Q_i(s, a) - r - gamma (1 - d) min_j Qbar_j(s', a'))^2]
Actor and targets (every `policy_freq` steps):
    lambda = alpha / E|Q_1(s, pi(s))|   (no gradient through lambda)
    L_pi = -lambda E[Q_1(s, pi(s))] + E[(pi(s) - a)^2]
States are standardized with the dataset statistics (mean, std + 1e-3), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, Spec
from algorithms.core.networks import DeterministicActor, critic_ensemble
from algorithms.core.training import copy_params, create_train_state, soft_update


@flax.struct.dataclass
class TD3BCState:
    actor: TrainState
    critic: TrainState
    target_actor_params: dict
    target_critic_params: dict
    step: jax.Array


def td3_bc_actor_loss(q_pi: jax.Array, pi: jax.Array, dataset_actions: jax.Array, alpha: float):
    """-lambda mean Q(s, pi(s)) + mean (pi(s) - a)^2 with lambda = alpha / mean|Q| (detached)."""
    lmbda = jax.lax.stop_gradient(alpha / jnp.abs(q_pi).mean())
    bc = ((pi - dataset_actions) ** 2).mean()
    return -lmbda * q_pi.mean() + bc, bc


def delayed(run: jax.Array, step, state):
    """`step(state) -> (state, metrics)` when `run`, else the state unchanged and NaN metrics (which
    the loop's averages skip). `run` must not be batched (the shared step counter) for lax.cond to
    stay a branch."""
    _, shapes = jax.eval_shape(step, state)
    skip = lambda state: (state, jax.tree.map(lambda x: jnp.full(x.shape, jnp.nan, x.dtype), shapes))
    return jax.lax.cond(run, step, skip, state)


@register
@dataclass
class TD3BC(Algorithm):
    name = "td3_bc"
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    alpha: float = 2.5
    exploration_noise: float = 0.1  # std of the Gaussian added to actions when exploring online
    normalize_states: bool = True

    def networks(self, spec: Spec):
        """(actor, twin critic) modules; PyTorch's default initialisation, as in the TD3+BC code."""
        return (DeterministicActor(self.hidden_dims, spec.action_dim, init_scheme="torch"),
                critic_ensemble(2, self.hidden_dims, init_scheme="torch"))

    def init(self, key, spec: Spec, ctx: Context | None = None) -> TD3BCState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.observation_dim))
        act = jnp.zeros((1, spec.action_dim))
        actor_net, critic_net = self.networks(spec)
        actor_params = actor_net.init(actor_key, obs)
        critic_params = critic_net.init(critic_key, obs, act)
        return TD3BCState(
            actor=create_train_state(actor_net, actor_params, self.actor_lr),
            critic=create_train_state(critic_net, critic_params, self.critic_lr),
            target_actor_params=copy_params(actor_params),
            target_critic_params=copy_params(critic_params),
            step=jnp.zeros((), jnp.int32),
        )

    def update(self, state: TD3BCState, batch, key, ctx: Context | None = None):
        state, metrics = self.critic_step(state, batch, key)
        # `step` is shared across seeds (see Algorithm), so this stays a real branch under vmap.
        actor_key = jax.random.fold_in(key, 1)
        state, actor_metrics = delayed(state.step % self.policy_freq == 0,
                                       lambda s: self.actor_step(s, batch, actor_key, ctx=ctx), state)
        return state.replace(step=state.step + 1), {**metrics, **actor_metrics}

    def critic_step(self, state, batch, key):
        """TD3's clipped double-Q step with target policy smoothing (noise drawn from `key`)."""
        next_actions = self.smoothed_target_actions(state, batch.next_observations, key)
        next_q = state.critic.apply_fn(
            state.target_critic_params, batch.next_observations, next_actions).min(axis=0)
        td_target = batch.rewards + self.discount * (1.0 - batch.terminals) * next_q

        def critic_loss(params):
            q = state.critic.apply_fn(params, batch.observations, batch.actions)
            return ((q - td_target) ** 2).mean(axis=1).sum(), q

        (q_loss, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(state.critic.params)
        return state.replace(critic=state.critic.apply_gradients(grads=grads)), {
            "critic_loss": q_loss, "q": q.mean()}

    def smoothed_target_actions(self, state, next_observations, key):
        """a' = clip(pibar(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma^2)."""
        next_actions = self.target_actions(state, next_observations, key)
        noise = jax.random.normal(key, next_actions.shape) * self.policy_noise
        noise = jnp.clip(noise, -self.noise_clip, self.noise_clip)
        return jnp.clip(next_actions + noise, -1.0, 1.0)

    def target_actions(self, state, next_observations, key):
        """pibar(s'), the target policy's actions before smoothing (`key`: for subclasses)."""
        return state.actor.apply_fn(state.target_actor_params, next_observations)

    def actor_step(self, state, batch, key, **context):
        """One step on `actor_loss` (which also receives `context`), then Polyak updates of both
        targets (TD3's delayed step)."""
        (loss, metrics), grads = jax.value_and_grad(self.actor_loss, has_aux=True)(
            state.actor.params, state, batch, key, **context)
        actor = state.actor.apply_gradients(grads=grads)
        return state.replace(
            actor=actor,
            target_actor_params=soft_update(state.target_actor_params, actor.params, self.tau),
            target_critic_params=soft_update(state.target_critic_params, state.critic.params, self.tau),
        ), {"actor_loss": loss, **metrics}

    def actor_loss(self, params, state, batch, key, ctx: Context | None = None):
        """TD3+BC's loss; the subclasses (PRDC, SPOT, ...) change only this."""
        pi = state.actor.apply_fn(params, batch.observations)
        q_pi = state.critic.apply_fn(state.critic.params, batch.observations, pi)[0]
        loss, bc = td3_bc_actor_loss(q_pi, pi, batch.actions, self.alpha)
        return loss, {"bc_loss": bc}

    def act(self, state: TD3BCState, observations, key, deterministic: bool = True):
        """pi(s); exploring, pi(s) + N(0, exploration_noise^2) clipped to [-1, 1] (TD3's and
        CORL's online fine-tuning)."""
        actions = state.actor.apply_fn(state.actor.params, observations)
        if deterministic:
            return actions
        noise = self.exploration_noise * jax.random.normal(key, actions.shape)
        return jnp.clip(actions + noise, -1.0, 1.0)
