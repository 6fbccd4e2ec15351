"""Uni-O4 (Lei et al., ICLR 2024): multi-step BPPO offline, then PPO online, as in the authors' code
(Lei-Kun/Uni-O4: main.py, critic.py, BC_ensemble.py, abppo.py, dynamics_eval.py, net.py, and
ppo_finetune/ for the online phase; shared research notes §2 and §6).

Stages, trained once per training seed and cached per dataset, settings and seed, as the reference
trains them per seed (from `critic_seed` / `bc_seed` / `dynamics.seed` + the training seed);
`shared_stages=true` (critics, BC, V re-fit) and `dynamics.shared=true` train one for every seed:
  (a) "critics": the behaviour critics Q_tau and V.
      critic="iql" (the code's --is_iql): double Q (2 x 1024) and V (3 x 512), per step
          L_V = E[|omega - 1(u < 0)| u^2],  u = min_i Qbar_i(s, a) - V(s)          (expectile omega)
          L_Q = E[sum_i (Q_i(s, a) - r - gamma nd V(s'))^2]   with the just-updated V,
          Qbar <- (1 - tau) Qbar + tau Q every `target_update_every` (2) Q steps.
      critic="sarsa" (the code without --is_iql, its medium-expert scripts): one Q by SARSA,
          L_Q = E[(Q(s, a) - r - gamma nd Qbar(s', a'))^2] with a' the dataset's next action, and V by
          regression on the Monte-Carlo return, L_V = E[(V(s) - G)^2] (both in one stage: they are
          independent and see the same minibatches).
      nd = 1 - terminal, and 1 - (terminal or timeout) with `timeouts_terminal` (the code's default:
      its buffer treats timeouts as terminal for every target and for G; SARSA requires it).
  (b) "bc": K (4) `BoundedGaussianPolicy` members on the same minibatches, the code's joint loss
          l_i = -log pi_i(a|s) - alpha_bc (log pi_i(a|s) - sg[max_{j != i} log pi_j(a|s)]),
      one batched computation over the members. The max is stop-gradient, so the gradient is
      (1 + alpha_bc) grad BC: the code updates the members one after another and refreshes the
      "others" log-probabilities in between, which changes the loss value, never the gradient.
  (c) "dynamics": the probabilistic ensemble of algorithms/core/dynamics.py (MOPO's stage; cached
      and shared with MOPO when the settings and data match), on raw states.

Multi-step BPPO, the offline `update`: one batch of dataset states s for all members; for member i
    a ~ pi_i^old(.|s),  A = normalize(min_j Q_j(s, a) - V(s))   ((A - mean) / (std + 1e-10) over the
        batch; critic="sarsa": then times omega where A > 0 and 1 - omega elsewhere, as the code)
    L_i = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)],  rho = pi_i(a|s) / pi_i^old(a|s)
with Adam (gradient norm clipped to 0.5 per member), the learning rate bppo_lr (1 - (t - 1) / T) at
update t of T (the code sets it after each step, so it lags one update) and the clip ratio
eps = clip_ratio (1 - min(t, 200) / T) (the code decays it only for the first 200 updates).
Every `eval_step` (100) updates each member is scored by AM-Q,
    AM-Q(pi_i) = mean of Q_tau(s, a) over every (s, a) visited by `rollout_batch` (512) model rollouts
                 of `rollout_length` steps from dataset states, a = the member's mean action,
each step through a random elite (no penalty). A rollout ends (the terminating step counts, nothing
after it) at the environment's termination rule (`termination`, envs/termination.py, MOPO's too) or
at the code's additions for AM-Q (transition_model/utils/termination_fns.py): any |s'| >=
`amq_state_bound` (100 on HalfCheetah and Walker2d, where model rollouts diverge), s'[:2] within
`amq_goal_radius` (0.5) of the goal on AntMaze, and, always, a non-finite s' (the code's rules are
false for NaN, so it ends there too). A step whose Q is not finite counts as terminated and adds
nothing (ours: the code would average an inf or NaN in), so AM-Q stays finite whatever the model
does. When a member's AM-Q beats its best so far (a NaN best is beaten by any score),
pi_i^old <- pi_i. The first scores are those of the BC members (in `init`), as the code scores them
before BPPO.

Hand-over: every AM-Q scoring sets the member `act` uses (and the online phase starts from) to the
highest latest AM-Q; the loop evaluates every member (experiments/train.py) and `choose` then picks
it by the rule below, so the choice is always that of the latest scores. handover="code"
(default): among the `handover_top_k` (3) members with the highest latest AM-Q, the one with the
best real evaluation (the code's ppo_finetune/ppo.py:load_pi_value). It is
the default because the online phase of the paper starts from that member; but it looks at the
same evaluation episodes it is then scored on, so the offline score it reports is optimistic (the
best of 3). handover="amq": the highest latest AM-Q alone, a truly offline choice without selection
bias; use it to compare offline scores. results.json keeps every member's scores either way. With
evaluation off, "code" has no real scores and falls back to the highest AM-Q, with a warning.

States: the networks see standardized states (`state_norm`, the code's --is_state_norm; mean and
std + 1e-3 of the dataset, the project's convention, where the code adds 1e-10), while the dynamics
model and the termination rules read raw ones; so the loop's `normalize_states` stays false.
Online phase (`online.steps=N`; ppo_finetune/main.py, ppo.py): `begin_online` hands the chosen member
to PPO (algorithms/core/ppo.py) with the offline V as its critic, and the loop's on-policy driver
gives every rollout of `online.block` (2048) environment steps to one PPO update (clip 0.05 for the
policy and the value, entropy 0.01, GAE(0.99, 0.95), minibatches of 128, K epochs and lr_a per
dataset, lr_c 2e-4, both decayed linearly to 0 at 3M environment steps). The networks keep seeing
states standardized with the offline statistics, frozen. Rewards: `ppo.reward_scaling` per dataset,
"none", "number" (r x 0.1) or "dynamic" (r / the running std of the discounted return, started on the
offline data and updated online); with scaling, the code re-fits V before the online phase (stage
"online_value": 3 x 256 ReLU layers and a ReLU output, Monte-Carlo regression on the scaled dataset
rewards, lr 1e-4, batch 512, 1M steps). At the hand-over the code's online network applies tanh once
more to the log-std head (`online_extra_tanh`, default true: the code's online results come from
it), which moves the std toward exp(-2.5) and leaves the mean unchanged; false keeps the offline
policy exactly.

Not implemented: AntMaze's BC on positive-return transitions only (--is_filter_bc) and the code's
re-derived AntMaze timeouts; the code's --temperature and --decay are dead (notes §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

import envs
from algorithms import register
from algorithms.core.algorithm import (
    Algorithm,
    Candidates,
    Context,
    Derived,
    Handover,
    OnlineConfig,
    SettingsError,
    Spec,
    Stage,
)
from algorithms.core.dynamics import DynamicsConfig, dynamics_stage, sample_start_states, step
from algorithms.core.networks import MLP, BoundedGaussianPolicy, ValueNetwork, critic_ensemble
from algorithms.core.ppo import (
    ACTIVATIONS,
    PPOConfig,
    PPOState,
    ReturnScaler,
    check_rollouts,
    clipped_surrogate,
    init_ppo_state,
    ppo_update,
)
from algorithms.core.training import copy_params, create_train_state, soft_update
from algorithms.iql import expectile_loss
from envs.termination import TERMINATIONS, never, termination_for

CRITICS = ("iql", "sarsa")
HANDOVERS = ("code", "amq")


@flax.struct.dataclass
class StateNormalizer:
    """s -> (s - mean) / std, the dataset's statistics (identity when `state_norm` is off)."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def fit(cls, observations: jax.Array, enabled: bool) -> StateNormalizer:
        if not enabled:
            return cls(jnp.zeros(observations.shape[-1]), jnp.ones(observations.shape[-1]))
        return cls(observations.mean(axis=0), observations.std(axis=0) + 1e-3)

    def __call__(self, observations: jax.Array) -> jax.Array:
        return (observations - self.mean) / self.std


