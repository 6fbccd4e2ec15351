"""A family of policies indexed by a balance coefficient b, and a balance model choosing b per state
(FamO2O, Wang et al., NeurIPS 2023; authors' code LeapLabTHU/FamO2O).

    universal policy   pi(a | [s, enc(b)])
    encoding           enc(b)[2i] = sin(b / n^(2i/d)),  enc(b)[2i+1] = cos(b / n^(2i/d)),  i < d/2
                       (family_utils.py: sin_cos_skill_func, n = 1e4, d = 6: divisors 1, 21.5, 464)
    balance model      x ~ pi_b(.|s), a 1-D tanh-Gaussian over the state alone, x in (-1, 1),
                       mapped onto the balance range [low, high] (see `to_balance`)

`PolicyFamily` holds what FamO2O adds to a base algorithm (its settings, the policy's input, the
balance draws, acting); algorithms/famo2o.py puts it on IQL and on CQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from algorithms.core.algorithm import SettingsError
from algorithms.core.networks import MLP, ReferenceTanhGaussianActor, TanhGaussian, orthogonal_init

BALANCE_MAPS = ("affine", "jaxcql", "clamped")


def balance_encoding(balance: jax.Array, base: float = 1e4, dims: int = 6) -> jax.Array:
    """enc(b): `balance` (...) -> (..., dims), sines at even and cosines at odd positions."""
    frequencies = base ** (-2.0 * jnp.arange(dims // 2) / dims)
    angles = balance[..., None] * frequencies
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*balance.shape, dims)


def to_balance(x: jax.Array, low: float, high: float, mapping: str) -> jax.Array:
    """The balance of the balance model's output x in (-1, 1) (..., 1) -> (...):
    "affine":  low + (x + 1) / 2 (high - low), inside (low, high) (the IQL code's map);
    "jaxcql":  low + x (high - low), the CQL code's map (hierarchical_policy.py), which reaches
               (2 low - high, high): below the range that offline training samples;
    "clamped": the CQL code's map clipped to [low, high]."""
    x = x[..., 0]
    if mapping == "affine":
        return low + (x + 1.0) / 2.0 * (high - low)
    balance = low + x * (high - low)
    return jnp.clip(balance, low, high) if mapping == "clamped" else balance


class BalanceModel(nn.Module):
    """pi_b(x|s), x in (-1, 1)^1: a tanh-Gaussian over the state; `mode()` is tanh(mean).

    head="jaxrl": the IQL code's (policy.NormalTanhPolicy, tanh_squash_distribution=True): layers
        orthogonal with gain sqrt(2), a state-independent log std from 0, clipped to [-10, 2];
    head="jaxcql": the CQL code's (HierarchicalPolicy = JaxCQL's TanhGaussianPolicy)."""

    hidden_dims: Sequence[int]
    head: str = "jaxrl"

    @nn.compact
    def __call__(self, observations: jax.Array):
        if self.head == "jaxcql":
            return ReferenceTanhGaussianActor(self.hidden_dims, 1, "jaxcql")(observations)
        features = MLP(self.hidden_dims, init_scheme="orthogonal")(observations)  # ends activated
        mean = nn.Dense(1, kernel_init=orthogonal_init())(features)
        log_std = jnp.clip(self.param("log_std", nn.initializers.zeros, (1,)), -10.0, 2.0)
        return TanhGaussian(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


@dataclass
class PolicyFamily:
    """FamO2O's settings and the pieces both versions share. Mixed in before the base algorithm,
    whose `hidden_dims` the balance model uses too (as both codes do)."""

    balance_head: ClassVar[str] = "jaxrl"
    balance_range: tuple[float, ...] = (1.0, 5.0)  # [low, high]: offline draws b ~ U[low, high]
    balance_map: str = "affine"  # how the balance model's x in (-1, 1) becomes b: see to_balance
    balance_lr: float = 3e-4
    encoding_base: float = 1e4  # n
    encoding_dims: int = 6  # d

    def __post_init__(self):
        super().__post_init__()
        low_high = tuple(self.balance_range)
        problems = [
            (len(low_high) == 2 and all(isinstance(v, int | float) and math.isfinite(v) for v in low_high)
             and low_high[0] <= low_high[-1], "balance_range", "two numbers [low, high] with low <= high"),
            (self.balance_map in BALANCE_MAPS, "balance_map", f"one of {', '.join(BALANCE_MAPS)}"),
            (self.encoding_dims % 2 == 0, "encoding_dims", "an even integer >= 2 (sine, cosine pairs)"),
            (self.encoding_base > 0, "encoding_base", "a number > 0")]
        for fine, name, requirement in problems:
            if not fine:
                raise SettingsError(f"algo.{name} must be {requirement} (got {getattr(self, name)!r}); "
                                    f"fix the override algo.{name}=...")

    def balance_network(self) -> BalanceModel:
        return BalanceModel(tuple(self.hidden_dims), self.balance_head)

    def policy_inputs(self, observations: jax.Array, balance: jax.Array) -> jax.Array:
        """[s, enc(b)], what the universal policy sees."""
        return jnp.concatenate(
            [observations, balance_encoding(balance, self.encoding_base, self.encoding_dims)], axis=-1)

    def uniform_balance(self, key: jax.Array, rows: int) -> jax.Array:
        """b ~ U[low, high] per row: the offline phase's draws for the policy."""
        low, high = self.balance_range
        return jax.random.uniform(key, (rows,), minval=low, maxval=high)

    def sample_balance(self, apply_fn, params, observations: jax.Array, key: jax.Array):
        """b(s) from pi_b, reparameterised (differentiable in `params`), and log pi_b(x|s)."""
        x, log_prob = apply_fn(params, observations).sample_and_log_prob(seed=key)
        return to_balance(x, *self.balance_range, self.balance_map), log_prob

    def mean_balance(self, balance_state, observations: jax.Array) -> jax.Array:
        """b from the balance model's mean tanh(mu(s)), used when acting (evaluation and exploration)."""
        x = balance_state.apply_fn(balance_state.params, observations).mode()
        return to_balance(x, *self.balance_range, self.balance_map)

    def act(self, state, observations, key, deterministic: bool = True):
        """Both codes: the balance model's mean; the policy's mean (evaluation) or a sample (exploring)."""
        inputs = self.policy_inputs(observations, self.mean_balance(state.balance, observations))
        dist = state.actor.apply_fn(state.actor.params, inputs)
        actions = dist.mode() if deterministic else dist.sample(seed=key)
        return jnp.clip(actions, -1.0, 1.0)
