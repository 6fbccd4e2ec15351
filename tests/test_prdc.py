"""PRDC (algorithms/prdc.py) and the exact nearest-neighbour search (algorithms/core/neighbours.py):
every search method equals numpy brute force, ties included; the actor step is TD3+BC's with the
neighbours' actions as targets; updates are deterministic and seeds batch exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_batch

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context
from algorithms.core.neighbours import nearest_neighbour
from algorithms.prdc import KDTreeSearch
from experiments import loop, run_parts
from experiments.config import compose, make_algorithm, select_for_dataset

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)


def brute_force(queries, keys):
    """numpy, float64: index of the first nearest key and its squared distance."""
    distances = ((queries[:, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    return distances.argmin(1), distances.min(1)


def random_keys(n=1000, seed=0, duplicates=True):
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(n, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    if duplicates:  # rows 500.. repeat rows 10..: exact ties, the lower index must win
        observations[500:520], actions[500:520] = observations[10:30], actions[10:30]
        observations[900:910], actions[900:910] = observations[10:20], actions[10:20]
    return observations, actions


def queries_for(observations, actions, beta, seed=1):
    rng = np.random.default_rng(seed)
    fresh = rng.normal(size=(40, 5)).astype(np.float32)
    exact = np.concatenate([beta * observations[[10, 15, 505, 905]], actions[[10, 15, 505, 905]]], 1)
    near = np.concatenate([beta * observations[:20], actions[:20] + 0.05], 1)
    return np.concatenate([fresh, exact, near]).astype(np.float32)


@pytest.mark.parametrize("method", ["direct", "matmul"])
@pytest.mark.parametrize("block", [128, 300, 4096])  # divides N, leaves a partial block, exceeds N
def test_in_graph_search_equals_brute_force(method, block):
    beta = 2.0
    observations, actions = random_keys()
    queries = queries_for(observations, actions, beta)
    index, distance = jax.jit(lambda q, o, a: nearest_neighbour(q, [o, a], [beta, 1.0], block, method))(
        queries, observations, actions)
    keys = np.concatenate([beta * observations, actions], 1)
    expected_index, expected_distance = brute_force(queries, keys)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(distance, expected_distance, rtol=1e-5, atol=1e-5)
    assert list(np.asarray(index)[40:44]) == [10, 15, 15, 15]  # rows 505, 905 repeat row 15


def test_kdtree_search_equals_brute_force_inside_jit_and_vmap():
    beta = 2.0
    observations, actions = random_keys()
    keys = np.concatenate([beta * observations, actions], 1)
    tree = KDTreeSearch(keys)
    queries = queries_for(observations, actions, beta)
    expected_index, expected_distance = brute_force(queries, keys)
    index, distance = jax.jit(tree.query)(queries)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(distance, expected_distance, rtol=1e-5, atol=1e-6)
    batched = jax.jit(jax.vmap(tree.query))(np.stack([queries, queries[::-1]]))
    np.testing.assert_array_equal(batched[0][1], expected_index[::-1])


def test_search_on_many_random_points():
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(5000, 7)).astype(np.float32)
    queries = rng.normal(size=(64, 7)).astype(np.float32)
    expected, _ = brute_force(queries, keys)
    for method in ("direct", "matmul"):
        index, _ = nearest_neighbour(jnp.asarray(queries), [jnp.asarray(keys)], None, 1024, method)
        np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(KDTreeSearch(keys)(queries)[0], expected)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="neighbour search method 'exact'"):
        nearest_neighbour(jnp.zeros((2, 2)), [jnp.zeros((4, 2))], method="exact")
    with pytest.raises(ValueError, match="neighbour_search"):
        algorithms.get("prdc")(neighbour_search="tree")


def small_prdc(search, **kwargs):
    return algorithms.get("prdc")(hidden_dims=(8, 8), batch_size=16, neighbour_search=search, **kwargs)


def test_actor_step_is_td3_bc_with_neighbour_actions():
    data = numpy_batch(64)
    algo = small_prdc("matmul", beta=2.0)
    td3_bc = algorithms.get("td3_bc")(hidden_dims=(8, 8), batch_size=16)
    ctx = Context(data)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    batch = jax.tree.map(lambda x: x[:16], data)
    key = jax.random.key(1)
    new_state, metrics = jax.jit(algo.update)(state, batch, key, ctx)  # step 0: actor runs
    # by hand: the policy's query, its neighbour by brute force, then TD3+BC's step on those targets
    pi = np.asarray(state.actor.apply_fn(state.actor.params, batch.observations))
    index, distance = brute_force(np.concatenate([2.0 * batch.observations, pi], 1),
                                  np.concatenate([2.0 * data.observations, data.actions], 1))
    @jax.jit
    def by_hand(state, batch, targets, key):
        state, _ = td3_bc.critic_step(state, batch, key)  # the critic learns from the dataset's actions
        return td3_bc.actor_step(state, batch._replace(actions=targets), jax.random.fold_in(key, 1))

    expected, expected_metrics = by_hand(state, batch, data.actions[index], key)
    assert int(new_state.step) == 1
    leaves = [jax.tree.leaves(s.replace(step=None)) for s in (new_state, expected)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(metrics["actor_loss"]) == pytest.approx(float(expected_metrics["actor_loss"]), rel=1e-5)
    assert float(metrics["neighbour_distance"]) == pytest.approx(distance.mean(), rel=1e-4)


def trainer(algo, data, steps=6):
    """seeds -> (states, metrics) after `steps` updates through the loop's compiled chunk."""
    ctx = Context(data, {}, host=tuple(algo.derive(data).host.items()))
    chunks = {}

    def train(seeds):
        keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(np.asarray(seeds)))
        states = run_parts.init_states(algo, SPEC, ctx, keys[0])
        chunk = chunks.setdefault(len(seeds), loop.make_train_chunk(algo, steps))
        states, _, _, metrics = chunk(states, None, keys[1], ctx)
        return states, metrics

    return train


