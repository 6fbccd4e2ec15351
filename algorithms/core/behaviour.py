"""What the dataset's behaviour tells before an agent trains: its policy, cloned as an ensemble, and
the values of its actions, learned in-sample. Each is a `Stage` (trained on the dataset, frozen,
cached), built from a small frozen dataclass whose fields are the stage's settings (its cache key).
They are Uni-O4's stages (Lei-Kun/Uni-O4 `critic.py`, `BC_ensemble.py`, `ppo_finetune/main.py`), on
states standardized with the dataset's statistics when `state_norm` (`fit_normalizer`):

    critics, "iql":   V towards the expectile omega of min_i Qbar_i(s, a), then Q towards
                      r + gamma nd V(s') with the new V (IQL's own value and critic steps,
                      algorithms/iql.py), Qbar <- (1 - tau) Qbar + tau Q every `target_update_every`
                      Q steps;
    critics, "sarsa": one Q towards r + gamma nd Qbar(s', a'), a' the dataset's next action, and V
                      regressed on the Monte-Carlo return (`batch.returns_to_go`);
    BC ensemble:      K members on the same minibatches,
                      l_i = -log pi_i(a|s) - alpha_bc (log pi_i(a|s) - sg max_{j != i} log pi_j(a|s))
                      (its gradient is (1 + alpha_bc) that of BC);
    value re-fit:     a V for PPO regressed on the Monte-Carlo returns of the scaled rewards
                      (algorithms/core/ppo.py: `init_value_refit`, `value_refit_step`).
nd = 1 - terminal (or timeout, with `timeouts_terminal`). The cache key holds the settings, not the
code: a change here that alters what a stage learns must give its Stage a new `version`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms.core.algorithm import Spec, Stage
from algorithms.core.networks import BoundedGaussianPolicy, ValueNetwork, critic_ensemble
from algorithms.core.ppo import (
    ACTIVATIONS,
    OnlineValue,
    PPOConfig,
    ValueRefit,
    init_value_refit,
    value_refit_step,
    value_regression_step,
)
from algorithms.core.training import copy_params, create_train_state, soft_update
from algorithms.iql import expectile_value_step, td_critic_step
from envs.preprocessing import Normalizer


def fit_normalizer(observations: jax.Array, enabled: bool) -> Normalizer:
    """The dataset's state statistics (mean, std + 1e-3, as envs.Normalizer.from_dataset), computed
    on the device where the stages hold the data; the identity when `state_norm` is off."""
    if not enabled:
        return Normalizer.identity(observations.shape[-1])
    return Normalizer(observations.mean(axis=0), observations.std(axis=0) + 1e-3)


def not_done(batch, timeouts_terminal: bool) -> jax.Array:
    """nd: 1 - terminal, or 1 - (terminal or timeout) when a timeout ends an episode too."""
    ended = jnp.maximum(batch.terminals, batch.timeouts) if timeouts_terminal else batch.terminals
    return 1.0 - ended


def settings_of(stage_settings, spec: Spec) -> dict:
    """A stage's `settings` (part of its cache key): the dataclass's fields and the problem's sizes."""
    return {**dataclasses.asdict(stage_settings), "observation_dim": spec.observation_dim,
            "action_dim": spec.action_dim}


# ---- the critics: Q_tau and V of the behaviour's actions ------------------------------------------


@flax.struct.dataclass
class Critics:
    """The critics' result, frozen: Q_tau(s, a) = min over the Q members and V(s), on standardized states."""

    q_params: Any
    v_params: Any
    q_network: nn.Module = flax.struct.field(pytree_node=False)
    v_network: nn.Module = flax.struct.field(pytree_node=False)

    def q(self, observations, actions):
        return self.q_network.apply(self.q_params, observations, actions).min(axis=0)

    def v(self, observations):
        return self.v_network.apply(self.v_params, observations)


@flax.struct.dataclass
class CriticTraining:
    q: TrainState
    v: TrainState
    target_q_params: Any
    normalizer: Normalizer
    rows: Any  # SARSA: the dataset, drawn from here to pair each row with its next action; else None
    next_actions: Any


