"""Proximal policy optimisation on one rollout, as pure functions of one seed (the loop vmaps seeds).

Faithful to Uni-O4's online phase (Lei-Kun/Uni-O4 `ppo_finetune/ppo.py`, `main.py`,
`normalization.py`), itself the PPO-continuous of Lizhi-sjtu/DRL-code-pytorch with its tricks:

    GAE:     delta_t = r_t + gamma (1 - terminal_t) V(s'_t) - V(s_t),
             A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}      (done: termination or truncation)
             so a truncated episode bootstraps through V of its true final observation, a terminated
             one does not, and the recursion never crosses an episode end; returns R_t = A_t + V(s_t).
    actor:   L_pi = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)] - c_H E[H(pi(.|s))],
             rho = pi(a|s) / pi_old(a|s), A normalized over the rollout (Bessel-corrected std + 1e-5)
    critic:  L_V = E[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]  (`clip_value`, the
             reference's default, with the policy's eps; PureJaxRL's has a factor 1/2 and a weight,
             which change nothing with the separate Adam of each network) or E[(V - R)^2]
    epochs x minibatches: a fresh permutation of the rollout every epoch; one Adam step of the actor
             and one of the critic per minibatch, each gradient clipped to norm 0.5, Adam eps 1e-5;
             both learning rates decay linearly to 0 at `max_env_steps` environment steps.

With `num_envs` parallel environments per seed (`Spec.num_envs`) a rollout is (T, num_envs, ...):
GAE runs along time within each environment (its own terminations, truncations and bootstrap
values), the advantages are normalized over all T num_envs rows, and the minibatches are drawn
from those rows, as CleanRL's `ppo_continuous_action.py` with vectorized environments; every
environment scales its rewards with its own return scaler (CleanRL wraps each environment in its
own NormalizeReward) and the learning rates decay by the environment steps of all of them.

pi_old and V_old are the networks that collected the rollout: the loop updates only at rollout
ends, so they are the state's own networks when `ppo_update` starts, and the log-probabilities and
values are computed there rather than stored at collection (equal up to float rounding; the
reference stores the log-probability of the clamped action, which is the action the rows hold).

The state carries the statistics its networks standardize states with (`normalizer`, frozen): the
identity from scratch, the offline phase's when a policy is handed over (Uni-O4). With reward
scaling, a critic handed over is first re-fitted to the dataset's scaled returns, as Uni-O4's
`ppo_finetune/main.py` does (`init_value_refit`, `value_refit_step`: a stage of the algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from algorithms.core.algorithm import OnlineConfig, SettingsError
from algorithms.core.networks import MLP
from algorithms.core.training import create_train_state
from envs.preprocessing import Normalizer

REWARD_SCALINGS = ("none", "number", "dynamic")
ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}  # hidden units of the PPO networks (the references')


@dataclass
class PPOConfig:
    """PPO's hyperparameters; the defaults are Uni-O4's online ones (`ppo_finetune/main.py` and
    its per-dataset scripts: K epochs 5-30 per dataset, lr_a 1e-6...3e-5; `main.py`'s own defaults
    are 30 epochs and lr_a 2e-5).

    reward_scaling: "none"; "number" (r x 0.1); "dynamic" (r / std of the running discounted return,
        the return restarted at every episode end: the reference's RewardScaling).
    max_env_steps: where the linear learning-rate decay reaches 0 (the reference's max_train_steps,
        3e6 by default whatever the run's length); `lr_decay=False` keeps the rates constant.
    max_grad_norm: each network's gradient is clipped to this global norm (0: not clipped)."""

    clip: float = 0.05
    clip_value: bool = True
    entropy_coef: float = 0.01
    discount: float = 0.99
    gae_lambda: float = 0.95
    epochs: int = 10
    minibatch_size: int = 128
    actor_lr: float = 2e-5
    critic_lr: float = 2e-4
    lr_decay: bool = True
    max_env_steps: int = 3_000_000
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    normalize_advantages: bool = True
    reward_scaling: str = "none"

    def __post_init__(self):
        def whole(value, low):
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        problems = [(self.clip > 0, "clip", "> 0"),
                    (self.entropy_coef >= 0, "entropy_coef", ">= 0"),
                    (0 <= self.discount <= 1, "discount", "in [0, 1]"),
                    (0 <= self.gae_lambda <= 1, "gae_lambda", "in [0, 1]"),
                    (whole(self.epochs, 1), "epochs", "an integer >= 1"),
                    (whole(self.minibatch_size, 1), "minibatch_size", "an integer >= 1"),
                    (self.actor_lr > 0, "actor_lr", "a learning rate > 0"),
                    (self.critic_lr > 0, "critic_lr", "a learning rate > 0"),
                    (whole(self.max_env_steps, 1), "max_env_steps", "an integer >= 1"),
                    (self.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0: no clipping)"),
                    (self.adam_eps > 0, "adam_eps", "> 0"),
                    (self.reward_scaling in REWARD_SCALINGS, "reward_scaling",
                     f"one of {', '.join(REWARD_SCALINGS)}")]
        for fine, name, requirement in problems:
            if not fine:
                raise SettingsError(f"algo.ppo.{name} must be {requirement} (got "
                                    f"{getattr(self, name)!r}); fix the override algo.ppo.{name}=...")


def check_rollouts(online: OnlineConfig, learner: str) -> None:
    """An algorithm that learns online with PPO must collect rollouts (`replay: on_policy`). That
    their block x env.num_envs rows split into whole minibatches is checked where env.num_envs is
    known (`OnPolicy.minibatch_size`; experiments/online.py's check_num_envs)."""
    if online.replay != "on_policy":
        raise SettingsError(f"algo.online.replay must be on_policy for {learner}, which learns online with "
                            f"PPO on its own rollouts (got {online.replay!r}); fix the override "
                            "algo.online.replay=on_policy")


def gae(rewards, values, next_values, terminals, dones, discount: float, gae_lambda: float):
    """Generalized advantage estimates and returns of one rollout in time order ((T,) arrays, or
    (T, num_envs): every environment along its own time axis):
    bootstrapped through V(s') unless the transition terminated, the recursion cut at every episode
    end (`dones`: terminations and truncations, including the cut at the rollout's last row)."""
    deltas = rewards + discount * (1.0 - terminals) * next_values - values

    def backwards(later, step):
        delta, done = step
        advantage = delta + discount * gae_lambda * (1.0 - done) * later
        return advantage, advantage

    _, advantages = jax.lax.scan(backwards, jnp.zeros_like(deltas[0]), (deltas, dones), reverse=True)
    return advantages, advantages + values


def clipped_surrogate(log_prob, old_log_prob, advantages, clip: float) -> jax.Array:
    """-E[min(rho A, clip(rho, 1 - clip, 1 + clip) A)], rho = exp(log_prob - old_log_prob)."""
    ratio = jnp.exp(log_prob - old_log_prob)
    return -jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages).mean()


def clipped_value_loss(values, old_values, returns, clip: float, clipped: bool = True) -> jax.Array:
    """E[max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)]; E[(V - R)^2] unclipped."""
    loss = (values - returns) ** 2
    if not clipped:
        return loss.mean()
    moved = old_values + jnp.clip(values - old_values, -clip, clip)
    return jnp.maximum(loss, (moved - returns) ** 2).mean()


@flax.struct.dataclass
class ReturnScaler:
    """The reference's "dynamic" reward scaling (`normalization.py:RewardScaling`): R <- gamma R + r
    each step, a running mean/std of R (Welford, as `RunningMeanStd`: its sum of squares starts at
    1, the std stays 1 until the second value), r / (std + 1e-8) after the update; R restarts at 0
    after every episode end. Its state carries over from one rollout to the next."""

    running_return: jax.Array
    count: jax.Array
    mean: jax.Array
    sum_squares: jax.Array
    std: jax.Array

    @classmethod
    def create(cls) -> ReturnScaler:
        zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
        return cls(zero, jnp.zeros((), jnp.int32), zero, one, one)

    def per_environment(self, num_envs: int) -> ReturnScaler:
        """One copy of this scaler per parallel environment (every field with a leading axis of
        `num_envs`); 1 keeps the single scaler."""
        if num_envs == 1:
            return self
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs, *x.shape)), self)

    def scale(self, rewards, dones, mode: str, discount: float, skip_episode_ends: bool = False):
        """(scaler, scaled rewards) for one rollout in time order; `mode` as PPOConfig.reward_scaling.
        rewards, dones: (T,), or (T, num_envs) with a scaler per environment (`per_environment`):
        each environment's rewards scaled by its own statistics, as every environment of CleanRL's
        vectorized PPO has its own NormalizeReward and every one is the reference's single one.
        `skip_episode_ends`: the reference's pass over the offline dataset (`offline_buffer.py:
        reward_normalize`), which Uni-O4's online scaler starts from, leaves the last row of every
        episode unscaled and uncounted (it only restarts R); online every row counts."""
        if mode == "none":
            return self, rewards
        if mode == "number":
            return self, rewards * 0.1
        if rewards.ndim == 2:
            return jax.vmap(lambda scaler, r, d: scaler.scale(r, d, mode, discount, skip_episode_ends),
                            in_axes=(0, 1, 1), out_axes=(0, 1))(self, rewards, dones)

        def one(scaler: ReturnScaler, step):
            reward, done = step
            ret = discount * scaler.running_return + reward
            count = scaler.count + 1
            first = count == 1
            mean = jnp.where(first, ret, scaler.mean + (ret - scaler.mean) / count)
            sum_squares = jnp.where(first, scaler.sum_squares,
                                    scaler.sum_squares + (ret - scaler.mean) * (ret - mean))
            std = jnp.where(first, scaler.std, jnp.sqrt(sum_squares / count))
            scaled = reward / (std + 1e-8)
            updated = ReturnScaler(jnp.where(done > 0, 0.0, ret), count, mean, sum_squares, std)
            if skip_episode_ends:
                skipped = scaler.replace(running_return=jnp.zeros_like(ret))
                updated = jax.tree.map(lambda new, old: jnp.where(done > 0, old, new), updated, skipped)
                scaled = jnp.where(done > 0, reward, scaled)
            return updated, scaled

        return jax.lax.scan(one, self, (rewards, dones))


