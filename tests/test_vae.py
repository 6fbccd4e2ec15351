"""The conditional VAE (algorithms/core/vae.py): shapes, losses by hand, and that training makes it a
density model of the data: reconstruction improves and in-support actions score a better ELBO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.core.vae import (
    create_vae_state,
    elbo_loss,
    elbo_terms,
    gaussian_kl,
    iwae_loss,
    vae_for,
    vae_step,
)


def toy_data(n=512, seed=0):
    """Actions follow a deterministic behaviour a = tanh(W s) plus small noise."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(n, 3)).astype(np.float32)
    weights = np.array([[1.0, -0.5], [0.5, 1.0], [-1.0, 0.3]], np.float32)
    actions = np.tanh(observations @ weights) + 0.05 * rng.normal(size=(n, 2)).astype(np.float32)
    return jnp.asarray(observations), jnp.asarray(np.clip(actions, -1, 1))


def test_shapes_latent_and_output_range():
    vae = vae_for(2, (16, 16))
    assert vae.latent_dim == 4
    obs, act = jnp.ones((5, 3)), jnp.zeros((5, 2))
    params = vae.init(jax.random.key(0), obs, act, jax.random.key(1))
    decoded, mean, std = vae.apply(params, 10.0 * obs, act, jax.random.key(2))
    assert decoded.shape == (5, 2) and mean.shape == std.shape == (5, 4)
    assert jnp.all(jnp.abs(decoded) <= 1.0) and jnp.all(std >= np.exp(-4.0) * 0.999)
    assert elbo_loss(vae.apply, params, obs, act, jax.random.key(3)).shape == (5,)
    assert iwae_loss(vae.apply, params, obs, act, jax.random.key(3), num_samples=7).shape == (5,)


def test_kl_by_hand():
    # KL(N(1, 1) || N(0, 1)) = 0.5; KL(N(0, e^-1) || N(0, 1)) = 0.5 (e^-2 - 1) + 1
    np.testing.assert_allclose(gaussian_kl(jnp.array([1.0, 0.0]), jnp.array([1.0, np.exp(-1.0)])),
                               [0.5, 0.5 * (np.exp(-2.0) - 1.0) + 1.0], rtol=1e-6)


def test_elbo_is_reconstruction_plus_weighted_kl():
    vae = vae_for(2, (8,))
    obs, act = toy_data(6)
    params = vae.init(jax.random.key(0), obs, act, jax.random.key(1))
    key = jax.random.key(4)
    reconstruction, kl = elbo_terms(vae.apply, params, obs, act, key)
    decoded, mean, std = vae.apply(params, obs, act, key)  # same key: the same z
    np.testing.assert_allclose(reconstruction, ((decoded - act) ** 2).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(kl, gaussian_kl(mean, std).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(elbo_loss(vae.apply, params, obs, act, key, kl_weight=0.3),
                               reconstruction + 0.3 * kl, rtol=1e-5)


@pytest.fixture(scope="module")
def trained():
    obs, act = toy_data()
    state = create_vae_state(jax.random.key(0), 3, 2, (32, 32), 1e-3)
    key = jax.random.key(1)

    @jax.jit
    def train(state, key):
        def body(state, key):
            batch_key, step_key = jax.random.split(key)
            idx = jax.random.randint(batch_key, (64,), 0, obs.shape[0])
            return vae_step(state, obs[idx], act[idx], step_key)
        return jax.lax.scan(body, state, jax.random.split(key, 1500))

    before = state
    after, metrics = train(state, key)
    return before, after, metrics, obs, act


@pytest.mark.xdist_group("trained_vae")
def test_training_improves_reconstruction(trained):
    before, after, metrics, obs, act = trained
    key = jax.random.key(7)
    error = lambda s: float(elbo_terms(s.apply_fn, s.params, obs, act, key)[0].mean())
    assert error(after) < 0.25 * error(before)
    assert float(metrics["vae_loss"][-100:].mean()) < float(metrics["vae_loss"][:100].mean())


@pytest.mark.xdist_group("trained_vae")
@pytest.mark.parametrize("loss", [elbo_loss, iwae_loss])
def test_density_ranks_in_support_above_out_of_support(trained, loss):
    _, after, _, obs, act = trained
    # out of support: the behaviour's action reflected, and uniform noise
    far = jnp.clip(-act, -1, 1)
    noise = jax.random.uniform(jax.random.key(3), act.shape, minval=-1, maxval=1)
    key = jax.random.key(5)
    inside = loss(after.apply_fn, after.params, obs, act, key)
    for other in (far, noise):
        outside = loss(after.apply_fn, after.params, obs, other, key)
        assert float(inside.mean()) < float(outside.mean())
        assert float((inside < outside).mean()) > 0.8  # per state, not only on average