@dataclass(frozen=True)
class CriticsStage:
    """Stage "critics": IQL's double Q and expectile V, or SARSA's Q and Monte-Carlo V."""

    critic: str  # "iql" or "sarsa"
    q_hidden_dims: tuple[int, ...]
    v_hidden_dims: tuple[int, ...]
    lr: float
    batch_size: int
    steps: int
    seed: int
    discount: float
    tau: float
    target_update_every: int
    expectile: float
    timeouts_terminal: bool
    state_norm: bool

    def stage(self, spec: Spec, per_seed: bool) -> Stage:
        q_network, v_network = self.networks()
        return Stage("critics", self.steps, self.batch_size, self.init, self.update, settings_of(self, spec),
                     result=lambda t: Critics(t.q.params, t.v.params, q_network, v_network),
                     per_seed=per_seed)

    def networks(self):
        return (critic_ensemble(2 if self.critic == "iql" else 1, self.q_hidden_dims, init_scheme="torch"),
                ValueNetwork(tuple(self.v_hidden_dims), init_scheme="torch"))

    def init(self, key, spec: Spec, data) -> CriticTraining:
        q_network, v_network = self.networks()
        q_key, v_key = jax.random.split(key)
        observations = jnp.zeros((1, spec.observation_dim))
        q_params = q_network.init(q_key, observations, jnp.zeros((1, spec.action_dim)))
        rows = next_actions = None
        if self.critic == "sarsa":  # a' of row i is the action of row i + 1 (unused at episode ends)
            rows, next_actions = data, jnp.concatenate([data.actions[1:], data.actions[-1:]])
        v_params = v_network.init(v_key, observations)
        return CriticTraining(create_train_state(q_network, q_params, self.lr),
                              create_train_state(v_network, v_params, self.lr), copy_params(q_params),
                              fit_normalizer(data.observations, self.state_norm), rows, next_actions)

    def update(self, training: CriticTraining, batch, key):
        """V, then Q with the new V (SARSA: the Monte-Carlo V and Q on Qbar(s', a')), then Qbar."""
        if self.critic == "sarsa":  # drawn here, to pair every row with its next action
            rows = jax.random.randint(key, (self.batch_size,), 0, training.next_actions.shape[0])
            batch = jax.tree.map(lambda column: column[rows], training.rows)
        batch = batch._replace(observations=training.normalizer(batch.observations),
                               next_observations=training.normalizer(batch.next_observations),
                               terminals=1.0 - not_done(batch, self.timeouts_terminal))
        if self.critic == "sarsa":
            value, value_loss = value_regression_step(training.v, batch.observations, batch.returns_to_go)
            next_values = training.q.apply_fn(training.target_q_params, batch.next_observations,
                                              training.next_actions[rows]).min(axis=0)
        else:
            target_q = training.q.apply_fn(training.target_q_params, batch.observations,
                                           batch.actions).min(axis=0)
            value, metrics = expectile_value_step(training.v, batch.observations, target_q, self.expectile)
            value_loss = metrics["value_loss"]
            next_values = value.apply_fn(value.params, batch.next_observations)
        q, critic_metrics = td_critic_step(training.q, batch, next_values, self.discount)
        target_q_params = jax.lax.cond(q.step % self.target_update_every == 0,
                                       lambda: soft_update(training.target_q_params, q.params, self.tau),
                                       lambda: training.target_q_params)
        return (training.replace(q=q, v=value, target_q_params=target_q_params),
                {"critic_loss": critic_metrics["critic_loss"], "value_loss": value_loss})


# ---- the BC ensemble: K policies cloned from the behaviour -----------------------------------------


def bc_ensemble_loss(log_probs: jax.Array, alpha_bc: float) -> jax.Array:
    """The joint BC loss from every member's log pi_i(a|s), (K, B) -> (K,); plain BC for K = 1."""
    members = log_probs.shape[0]
    if members == 1:
        return -log_probs.mean(axis=1)
    others = jnp.where(jnp.eye(members, dtype=bool)[:, :, None], -jnp.inf,
                       jax.lax.stop_gradient(log_probs)[None])
    return (-log_probs - alpha_bc * (log_probs - others.max(axis=1))).mean(axis=1)