@flax.struct.dataclass
class PPOState:
    actor: TrainState  # apply_fn(params, observations) -> a distrax distribution
    critic: TrainState  # apply_fn(params, observations) -> values (..., ) or (..., 1)
    scaler: ReturnScaler
    normalizer: Normalizer  # what the networks see: normalizer(observations), frozen
    step: jax.Array  # PPO updates (rollouts) so far, shared by all seeds


def optimizer(learning_rate: float, config: PPOConfig) -> optax.GradientTransformation:
    """Adam (eps `adam_eps`) after clipping the gradient's global norm; the learning rate is a
    hyperparameter of the state, set at every update by `ppo_update` (the linear decay)."""
    def make(learning_rate):
        clipping = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm else []
        return optax.chain(*clipping, optax.adam(learning_rate, eps=config.adam_eps))

    return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def init_ppo_state(config: PPOConfig, actor_module, actor_params, critic_module, critic_params,
                   normalizer: Normalizer, scaler: ReturnScaler | None = None,
                   num_envs: int = 1) -> PPOState:
    """A PPO state from given networks (a policy and a value function trained elsewhere, or freshly
    initialised), with new optimisers and the update count at 0; `normalizer`: the state statistics
    the networks were trained with; `scaler`: a return scaler already run over other data (Uni-O4
    starts it on the offline dataset), else a fresh one; `num_envs`: the parallel environments of
    every rollout (`Spec.num_envs`), each with its own copy of that scaler."""
    return PPOState(
        actor=TrainState.create(apply_fn=actor_module.apply, params=actor_params,
                                tx=optimizer(config.actor_lr, config)),
        critic=TrainState.create(apply_fn=critic_module.apply, params=critic_params,
                                 tx=optimizer(config.critic_lr, config)),
        scaler=(ReturnScaler.create() if scaler is None else scaler).per_environment(num_envs),
        normalizer=normalizer,
        step=jnp.zeros((), jnp.int32))


