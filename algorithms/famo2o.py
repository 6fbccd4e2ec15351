"""FamO2O (Wang et al., "Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online
Reinforcement Learning", NeurIPS 2023), on IQL and on CQL, as in the authors' code
LeapLabTHU/FamO2O (jax_iql/, jax_cql/).

A universal policy pi(a|[s, enc(b)]) learns one policy per balance coefficient b between policy
improvement and the base algorithm's constraint; a balance model pi_b(.|s) learns which b to use in
each state (algorithms/core/balance.py). Offline the policy trains on b ~ U[low, high] per row;
online on b drawn per row from the balance model as it was before the update (stop-gradient). The
balance model trains in both phases. Acting (evaluation and exploration) uses the balance model's
mean; the policy samples when exploring.

FamO2O-IQL (`algo=famo2o_iql`; jax_iql/family_learner.py, family_actor.py), one update in order:
    1. value:   IQL's expectile loss on min_i Qbar_i(s, a)
    2. balance: L_b = E[alpha_b log pi_b(x|s) - min_i Qbar_i(s, a~)],  x ~ pi_b(.|s),
                b = low + (x + 1)/2 (high - low),  a~ ~ pi(.|[s, enc(b)])  (both reparameterised;
                the old policy and the target critics: only pi_b's parameters move, through enc(b))
    3. alpha_b: L = alpha_b (H - H_target),  H = -E[log pi_b(x|s)] (a constant),  H_target = -0.5
    4. actor:   L_pi = -E[min(exp(b (min_i Qbar_i(s, a) - V(s))), 100) log pi(a|[s, enc(b)])]:
                b is the AWR inverse temperature, per row
    5. critic:  IQL's, with the new V;  6. targets
Where the code and the paper differ: in the code's actor loss b is a (B, 1) column and the advantage
a (B,) row, so the weights broadcast to a B x B matrix and row j's weight is the mean over the
batch's balances b_i of min(exp(b_i A_j), 100) - independent of the b_j the policy is conditioned on.
The algorithm's default is the paper's per-row weight (its equation); `batch_mixed_weights=True` is
the code's, which produced the paper's AntMaze table, so +experiment=famo2o_iql_antmaze selects it
(docs/algorithms/famo2o.md lists both). The code draws x and a~ with one PRNG key; we draw them with
two. The AntMaze settings are the code's config (configs/family_antmaze_finetune_config.py: range
[8, 14], expectile 0.9, constant learning rates); the locomotion range [1, 5] is FamilyLearner's
default, centred on IQL's beta = 3: the code ships no locomotion config and no published table is
known to us.

FamO2O-CQL (`algo=famo2o_cql`; jax_cql/JaxCQL/family_conservative_sac.py, finetune_configs/family.py),
CQL (algorithms/cql.py) with every loss at the parameters from before the update and:
    actor:   L_pi = E[alpha log pi(a~|[s, enc(b)]) - b min_i Q_i(s, a~)]: b weighs the improvement
    balance: L_b = -E[min_i Q_i(s, a~)],  a~ ~ pi(.|[s, enc(b(s))]),  b(s) ~ pi_b(.|s) reparameterised
             (the online critics, no entropy term)
    critic:  a' ~ pi(.|[s', enc(b(s))]) in the TD target and in CQL's next-state proposals, with b(s)
             from the balance model in both phases; CQL's current-state proposals use the actor's b
Settings from the code: JaxCQL's networks with LayerNorm after every hidden layer of the critics,
w = 1, no Lagrange, dataset actions clipped to +-0.999, range [0.5, 1.5], 2M offline steps
(`steps=2000000`) and online blocks of 1000 environment steps followed by 1000 updates
(`algo.online.block=1000`, the default). The code maps the balance model's x as
b = low + x (high - low), so online b lies in (-0.5, 1.5) while offline training saw [0.5, 1.5]
(b < 0 even inverts the improvement term); that is the default here (`balance_map=jaxcql`),
`balance_map=clamped` clips b to the range and `balance_map=affine` maps as the IQL code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms import register
from algorithms.core.algorithm import Context, OnlineConfig, SettingsError, Spec
from algorithms.core.balance import PolicyFamily
from algorithms.core.networks import GaussianActor, ReferenceTanhGaussianActor, critic_ensemble
from algorithms.core.training import create_train_state, scalar_state, soft_update
from algorithms.cql import CQL, CQLState, PolicyInputs
from algorithms.iql import IQL, IQLState, awr_weights


def is_online(ctx: Context | None) -> bool:
    return ctx is not None and ctx.phase == "online"


@flax.struct.dataclass
class FamO2OIQLState(IQLState):
    balance: TrainState
    balance_log_alpha: TrainState  # the balance model's entropy temperature


@register
@dataclass
class FamO2OIQL(PolicyFamily, IQL):
    name = "famo2o_iql"
    temperature: float | None = None  # IQL's fixed beta: FamO2O's b takes its place
    balance_target_entropy: float = -0.5
    balance_init_alpha: float = 1.0
    balance_alpha_lr: float = 3e-4
    batch_mixed_weights: bool = False  # True: the code's B x B broadcast of the AWR weights

    def __post_init__(self):
        super().__post_init__()
        if self.temperature is not None:
            raise SettingsError(f"algo.temperature is IQL's fixed beta (got {self.temperature!r}); FamO2O "
                                "draws beta per state: set algo.balance_range=[low,high] instead")

    def init(self, key, spec: Spec, ctx: Context | None = None) -> FamO2OIQLState:
        base_key, actor_key, balance_key = jax.random.split(key, 3)
        iql = super().init(base_key, spec, ctx)
        actor_net = GaussianActor(self.hidden_dims, spec.action_dim, dropout_rate=self.actor_dropout)
        inputs = jnp.zeros((1, spec.observation_dim + self.encoding_dims))
        actor = TrainState.create(apply_fn=actor_net.apply, params=actor_net.init(actor_key, inputs),
                                  tx=iql.actor.tx)  # IQL's optimiser, with its schedule
        balance_net = self.balance_network()
        balance_params = balance_net.init(balance_key, jnp.zeros((1, spec.observation_dim)))
        return FamO2OIQLState(
            actor=actor, critic=iql.critic, value=iql.value, target_critic_params=iql.target_critic_params,
            step=iql.step, balance=create_train_state(balance_net, balance_params, self.balance_lr),
            balance_log_alpha=scalar_state(jnp.log(self.balance_init_alpha), self.balance_alpha_lr))

    def update(self, state: FamO2OIQLState, batch, key, ctx: Context | None = None):
        balance_key, draw_key, actor_key = jax.random.split(key, 3)
        observations = batch.observations
        value, target_q, value_metrics = self.update_value(state, batch)
        balance, balance_log_alpha, balance_metrics = self.update_balance(state, observations, balance_key)
        if is_online(ctx):  # the balance model before this update
            balance_values = self.sample_balance(state.balance.apply_fn, state.balance.params,
                                                 observations, draw_key)[0]
        else:
            balance_values = self.uniform_balance(draw_key, observations.shape[0])
        balance_values = jax.lax.stop_gradient(balance_values)
        advantage = target_q - value.apply_fn(value.params, observations)
        weights = self.family_weights(advantage, balance_values)
        actor, actor_loss = self.update_actor(
            state.actor, self.policy_inputs(observations, balance_values), batch.actions, weights, actor_key)
        critic, critic_metrics = self.update_critic(state, batch, value)
        new_state = state.replace(
            actor=actor, critic=critic, value=value, balance=balance, balance_log_alpha=balance_log_alpha,
            target_critic_params=soft_update(state.target_critic_params, critic.params, self.tau),
            step=state.step + 1)
        metrics = {**value_metrics, "actor_loss": actor_loss, **critic_metrics, "adv_weight": weights.mean(),
                   "actor_balance": balance_values.mean(), **balance_metrics}
        return new_state, metrics

    def family_weights(self, advantage: jax.Array, balance: jax.Array) -> jax.Array:
        """The AWR weights with b as the inverse temperature: per row (paper), or each row's the mean
        over the batch's balances (the code's broadcast, `batch_mixed_weights`)."""
        if self.batch_mixed_weights:
            return awr_weights(advantage[None, :], balance[:, None], self.max_weight).mean(axis=0)
        return awr_weights(advantage, balance, self.max_weight)

    def balance_loss(self, params, state: FamO2OIQLState, observations, key):
        """E[alpha_b log pi_b(x|s) - min_i Qbar_i(s, a~)] with a~ ~ pi(.|[s, enc(b(x))]), as a function
        of the balance model's parameters alone (the policy and the target critics are held)."""
        alpha = jnp.exp(state.balance_log_alpha.params["value"])
        balance_key, action_key = jax.random.split(key)
        balance, log_prob = self.sample_balance(state.balance.apply_fn, params, observations, balance_key)
        dist = state.actor.apply_fn(state.actor.params, self.policy_inputs(observations, balance))
        q = state.critic.apply_fn(state.target_critic_params, observations,
                                  dist.sample(seed=action_key)).min(axis=0)
        return (alpha * log_prob - q).mean(), (log_prob, balance, q)

    def update_balance(self, state: FamO2OIQLState, observations, key):
        """Steps 2 and 3: the balance model, then its entropy temperature (with the entropy of the
        balances just drawn, a constant)."""
        (loss, (log_prob, balance, q)), grads = jax.value_and_grad(self.balance_loss, has_aux=True)(
            state.balance.params, state, observations, key)
        entropy = -log_prob.mean()

        def temperature_loss(params):
            return jnp.exp(params["value"]) * (entropy - self.balance_target_entropy)

        log_alpha = state.balance_log_alpha
        metrics = {"balance_loss": loss, "balance": balance.mean(), "balance_q": q.mean(),
                   "balance_entropy": entropy, "balance_alpha": jnp.exp(log_alpha.params["value"])}
        log_alpha = log_alpha.apply_gradients(grads=jax.grad(temperature_loss)(log_alpha.params))
        return state.balance.apply_gradients(grads=grads), log_alpha, metrics


