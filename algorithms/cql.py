"""Conservative Q-Learning, CQL(H) with importance sampling (Kumar, Zhou, Tucker & Levine, 2020), as
in the authors' code `aviralkumar2907/CQL` (d4rl/rlkit/torch/sac/cql.py, "the original") and in
`young-geng/JaxCQL` (JaxCQL/conservative_sac.py).

One update; every loss is taken at the parameters from before the update:
    sample, per state of the batch (n = `num_sampled_actions` = 10; one actor call draws all of
    a~, a_1..n at s and one all of a'_1..n, a' at s'):
        u_1..n ~ U[-1, 1]^|A|,   a~, a_1..n ~ pi(.|s),   a'_1..n, a' ~ pi(.|s')
    critics i = 1..N (one batched call Q(s, [a, u_1..n, a_1..n, a'_1..n]) per ensemble):
        y     = r + gamma (1 - d) min_i Qbar_i(s', a')                  backup="deterministic" (default)
              = r + gamma (1 - d) (min_i Qbar_i(s', a') - alpha log pi(a'|s'))        backup="entropy"
              = r + gamma (1 - d) min_i max_k Qbar_i(s', a'_k),  k = 1..n               backup="max"
              = r + gamma (1 - d) max_k min_i Qbar_i(s', a'_k)     ... with max_backup_order="min_then_max"
        Gap_i = T logsumexp_j( [Q_i(s, u_j) - log 0.5^|A|,  Q_i(s, a_j) - log pi(a_j|s),
                                Q_i(s, a'_j) - log pi(a'_j|s')] / T ) - Q_i(s, a)
                (the log-densities are constants; the next-state actions are scored at s)
        L_Q   = sum_i E[(Q_i(s, a) - y)^2] + w E[Gap_i]                     (w = `min_q_weight`)
        Lagrange (`lagrange=True`): w E[Gap_i]  ->  alpha' C_i,  L_alpha' = -mean_i alpha' C_i,
                alpha' = clip(exp(log alpha'), 0, 1e6), with the constraint (gaps held in L_alpha')
                C_i = w E[Gap_i] - tau_gap      lagrange_form="original": the gap settles at tau_gap / w
                C_i = w (E[Gap_i] - tau_gap)    lagrange_form="jaxcql":   the gap settles at tau_gap
    actor:   L_pi = E[alpha log pi(a~|s) - min_i Q_i(s, a~)],  a~ ~ pi(.|s) reparameterised;
             for the first `bc_warmup_steps` steps instead L_pi = E[alpha log pi(a~|s) - log pi(a|s)]
    entropy temperature:  L_alpha = -log alpha E[log pi(a~|s) + H],  H = -|A|  (actor learning rate)
    targets: Qbar <- (1 - tau) Qbar + tau Q

Where the two reference codes differ, and what is done here:
  - Lagrange form (`lagrange_form`). The original writes alpha' (w Gap - tau_gap), JaxCQL (and
    Cal-QL, CORL, d3rlpy after it) alpha' w (Gap - tau_gap): the same losses when tau_gap(original)
    = w * tau_gap(JaxCQL), but a threshold must be read in the form its code wrote it in (Cal-QL's
    0.8 in the original form would hold the gap at 0.8 / 5). Each config writes its reference's
    number in its reference's form. log alpha' starts at 0 in the original and at 1 in JaxCQL
    (`init_log_alpha_prime`); both step it with the Q learning rate.
  - Max backup (`max_backup_order`). The original takes the max over the n actions for each
    critic, then the min over critics ("max_then_min", the default); JaxCQL, Cal-QL and CORL take
    the min over critics for each action, then the max ("min_then_max"). max_k min_i <= min_i max_k,
    so the latter's targets are the lower ones.
  - Order. The original steps log alpha before the actor loss and uses the new alpha there; JaxCQL
    takes every loss at the old parameters (done here; one Adam step of log alpha apart).
  - Networks. Original 3x256, tanh-Gaussian head `policy_head="rlkit"`, last critic layer U(+-3e-3);
    JaxCQL 2x256, `policy_head="jaxcql"`, last critic layer variance_scaling(1e-2) (about U(+-0.011)
    with zero bias; here U(+-`critic_final_init_scale`) for weights and bias). Hidden layers use
    lecun-normal weights and zero biases (JaxCQL's default; rlkit's own init differs slightly).
    JaxCQL's `orthogonal_init=True` (Cal-QL's default) is `init_scheme="orthogonal"`: orthogonal
    hidden layers of gain sqrt(2), orthogonal last layers of gain 1e-2 (the policy's) and
    `critic_final_init_scale` (the critics'), zero biases. rlkit also
    clamps mu to [-9, 9] when it scores dataset actions (BC warm-up); not done here.
  - Actor learning rate 1e-4 and a 40 000-step BC warm-up (`policy_eval_start`) in the original;
    3e-4 and none in JaxCQL. The original clips dataset actions inside atanh at 1 - 1e-6; so do we.
  - Dataset actions. JaxCQL clips them to +-0.999 when it loads the data (conservative_sac_main.py:
    `clip_action=0.999`), so the TD and conservative terms see Q(s, clip(a)); the original does not.
    `clip_dataset_actions` (None: off, the original; 0.999 in configs/algo/cql_jaxcql.yaml).
  - JaxCQL's optional clipping of Gap (default +-inf, i.e. off) is not implemented.
The field defaults here are the original's; configs/algo/cql.yaml is the original's recipe and
configs/algo/cql_jaxcql.yaml JaxCQL's.

Defaults per dataset family, from the original's README commands: Gym locomotion uses the fixed
weight w = 5 without Lagrange (README: "min_q_weight 5.0 or 10.0", "lagrange_thresh=-1"), with the
deterministic backup; AntMaze uses the Lagrange form with tau_gap = 5, w = 5 and rewards
(r - 0.5) * 4 (examples/cql_antmaze_new.py). Our reading of why: on dense locomotion rewards one
fixed w works across datasets, while under AntMaze's sparse, shifted rewards the Q scale and hence
the right w differ from maze to maze; the multiplier instead holds w * Gap near tau_gap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

import envs
from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, Derived, OffPolicy, OnlineConfig, Spec
from algorithms.core.networks import ReferenceTanhGaussianActor, critic_ensemble
from algorithms.core.training import copy_params, create_train_state, scalar_state, soft_update

BACKUPS = ("deterministic", "entropy", "max")
MAX_BACKUP_ORDERS = ("max_then_min", "min_then_max")
POLICY_HEADS = ("rlkit", "jaxcql")
LAGRANGE_FORMS = ("original", "jaxcql")
INIT_SCHEMES = ("default", "orthogonal")


@flax.struct.dataclass
class CQLState:
    actor: TrainState
    critic: TrainState
    target_critic_params: dict
    log_alpha: TrainState  # entropy temperature
    log_alpha_prime: TrainState  # Lagrange multiplier of the conservative gap (unused without Lagrange)
    step: jax.Array


class PolicyInputs(NamedTuple):
    """What the policy sees at s (`current`) and at s' (`next`), and the weight of Q in its loss,
    one per row or a number; CQL: the states and 1."""

    current: jax.Array
    next: jax.Array
    q_weight: jax.Array | float = 1.0


def conservative_gap(q_data: jax.Array, q_sampled: jax.Array, log_density: jax.Array,
                     temperature: float = 1.0) -> jax.Array:
    """CQL(H)'s importance-sampled gap T logsumexp_j((Q(s, a_j) - log mu(a_j|s)) / T) - Q(s, a):
    `q_sampled` and `log_density` (..., K) for K sampled actions a_j ~ mu, `q_data` (...) for the
    dataset action. The sampling densities are constants (the references detach them)."""
    log_density = jax.lax.stop_gradient(log_density)
    soft_max = temperature * jax.nn.logsumexp((q_sampled - log_density) / temperature, axis=-1)
    return soft_max - q_data


def lagrange_penalty(gaps: jax.Array, log_alpha_prime: jax.Array, min_q_weight: float,
                     target_gap: float, form: str = "original") -> tuple[jax.Array, jax.Array, jax.Array]:
    """CQL-Lagrange terms for per-critic mean gaps `gaps` (N,) with the constraint C_i = w gap_i - tau
    (form "original") or w (gap_i - tau) ("jaxcql"): the critics' penalty alpha' C_i (alpha'
    constant), the multiplier's loss -mean_i alpha' C_i (gaps constant), and alpha'. Minimising the
    latter raises alpha' while C > 0, so the gap settles where C = 0."""
    alpha_prime = jnp.clip(jnp.exp(log_alpha_prime), 0.0, 1e6)
    if form == "jaxcql":
        constraint = min_q_weight * (gaps - target_gap)
    else:
        constraint = min_q_weight * gaps - target_gap
    penalty = jax.lax.stop_gradient(alpha_prime) * constraint
    alpha_prime_loss = -(alpha_prime * jax.lax.stop_gradient(constraint)).mean()
    return penalty, alpha_prime_loss, alpha_prime