@flax.struct.dataclass
class PolicyEnsemble:
    """The BC ensemble's result, frozen: the K members' parameters (leading member axis), the state
    statistics."""

    params: Any
    normalizer: Normalizer


@flax.struct.dataclass
class BCTraining:
    policies: TrainState  # K members, stacked parameters
    normalizer: Normalizer


@dataclass(frozen=True)
class BCEnsembleStage:
    """Stage "bc": K `BoundedGaussianPolicy` members cloned jointly from the dataset's actions."""

    members: int
    hidden_dims: tuple[int, ...]
    activation: str  # a key of ACTIVATIONS
    lr: float
    batch_size: int
    steps: int
    seed: int
    alpha_bc: float
    state_norm: bool

    def stage(self, spec: Spec, per_seed: bool) -> Stage:
        return Stage("bc", self.steps, self.batch_size, self.init, self.update, settings_of(self, spec),
                     result=lambda t: PolicyEnsemble(t.policies.params, t.normalizer), per_seed=per_seed)

    def network(self, action_dim: int) -> BoundedGaussianPolicy:
        return BoundedGaussianPolicy(tuple(self.hidden_dims), action_dim, ACTIVATIONS[self.activation])

    def init(self, key, spec: Spec, data) -> BCTraining:
        network = self.network(spec.action_dim)
        params = jax.vmap(lambda k: network.init(k, jnp.zeros((1, spec.observation_dim))))(
            jax.random.split(key, self.members))
        return BCTraining(create_train_state(network, params, self.lr),
                          fit_normalizer(data.observations, self.state_norm))

    def update(self, training: BCTraining, batch, key):
        """Every member on the same minibatch in one computation; Adam is elementwise, so one Adam
        over the stacked parameters is one Adam per member."""
        s = training.normalizer(batch.observations)

        def loss(params):
            log_probs = jax.vmap(lambda p: training.policies.apply_fn(p, s).log_prob(batch.actions))(params)
            per_member = bc_ensemble_loss(log_probs, self.alpha_bc)
            return per_member.sum(), (per_member, log_probs)

        (_, (per_member, log_probs)), grads = jax.value_and_grad(loss, has_aux=True)(training.policies.params)
        return (training.replace(policies=training.policies.apply_gradients(grads=grads)),
                {"bc_loss": per_member.mean(), "bc_log_prob": log_probs.mean()})


# ---- the value handed to PPO, re-fitted on the scaled returns -------------------------------------


@dataclass(frozen=True)
class ValueRefitStage:
    """Stage "online_value": PPO's `ReluValueNetwork` regressed on the Monte-Carlo returns of the
    dataset's rewards scaled as PPO will scale them (`reward_scaling`); its result is an `OnlineValue`
    (the parameters and the return scaler PPO continues)."""

    reward_scaling: str
    discount: float
    timeouts_terminal: bool
    hidden_dims: tuple[int, ...]
    lr: float
    batch_size: int
    steps: int
    seed: int
    state_norm: bool

    def stage(self, spec: Spec, per_seed: bool) -> Stage:
        return Stage("online_value", self.steps, self.batch_size, self.init, self.update,
                     settings_of(self, spec), result=lambda t: OnlineValue(t.value.params, t.scaler),
                     per_seed=per_seed)

    def init(self, key, spec: Spec, data) -> ValueRefit:
        observations = fit_normalizer(data.observations, self.state_norm)(data.observations)
        scaling = PPOConfig(reward_scaling=self.reward_scaling, discount=self.discount)  # all it reads
        return init_value_refit(key, scaling, observations, data.rewards,
                                not_done(data, self.timeouts_terminal), self.hidden_dims, self.lr)

    def update(self, training: ValueRefit, batch, key):
        return value_refit_step(training, self.batch_size, key)
