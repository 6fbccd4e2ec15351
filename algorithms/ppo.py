"""PPO from scratch, online (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), on the
shared PPO update (algorithms/core/ppo.py) and Uni-O4's bounded Gaussian policy.

    python -m experiments.train algo=ppo online.steps=1000000   # (its default_steps: 0)

An on-policy learner: every `online.block` environment steps per seed (2048) are one rollout, the
batch of one update (`online.replay: on_policy`), then discarded; it trains on no dataset (`steps`
must be 0; the dataset named only picks the environment and, unless `normalize_states`, changes
nothing). Actions are sampled from N(mu(s), sigma(s)) and clamped to [-1, 1] before they are stored,
as Uni-O4's reference does; the rollout's log-probabilities are those of the clamped actions.

The defaults are the PPO-continuous code Uni-O4's online phase derives from (Lizhi-sjtu/DRL-code-
pytorch: clip 0.2, 10 epochs, minibatch 64, learning rates 3e-4 decayed linearly to 0 at 3e6 steps,
entropy 0.01, GAE(0.99, 0.95), advantage normalization, "dynamic" reward scaling, gradient norm 0.5,
Adam eps 1e-5) with that code's 2 x 64 tanh networks; Uni-O4's own online settings are `PPOConfig`'s defaults.
Uni-O4's online phase is this learner too (`UniO4.hand_over`), handed a state whose networks and
state statistics come from its offline phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp

from algorithms import register
from algorithms.core.algorithm import Algorithm, Context, OnlineConfig, OnPolicy, SettingsError, Spec
from algorithms.core.networks import MLP, BoundedGaussianPolicy
from algorithms.core.ppo import ACTIVATIONS, PPOConfig, PPOState, check_rollouts, init_ppo_state, ppo_update
from envs.preprocessing import Normalizer


class ValueMLP(nn.Module):
    """V(s): an MLP with orthogonal weights (gain sqrt 2) and zero biases, as the reference's."""

    hidden_dims: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, activation=ACTIVATIONS[self.activation],
                   init_scheme="orthogonal")(observations).squeeze(-1)


def scratch_ppo() -> PPOConfig:
    return PPOConfig(clip=0.2, epochs=10, minibatch_size=64, actor_lr=3e-4, critic_lr=3e-4,
                     reward_scaling="dynamic")


@register
@dataclass
class PPO(Algorithm):
    name = "ppo"
    hidden_dims: tuple[int, ...] = (64, 64)
    activation: str = "tanh"  # of both networks' hidden layers: tanh | relu
    log_std_min: float = -5.0  # the policy's log std lies in (log_std_min, log_std_max)
    log_std_max: float = 0.0
    extra_tanh: bool = False  # Uni-O4's online quirk (BoundedGaussianPolicy); off from scratch
    ppo: PPOConfig = field(default_factory=scratch_ppo)
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(replay="on_policy", block=2048))

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise SettingsError(f"algo.activation must be one of {', '.join(ACTIVATIONS)} (got "
                                f"{self.activation!r}); fix the override algo.activation=...")
        if not self.log_std_min < self.log_std_max:
            raise SettingsError(f"algo.log_std_min ({self.log_std_min}) must be below algo.log_std_max "
                                f"({self.log_std_max}); fix the overrides")
        check_rollouts(self.online, "PPO")

    def driver(self) -> OnPolicy:
        """Online only: its own rollouts, no dataset."""
        return dataclasses.replace(super().driver(), learns_offline=False,
                                   minibatch_size=self.ppo.minibatch_size)

    def networks(self, action_dim: int):
        actor = BoundedGaussianPolicy(self.hidden_dims, action_dim, ACTIVATIONS[self.activation],
                                      self.log_std_min, self.log_std_max, self.extra_tanh)
        return actor, ValueMLP(self.hidden_dims, self.activation)

    def init(self, key, spec: Spec, ctx: Context | None = None) -> PPOState:
        actor_key, critic_key = jax.random.split(key)
        actor, critic = self.networks(spec.action_dim)
        observations = jnp.zeros((1, spec.observation_dim))
        return init_ppo_state(self.ppo, actor, actor.init(actor_key, observations),
                              critic, critic.init(critic_key, observations),
                              Normalizer.identity(spec.observation_dim), num_envs=spec.num_envs)

    def update(self, state: PPOState, batch, key, ctx: Context | None = None):
        return ppo_update(self.ppo, state, batch, key)

    def act(self, state: PPOState, observations, key, deterministic: bool = True):
        dist = state.actor.apply_fn(state.actor.params, state.normalizer(observations))
        actions = dist.mean() if deterministic else dist.sample(seed=key)
        return jnp.clip(actions, -1.0, 1.0)
