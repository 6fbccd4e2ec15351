"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021), as in `ikostrikov/implicit_q_learning`.

One update, in the reference order:
    1. value:  L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_i Qbar_i(s, a) - V(s)     (expectile)
    2. actor:  L_pi = -E[ min(exp(beta (min_i Qbar_i(s, a) - V(s))), 100) log pi(a|s) ]  (AWR)
    3. critic: L_Q = E[ sum_i (Q_i(s, a) - r - gamma (1 - d) V(s'))^2 ]
    4. target: Qbar <- (1 - tau_target) Qbar + tau_target Q
The value and actor use the *target* critics and the just-updated V, as the reference code does.
The actor is N(tanh(mu(s)), exp(log_std)) with a state-independent log std, its learning rate
follows a cosine decay over training, and dataset actions are clipped to +-(1 - 1e-5) before their
log-likelihood is taken. Every layer is initialised orthogonally with gain sqrt(2), the policy's
mean layer too (the reference's `default_init()`). Defaults are the paper's Gym-locomotion values
(expectile 0.7, temperature 3.0, no dropout); configs/algo/iql.yaml switches AntMaze to 0.9 / 10.0,
Kitchen and Adroit to temperature 0.5 with actor dropout 0.1 (the reference's kitchen_config.py),
and the reward conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, RewardConfig, Spec
from algorithms.core.networks import GaussianActor, ValueNetwork, critic_ensemble
from algorithms.core.training import copy_params, create_train_state, soft_update


@flax.struct.dataclass
class IQLState:
    actor: TrainState
    critic: TrainState
    value: TrainState
    target_critic_params: dict
    step: jax.Array


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


def awr_weights(advantage: jax.Array, temperature, max_weight: float) -> jax.Array:
    """min(exp(beta A), max_weight); `temperature` beta is a number or one per row."""
    return jnp.minimum(jnp.exp(temperature * advantage), max_weight)


def expectile_value_step(value: TrainState, observations, target_q, expectile: float):
    """IQL's value step, one Adam step of L_V = E[|tau - 1(u < 0)| u^2], u = target_q - V(s) (also
    Uni-O4's critics stage); returns the new V and its metrics."""
    def value_loss(params):
        v = value.apply_fn(params, observations)
        return expectile_loss(target_q - v, expectile).mean(), v

    (v_loss, v), grads = jax.value_and_grad(value_loss, has_aux=True)(value.params)
    return value.apply_gradients(grads=grads), {"value_loss": v_loss, "v": v.mean()}


def td_critic_step(critic: TrainState, batch, next_values, discount: float):
    """IQL's critic step, one Adam step of L_Q = E[sum_i (Q_i(s, a) - r - gamma (1 - d) next)^2]
    for given next-state values (IQL: V(s'); Uni-O4's SARSA: Qbar(s', a')); the new Q, metrics."""
    td_target = batch.rewards + discount * (1.0 - batch.terminals) * next_values

    def critic_loss(params):
        q = critic.apply_fn(params, batch.observations, batch.actions)
        return ((q - td_target) ** 2).sum(axis=0).mean(), q

    (q_loss, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(critic.params)
    return critic.apply_gradients(grads=grads), {"critic_loss": q_loss, "q": q.mean()}


@register
@dataclass
class IQL(Algorithm):
    name = "iql"
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    temperature: float = 3.0  # beta, the inverse temperature of advantage weighting
    actor_dropout: float = 0.0  # dropout after each hidden layer of the policy, in its loss only
    max_weight: float = 100.0
    cosine_actor_lr: bool = True  # False in the reference fine-tuning script
    num_critics: int = 2
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(returns_span=1000.0))

    def init(self, key, spec: Spec, ctx: Context | None = None) -> IQLState:
        actor_key, critic_key, value_key = jax.random.split(key, 3)
        obs = jnp.zeros((1, spec.observation_dim))
        act = jnp.zeros((1, spec.action_dim))
        actor_net = GaussianActor(self.hidden_dims, spec.action_dim, dropout_rate=self.actor_dropout)
        critic_net = critic_ensemble(self.num_critics, self.hidden_dims, init_scheme="orthogonal")
        value_net = ValueNetwork(self.hidden_dims, init_scheme="orthogonal")
        actor_lr = (optax.cosine_decay_schedule(self.actor_lr, spec.total_steps)
                    if self.cosine_actor_lr and spec.total_steps > 0 else self.actor_lr)
        critic_params = critic_net.init(critic_key, obs, act)
        return IQLState(
            actor=create_train_state(actor_net, actor_net.init(actor_key, obs), actor_lr),
            critic=create_train_state(critic_net, critic_params, self.critic_lr),
            value=create_train_state(value_net, value_net.init(value_key, obs), self.value_lr),
            target_critic_params=copy_params(critic_params),
            step=jnp.zeros((), jnp.int32),
        )

    def update(self, state: IQLState, batch, key, ctx: Context | None = None):
        value, target_q, value_metrics = self.update_value(state, batch)
        advantage = target_q - value.apply_fn(value.params, batch.observations)
        weights = awr_weights(advantage, self.temperature, self.max_weight)
        actor, actor_loss = self.update_actor(state.actor, batch.observations, batch.actions, weights, key)
        critic, critic_metrics = self.update_critic(state, batch, value)
        new_state = state.replace(
            actor=actor, critic=critic, value=value,
            target_critic_params=soft_update(state.target_critic_params, critic.params, self.tau),
            step=state.step + 1,
        )
        metrics = {**value_metrics, "actor_loss": actor_loss, **critic_metrics, "adv_weight": weights.mean()}
        return new_state, metrics

    def update_value(self, state: IQLState, batch) -> tuple[TrainState, jax.Array, dict]:
        """Step 1: V towards the expectile of min_i Qbar_i(s, a); returns the new V, min_i Qbar_i(s, a)
        and the metrics."""
        target_q = state.critic.apply_fn(
            state.target_critic_params, batch.observations, batch.actions).min(axis=0)
        value, metrics = expectile_value_step(state.value, batch.observations, target_q, self.expectile)
        return value, target_q, metrics

    def update_actor(self, actor: TrainState, policy_inputs, actions, weights, key):
        """Step 2: the weighted log-likelihood of the dataset actions; `policy_inputs` are what the
        policy sees (the states; FamO2O: the states with the encoded balance)."""
        dataset_actions = jnp.clip(actions, -1.0 + 1e-5, 1.0 - 1e-5)

        def actor_loss(params):
            dist = actor.apply_fn(params, policy_inputs, True, rngs={"dropout": key})
            return -(weights * dist.log_prob(dataset_actions)).mean()

        pi_loss, grads = jax.value_and_grad(actor_loss)(actor.params)
        return actor.apply_gradients(grads=grads), pi_loss

    def update_critic(self, state: IQLState, batch, value: TrainState) -> tuple[TrainState, dict]:
        """Step 3: Q_i towards r + gamma (1 - d) V(s') with the just-updated V."""
        next_v = value.apply_fn(value.params, batch.next_observations)
        return td_critic_step(state.critic, batch, next_v, self.discount)

    def act(self, state: IQLState, observations, key, deterministic: bool = True):
        dist = state.actor.apply_fn(state.actor.params, observations)
        actions = dist.mode() if deterministic else dist.sample(seed=key)
        return jnp.clip(actions, -1.0, 1.0)
