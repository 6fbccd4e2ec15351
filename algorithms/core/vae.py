"""Conditional VAE of the behaviour policy, p(a|s) = E_z p(a|s, z), as in BCQ, SPOT and A2PR.

    encoder q(z|s, a) = N(mu(s, a), sigma(s, a)^2),  log sigma clipped to [-4, 15]
    decoder D(s, z)   = tanh(MLP(s, z))                (actions lie in [-1, 1])
    latent size 2|A|, encoder and decoder 750-750 (ReLU), PyTorch's default initialisation.

Losses are per example (shape of the batch), so callers weight and average them:
    elbo_loss:  mean_dims (D(s, z) - a)^2 + w_KL mean_latent KL(q(z|s, a) || N(0, I)),  z ~ q
                (one sample by default; with S samples the reconstruction term averages over them).
                This is SPOT's and A2PR's training loss and SPOT's density estimate -log pi_beta.
    iwae_loss:  -log (1/S sum_k p(a|s, z_k) p(z_k) / q(z_k|s, a)),  z_k ~ q,  the importance-weighted
                estimate of -log pi_beta(a|s) (SPOT's option), with a Gaussian decoder
                p(a|s, z) = N(D(s, z), sigma^2 I), sigma^2 = w_KL / 4. With a latent of 2|A| this
                model's negative ELBO is, up to a constant,
                    |A| / (2 sigma^2) * (mean_dims (D - a)^2 + 4 sigma^2 mean_latent KL),
                i.e. proportional to `elbo_loss` with the same w_KL: both estimate the same density.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from algorithms.core.networks import MLP
from algorithms.core.training import create_train_state


class ConditionalVAE(nn.Module):
    action_dim: int
    latent_dim: int
    hidden_dims: Sequence[int] = (750, 750)
    log_std_min: float = -4.0
    log_std_max: float = 15.0

    def setup(self):
        # One output layer for (mu, log sigma): the same as two torch layers, whose init depends
        # only on the fan-in.
        self.encoder = MLP(self.hidden_dims, 2 * self.latent_dim, init_scheme="torch")
        self.decoder = MLP(self.hidden_dims, self.action_dim, init_scheme="torch")

    def encode(self, observations: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mu, sigma) of q(z|s, a)."""
        mean, log_std = jnp.split(self.encoder(jnp.concatenate([observations, actions], -1)), 2, -1)
        return mean, jnp.exp(jnp.clip(log_std, self.log_std_min, self.log_std_max))

    def decode(self, observations: jax.Array, latents: jax.Array) -> jax.Array:
        """D(s, z) in [-1, 1]."""
        return jnp.tanh(self.decoder(jnp.concatenate([observations, latents], -1)))

    def __call__(self, observations: jax.Array, actions: jax.Array, key: jax.Array):
        """Reconstruction D(s, z), z ~ q(z|s, a) reparameterised; returns (D(s, z), mu, sigma)."""
        mean, std = self.encode(observations, actions)
        latents = mean + std * jax.random.normal(key, mean.shape)
        return self.decode(observations, latents), mean, std


def vae_for(action_dim: int, hidden_dims: Sequence[int] = (750, 750)) -> ConditionalVAE:
    """The papers' VAE for an action size: latent 2|A|."""
    return ConditionalVAE(action_dim, 2 * action_dim, tuple(hidden_dims))


def gaussian_kl(mean: jax.Array, std: jax.Array) -> jax.Array:
    """KL(N(mean, std^2) || N(0, 1)) per dimension."""
    return 0.5 * (mean**2 + std**2 - 1.0) - jnp.log(std)


def _posterior_samples(apply_fn: Callable, params, observations, actions, key, num_samples: int):
    mean, std = apply_fn(params, observations, actions, method="encode")
    latents = mean + std * jax.random.normal(key, (num_samples, *mean.shape))
    repeated = jnp.broadcast_to(observations, (num_samples, *observations.shape))
    return mean, std, latents, apply_fn(params, repeated, latents, method="decode")


def elbo_terms(apply_fn: Callable, params, observations, actions, key, num_samples: int = 1):
    """(reconstruction, KL) per example: mean over samples and action dims of (D(s, z) - a)^2, and
    the mean over latent dims of KL(q(z|s, a) || N(0, I))."""
    mean, std, _, decoded = _posterior_samples(apply_fn, params, observations, actions, key,
                                               num_samples)
    return ((decoded - actions) ** 2).mean(axis=(0, -1)), gaussian_kl(mean, std).mean(-1)


def elbo_loss(apply_fn: Callable, params, observations, actions, key, kl_weight: float = 0.5,
              num_samples: int = 1) -> jax.Array:
    """Negative ELBO per example: mean_dims (D(s, z) - a)^2 + kl_weight * mean_latent KL."""
    reconstruction, kl = elbo_terms(apply_fn, params, observations, actions, key, num_samples)
    return reconstruction + kl_weight * kl


def _normal_log_prob(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)


def iwae_loss(apply_fn: Callable, params, observations, actions, key, kl_weight: float = 0.5,
              num_samples: int = 10) -> jax.Array:
    """-log pi_beta(a|s) per example, importance-weighted over `num_samples` posterior samples."""
    mean, std, latents, decoded = _posterior_samples(apply_fn, params, observations, actions, key,
                                                     num_samples)
    decoder_std = jnp.sqrt(kl_weight / 4.0)
    log_weights = (_normal_log_prob(actions, decoded, decoder_std).sum(-1)
                   + _normal_log_prob(latents, 0.0, 1.0).sum(-1)
                   - _normal_log_prob(latents, mean, std).sum(-1))
    return -(jax.nn.logsumexp(log_weights, axis=0) - jnp.log(num_samples))


def create_vae_state(key, observation_dim: int, action_dim: int, hidden_dims: Sequence[int],
                     learning_rate: float) -> TrainState:
    """A fresh VAE (latent 2|A|) with its Adam state."""
    vae = vae_for(action_dim, hidden_dims)
    params = vae.init(key, jnp.zeros((1, observation_dim)), jnp.zeros((1, action_dim)),
                      jax.random.key(0))
    return create_train_state(vae, params, learning_rate)


def vae_step(vae: TrainState, observations, actions, key, kl_weight: float = 0.5,
             weights: jax.Array | None = None) -> tuple[TrainState, dict]:
    """One Adam step on mean(weights * reconstruction) + kl_weight * mean(KL) (weights 1: the mean
    negative ELBO, SPOT's pretraining loss; A2PR passes its advantage weights)."""

    def loss(params):
        reconstruction, kl = elbo_terms(vae.apply_fn, params, observations, actions, key)
        weighted = reconstruction if weights is None else weights * reconstruction
        return weighted.mean() + kl_weight * kl.mean(), (reconstruction.mean(), kl.mean())

    (value, (reconstruction, kl)), grads = jax.value_and_grad(loss, has_aux=True)(vae.params)
    return vae.apply_gradients(grads=grads), {"vae_loss": value, "vae_reconstruction": reconstruction,
                                              "vae_kl": kl}
