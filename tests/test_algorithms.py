"""Losses on hand-checkable inputs, network shapes, and the behaviour of single updates."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_batch
from helpers import tiny as small

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context, OnlineConfig
from algorithms.core.networks import (
    GaussianActor,
    TanhGaussianActor,
    critic_ensemble,
    orthogonal_init,
)
from algorithms.core.ppo import PPOConfig
from algorithms.core.replay import Transitions
from algorithms.iql import expectile_loss
from algorithms.td3_bc import td3_bc_actor_loss

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)


def test_expectile_loss_by_hand():
    # u > 0 weighted by tau, u < 0 by 1 - tau: 0.7 * 1^2 and 0.3 * (-2)^2
    np.testing.assert_allclose(expectile_loss(jnp.array([1.0, -2.0]), 0.7), [0.7, 1.2], rtol=1e-6)


def test_td3_bc_actor_loss_by_hand():
    q_pi = jnp.array([1.0, -3.0])  # mean |Q| = 2, so lambda = 2.5 / 2 = 1.25
    pi = jnp.array([[0.5], [0.0]])
    actions = jnp.zeros((2, 1))
    loss, bc = td3_bc_actor_loss(q_pi, pi, actions, alpha=2.5)
    assert bc == pytest.approx(0.125)  # mean of (0.25, 0)
    assert loss == pytest.approx(-1.25 * -1.0 + 0.125)


def test_td3_bc_lambda_is_not_differentiated():
    grad = jax.grad(lambda q: td3_bc_actor_loss(q, jnp.zeros((2, 1)), jnp.zeros((2, 1)), 2.5)[0])
    # with lambda held constant, d/dq of -lambda * mean(q) is -lambda / n for every entry
    np.testing.assert_allclose(grad(jnp.array([1.0, -3.0])), [-0.625, -0.625], rtol=1e-6)


def test_critic_ensemble_batches_sampled_actions():
    net = critic_ensemble(3, (8, 8))
    obs, act = jnp.ones((5, 3)), jnp.ones((5, 2))
    params = net.init(jax.random.key(0), obs, act)
    q = net.apply(params, obs, act)
    assert q.shape == (3, 5)
    assert len(np.unique(np.asarray(q[:, 0]))) == 3  # members are initialised independently
    many = jax.random.uniform(jax.random.key(1), (5, 4, 2))
    q_many = net.apply(params, obs, many)
    assert q_many.shape == (3, 5, 4)
    for k in range(4):  # one call over K actions equals K separate calls
        np.testing.assert_allclose(q_many[:, :, k], net.apply(params, obs, many[:, k]), rtol=1e-5)


def test_actor_distributions():
    obs = jnp.ones((4, 3))
    gaussian = GaussianActor((8,), 2)
    dist = gaussian.apply(gaussian.init(jax.random.key(0), obs), obs)
    assert dist.mode().shape == (4, 2)
    assert jnp.all(jnp.abs(dist.mode()) <= 1.0)  # the mean is tanh-squashed
    np.testing.assert_allclose(dist.stddev(), 1.0)  # log std initialised at 0
    tanh = TanhGaussianActor((8,), 2)
    dist = tanh.apply(tanh.init(jax.random.key(0), obs), obs)
    sample, log_prob = dist.sample_and_log_prob(seed=jax.random.key(1))
    assert sample.shape == (4, 2) and log_prob.shape == (4,)
    assert jnp.all(jnp.abs(sample) < 1.0)
    assert dist.mode().shape == (4, 2)


def test_iql_policy_mean_layer_is_orthogonal_with_gain_sqrt2():
    """The reference initialises the mean layer with default_init() = orthogonal(sqrt 2): its 2
    columns are orthogonal with norm sqrt 2."""
    gaussian = GaussianActor((16,), 2)
    params = gaussian.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    mean_kernels = [v["kernel"] for k, v in params.items() if k.startswith("Dense")]
    (kernel,) = mean_kernels  # the MLP's own layers live in its submodule
    np.testing.assert_allclose(kernel.T @ kernel, 2.0 * np.eye(2), atol=1e-5)


def test_iql_actor_dropout_acts_only_in_the_loss():
    obs = jnp.ones((4, 3))
    actor = GaussianActor((64,), 2, dropout_rate=0.5)
    params = actor.init(jax.random.key(0), obs)
    means = [actor.apply(params, obs, True, rngs={"dropout": jax.random.key(k)}).mode() for k in range(2)]
    assert not np.allclose(means[0], means[1])
    np.testing.assert_array_equal(actor.apply(params, obs).mode(), actor.apply(params, obs).mode())


@pytest.mark.parametrize("name", ["bc", "td3_bc", "iql", "sac"])
def test_update_and_act_shapes_and_determinism(name):
    algo = small(name)
    batch = random_batch(jax.random.key(0))
    state = jax.jit(algo.init, static_argnums=1)(jax.random.key(1), SPEC, batch)  # one program each,
    update = jax.jit(algo.update)  # not one per operation
    new_state, metrics = update(state, batch, jax.random.key(2))
    again, metrics_again = update(state, batch, jax.random.key(2))
    assert int(new_state.step) == 1
    for value in metrics.values():
        assert value.shape == ()
    chex.assert_trees_all_equal(new_state, again)
    actions = jax.jit(algo.act, static_argnums=3)(new_state, batch.observations, jax.random.key(3), True)
    assert actions.shape == (16, 2)
    assert jnp.all(jnp.abs(actions) <= 1.0)


def test_bc_update_lowers_its_loss():
    algo = small("bc", actor_lr=3e-3)
    batch = random_batch(jax.random.key(0))
    batch = batch._replace(actions=jnp.tanh(batch.observations[:, :2] - batch.observations[:, 2:]))
    state = algo.init(jax.random.key(1), SPEC, batch)
    update = jax.jit(algo.update)
    _, first = update(state, batch, jax.random.key(0))
    for _ in range(200):
        state, metrics = update(state, batch, jax.random.key(0))
    assert metrics["bc_loss"] < 0.5 * first["bc_loss"]


def test_td3_bc_actor_updates_every_second_step():
    algo = small("td3_bc")
    batch = random_batch(jax.random.key(0))
    state = algo.init(jax.random.key(1), SPEC, batch)
    update = jax.jit(algo.update)
    after_first, m1 = update(state, batch, jax.random.key(2))  # step 0: actor and targets move
    after_second, m2 = update(after_first, batch, jax.random.key(3))  # step 1: critic only
    changed = lambda a, b: not all(jax.tree.leaves(jax.tree.map(jnp.array_equal, a, b)))
    assert changed(state.actor.params, after_first.actor.params)
    assert changed(state.target_critic_params, after_first.target_critic_params)
    assert not changed(after_first.actor.params, after_second.actor.params)
    assert not changed(after_first.target_critic_params, after_second.target_critic_params)
    assert changed(after_first.critic.params, after_second.critic.params)
    assert np.isfinite(m1["actor_loss"]) and np.isnan(m2["actor_loss"])  # NaN: not computed


def test_iql_value_is_the_expectile_of_fixed_q():
    """With the critic frozen, V(s) regresses to the tau-expectile of Q over the dataset actions:
    for tau = 0.9 it must land above the mean Q, for tau = 0.1 below it."""
    obs = jnp.zeros((64, 3))  # a single state with many actions
    actions = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1, maxval=1)
    batch = random_batch(jax.random.key(1), 64)._replace(observations=obs, actions=actions)
    values = {}
    for tau in (0.1, 0.9):
        algo = small("iql", expectile=tau, value_lr=1e-2)
        state = algo.init(jax.random.key(2), SPEC, batch)
        q = state.critic.apply_fn(state.target_critic_params, obs, actions).min(axis=0)

        def value_only(state, _, algo=algo):
            new_state, _ = algo.update(state, batch, jax.random.key(0))
            return state.replace(value=new_state.value), None  # keep the critic fixed

        state, _ = jax.lax.scan(value_only, state, None, length=500)
        v = state.value.apply_fn(state.value.params, obs[:1])[0]
        expectile = _expectile(np.asarray(q), tau)
        assert float(v) == pytest.approx(float(expectile), abs=0.05 * float(q.max() - q.min()))
        values[tau] = v
    assert values[0.1] < float(q.mean()) < values[0.9]


def _expectile(samples, tau):
    """Solve sum_i |tau - 1(x_i < m)| (x_i - m) = 0 by bisection."""
    low, high = samples.min(), samples.max()
    for _ in range(100):
        m = 0.5 * (low + high)
        u = samples - m
        if (np.where(u > 0, tau, 1 - tau) * u).sum() > 0:
            low = m
        else:
            high = m
    return m


def test_iql_advantage_weights_are_clipped():
    algo = small("iql", temperature=1e4)
    batch = random_batch(jax.random.key(0))
    state = algo.init(jax.random.key(1), SPEC, batch)
    _, metrics = jax.jit(algo.update)(state, batch, jax.random.key(2))  # compiled: faster than op by op
    assert float(metrics["adv_weight"]) <= algo.max_weight


@pytest.mark.parametrize("shape", [(17, 64), (64, 64), (64, 6), (64, 1), (3, 4, 5)])
def test_orthogonal_init_matches_flax_without_lapack(shape):
    key = jax.random.key(3)
    ours = orthogonal_init(1.5)(key, shape)
    np.testing.assert_allclose(ours, nn.initializers.orthogonal(1.5)(key, shape), atol=1e-5)
    flat = ours.reshape(-1, shape[-1])
    gram = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(gram, 1.5**2 * np.eye(len(gram)), atol=1e-4)


# Settings an algorithm cannot run without, and small rollouts (MOPO's buffer is allocated here).
REQUIRED = {"mopo": {"termination": "hopper", "rollout_batch": 8},
            "ppo": {"online": OnlineConfig(replay="on_policy", block=16),
                    "ppo": PPOConfig(minibatch_size=8, epochs=2)},
            "unio4": {"termination": "hopper", "rollout_batch": 8, "rollout_length": 2, "num_members": 2,
                      "policy_hidden_dims": (8,), "q_hidden_dims": (8,), "v_hidden_dims": (8,)}}


@pytest.mark.parametrize("name", algorithms.available())
def test_compiled_programs_call_no_custom_kernels(name):
    """Batched LAPACK kernels (QR, Cholesky, ...) wait on XLA's CPU thread pool from inside it
    and can deadlock the whole program when two run at once; none may appear in the seed-vmapped
    init or in the training chunk of any algorithm."""
    from experiments import loop, seed_axis

    algo = small(name, **REQUIRED.get(name, {}))
    data = random_batch(jax.random.key(0), size=64)
    keys = jax.random.split(jax.random.key(1), 3)
    phase = "offline" if algo.driver().learns_offline else "online"  # PPO: on its own rollouts only
    ctx = Context(Transitions.from_dataset(data), phase=phase)
    # the stages' results (SPOT's VAE, MOPO's dynamics, Uni-O4's policies) are part of the context
    ctx = ctx.replace(stages={stage.name: stage.result(stage.init(jax.random.key(0), SPEC, data))
                              for stage in algo.stages(SPEC)})
    init = jax.jit(jax.vmap(algo.init, in_axes=(0, None, None)), static_argnums=1)
    programs = [init.lower(keys, SPEC, ctx).as_text()]
    states = jax.eval_shape(jax.vmap(lambda key: algo.init(key, SPEC, ctx)), keys)
    states = states.replace(step=jax.ShapeDtypeStruct((), states.step.dtype))
    buffers = (loop.init_buffers(algo, SPEC, ctx, 3) if algo.driver().learns_offline
               else seed_axis.replay_buffers(algo.online.block, SPEC, 3))
    programs.append(loop.make_train_chunk(algo, 2, phase).lower(states, buffers, keys, ctx).as_text())
    for text in programs:
        assert "custom_call" not in text
