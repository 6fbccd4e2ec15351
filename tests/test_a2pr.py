"""A2PR (algorithms/a2pr.py): the actor loss and value target by hand, one update's parts, network sizes,
determinism and seed batching, per-dataset values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_batch as random_batch

import algorithms
from algorithms import Spec
from algorithms.a2pr import a2pr_actor_loss, value_target
from algorithms.core.algorithm import Context
from experiments import loop, run_parts
from experiments.config import compose, make_algorithm

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)
PI = jnp.array([[0.5], [0.0]])
ACTIONS = jnp.array([[0.0], [1.0]])
AUGMENTED = jnp.array([[0.4], [0.2]])
Q_PI, V = jnp.array([1.0, -3.0]), jnp.zeros(2)
Q_AUGMENTED, Q_DATA = jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0])


def test_actor_loss_by_hand():
    # lambda = 2.5 / mean|Q| = 1.25, so -lambda mean Q = 1.25.
    # state 1: A~ = 1 >= A = 0.5: target a~ = 0.4, m = mask (1 + 1);  (0.5 - 0.4)^2 = 0.01
    # state 2: A~ = -1 < A = 2:   target a = 1.0,  m = mask (0 + 1);  (0 - 1)^2 = 1
    loss, (bc, from_vae) = a2pr_actor_loss(PI, Q_PI, Q_AUGMENTED, Q_DATA, V, AUGMENTED, ACTIONS,
                                           alpha=2.5, mask=0.4)
    assert float(bc) == pytest.approx((0.8 * 0.01 + 0.4 * 1.0) / 2)
    assert float(loss) == pytest.approx(1.25 + (0.8 * 0.01 + 0.4) / 2)
    assert float(from_vae) == 0.5


def test_advantage_threshold_of_the_paper():
    # eps_A = 0.75: state 1 keeps only 1[A~ >= 0.75] (A = 0.5 fails), state 2 keeps 1[A = 2 > 0.75]
    _, (bc, _) = a2pr_actor_loss(PI, Q_PI, Q_AUGMENTED, Q_DATA, V, AUGMENTED, ACTIONS, alpha=2.5,
                                 mask=0.4, threshold=0.75)
    assert float(bc) == pytest.approx((0.4 * 0.01 + 0.4 * 1.0) / 2)


def test_gradient_flows_through_the_augmented_target():
    grad = jax.grad(lambda augmented: a2pr_actor_loss(PI, Q_PI, Q_AUGMENTED, Q_DATA, V, augmented,
                                                      ACTIONS, 2.5, 0.4)[0])(AUGMENTED)
    # d/d a~_1 of (1/2) m_1 (pi_1 - a~_1)^2 = -m_1 (pi_1 - a~_1) = -0.8 * 0.1; state 2 uses a, not a~
    np.testing.assert_allclose(grad, [[-0.08], [0.0]], rtol=1e-5, atol=1e-7)


def test_value_target_is_the_smaller_backup():
    target = value_target(jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0]), 0.9, jnp.array([10.0, 10.0]),
                          jnp.array([8.0, 20.0]))
    np.testing.assert_allclose(target, [1.0 + 0.9 * 8.0, 2.0], rtol=1e-6)


def small(**kwargs):
    return algorithms.get("a2pr")(hidden_dims=(8, 8), critic_hidden_dims=(8, 8), vae_hidden_dims=(8,),
                                  batch_size=16, **kwargs)


def test_network_sizes_follow_the_code():
    algo = algorithms.get("a2pr")()
    state = jax.eval_shape(lambda key: algo.init(key, SPEC, random_batch()), jax.random.key(0))
    def widths(params):  # output width of each Dense layer, in order
        kernels = {jax.tree_util.keystr(path): leaf.shape[-1]
                   for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path)}
        return [kernels[path] for path in sorted(kernels, key=lambda p: int(p.split("Dense_")[1][0]))]

    assert widths(state.actor.params) == [256, 256, 256, 2]
    assert widths(state.value.params) == [256, 256, 256, 256, 1]
    assert widths(state.critic.params) == [256, 256, 256, 256, 1]  # each twin


def test_one_update_trains_every_part_and_the_actor_every_second_step():
    algo = small()
    batch = random_batch()
    state = jax.jit(algo.init, static_argnums=1)(jax.random.key(0), SPEC, batch)  # one program each,
    update = jax.jit(algo.update)  # not one per operation
    key = jax.random.key(1)
    first, metrics = update(state, batch, key)
    again, _ = update(state, batch, key)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic
    changed = lambda a, b: not all(np.array_equal(x, y) for x, y in
                                   zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    for part in ("actor", "critic", "value", "vae"):
        assert changed(getattr(state, part).params, getattr(first, part).params), part
    # the VAE's weights: vae_weight where the updated critic's Q_1(s, a) exceeds V(s) from before
    critic_stepped, _ = jax.jit(algo.critic_step)(state, batch, jax.random.split(key, 3)[0])
    critic = critic_stepped.critic
    q_data = critic.apply_fn(critic.params, batch.observations, batch.actions)[0]
    v = state.value.apply_fn(state.value.params, batch.observations)
    assert float(metrics["vae_weight_fraction"]) == pytest.approx(float((q_data > v).mean()))
    assert all(np.isfinite(float(value)) for value in metrics.values())
    second, metrics = update(first, batch, jax.random.key(2))
    assert np.isnan(float(metrics["actor_loss"]))  # delayed: no actor step at odd steps
    for a, b in zip(jax.tree.leaves(second.actor.params), jax.tree.leaves(first.actor.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_seed_batch_matches_single_seed():
    algo = small()
    data = jax.device_put(random_batch(64))

    def train(seeds):
        keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(np.asarray(seeds)))
        ctx = Context(data)
        states = run_parts.init_states(algo, SPEC, ctx, keys[0])
        return loop.make_train_chunk(algo, 4)(states, None, keys[1], ctx)[0]

    batched, single = train([0, 1]), train([1])
    for a, b in zip(jax.tree.leaves(batched.replace(step=None)), jax.tree.leaves(single.replace(step=None)),
                    strict=True):
        np.testing.assert_allclose(a[1], b[0], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dataset, alpha, vae_weight, mask, discount", [
    ("d4rl/halfcheetah-medium-v2", 40.0, 1.0, 1.0, 0.99),
    ("d4rl/hopper-medium-v2", 2.5, 1.0, 0.4, 0.995),
    ("d4rl/walker2d-medium-v2", 2.5, 1.5, 1.0, 0.99),
    ("d4rl/hopper-medium-replay-v2", 2.5, 1.0, 0.4, 0.995),
    ("local/pendulum-mixed", 2.5, 1.0, 0.5, 0.99),
])
def test_paper_values_are_chosen_by_dataset(dataset, alpha, vae_weight, mask, discount):
    algo = make_algorithm(compose(["algo=a2pr", f"dataset={dataset}"]).algo)
    assert (algo.alpha, algo.vae_weight, algo.mask, algo.discount) == (alpha, vae_weight, mask, discount)