# ---------------------------------------------------------------------------------------------
# Losses, as in the paper


def bc_ensemble_loss(log_probs: jax.Array, alpha_bc: float) -> jax.Array:
    """The code's joint BC loss from every member's log pi_i(a|s), (K, B) -> (K,):
    mean_B [-log pi_i - alpha (log pi_i - sg max_{j != i} log pi_j)]; plain BC for K = 1."""
    members = log_probs.shape[0]
    if members == 1:
        return -log_probs.mean(axis=1)
    others = jnp.where(jnp.eye(members, dtype=bool)[:, :, None], -jnp.inf,
                       jax.lax.stop_gradient(log_probs)[None])
    return (-log_probs - alpha_bc * (log_probs - others.max(axis=1))).mean(axis=1)


def normalized_advantage(advantage: jax.Array, omega: float | None = None) -> jax.Array:
    """(A - mean) / (std + 1e-10) over the batch (torch's unbiased std, as the code); with `omega`
    (the SARSA path) then weighted by omega where positive and 1 - omega elsewhere."""
    advantage = (advantage - advantage.mean()) / (advantage.std(ddof=1) + 1e-10)
    if omega is None or omega == 0.5:
        return advantage
    return jnp.where(advantage > 0, omega, 1.0 - omega) * advantage