def _values(critic: TrainState, params, observations) -> jax.Array:
    values = critic.apply_fn(params, observations)
    return values.reshape(observations.shape[:-1])


def _with_learning_rate(train_state: TrainState, learning_rate) -> TrainState:
    opt_state = train_state.opt_state
    hyperparams = {**opt_state.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
    return train_state.replace(opt_state=opt_state._replace(hyperparams=hyperparams))


def ppo_update(config: PPOConfig, state: PPOState, rollout, key: jax.Array):
    """One PPO update on one rollout (`Transitions` in time order, (T, ...) per field, or
    (T, num_envs, ...) from parallel environments; T num_envs a multiple of
    `config.minibatch_size`; raw states): states standardized with the state's statistics, rewards
    scaled, GAE along time within each environment, then `epochs` x T num_envs / minibatch_size
    minibatch steps over all the rollout's rows in one compiled scan (CleanRL's vectorized PPO).
    Returns (state, metrics averaged over the minibatch steps)."""
    steps_shape = rollout.rewards.shape  # (T,) or (T, num_envs)
    length = rollout.rewards.size  # environment steps in the rollout
    if length % config.minibatch_size:
        raise SettingsError(f"the rollout of {length} environment steps is not a multiple of "
                            f"algo.ppo.minibatch_size={config.minibatch_size}; make algo.online.block "
                            "a multiple of it")
    minibatches = length // config.minibatch_size
    rollout = rollout._replace(observations=state.normalizer(rollout.observations),
                               next_observations=state.normalizer(rollout.next_observations))
    dones = jnp.maximum(rollout.terminals, rollout.timeouts)
    scaler, rewards = state.scaler.scale(rollout.rewards, dones, config.reward_scaling, config.discount)
    old_values = _values(state.critic, state.critic.params, rollout.observations)
    next_values = _values(state.critic, state.critic.params, rollout.next_observations)
    advantages, returns = gae(rewards, old_values, next_values, rollout.terminals, dones,
                              config.discount, config.gae_lambda)
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-5)
    old_log_probs = state.actor.apply_fn(state.actor.params, rollout.observations).log_prob(rollout.actions)

    # the reference decays after each update by the environment steps seen: update k uses
    # lr0 (1 - (k - 1) T / max_env_steps)
    seen = state.step.astype(jnp.float32) * length
    remaining = jnp.maximum(1.0 - seen / config.max_env_steps, 0.0) if config.lr_decay else 1.0
    actor = _with_learning_rate(state.actor, config.actor_lr * remaining)
    critic = _with_learning_rate(state.critic, config.critic_lr * remaining)
    rows = (rollout.observations, rollout.actions, old_log_probs, advantages, old_values, returns)
    data = jax.tree.map(lambda x: x.reshape(length, *x.shape[len(steps_shape):]), rows)

    def minibatch_step(networks, batch):
        actor, critic = networks
        observations, actions, old_log_prob, advantage, old_value, target = batch

        def actor_loss(params):
            dist = actor.apply_fn(params, observations)
            log_prob, entropy = dist.log_prob(actions), dist.entropy().mean()
            surrogate = clipped_surrogate(log_prob, old_log_prob, advantage, config.clip)
            ratio = jnp.exp(log_prob - old_log_prob)
            clipped = (jnp.abs(ratio - 1.0) > config.clip).mean()
            approx_kl = (ratio - 1.0 - jnp.log(ratio)).mean()  # KL(old || new), an unbiased estimate
            return surrogate - config.entropy_coef * entropy, (entropy, clipped, approx_kl)

        def critic_loss(params):
            return clipped_value_loss(_values(critic, params, observations), old_value, target,
                                      config.clip, config.clip_value)

        (pi_loss, (entropy, clipped, kl)), grads = jax.value_and_grad(actor_loss, has_aux=True)(actor.params)
        v_loss, v_grads = jax.value_and_grad(critic_loss)(critic.params)
        metrics = {"actor_loss": pi_loss, "critic_loss": v_loss, "entropy": entropy,
                   "clip_fraction": clipped, "approx_kl": kl}
        return (actor.apply_gradients(grads=grads), critic.apply_gradients(grads=v_grads)), metrics

    def epoch(networks, epoch_key):
        order = jax.random.permutation(epoch_key, length)
        batches = jax.tree.map(lambda x: x[order].reshape(minibatches, config.minibatch_size, *x.shape[1:]),
                               data)
        return jax.lax.scan(minibatch_step, networks, batches)

    (actor, critic), metrics = jax.lax.scan(epoch, (actor, critic), jax.random.split(key, config.epochs))
    metrics = {name: value.mean() for name, value in metrics.items()}
    metrics.update(value=old_values.mean(), scaled_reward=rewards.mean(),
                   actor_lr=config.actor_lr * remaining)
    return state.replace(actor=actor, critic=critic, scaler=scaler, step=state.step + 1), metrics