def test_updates_are_deterministic_and_seeds_batch_exactly():
    data = jax.device_put(numpy_batch(64))
    train = trainer(small_prdc("kdtree"), data)  # the CPU default; the in-graph searches are checked above
    kdtree, kdtree_metrics = train([0, 1])
    again, _ = train([0, 1])
    single, single_metrics = train([1])
    leaves = [jax.tree.leaves(s.replace(step=None)) for s in (kdtree, again, single)]
    for a, b, d in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a[1], d[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(kdtree_metrics["actor_loss"][:, 1], single_metrics["actor_loss"][:, 0],
                               rtol=2e-5)
    assert np.isfinite(kdtree_metrics["neighbour_distance"][::2]).all()


def test_kdtree_needs_the_context_helper_and_auto_picks_it_on_cpu():
    data = numpy_batch(64)
    default = algorithms.get("prdc")()
    # without the helper in the context: in-graph
    assert default.neighbour_search == "auto" and default.search_method(Context(data)) == "matmul"
    bound = Context(data, host=tuple(default.derive(data).host.items()))
    assert default.search_method(bound) == ("kdtree" if jax.default_backend() == "cpu" else "matmul")
    matmul = algorithms.get("prdc")(neighbour_search="matmul")
    assert matmul.derive(data).host == {}
    algo = small_prdc("kdtree")
    state = algo.init(jax.random.key(0), SPEC, Context(data))
    with pytest.raises(RuntimeError, match="host_helpers"):
        algo.update(state, jax.tree.map(lambda x: x[:16], data), jax.random.key(1), Context(data))


@pytest.mark.parametrize("dataset, alpha, beta, scale", [
    ("d4rl/halfcheetah-medium-v2", 40.0, 2.0, 1.0),
    ("d4rl/halfcheetah-medium-replay-v2", 40.0, 2.0, 1.0),
    ("d4rl/hopper-medium-expert-v2", 2.5, 2.0, 1.0),
    ("d4rl/walker2d-medium-v2", 2.5, 2.0, 1.0),
    ("d4rl/antmaze-large-diverse-v2", 7.5, 7.5, 10000.0),
])
def test_paper_values_are_chosen_by_dataset(dataset, alpha, beta, scale):
    algo = make_algorithm(compose(["algo=prdc", f"dataset={dataset}"]).algo)
    assert (algo.alpha, algo.beta, algo.reward.scale) == (alpha, beta, scale)


def test_dataset_lookup_prefers_the_longest_matching_key():
    table = {"default": 0, "hopper": 1, "hopper-medium": 2, "hopper-medium-expert": 3, "antmaze": 4,
             "toy": 5, "mujoco/*/medium": 6}
    pick = lambda name, family="locomotion": select_for_dataset(table, name, family)
    assert pick("hopper-medium-expert-v2") == 3
    assert pick("hopper-medium-replay-v2") == 2
    assert pick("hopper-random-v2") == 1
    assert pick("walker2d-medium-v2") == 0
    assert pick("antmaze-umaze-v2", "antmaze") == 4
    assert pick("pendulum-mixed", "toy") == 5
    assert pick("mujoco/walker2d/medium-v0") == 6
    with pytest.raises(KeyError, match="no entry for dataset 'x'"):
        select_for_dataset({"hopper": 1}, "x", "locomotion")