# ---------------------------------------------------------------------------------------------
# Frozen stage results


@flax.struct.dataclass
class Critics:
    """Stage (a), frozen: Q_tau(s, a) = min over the Q members (one for SARSA) and V(s), on
    standardized states."""

    q_params: Any
    v_params: Any
    q_network: nn.Module = flax.struct.field(pytree_node=False)
    v_network: nn.Module = flax.struct.field(pytree_node=False)

    def q(self, observations, actions):
        return self.q_network.apply(self.q_params, observations, actions).min(axis=0)

    def v(self, observations):
        return self.v_network.apply(self.v_params, observations)


@flax.struct.dataclass
class PolicyEnsemble:
    """Stage (b), frozen: the K members' parameters (leading member axis) and the state statistics."""

    params: Any
    normalizer: StateNormalizer


@flax.struct.dataclass
class CriticTraining:
    q: TrainState
    v: TrainState
    target_q_params: Any
    normalizer: StateNormalizer
    rows: Any  # SARSA: the dataset with each row's next action (drawn from here); else None
    next_actions: Any


@flax.struct.dataclass
class UniO4State:
    """One seed: K members (parameters and Adam states with a leading member axis), their old
    policies, their AM-Q scores, and the member `act` uses. The online phase takes
    `member_params(state)` and the critics stage's V (`ctx.stages["critics"]`)."""

    policies: TrainState
    old_params: Any
    best_amq: jax.Array  # (K,) the best AM-Q so far, the bar for replacing pi_old
    last_amq: jax.Array  # (K,) the latest AM-Q
    replacements: jax.Array  # (K,) how often each pi_old was replaced
    chosen: jax.Array  # () the member `act` uses
    normalizer: StateNormalizer
    step: jax.Array
    total_steps: int = flax.struct.field(pytree_node=False, default=1)  # T, the BPPO updates


@flax.struct.dataclass
class UniO4Online(PPOState):
    """One seed online: PPO's state (the chosen member, the critic, the return scaler) and the
    offline state statistics, frozen."""

    normalizer: StateNormalizer


class ReluValueNetwork(nn.Module):
    """The code's re-fitted online V (ppo_finetune/net.py:ValueReluMLP): ReLU layers and a ReLU
    output, so V >= 0."""

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        return nn.relu(MLP(self.hidden_dims, 1, init_scheme="torch")(observations)).squeeze(-1)


@flax.struct.dataclass
class ValueRefit:
    """Stage "online_value" while it trains: V and its targets, the Monte-Carlo returns of the
    scaled dataset rewards, row by row (the stage draws its own rows)."""

    value: TrainState
    observations: jax.Array  # standardized
    returns: jax.Array
    scaler: ReturnScaler  # after its pass over the dataset: where the online scaling starts


@flax.struct.dataclass
class OnlineValue:
    params: Any
    scaler: ReturnScaler


def discounted_returns(rewards: jax.Array, not_done: jax.Array, discount: float) -> jax.Array:
    """G_i = r_i + gamma not_done_i G_{i+1} over the dataset in order (the code's compute_return)."""
    def backwards(later, row):
        reward, alive = row
        ret = reward + discount * alive * later
        return ret, ret

    return jax.lax.scan(backwards, jnp.zeros(()), (rewards, not_done), reverse=True)[1]


@flax.struct.dataclass
class BCTraining:
    policies: TrainState  # K members, stacked parameters
    normalizer: StateNormalizer