# ---- a critic for PPO fitted to a dataset's returns (Uni-O4's hand-over with scaled rewards) -------


class ReluValueNetwork(nn.Module):
    """The re-fitted V of Uni-O4's online phase (ppo_finetune/net.py:ValueReluMLP): ReLU layers and
    a ReLU output, so V >= 0."""

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        return nn.relu(MLP(self.hidden_dims, 1, init_scheme="torch")(observations)).squeeze(-1)


def discounted_returns(rewards: jax.Array, not_done: jax.Array, discount: float) -> jax.Array:
    """G_i = r_i + gamma not_done_i G_{i+1} over a dataset in order (the code's compute_return)."""
    def backwards(later, row):
        reward, alive = row
        ret = reward + discount * alive * later
        return ret, ret

    return jax.lax.scan(backwards, jnp.zeros(()), (rewards, not_done), reverse=True)[1]


def value_regression_step(value: TrainState, observations, returns) -> tuple[TrainState, jax.Array]:
    """One Adam step of E[(V(s) - G)^2]; returns the new V and the loss."""
    def loss(params):
        return ((value.apply_fn(params, observations) - returns) ** 2).mean()

    value_loss, grads = jax.value_and_grad(loss)(value.params)
    return value.apply_gradients(grads=grads), value_loss