def backup_value(next_q: jax.Array, next_log_probs: jax.Array, alpha: jax.Array, backup: str,
                 max_backup_order: str = "max_then_min"):
    """The value of s' in the TD target, from target-critic values `next_q` (N, B, K) of K actions
    a'_k ~ pi(.|s') with log-probabilities `next_log_probs` (B, K); K = 1 except for "max"."""
    if backup == "max":
        if max_backup_order == "min_then_max":  # per action the most pessimistic critic, then the best action
            return next_q.min(axis=0).max(axis=-1)
        return next_q.max(axis=-1).min(axis=0)  # per critic the best action, then the most pessimistic critic
    value = next_q[..., 0].min(axis=0)
    if backup == "entropy":
        value = value - alpha * next_log_probs[:, 0]
    return value


@register
@dataclass
class CQL(Algorithm):
    name = "cql"
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    critic_hidden_dims: tuple[int, ...] = ()  # (): hidden_dims
    actor_lr: float = 1e-4  # also the entropy temperature's
    critic_lr: float = 3e-4  # also the Lagrange multiplier's
    discount: float = 0.99
    tau: float = 5e-3
    num_critics: int = 2
    policy_head: str = "rlkit"  # "rlkit" (original) or "jaxcql": see ReferenceTanhGaussianActor
    # the last critic layer: U(+-scale), or the gain of an orthogonal one under init_scheme="orthogonal"
    critic_final_init_scale: float | None = 3e-3  # None: as the hidden layers
    init_scheme: str = "default"  # "default" (lecun normal) or "orthogonal" (JaxCQL's orthogonal_init)
    target_entropy: float | None = None  # None: -|A|
    bc_warmup_steps: int = 40_000  # the original's policy_eval_start; 0 in JaxCQL
    # CQL(H)
    min_q_weight: float = 5.0  # w
    num_sampled_actions: int = 10  # n, per state and per proposal distribution
    cql_temperature: float = 1.0  # T
    backup: str = "deterministic"  # "deterministic", "entropy" or "max"
    max_backup_order: str = "max_then_min"  # backup="max": "max_then_min" (original) or "min_then_max"
    lagrange: bool = False
    lagrange_form: str = "original"  # "original": alpha' (w gap - tau_gap); "jaxcql": alpha' w (gap - tau)
    target_action_gap: float = 5.0  # tau_gap, used with lagrange=True, in `lagrange_form`'s form
    init_log_alpha_prime: float = 0.0
    clip_dataset_actions: float | None = None  # JaxCQL: 0.999 (|a| <= this); None: as recorded

    def __post_init__(self):
        super().__post_init__()
        # KeyError is what the train app reports as a one-line bad-override error.
        for name, allowed in (("backup", BACKUPS), ("max_backup_order", MAX_BACKUP_ORDERS),
                              ("policy_head", POLICY_HEADS), ("lagrange_form", LAGRANGE_FORMS),
                              ("init_scheme", INIT_SCHEMES)):
            if getattr(self, name) not in allowed:
                raise KeyError(f"algo.{name} must be one of {', '.join(allowed)} "
                               f"(got '{getattr(self, name)}')")

    def networks(self, action_dim: int):
        actor = ReferenceTanhGaussianActor(self.hidden_dims, action_dim, self.policy_head, self.init_scheme)
        critic = critic_ensemble(self.num_critics, self.critic_hidden_dims or self.hidden_dims,
                                 init_scheme=self.init_scheme, final_init_scale=self.critic_final_init_scale)
        return actor, critic

    def push_down_values(self, q_sampled: jax.Array, batch, ctx: Context | None) -> jax.Array:
        """The Q-values of the sampled actions (N, B, 3n: uniform, pi(s), pi(s')) that enter the
        gap's logsumexp; CQL uses them as they are (Cal-QL overrides this)."""
        return q_sampled

    def init(self, key, spec: Spec, ctx: Context | None = None) -> CQLState:
        actor_key, critic_key = jax.random.split(key)
        actor_net, critic_net = self.networks(spec.action_dim)
        obs = jnp.zeros((1, spec.observation_dim))
        act = jnp.zeros((1, spec.action_dim))
        critic_params = critic_net.init(critic_key, obs, act)
        return CQLState(
            actor=create_train_state(actor_net, actor_net.init(actor_key, obs), self.actor_lr),
            critic=create_train_state(critic_net, critic_params, self.critic_lr),
            target_critic_params=copy_params(critic_params),
            log_alpha=scalar_state(0.0, self.actor_lr),
            log_alpha_prime=scalar_state(self.init_log_alpha_prime, self.critic_lr),
            step=jnp.zeros((), jnp.int32),
        )

    def update(self, state: CQLState, batch, key, ctx: Context | None = None):
        return self.conservative_update(state, batch, key, ctx, PolicyInputs(batch.observations,
                                                                              batch.next_observations))

    def conservative_update(self, state: CQLState, batch, key, ctx: Context | None, inputs: PolicyInputs):
        """The update above, with the policy seeing `inputs` (FamO2O: states with an encoded balance)."""
        observations, actions = batch.observations, batch.actions
        if self.clip_dataset_actions is not None:
            actions = jnp.clip(actions, -self.clip_dataset_actions, self.clip_dataset_actions)
        batch_size, action_dim = actions.shape
        n = self.num_sampled_actions
        next_key, current_key, uniform_key = jax.random.split(key, 3)
        alpha = jnp.exp(state.log_alpha.params["value"])
        target_entropy = -action_dim if self.target_entropy is None else self.target_entropy

        # pi(.|s'): n actions for the gap, then the backup's a' (n of them for the max backup)
        backup_size = n if self.backup == "max" else 1
        next_dist = state.actor.apply_fn(state.actor.params, inputs.next)
        next_actions, next_log_probs = next_dist.sample_and_log_prob(
            seed=next_key, sample_shape=(n + backup_size,))
        next_actions, next_log_probs = jnp.swapaxes(next_actions, 0, 1), next_log_probs.T  # (B, K, .)

        def actor_loss(params):
            # One draw of 1 + n actions: the first trains the actor, the other n go to the gap.
            dist = state.actor.apply_fn(params, inputs.current)
            sampled, log_probs = dist.sample_and_log_prob(seed=current_key, sample_shape=(1 + n,))
            log_pi = log_probs[0]

            def soft_q_loss():
                q = state.critic.apply_fn(state.critic.params, observations, sampled[0]).min(axis=0)
                return (alpha * log_pi - inputs.q_weight * q).mean()

            def behaviour_cloning_loss():
                # the original clamps 1 +- a at 1e-6 inside atanh
                dataset_actions = jnp.clip(actions, -1.0 + 1e-6, 1.0 - 1e-6)
                return (alpha * log_pi - dist.log_prob(dataset_actions)).mean()

            if self.bc_warmup_steps > 0:
                # `step` is shared across seeds (see Algorithm), so this stays a real branch.
                loss = jax.lax.cond(state.step < self.bc_warmup_steps,
                                    behaviour_cloning_loss, soft_q_loss)
            else:
                loss = soft_q_loss()
            return loss, (log_pi, jnp.swapaxes(sampled[1:], 0, 1), log_probs[1:].T)

        (pi_loss, (log_pi, current_actions, current_log_probs)), grads = jax.value_and_grad(
            actor_loss, has_aux=True)(state.actor.params)
        actor = state.actor.apply_gradients(grads=grads)  # the aux outputs carry no gradient

        def temperature_loss(params):
            return -params["value"] * (log_pi + target_entropy).mean()

        log_alpha = state.log_alpha.apply_gradients(
            grads=jax.grad(temperature_loss)(state.log_alpha.params))

        next_q = state.critic.apply_fn(
            state.target_critic_params, batch.next_observations, next_actions[:, n:])
        next_v = backup_value(next_q, next_log_probs[:, n:], alpha, self.backup, self.max_backup_order)
        td_target = batch.rewards + self.discount * (1.0 - batch.terminals) * next_v

        uniform_actions = jax.random.uniform(uniform_key, (batch_size, n, action_dim),
                                             minval=-1.0, maxval=1.0)
        # The dataset action and the 3n proposals go through the critics in one call.
        all_actions = jnp.concatenate(
            [actions[:, None], uniform_actions, current_actions, next_actions[:, :n]], axis=1)
        log_density = jnp.concatenate(
            [jnp.full((batch_size, n), action_dim * jnp.log(0.5)), current_log_probs,
             next_log_probs[:, :n]], axis=1)

        def critic_loss(params):
            q = state.critic.apply_fn(params, observations, all_actions)  # (N, B, 1 + 3n)
            q_data = q[..., 0]
            td_loss = ((q_data - td_target) ** 2).mean(axis=1)
            q_sampled = self.push_down_values(q[..., 1:], batch, ctx)
            gaps = conservative_gap(q_data, q_sampled, log_density, self.cql_temperature).mean(axis=1)
            if self.lagrange:
                penalty = lagrange_penalty(gaps, state.log_alpha_prime.params["value"], self.min_q_weight,
                                           self.target_action_gap, self.lagrange_form)[0]
            else:
                penalty = self.min_q_weight * gaps
            return (td_loss + penalty).sum(), (td_loss, gaps, q_data, q[..., 1 + n:1 + 2 * n])

        (q_loss, (td_loss, gaps, q_data, q_policy)), grads = jax.value_and_grad(
            critic_loss, has_aux=True)(state.critic.params)
        critic = state.critic.apply_gradients(grads=grads)

        metrics = {"critic_loss": q_loss, "td_loss": td_loss.mean(), "cql_gap": gaps.mean(),
                   "q": q_data.mean(), "q_policy": q_policy.mean(), "actor_loss": pi_loss,
                   "alpha": alpha, "entropy": -log_pi.mean()}
        log_alpha_prime = state.log_alpha_prime
        if self.lagrange:
            def multiplier_loss(params):
                return lagrange_penalty(gaps, params["value"], self.min_q_weight,
                                        self.target_action_gap, self.lagrange_form)[1]

            log_alpha_prime = log_alpha_prime.apply_gradients(
                grads=jax.grad(multiplier_loss)(log_alpha_prime.params))
            metrics["alpha_prime"] = jnp.clip(jnp.exp(state.log_alpha_prime.params["value"]), 0.0, 1e6)

        new_state = state.replace(
            actor=actor, critic=critic,
            target_critic_params=soft_update(state.target_critic_params, critic.params, self.tau),
            log_alpha=log_alpha, log_alpha_prime=log_alpha_prime, step=state.step + 1)
        return new_state, metrics

    def act(self, state: CQLState, observations, key, deterministic: bool = True):
        dist = state.actor.apply_fn(state.actor.params, observations)
        return dist.mode() if deterministic else dist.sample(seed=key)