@register
@dataclass
class UniO4(Algorithm):
    name = "unio4"
    batch_size: int = 512  # BPPO batch (--bppo_batch_size)
    num_members: int = 4  # K (--num_policies)
    policy_hidden_dims: tuple[int, ...] = (256, 256, 256)
    policy_activation: str = "relu"  # "tanh": the halfcheetah scripts' --pi_activation_f
    state_norm: bool = True  # the networks see standardized states (--is_state_norm)
    # (a) critics
    critic: str = "iql"
    q_hidden_dims: tuple[int, ...] = (1024, 1024)
    v_hidden_dims: tuple[int, ...] = (512, 512, 512)
    critic_lr: float = 1e-4
    critic_batch_size: int = 512
    critic_steps: int = 2_000_000
    critic_seed: int = 0
    discount: float = 0.99
    tau: float = 0.005
    target_update_every: int = 2
    expectile: float = 0.7  # omega
    timeouts_terminal: bool = True
    # (b) BC ensemble
    bc_lr: float = 1e-4
    bc_batch_size: int = 512
    bc_steps: int = 400_000
    bc_seed: int = 0
    alpha_bc: float = 0.1
    # BPPO
    bppo_lr: float = 1e-4
    clip_ratio: float = 0.25
    clip_decay_steps: int = 200
    max_grad_norm: float = 0.5
    # AM-Q (off-policy evaluation in the learned model)
    eval_step: int = 100
    rollout_batch: int = 512
    rollout_length: int = 1000
    termination: str | None = None  # envs/termination.py, the environment's rule; None: no rule (AntMaze)
    amq_state_bound: float | None = None  # any |s'| >= it ends a rollout (code: 100, HalfCheetah, Walker2d)
    amq_goal_radius: float | None = None  # ||s'[:2] - s'[-2:]|| <= it ends one (the code: 0.5, AntMaze)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    # hand-over
    handover: str = "code"
    handover_top_k: int = 3
    # online PPO (ppo_finetune/): its hyperparameters, the code's std quirk, the V re-fit with scaling
    ppo: PPOConfig = field(default_factory=PPOConfig)
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(replay="on_policy", block=2048))
    online_extra_tanh: bool = True
    value_refit_hidden_dims: tuple[int, ...] = (256, 256, 256)  # --v_hidden_width 256, --v_depth 3
    value_refit_lr: float = 1e-4
    value_refit_batch_size: int = 512
    value_refit_steps: int = 1_000_000
    value_refit_seed: int = 0
    shared_stages: bool = False  # true: one critics / BC / V re-fit stage for every seed

    def __post_init__(self):
        if isinstance(self.dynamics, dict):
            self.dynamics = DynamicsConfig(**self.dynamics)
        if isinstance(self.ppo, dict):
            self.ppo = PPOConfig(**self.ppo)
        super().__post_init__()
        choices = [("critic", CRITICS), ("handover", HANDOVERS), ("policy_activation", tuple(ACTIVATIONS))]
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise SettingsError(f"algo.{name} must be one of {', '.join(allowed)} (got "
                                    f"'{getattr(self, name)}'); fix the override algo.{name}=...")
        if self.normalize_states:
            raise SettingsError("Uni-O4's dynamics model and termination rules read raw states: keep "
                                "algo.normalize_states=false and use algo.state_norm (the networks' own)")
        if self.critic == "sarsa" and not self.timeouts_terminal:
            raise SettingsError("algo.critic=sarsa needs algo.timeouts_terminal=true (the dataset has no "
                                "next action after a truncation)")
        check_rollouts(self.online, self.ppo, "Uni-O4")
        if not 0.0 < self.clip_ratio < 1.0:
            raise SettingsError(f"algo.clip_ratio must lie in (0, 1) (got {self.clip_ratio})")
        for name in ("amq_state_bound", "amq_goal_radius"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise SettingsError(f"algo.{name} must be > 0 or null (got {getattr(self, name)})")
        if self.termination is not None and self.termination not in TERMINATIONS:
            try:
                termination_for(self.termination)
            except KeyError as error:
                raise SettingsError(f"algo.termination: {error.args[0]}") from None

    # ---- networks ------------------------------------------------------------------------------

    def policy_network(self, action_dim: int, extra_tanh: bool = False) -> BoundedGaussianPolicy:
        return BoundedGaussianPolicy(tuple(self.policy_hidden_dims), action_dim,
                                     ACTIVATIONS[self.policy_activation], extra_tanh=extra_tanh)

    def critic_networks(self):
        members = 2 if self.critic == "iql" else 1
        return (critic_ensemble(members, self.q_hidden_dims, init_scheme="torch"),
                ValueNetwork(tuple(self.v_hidden_dims), init_scheme="torch"))

    def termination_rule(self):
        return never if self.termination is None else termination_for(self.termination)

    def amq_rollout_ended(self, next_observations: jax.Array) -> jax.Array:
        """The code's additions to the environment's rule in AM-Q rollouts, (B, |S|) -> (B,): a
        non-finite s', any |s'| >= amq_state_bound, the achieved goal s'[:2] within amq_goal_radius
        of the desired one s'[-2:] (Minari AntMaze's observation: achieved_goal, observation,
        desired_goal; the code, whose D4RL observations carry no goal, uses env.target_goal)."""
        ended = ~jnp.isfinite(next_observations).all(axis=-1)
        if self.amq_state_bound is not None:  # written so that NaN ends it, as the code's
            ended |= ~(jnp.abs(next_observations) < self.amq_state_bound).all(axis=-1)
        if self.amq_goal_radius is not None:
            distance = jnp.linalg.norm(next_observations[:, :2] - next_observations[:, -2:], axis=-1)
            ended |= distance <= self.amq_goal_radius
        return ended

    def handover_without_evaluation(self) -> str | None:
        if self.handover != "code":
            return None
        return ("evaluation is off (eval.every=0 or eval.episodes=0), so algo.handover=code has no real "
                "scores: each seed hands over the member with the highest latest AM-Q (algo.handover=amq)")

    def not_done(self, batch) -> jax.Array:
        ended = jnp.maximum(batch.terminals, batch.timeouts) if self.timeouts_terminal else batch.terminals
        return 1.0 - ended

    # ---- stages --------------------------------------------------------------------------------

    def derive(self, data) -> Derived:
        """SARSA's V regresses on the Monte-Carlo return (episodes end at terminals and timeouts)."""
        return Derived(returns_to_go=envs.returns_to_go(data, self.discount) if self.critic == "sarsa"
                       else None)

    def stages(self, spec: Spec) -> list[Stage]:
        common = {"state_norm": self.state_norm, "observation_dim": spec.observation_dim,
                  "action_dim": spec.action_dim}
        critic_settings = {**common, "critic": self.critic, "q_hidden_dims": list(self.q_hidden_dims),
                           "v_hidden_dims": list(self.v_hidden_dims), "lr": self.critic_lr,
                           "batch_size": self.critic_batch_size, "steps": self.critic_steps,
                           "seed": self.critic_seed, "discount": self.discount, "tau": self.tau,
                           "target_update_every": self.target_update_every,
                           "expectile": self.expectile, "timeouts_terminal": self.timeouts_terminal}
        bc_settings = {**common, "members": self.num_members, "hidden_dims": list(self.policy_hidden_dims),
                       "activation": self.policy_activation, "lr": self.bc_lr,
                       "batch_size": self.bc_batch_size, "steps": self.bc_steps, "seed": self.bc_seed,
                       "alpha_bc": self.alpha_bc}
        q_network, v_network = self.critic_networks()
        return [
            Stage("critics", self.critic_steps, self.critic_batch_size, self.init_critics,
                  self.critic_step, critic_settings,
                  result=lambda t: Critics(t.q.params, t.v.params, q_network, v_network),
                  per_seed=not self.shared_stages),
            Stage("bc", self.bc_steps, self.bc_batch_size, self.init_bc, self.bc_step, bc_settings,
                  result=lambda t: PolicyEnsemble(t.policies.params, t.normalizer),
                  per_seed=not self.shared_stages),
            dynamics_stage(self.dynamics, spec),
            *([self.value_refit_stage(common)] if self.ppo.reward_scaling != "none" else []),
        ]

    def init_critics(self, key, spec: Spec, data) -> CriticTraining:
        q_network, v_network = self.critic_networks()
        q_key, v_key = jax.random.split(key)
        observations = jnp.zeros((1, spec.observation_dim))
        q_params = q_network.init(q_key, observations, jnp.zeros((1, spec.action_dim)))
        rows = next_actions = None
        if self.critic == "sarsa":  # a' of row i is the action of row i + 1 (unused at episode ends)
            rows = data
            next_actions = jnp.concatenate([data.actions[1:], data.actions[-1:]])
        return CriticTraining(create_train_state(q_network, q_params, self.critic_lr),
                              create_train_state(v_network, v_network.init(v_key, observations),
                                                 self.critic_lr),
                              copy_params(q_params), StateNormalizer.fit(data.observations, self.state_norm),
                              rows, next_actions)

    def critic_step(self, training: CriticTraining, batch, key):
        """One step of the critics stage (module docstring, (a))."""
        next_actions = None
        if self.critic == "sarsa":  # drawn here, to pair every row with its next action
            indices = jax.random.randint(key, (self.critic_batch_size,), 0, training.next_actions.shape[0])
            batch = jax.tree.map(lambda column: column[indices], training.rows)
            next_actions = training.next_actions[indices]
        s, s_next = training.normalizer(batch.observations), training.normalizer(batch.next_observations)
        not_done = self.not_done(batch)

        def v_loss(params):
            v = training.v.apply_fn(params, s)
            if self.critic == "sarsa":  # Monte-Carlo regression
                return ((v - batch.returns_to_go) ** 2).mean()
            target_q = training.q.apply_fn(training.target_q_params, s, batch.actions).min(axis=0)
            return expectile_loss(target_q - v, self.expectile).mean()

        value_loss, grads = jax.value_and_grad(v_loss)(training.v.params)
        value = training.v.apply_gradients(grads=grads)
        if self.critic == "sarsa":
            next_q = training.q.apply_fn(training.target_q_params, s_next, next_actions).min(axis=0)
        else:
            next_q = value.apply_fn(value.params, s_next)
        target = batch.rewards + self.discount * not_done * next_q

        def q_loss(params):
            return ((training.q.apply_fn(params, s, batch.actions) - target) ** 2).sum(axis=0).mean()

        critic_loss, grads = jax.value_and_grad(q_loss)(training.q.params)
        q = training.q.apply_gradients(grads=grads)
        target_params = jax.lax.cond(q.step % self.target_update_every == 0,
                                     lambda: soft_update(training.target_q_params, q.params, self.tau),
                                     lambda: training.target_q_params)
        return (training.replace(q=q, v=value, target_q_params=target_params),
                {"critic_loss": critic_loss, "value_loss": value_loss})

    def init_bc(self, key, spec: Spec, data):
        network = self.policy_network(spec.action_dim)
        keys = jax.random.split(key, self.num_members)
        params = jax.vmap(lambda k: network.init(k, jnp.zeros((1, spec.observation_dim))))(keys)
        return BCTraining(create_train_state(network, params, self.bc_lr),
                          StateNormalizer.fit(data.observations, self.state_norm))

    def bc_step(self, training, batch, key):
        """Every member on the same minibatch, one batched computation (module docstring, (b)).
        Adam is elementwise, so one Adam over the stacked parameters is one Adam per member."""
        s = training.normalizer(batch.observations)

        def loss(params):
            log_probs = jax.vmap(lambda p: training.policies.apply_fn(p, s).log_prob(batch.actions))(params)
            per_member = bc_ensemble_loss(log_probs, self.alpha_bc)
            return per_member.sum(), (per_member, log_probs)

        (_, (per_member, log_probs)), grads = jax.value_and_grad(loss, has_aux=True)(training.policies.params)
        return (training.replace(policies=training.policies.apply_gradients(grads=grads)),
                {"bc_loss": per_member.mean(), "bc_log_prob": log_probs.mean()})

    def value_refit_stage(self, common: dict) -> Stage:
        """The online V the code re-fits when rewards are scaled (module docstring)."""
        settings = {**common, "reward_scaling": self.ppo.reward_scaling, "discount": self.ppo.discount,
                    "timeouts_terminal": self.timeouts_terminal,
                    "hidden_dims": list(self.value_refit_hidden_dims), "lr": self.value_refit_lr,
                    "batch_size": self.value_refit_batch_size, "steps": self.value_refit_steps,
                    "seed": self.value_refit_seed}
        return Stage("online_value", self.value_refit_steps, self.value_refit_batch_size,
                     self.init_value_refit, self.value_refit_step, settings,
                     result=lambda t: OnlineValue(t.value.params, t.scaler), per_seed=not self.shared_stages)

    def init_value_refit(self, key, spec: Spec, data) -> ValueRefit:
        """Rewards scaled over the dataset in order (the code's reward_normalize: "dynamic" leaves
        each episode's last row unscaled), then their Monte-Carlo returns."""
        not_done = self.not_done(data)
        scaler, rewards = ReturnScaler.create().scale(data.rewards, 1.0 - not_done, self.ppo.reward_scaling,
                                                      self.ppo.discount, skip_episode_ends=True)
        normalizer = StateNormalizer.fit(data.observations, self.state_norm)
        network = ReluValueNetwork(tuple(self.value_refit_hidden_dims))
        observations = normalizer(data.observations)
        value = create_train_state(network, network.init(key, observations[:1]), self.value_refit_lr)
        returns = discounted_returns(rewards, not_done, self.ppo.discount)
        return ValueRefit(value, observations, returns, scaler)

    def value_refit_step(self, training: ValueRefit, batch, key):
        rows = jax.random.randint(key, (self.value_refit_batch_size,), 0, training.returns.shape[0])

        def loss(params):
            predicted = training.value.apply_fn(params, training.observations[rows])
            return ((predicted - training.returns[rows]) ** 2).mean()

        value_loss, grads = jax.value_and_grad(loss)(training.value.params)
        return training.replace(value=training.value.apply_gradients(grads=grads)), {"value_loss": value_loss}

    # ---- the agent -----------------------------------------------------------------------------

    def learning_rate(self, total_steps: int):
        """bppo_lr (1 - (t - 1) / T) at update t (bppo_lr at t = 0): the code's linear decay, set after
        each step."""
        return lambda count: self.bppo_lr * (1.0 - jnp.maximum(count - 1, 0) / max(total_steps, 1))

    def clip_at(self, step, total_steps: int):
        """clip_ratio (1 - min(t, clip_decay_steps) / T): the code's decay, stopped after 200 updates."""
        return self.clip_ratio * (1.0 - jnp.minimum(step, self.clip_decay_steps) / max(total_steps, 1))

    def init(self, key, spec: Spec, ctx: Context) -> UniO4State:
        """Every member starts from its BC member, pi and pi_old alike, scored by AM-Q."""
        bc = ctx.stages["bc"]
        network = self.policy_network(spec.action_dim)
        tx = optax.chain(optax.clip_by_global_norm(self.max_grad_norm),
                         optax.adam(self.learning_rate(spec.total_steps)))
        policies = jax.vmap(lambda p: TrainState.create(apply_fn=network.apply, params=p, tx=tx))(
            copy_params(bc.params))
        amq = self.amq(policies.params, bc.normalizer, key, ctx)
        return UniO4State(policies, copy_params(bc.params), amq, amq, jnp.zeros(self.num_members, jnp.int32),
                          best_by_amq(amq), bc.normalizer, jnp.zeros((), jnp.int32), max(spec.total_steps, 1))

    def update(self, state: UniO4State | UniO4Online, batch, key, ctx: Context):
        """Offline: one BPPO step of every member on the same states; every `eval_step` updates,
        AM-Q and the replacement of the old policies that improved. Online: PPO on one rollout."""
        if isinstance(state, UniO4Online):
            standardized = batch._replace(observations=state.normalizer(batch.observations),
                                          next_observations=state.normalizer(batch.next_observations))
            return ppo_update(self.ppo, state, standardized, key)
        critics: Critics = ctx.stages["critics"]
        s = state.normalizer(batch.observations)
        member_keys = jax.random.split(key, self.num_members + 1)
        clip = self.clip_at(state.step, state.total_steps)
        omega = self.expectile if self.critic == "sarsa" else None

        def member_step(policy: TrainState, old_params, member_key):
            old = policy.apply_fn(old_params, s)
            actions = jax.lax.stop_gradient(old.sample(seed=member_key))
            advantage = normalized_advantage(critics.q(s, actions) - critics.v(s), omega)
            old_log_prob = old.log_prob(actions)

            def loss(params):
                return clipped_surrogate(policy.apply_fn(params, s).log_prob(actions), old_log_prob,
                                         advantage, clip)

            value, grads = jax.value_and_grad(loss)(policy.params)
            return policy.apply_gradients(grads=grads), value

        policies, losses = jax.vmap(member_step)(state.policies, state.old_params, member_keys[:-1])
        state = state.replace(policies=policies, step=state.step + 1)
        scored = state.step % self.eval_step == 0
        state, replaced = jax.lax.cond(scored, lambda: self.replace_improved(state, member_keys[-1], ctx),
                                       lambda: (state, jnp.zeros(self.num_members, bool)))
        on_scored = lambda value: jnp.where(scored, value, jnp.nan)  # averaged over scored steps only
        return state, {"policy_loss": losses.mean(), "clip_ratio": clip,
                       "amq": on_scored(state.last_amq.mean()),
                       "replaced_fraction": on_scored(replaced.mean())}

    def replace_improved(self, state: UniO4State, key, ctx: Context) -> tuple[UniO4State, jax.Array]:
        """AM-Q of every member; pi_old <- pi for the members whose score beats their best (or
        whose best is NaN); the chosen member becomes the highest AM-Q (an evaluation's `choose`
        overrides it). Returns the state and which members were replaced."""
        amq = self.amq(state.policies.params, state.normalizer, key, ctx)
        improved = (amq > state.best_amq) | (jnp.isnan(state.best_amq) & ~jnp.isnan(amq))
        keep_new = lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        old = jax.tree.map(keep_new, state.policies.params, state.old_params)
        return state.replace(old_params=old, best_amq=jnp.where(improved, amq, state.best_amq),
                             last_amq=amq, replacements=state.replacements + improved,
                             chosen=best_by_amq(amq)), improved

    def amq(self, params, normalizer: StateNormalizer, key, ctx: Context) -> jax.Array:
        """AM-Q of every member (params with a leading member axis) -> (K,) (module docstring)."""
        critics: Critics = ctx.stages["critics"]
        model = ctx.stages["dynamics"]
        terminated = self.termination_rule()
        network = self.policy_network(ctx.data.actions.shape[-1])

        def one_member(member_params, member_key):
            start_key, rollout_key = jax.random.split(member_key)
            starts = sample_start_states(ctx.data, start_key, self.rollout_batch)

            def model_step(carry, step_key):
                observations, alive, q_sum, count = carry
                s = normalizer(observations)
                actions = jnp.clip(network.apply(member_params, s).mean(), -1.0, 1.0)
                q = critics.q(s, actions)
                counted = alive & jnp.isfinite(q)  # a non-finite Q ends the rollout, uncounted
                imagined = step(model, observations, actions, step_key)
                ended = (terminated(observations, actions, imagined.next_observations)
                         | self.amq_rollout_ended(imagined.next_observations))
                carry = (imagined.next_observations, counted & ~ended,
                         q_sum + jnp.where(counted, q, 0.0).sum(), count + counted.sum())
                return carry, None

            alive = jnp.ones(self.rollout_batch, bool)
            (_, _, q_sum, count), _ = jax.lax.scan(
                model_step, (starts, alive, jnp.zeros(()), jnp.zeros((), jnp.int32)),
                jax.random.split(rollout_key, self.rollout_length))
            # NaN without a single finite Q: the critics are broken, and the loop stops as diverged
            return jnp.where(count > 0, q_sum / jnp.maximum(count, 1), jnp.nan)

        return jax.vmap(one_member)(params, jax.random.split(key, self.num_members))

    # ---- acting and the hand-over ----------------------------------------------------------------

    def act(self, state: UniO4State | UniO4Online, observations, key, deterministic: bool = True):
        """The chosen member (online: the PPO policy): its mean action when deterministic, else a
        sample; clipped to [-1, 1]."""
        policy, params = ((state.actor, state.actor.params) if isinstance(state, UniO4Online)
                          else (state.policies, member_params(state)))
        dist = policy.apply_fn(params, state.normalizer(observations))
        actions = dist.mean() if deterministic else dist.sample(seed=key)
        return jnp.clip(actions, -1.0, 1.0)

    def begin_online(self, state: UniO4State, spec: Spec, ctx: Context) -> UniO4Online:
        """PPO from the chosen member and the offline V (the re-fitted one when rewards are scaled,
        with the return scaler its pass over the dataset left); new optimisers."""
        actor = self.policy_network(spec.action_dim, extra_tanh=self.online_extra_tanh)
        if self.ppo.reward_scaling == "none":
            critics: Critics = ctx.stages["critics"]
            critic, critic_params, scaler = critics.v_network, critics.v_params, None
        else:
            refit: OnlineValue = ctx.stages["online_value"]
            critic = ReluValueNetwork(tuple(self.value_refit_hidden_dims))
            critic_params, scaler = refit.params, refit.scaler
        ppo = init_ppo_state(self.ppo, actor, member_params(state), critic, critic_params, scaler)
        return UniO4Online(ppo.actor, ppo.critic, ppo.scaler, ppo.step, state.normalizer)

    def candidates(self) -> Candidates:
        """The K policies of the ensemble, one handed over (`choose`)."""
        return Candidates(self.num_members, self.member_state, self.choose,
                          self.handover_without_evaluation())

    def hand_over(self) -> Handover:
        return Handover(self, self.begin_online)

    def member_state(self, state: UniO4State, index) -> UniO4State:
        return state.replace(chosen=jnp.asarray(index, jnp.int32))

    def choose(self, state: UniO4State, scores: jax.Array):
        """The member handed over (module docstring): the best real evaluation `scores` (K,) among
        the top k by the latest AM-Q (handover="code"), or the latest AM-Q alone ("amq")."""
        if self.handover == "amq":
            chosen = best_by_amq(state.last_amq)
        else:
            top = jnp.argsort(-state.last_amq)[: min(self.handover_top_k, self.num_members)]
            chosen = top[jnp.argmax(scores[top])]
        chosen = chosen.astype(jnp.int32)
        return state.replace(chosen=chosen), {"chosen": chosen, "estimates": state.last_amq}


def best_by_amq(amq: jax.Array) -> jax.Array:
    """The member with the highest AM-Q, (K,) -> () int32; a NaN score is never the best."""
    return jnp.argmax(jnp.where(jnp.isnan(amq), -jnp.inf, amq)).astype(jnp.int32)


def member_params(state: UniO4State):
    """The chosen member's policy parameters (what the online phase starts from)."""
    return jax.tree.map(lambda x: x[state.chosen], state.policies.params)