@flax.struct.dataclass
class FamO2OCQLState(CQLState):
    balance: TrainState


@register
@dataclass
class FamO2OCQL(PolicyFamily, CQL):
    name = "famo2o_cql"
    balance_head = "jaxcql"
    # the code's finetune_configs/base.py + family.py (JaxCQL's networks and defaults)
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    policy_head: str = "jaxcql"
    critic_final_init_scale: float | None = 0.011  # variance_scaling(1e-2, fan_in, uniform), 256 inputs
    critic_layer_norm: bool = True  # family_model.py: LayerNorm after every hidden Dense of Q
    bc_warmup_steps: int = 0
    min_q_weight: float = 1.0
    init_log_alpha_prime: float = 1.0
    clip_dataset_actions: float | None = 0.999
    balance_range: tuple[float, ...] = (0.5, 1.5)
    balance_map: str = "jaxcql"
    # 1000 environment steps, then 1000 updates (num_expl_steps_per_train_loop, num_trains_per_train_loop)
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(block=1000))

    def networks(self, action_dim: int):
        actor = ReferenceTanhGaussianActor(self.hidden_dims, action_dim, self.policy_head)
        critic = critic_ensemble(self.num_critics, self.critic_hidden_dims or self.hidden_dims,
                                 layer_norm=self.critic_layer_norm,
                                 final_init_scale=self.critic_final_init_scale)
        return actor, critic

    def init(self, key, spec: Spec, ctx: Context | None = None) -> FamO2OCQLState:
        base_key, actor_key, balance_key = jax.random.split(key, 3)
        cql = super().init(base_key, spec, ctx)
        actor_net = self.networks(spec.action_dim)[0]
        inputs = jnp.zeros((1, spec.observation_dim + self.encoding_dims))
        balance_net = self.balance_network()
        balance_params = balance_net.init(balance_key, jnp.zeros((1, spec.observation_dim)))
        return FamO2OCQLState(
            actor=create_train_state(actor_net, actor_net.init(actor_key, inputs), self.actor_lr),
            critic=cql.critic, target_critic_params=cql.target_critic_params, log_alpha=cql.log_alpha,
            log_alpha_prime=cql.log_alpha_prime, step=cql.step,
            balance=create_train_state(balance_net, balance_params, self.balance_lr))

    def update(self, state: FamO2OCQLState, batch, key, ctx: Context | None = None):
        balance_key, draw_key, action_key, update_key = jax.random.split(key, 4)
        observations = batch.observations
        # b(s) from the balance model before this update: the same draw its loss differentiates
        model_balance = jax.lax.stop_gradient(self.sample_balance(
            state.balance.apply_fn, state.balance.params, observations, balance_key)[0])
        if is_online(ctx):
            actor_balance = model_balance
        else:
            actor_balance = self.uniform_balance(draw_key, observations.shape[0])
        (loss, q), grads = jax.value_and_grad(self.balance_loss, has_aux=True)(
            state.balance.params, state, observations, balance_key, action_key)
        inputs = PolicyInputs(self.policy_inputs(observations, actor_balance),
                              self.policy_inputs(batch.next_observations, model_balance), actor_balance)
        new_state, metrics = self.conservative_update(state, batch, update_key, ctx, inputs)
        metrics = {**metrics, "balance_loss": loss, "balance": model_balance.mean(),
                   "actor_balance": actor_balance.mean()}
        return new_state.replace(balance=state.balance.apply_gradients(grads=grads)), metrics

    def balance_loss(self, params, state: FamO2OCQLState, observations, balance_key, action_key):
        """-E[min_i Q_i(s, a~)], a~ ~ pi(.|[s, enc(b(s))]), b(s) ~ pi_b(.|s), as a function of the
        balance model's parameters alone (the policy and the critics are held)."""
        balance = self.sample_balance(state.balance.apply_fn, params, observations, balance_key)[0]
        dist = state.actor.apply_fn(state.actor.params, self.policy_inputs(observations, balance))
        q = state.critic.apply_fn(state.critic.params, observations, dist.sample(seed=action_key)).min(axis=0)
        return -q.mean(), q