@register
@dataclass
class CalQL(CQL):
    """Cal-QL (Nakamoto et al., NeurIPS 2023), as in `nakamotoo/Cal-QL` (JaxCQL/conservative_sac.py):
    CQL whose push-down on the policy's actions stops at the behaviour policy's value,
        Q(s, a_j) -> max(Q(s, a_j), V^mu(s)) for a_j ~ pi(.|s) and a'_j ~ pi(.|s') in the gap
    (not for the uniform actions), with V^mu(s) the discounted Monte-Carlo return-to-go of the
    dataset trajectory through s (`batch.returns_to_go`; a never-solved sparse-reward trajectory
    gets failure_reward / (1 - gamma) everywhere, as the code's `calc_return_to_go`). Q then stays
    calibrated (>= V^mu) and does not "unlearn" when fine-tuning starts.

    Online, batches are half dataset, half online transitions (`online.replay=mixed`, the code's
    mixing_ratio 0.5). Where the original and CORL differ online: the original keeps the
    calibration on and computes the online transitions' returns-to-go when each trajectory ends;
    CORL (`algorithms/finetune/cal_ql.py`, switch_calibration) turns it off at the switch.
    `online_calibration=False` (the default) follows CORL; True the authors: each online row gets
    its episode's return-to-go when the episode ends (experiments/online.py), a row of an
    unfinished episode sets no bound.

    configs/algo/cal_ql.yaml holds the code's AntMaze recipe (scripts/run_antmaze.sh with the
    defaults of conservative_sac_main.py): JaxCQL's Lagrange form alpha' w (gap - 0.8) with w = 5,
    the max backup as min over the critics then max over the 10 actions, orthogonal initialisation,
    Q 4x256, policy 2x256 (lr 1e-4), dataset actions clipped to +-0.99999, r <- 10 r - 5. Every
    remaining difference from the paper and the code: docs/algorithms/cal_ql.md."""

    name = "cal_ql"
    failure_reward: float | None = None  # sparse tasks: the (transformed) reward of every failed step
    online_calibration: bool = False
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(replay="mixed",
                                                                      dataset_fraction=0.5))

    def derive(self, data) -> Derived:
        return Derived(returns_to_go=envs.returns_to_go(data, self.discount, self.failure_reward))

    def driver(self):
        """With `online_calibration`, online rows get their episode's return-to-go when it ends."""
        driver = super().driver()
        if not isinstance(driver, OffPolicy):
            return driver
        return dataclasses.replace(driver, returns_to_go=self.online_calibration)

    def push_down_values(self, q_sampled, batch, ctx):
        if ctx is not None and ctx.phase == "online" and not self.online_calibration:
            return q_sampled
        n = self.num_sampled_actions
        bound = batch.returns_to_go[None, :, None]  # (1, B, 1): every critic, every action
        return jnp.concatenate([q_sampled[..., :n], jnp.maximum(q_sampled[..., n:], bound)], axis=-1)
