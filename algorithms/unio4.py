"""Uni-O4 (Lei et al., ICLR 2024): multi-step BPPO offline, then PPO online, as the authors' code
Lei-Kun/Uni-O4 runs it (`main.py`, `critic.py`, `BC_ensemble.py`, `abppo.py`, `dynamics_eval.py`, and
`ppo_finetune/` online). Where and why ours differs: docs/algorithms/unio4.md.

1. Stages, trained before the agent on standardized states (`state_norm`), one per training seed
   (from `critic_seed`, `bc_seed`, `dynamics.seed` + the seed) unless `shared_stages`; their losses
   are in algorithms/core/behaviour.py:
   (a) "critics": Q_tau and V by IQL's value and critic steps (critic="iql"), or SARSA's Q on the
       dataset's next action and V regressed on the Monte-Carlo return (critic="sarsa");
   (b) "bc": K members cloned jointly, with the code's disagreement term;
   (c) "dynamics": the probabilistic ensemble of algorithms/core/dynamics.py, on raw states.
2. Multi-step BPPO, the offline `update` (T updates): every member on one batch of dataset states,
       a ~ pi_i^old(.|s),  A = normalize(min_j Q_j(s, a) - V(s)),  rho = pi_i(a|s) / pi_i^old(a|s),
       L_i = -E[min(rho A, clip(rho, 1 - eps_t, 1 + eps_t) A)],
   lr bppo_lr (1 - (t - 1) / T) and eps_t = clip_ratio (1 - min(t, 200) / T). Every `eval_step`
   updates (and once on the BC members), AM-Q scores each member: the mean Q_tau(s, a) over every
   (s, a) visited by `rollout_batch` model rollouts of `rollout_length` steps under its mean action,
   a random elite per row and step, each ended (its last step counted) by the environment's rule
   (`termination`) or the code's additions (`amq_rollout_ended`); a step whose Q is not finite ends it
   uncounted. pi_i^old <- pi_i when AM-Q beats the member's best.
3. The member handed over: every AM-Q scoring picks the highest; the members are the `candidates`
   every evaluation scores, then `choose` applies handover="code", the best real score among the
   `handover_top_k` highest AM-Q (the code's load_pi_value; optimistic as an offline score), or
   "amq", the AM-Q alone (what "code" falls back to, with a warning, when evaluation is off).
4. Online, a real PPO learner (`hand_over`: algo=ppo's, algorithms/ppo.py) from the chosen member
   (with `online_extra_tanh`, the online code's second tanh on the log-std head) and the offline V
   (with reward scaling, V re-fitted first: (d) stage "online_value", Monte-Carlo regression on the
   scaled dataset rewards), the states standardized with the offline statistics, frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import flax
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
from algorithms.core.behaviour import BCEnsembleStage, Critics, CriticsStage, ValueRefitStage
from algorithms.core.dynamics import DynamicsConfig, dynamics_stage, sample_start_states, step
from algorithms.core.ppo import (
    ACTIVATIONS,
    OnlineValue,
    PPOConfig,
    PPOState,
    ReluValueNetwork,
    check_rollouts,
    clipped_surrogate,
    init_ppo_state,
)
from algorithms.core.training import copy_params
from algorithms.ppo import PPO
from envs.preprocessing import Normalizer
from envs.termination import TERMINATIONS, never, termination_for

CRITICS = ("iql", "sarsa")
HANDOVERS = ("code", "amq")


def normalized_advantage(advantage: jax.Array, omega: float | None = None) -> jax.Array:
    """(A - mean) / (std + 1e-10) over the batch (unbiased std); with `omega` (SARSA critics) then
    weighted by omega where positive and 1 - omega elsewhere."""
    advantage = (advantage - advantage.mean()) / (advantage.std(ddof=1) + 1e-10)
    if omega is None or omega == 0.5:
        return advantage
    return jnp.where(advantage > 0, omega, 1.0 - omega) * advantage


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
        choices = (("critic", CRITICS), ("handover", HANDOVERS), ("policy_activation", ACTIVATIONS))
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
        check_rollouts(self.online, "Uni-O4")
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

    # ---- 1. stages (algorithms/core/behaviour.py; the dynamics model: algorithms/core/dynamics.py) ---

    def critics_stage(self) -> CriticsStage:
        return CriticsStage(self.critic, tuple(self.q_hidden_dims), tuple(self.v_hidden_dims), self.critic_lr,
                            self.critic_batch_size, self.critic_steps, self.critic_seed, self.discount,
                            self.tau, self.target_update_every, self.expectile, self.timeouts_terminal,
                            self.state_norm)

    def bc_stage(self) -> BCEnsembleStage:
        return BCEnsembleStage(self.num_members, tuple(self.policy_hidden_dims), self.policy_activation,
                               self.bc_lr, self.bc_batch_size, self.bc_steps, self.bc_seed, self.alpha_bc,
                               self.state_norm)

    def value_refit_stage(self) -> ValueRefitStage:
        return ValueRefitStage(self.ppo.reward_scaling, self.ppo.discount, self.timeouts_terminal,
                               tuple(self.value_refit_hidden_dims), self.value_refit_lr,
                               self.value_refit_batch_size, self.value_refit_steps, self.value_refit_seed,
                               self.state_norm)

    def derive(self, data) -> Derived:
        """SARSA's V regresses on the Monte-Carlo return (episodes end at terminals and timeouts)."""
        sarsa = self.critic == "sarsa"
        return Derived(returns_to_go=envs.returns_to_go(data, self.discount) if sarsa else None)

    def stages(self, spec: Spec) -> list[Stage]:
        """(a) the critics, (b) the BC ensemble, (c) the dynamics model AM-Q rolls out in; with
        reward scaling, (d) the V handed to PPO, re-fitted on the scaled returns."""
        per_seed = not self.shared_stages
        refit = self.value_refit_stage()
        return [self.critics_stage().stage(spec, per_seed), self.bc_stage().stage(spec, per_seed),
                dynamics_stage(self.dynamics, spec),
                *([refit.stage(spec, per_seed)] if self.ppo.reward_scaling != "none" else [])]

    # ---- 2. multi-step BPPO with AM-Q ------------------------------------------------------------

    def learning_rate(self, total_steps: int):
        """bppo_lr (1 - (t - 1) / T) at update t (the code sets it after each step)."""
        return lambda count: self.bppo_lr * (1.0 - jnp.maximum(count - 1, 0) / max(total_steps, 1))

    def clip_at(self, step, total_steps: int):
        """clip_ratio (1 - min(t, clip_decay_steps) / T)."""
        return self.clip_ratio * (1.0 - jnp.minimum(step, self.clip_decay_steps) / max(total_steps, 1))

    def init(self, key, spec: Spec, ctx: Context) -> UniO4State:
        """Every member starts from its BC member, pi and pi_old alike, scored by AM-Q."""
        bc = ctx.stages["bc"]
        tx = optax.chain(optax.clip_by_global_norm(self.max_grad_norm),
                         optax.adam(self.learning_rate(spec.total_steps)))
        apply_fn = self.bc_stage().network(spec.action_dim).apply
        policies = jax.vmap(lambda p: TrainState.create(apply_fn=apply_fn, params=p, tx=tx))(
            copy_params(bc.params))
        amq = self.amq(policies.params, bc.normalizer, key, ctx)
        return UniO4State(policies, copy_params(bc.params), amq, amq, jnp.zeros(self.num_members, jnp.int32),
                          best_by_amq(amq), bc.normalizer, jnp.zeros((), jnp.int32), max(spec.total_steps, 1))

    def update(self, state: UniO4State, batch, key, ctx: Context):
        """One BPPO step of every member on the same states; every `eval_step` updates, AM-Q and the
        replacement of the old policies that improved."""
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
            loss = lambda params: clipped_surrogate(policy.apply_fn(params, s).log_prob(actions),
                                                    old_log_prob, advantage, clip)
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
        """AM-Q of every member; pi_old <- pi where it beats the best (or the best is NaN); the chosen
        member becomes the highest AM-Q. Returns the state and which members were replaced."""
        amq = self.amq(state.policies.params, state.normalizer, key, ctx)
        improved = (amq > state.best_amq) | (jnp.isnan(state.best_amq) & ~jnp.isnan(amq))
        keep_new = lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return state.replace(old_params=jax.tree.map(keep_new, state.policies.params, state.old_params),
                             best_amq=jnp.where(improved, amq, state.best_amq), last_amq=amq,
                             replacements=state.replacements + improved, chosen=best_by_amq(amq)), improved

    def termination_rule(self):
        return never if self.termination is None else termination_for(self.termination)

    def amq_rollout_ended(self, next_observations: jax.Array) -> jax.Array:
        """The code's additions to the environment's rule, (B, |S|) -> (B,): a non-finite s', any
        |s'| >= amq_state_bound, the achieved goal s'[:2] within amq_goal_radius of the desired s'[-2:]
        (Minari AntMaze's observation; the code's D4RL observation has none, it reads env.target_goal)."""
        ended = ~jnp.isfinite(next_observations).all(axis=-1)
        if self.amq_state_bound is not None:  # written so that NaN ends it, as the code's
            ended |= ~(jnp.abs(next_observations) < self.amq_state_bound).all(axis=-1)
        if self.amq_goal_radius is not None:
            distance = jnp.linalg.norm(next_observations[:, :2] - next_observations[:, -2:], axis=-1)
            ended |= distance <= self.amq_goal_radius
        return ended

    def amq(self, params, normalizer: Normalizer, key, ctx: Context) -> jax.Array:
        """AM-Q of every member (params with a leading member axis) -> (K,)."""
        critics: Critics = ctx.stages["critics"]
        terminated = self.termination_rule()
        network = self.bc_stage().network(ctx.data.actions.shape[-1])

        def one_member(member_params, member_key):
            start_key, rollout_key = jax.random.split(member_key)

            def model_step(carry, step_key):
                observations, alive, q_sum, count = carry
                s = normalizer(observations)
                actions = jnp.clip(network.apply(member_params, s).mean(), -1.0, 1.0)
                q = critics.q(s, actions)
                counted = alive & jnp.isfinite(q)  # a non-finite Q ends the rollout, uncounted
                imagined = step(ctx.stages["dynamics"], observations, actions, step_key)
                ended = (terminated(observations, actions, imagined.next_observations)
                         | self.amq_rollout_ended(imagined.next_observations))
                q_sum = q_sum + jnp.where(counted, q, 0.0).sum()
                return (imagined.next_observations, counted & ~ended, q_sum, count + counted.sum()), None

            starts = sample_start_states(ctx.data, start_key, self.rollout_batch)
            carry = (starts, jnp.ones(self.rollout_batch, bool), jnp.zeros(()), jnp.zeros((), jnp.int32))
            (_, _, q_sum, count), _ = jax.lax.scan(model_step, carry,
                                                   jax.random.split(rollout_key, self.rollout_length))
            # NaN without a single finite Q: the critics are broken, and the loop stops as diverged
            return jnp.where(count > 0, q_sum / jnp.maximum(count, 1), jnp.nan)

        return jax.vmap(one_member)(params, jax.random.split(key, self.num_members))

    # ---- 3. the candidates and the member handed over --------------------------------------------

    def act(self, state: UniO4State, observations, key, deterministic: bool = True):
        """The chosen member: its mean action when deterministic, else a sample; clipped to [-1, 1]."""
        dist = state.policies.apply_fn(member_params(state), state.normalizer(observations))
        actions = dist.mean() if deterministic else dist.sample(seed=key)
        return jnp.clip(actions, -1.0, 1.0)

    def candidates(self) -> Candidates:
        """The K members, all scored by every offline evaluation; `choose` picks the one handed over."""
        without_evaluation = None if self.handover == "amq" else (
            "evaluation is off (eval.every=0 or eval.episodes=0), so algo.handover=code has no real scores: "
            "each seed hands over the member with the highest latest AM-Q (algo.handover=amq)")
        return Candidates(self.num_members, self.member_state, self.choose, without_evaluation)

    def member_state(self, state: UniO4State, index) -> UniO4State:
        return state.replace(chosen=jnp.asarray(index, jnp.int32))

    def choose(self, state: UniO4State, scores: jax.Array):
        """The member handed over, from every member's real evaluation `scores` (K,): the best among
        the top k by the latest AM-Q (handover="code"), or the latest AM-Q alone ("amq")."""
        if self.handover == "amq":
            chosen = best_by_amq(state.last_amq)
        else:
            top = jnp.argsort(-state.last_amq)[: min(self.handover_top_k, self.num_members)]
            chosen = top[jnp.argmax(scores[top])].astype(jnp.int32)
        return state.replace(chosen=chosen), {"chosen": chosen, "estimates": state.last_amq}

    # ---- 4. the online phase: PPO ----------------------------------------------------------------

    def hand_over(self) -> Handover:
        """Online, `algo=ppo`'s learner with this run's online settings and policy network (with the
        code's extra tanh on the log-std head, `online_extra_tanh`), from `begin_online`'s state."""
        learner = PPO(hidden_dims=tuple(self.policy_hidden_dims), activation=self.policy_activation,
                      extra_tanh=self.online_extra_tanh, ppo=self.ppo, online=self.online, reward=self.reward)
        return Handover(learner, self.begin_online)

    def begin_online(self, state: UniO4State, spec: Spec, ctx: Context) -> PPOState:
        """PPO's state: the chosen member, the offline V (the re-fitted one with its return scaler
        when rewards are scaled), the offline state statistics; new optimisers."""
        actor, _ = self.hand_over().learner.networks(spec.action_dim)
        if self.ppo.reward_scaling == "none":
            critics: Critics = ctx.stages["critics"]
            critic, critic_params, scaler = critics.v_network, critics.v_params, None
        else:
            refit: OnlineValue = ctx.stages["online_value"]
            critic = ReluValueNetwork(tuple(self.value_refit_hidden_dims))
            critic_params, scaler = refit.params, refit.scaler
        return init_ppo_state(self.ppo, actor, member_params(state), critic, critic_params, state.normalizer,
                              scaler, spec.num_envs)


def best_by_amq(amq: jax.Array) -> jax.Array:
    """The member with the highest AM-Q, (K,) -> () int32; a NaN score is never the best."""
    return jnp.argmax(jnp.where(jnp.isnan(amq), -jnp.inf, amq)).astype(jnp.int32)


def member_params(state: UniO4State):
    """The chosen member's policy parameters (what the online phase starts from)."""
    return jax.tree.map(lambda x: x[state.chosen], state.policies.params)


@flax.struct.dataclass
class UniO4State:
    """One seed offline: K members (leading member axis), their old policies and AM-Q scores, the
    member `act` uses and hands over."""

    policies: TrainState
    old_params: Any
    best_amq: jax.Array  # (K,) the best AM-Q so far, the bar for replacing pi_old
    last_amq: jax.Array  # (K,) the latest AM-Q
    replacements: jax.Array  # (K,) how often each pi_old was replaced
    chosen: jax.Array  # () the member `act` uses
    normalizer: Normalizer
    step: jax.Array
    total_steps: int = flax.struct.field(pytree_node=False, default=1)  # T, the BPPO updates