@flax.struct.dataclass
class ValueRefit:
    """The re-fit while it trains: V and its targets, row by row (it draws its own rows)."""

    value: TrainState
    observations: jax.Array  # as the networks see them
    returns: jax.Array
    scaler: ReturnScaler  # after its pass over the dataset: where the online scaling starts


@flax.struct.dataclass
class OnlineValue:
    """The re-fit's result: the critic's parameters and the return scaler PPO continues."""

    params: Any
    scaler: ReturnScaler


def init_value_refit(key, config: PPOConfig, observations, rewards, not_done, hidden_dims,
                     learning_rate: float) -> ValueRefit:
    """A `ReluValueNetwork` and its targets: the dataset's rewards (in order) scaled as
    `config.reward_scaling` says, where "dynamic" leaves each episode's last row unscaled (the
    code's reward_normalize), then their Monte-Carlo returns."""
    scaler, scaled = ReturnScaler.create().scale(rewards, 1.0 - not_done, config.reward_scaling,
                                                 config.discount, skip_episode_ends=True)
    network = ReluValueNetwork(tuple(hidden_dims))
    value = create_train_state(network, network.init(key, observations[:1]), learning_rate)
    return ValueRefit(value, observations, discounted_returns(scaled, not_done, config.discount), scaler)


def value_refit_step(training: ValueRefit, batch_size: int, key) -> tuple[ValueRefit, dict]:
    rows = jax.random.randint(key, (batch_size,), 0, training.returns.shape[0])
    value, value_loss = value_regression_step(training.value, training.observations[rows],
                                              training.returns[rows])
    return training.replace(value=value), {"value_loss": value_loss}
