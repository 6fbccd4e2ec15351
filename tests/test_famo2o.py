"""FamO2O: the balance encoding by hand, the balance model's loss and gradient path, the policy
family against IQL and CQL at a fixed balance, where the policy's b comes from in each phase, acting."""

import functools
import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context, SettingsError
from algorithms.core.balance import balance_encoding, to_balance
from algorithms.core.training import create_train_state
from algorithms.cql import CQLState
from algorithms.iql import IQLState
from experiments.config import compose

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)
OFFLINE, ONLINE = Context(None, phase="offline"), Context(None, phase="online")


random_batch = functools.partial(helpers.random_batch, size=32)
small = functools.partial(helpers.tiny, width=16, batch_size=32)


@functools.cache
def initial_state(name):
    """One seed's initial state at the default settings of `small(name)`; the settings the tests
    vary (range, map, batch size) do not enter `init`."""
    algo = small(name)
    return jax.jit(algo.init, static_argnums=1)(jax.random.key(0), SPEC)


def leaves_equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(bool(jnp.array_equal(x, y)) for x, y in pairs)


def assert_trees_close(a, b, rtol, atol, name):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def at_balance(family_apply, balance: float):
    """The universal policy as a policy of the state alone, at a fixed b."""
    encoding = balance_encoding(jnp.array(balance))

    def apply(params, observations, *args, **kwargs):
        codes = jnp.broadcast_to(encoding, (*observations.shape[:-1], encoding.shape[-1]))
        return family_apply(params, jnp.concatenate([observations, codes], -1), *args, **kwargs)

    return apply


def frozen_balance(state, mean_x: float = 0.0, log_std: float = -10.0):
    """The IQL balance model made state-independent: tanh(N(atanh(mean_x), e^log_std))."""
    params = jax.tree.map(lambda x: x, state.balance.params)
    head = params["params"]["Dense_0"]
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.full_like(head["bias"], math.atanh(mean_x))
    params["params"]["log_std"] = jnp.full_like(params["params"]["log_std"], log_std)
    return state.replace(balance=state.balance.replace(params=params))


def without_encoding_inputs(state, observation_dim: int):
    """The policy with the weights from enc(b) to its first layer zeroed: it ignores b."""
    params = jax.tree.map(lambda x: x, state.actor.params)
    first = params["params"]["MLP_0"]["Dense_0"]
    first["kernel"] = first["kernel"].at[observation_dim:].set(0.0)
    return state.replace(actor=state.actor.replace(params=params))


def test_balance_encoding_by_hand():
    # d = 6, n = 1e4: the divisors n^(2i/d) are 1, 10^(4/3) = 21.544..., 10^(8/3) = 464.158...
    divisors = [1.0, 21.544346900318832, 464.15888336127773]
    b = 2.0
    expected = [f(b / divisor) for divisor in divisors for f in (math.sin, math.cos)]
    np.testing.assert_allclose(balance_encoding(jnp.array([b]))[0], expected, rtol=1e-6)
    np.testing.assert_allclose(balance_encoding(jnp.zeros(())), [0, 1, 0, 1, 0, 1])
    # other sizes: d = 2 is (sin b, cos b) whatever n; any leading shape
    np.testing.assert_allclose(balance_encoding(jnp.array(0.5), base=7.0, dims=2),
                               [math.sin(0.5), math.cos(0.5)])
    assert balance_encoding(jnp.ones((4, 5))).shape == (4, 5, 6)


def test_balance_maps_onto_the_range():
    x = jnp.array([[-1.0], [0.0], [0.5], [1.0]])
    np.testing.assert_allclose(to_balance(x, 8.0, 14.0, "affine"), [8.0, 11.0, 12.5, 14.0])
    # the CQL code's map: x (high - low) + low, so (-1, 1) -> (-0.5, 1.5) for [0.5, 1.5]
    np.testing.assert_allclose(to_balance(x, 0.5, 1.5, "jaxcql"), [-0.5, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(to_balance(x, 0.5, 1.5, "clamped"), [0.5, 0.5, 1.0, 1.5])


@pytest.mark.parametrize("override, words", [
    ({"balance_range": (5.0, 1.0)}, "algo.balance_range must be two numbers"),
    ({"balance_range": (1.0, 2.0, 3.0)}, "algo.balance_range must be two numbers"),
    ({"balance_map": "tanh"}, "algo.balance_map must be one of affine, jaxcql, clamped"),
    ({"encoding_dims": 5}, "algo.encoding_dims must be an even integer"),
    ({"temperature": 3.0}, "set algo.balance_range=[low,high] instead"),
])
def test_impossible_settings_are_refused(override, words):
    with pytest.raises(SettingsError, match=words.replace("[", r"\[").replace("]", r"\]")):
        algorithms.get("famo2o_iql")(**override)


def test_iql_balance_loss_by_hand_and_its_temperature():
    algo = small("famo2o_iql", balance_range=(8.0, 14.0))
    state = initial_state("famo2o_iql")
    obs = random_batch(jax.random.key(1)).observations
    key = jax.random.key(2)
    loss, (log_prob, balance, q) = jax.jit(algo.balance_loss)(state.balance.params, state, obs, key)

    @jax.jit  # one program, not one per operation
    def by_hand(state, obs, key):
        # x ~ pi_b(.|s) and a~ ~ pi(.|[s, enc(b)]) with the two halves of the key
        balance_key, action_key = jax.random.split(key)
        x, log_px = state.balance.apply_fn(state.balance.params, obs).sample_and_log_prob(seed=balance_key)
        b = 8.0 + (x[:, 0] + 1.0) / 2.0 * 6.0
        inputs = jnp.concatenate([obs, balance_encoding(b)], axis=1)
        actions = state.actor.apply_fn(state.actor.params, inputs).sample(seed=action_key)
        target_q = state.critic.apply_fn(state.target_critic_params, obs, actions).min(axis=0)
        return b, log_px, target_q

    b, log_px, target_q = by_hand(state, obs, key)
    np.testing.assert_allclose(balance, b, rtol=1e-6)
    np.testing.assert_allclose(loss, (1.0 * log_px - target_q).mean(), rtol=1e-5)  # alpha_b starts at 1
    assert np.all((b > 8.0) & (b < 14.0))
    # alpha_b: L = alpha_b (H - (-0.5)); the initial entropy is above the target, so alpha_b falls
    new_state, metrics = jax.jit(algo.update)(state, random_batch(jax.random.key(1)), key, OFFLINE)
    assert float(metrics["balance_entropy"]) > -0.5
    assert float(new_state.balance_log_alpha.params["value"]) < 0.0


@pytest.mark.parametrize("name", ["famo2o_iql", "famo2o_cql"])
def test_the_balance_gradient_flows_only_through_the_encoding_into_the_balance_model(name):
    algo = small(name)
    state = initial_state(name)
    if name == "famo2o_iql":  # alpha_b = 1e-30: no entropy term
        state = state.replace(balance_log_alpha=state.balance_log_alpha.replace(
            params={"value": jnp.log(jnp.float32(1e-30))}))
    batch = random_batch(jax.random.key(1))
    keys = [jax.random.key(2)] if name == "famo2o_iql" else [jax.random.key(2), jax.random.key(3)]

    @jax.jit  # one program for both states below, not one per operation
    def balance_gradient(s):
        return jax.grad(lambda p: algo.balance_loss(p, s, batch.observations, *keys)[0])(s.balance.params)

    norm = lambda tree: sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(tree))  # noqa: E731
    through_encoding = norm(balance_gradient(state))  # Q -> a~ -> enc(b) -> b -> pi_b
    assert through_encoding > 1e-4
    blind = without_encoding_inputs(state, SPEC.observation_dim)
    assert norm(balance_gradient(blind)) < 1e-12 * through_encoding
    # One offline update: the policy trains on uniform b, so the balance model moves nothing else in
    # it; in IQL nothing else at all. (The CQL code's TD target takes a' at b(s) from the balance
    # model, offline too, so there the critics do depend on it.)
    other_params = jax.tree.map(lambda p: 1.5 * p + 0.1, state.balance.params)
    other = state.replace(balance=state.balance.replace(params=other_params))
    update = jax.jit(algo.update)
    new, new_other = (update(s, batch, jax.random.key(4), OFFLINE)[0] for s in (state, other))
    independent = ("actor", "critic", "value") if name == "famo2o_iql" else ("actor", "log_alpha")
    for part in independent:
        assert leaves_equal(getattr(new, part), getattr(new_other, part)), part
    if name == "famo2o_cql":
        assert not leaves_equal(new.critic, new_other.critic)
    assert not leaves_equal(new.balance.params, state.balance.params)


def iql_seeing(state, balance: float, temperature: float):
    """IQL (same critics, V, targets) whose policy is FamO2O's universal policy at a fixed b."""
    iql = algorithms.get("iql")(hidden_dims=(16, 16), batch_size=32, temperature=temperature)
    actor = state.actor.replace(apply_fn=at_balance(state.actor.apply_fn, balance))
    iql_state = IQLState(actor=actor, critic=state.critic, value=state.value,
                         target_critic_params=state.target_critic_params, step=state.step)
    return iql, iql_state


def test_at_a_constant_balance_the_actor_loss_is_iqls_with_that_temperature():
    batch = random_batch(jax.random.key(1))
    # offline with the range [11, 11]: b = 11 exactly, the whole update is IQL's with beta = 11
    algo = small("famo2o_iql", balance_range=(11.0, 11.0))
    state = initial_state("famo2o_iql")
    new, metrics = jax.jit(algo.update)(state, batch, jax.random.key(2), OFFLINE)
    iql, iql_state = iql_seeing(state, 11.0, 11.0)
    iql_new, iql_metrics = jax.jit(iql.update)(iql_state, batch, jax.random.key(2))
    assert float(metrics["actor_balance"]) == 11.0
    np.testing.assert_allclose(metrics["actor_loss"], iql_metrics["actor_loss"], rtol=1e-6)
    # One Adam step moves a parameter by lr g / (|g| + eps) (the bias-corrected first step): a whole
    # learning rate unless its gradient g is within a few eps = 1e-8 of 0. The two programs (this
    # update; IQL's with the balance code as extra policy inputs) may sum the same float32 terms in
    # another order; only a g within that rounding of 0 then takes another step (by at most
    # lr |dg| / eps). Measured: bit for bit here (both compiled, Intel Xeon); with IQL's update run
    # op by op, 4e-4 of a step (1.1e-7 of 3e-4) on an AMD EPYC. A wrong update (another b, another
    # input) moves parameters by whole steps. Allowed: 1% of a step, plus the parameter's own
    # float32 rounding (rtol).
    step = 1e-2 * max(iql.actor_lr, iql.critic_lr, iql.value_lr)
    for part in ("actor", "critic", "value", "target_critic_params"):
        assert_trees_close(getattr(new, part), getattr(iql_new, part), 1e-6, step, part)
    # online, a balance model frozen at b = 11 (std e^-10) gives IQL's actor loss with beta = 11. Its
    # learning rate is huge, so a b from the model after its update would be far from 11: the policy
    # must use the balance model from before the update.
    algo = small("famo2o_iql", balance_range=(8.0, 14.0), balance_lr=1.0)
    state = frozen_balance(initial_state("famo2o_iql"), mean_x=0.0)
    state = state.replace(balance=create_train_state(algo.balance_network(), state.balance.params, 1.0))
    new, metrics = jax.jit(algo.update)(state, batch, jax.random.key(2), ONLINE)
    iql, iql_state = iql_seeing(state, 11.0, 11.0)
    np.testing.assert_allclose(metrics["actor_balance"], 11.0, atol=1e-3)
    iql_metrics = jax.jit(iql.update)(iql_state, batch, jax.random.key(2))[1]
    np.testing.assert_allclose(metrics["actor_loss"], iql_metrics["actor_loss"], rtol=1e-3)
    moved = algo.mean_balance(new.balance, batch.observations)
    assert float(jnp.abs(moved - 11.0).min()) > 0.5  # the updated model's b is far from 11


def test_offline_the_policy_draws_b_uniformly_online_from_the_balance_model():
    algo = small("famo2o_iql", balance_range=(8.0, 14.0), batch_size=512)
    state = frozen_balance(initial_state("famo2o_iql"), mean_x=0.5)  # b = 12.5, std e^-10
    batch = random_batch(jax.random.key(1), size=512)
    balances = {}
    for ctx in (OFFLINE, ONLINE):
        metrics = jax.jit(algo.update)(state, batch, jax.random.key(2), ctx)[1]
        balances[ctx.phase] = float(metrics["actor_balance"])
    assert abs(balances["offline"] - 11.0) < 0.3  # the mean of 512 draws of U[8, 14] (std 0.08)
    assert abs(balances["online"] - 12.5) < 1e-3


def test_the_code_broadcast_weights_are_the_mean_over_the_batch_balances():
    algo = small("famo2o_iql", batch_mixed_weights=True)
    advantage, balance = jnp.array([0.1, -0.2, 0.3]), jnp.array([1.0, 2.0, 4.0])
    expected = [np.mean([min(math.exp(b * a), 100.0) for b in balance.tolist()]) for a in advantage.tolist()]
    np.testing.assert_allclose(algo.family_weights(advantage, balance), expected, rtol=1e-6)
    per_row = small("famo2o_iql").family_weights(advantage, balance)
    np.testing.assert_allclose(per_row, np.exp(np.array([0.1, -0.4, 1.2])), rtol=1e-6)


def test_the_antmaze_table_config_runs_the_authors_code_path():
    """+experiment=famo2o_iql_antmaze reproduces the paper's AntMaze table, which the authors' B x B
    weights produced; the paper's per-row equation stays the algorithm's default and an override."""
    table = ["+experiment=famo2o_iql_antmaze", "dataset=minari/D4RL/antmaze/umaze-v1"]
    assert compose(table).algo.batch_mixed_weights is True
    assert compose([*table, "algo.batch_mixed_weights=false"]).algo.batch_mixed_weights is False
    assert compose(["algo=famo2o_iql"]).algo.batch_mixed_weights is False


def test_acting_uses_the_balance_models_mean_and_explores_with_the_policy():
    algo = small("famo2o_iql", balance_range=(8.0, 14.0))
    state = frozen_balance(initial_state("famo2o_iql"), mean_x=0.5, log_std=2.0)  # a wide pi_b
    obs = random_batch(jax.random.key(1)).observations
    inputs = jnp.concatenate([obs, jnp.broadcast_to(balance_encoding(jnp.array(12.5)), (32, 6))], axis=1)
    dist = state.actor.apply_fn(state.actor.params, inputs)
    key = jax.random.key(3)
    np.testing.assert_allclose(algo.act(state, obs, key, True), jnp.clip(dist.mode(), -1, 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(algo.act(state, obs, key, False), jnp.clip(dist.sample(seed=key), -1, 1),
                               rtol=1e-5, atol=1e-6)


def test_cql_at_balance_one_is_cql_with_the_policy_seeing_enc_1():
    """Range [1, 1]: every b is 1 (the balance model's too), so FamO2O-CQL's critic, actor and
    temperature steps are CQL's with the policy fed [s, enc(1)], in both phases."""
    algo = small("famo2o_cql", balance_range=(1.0, 1.0))
    state = initial_state("famo2o_cql")
    batch = random_batch(jax.random.key(1))
    cql = algorithms.get("cql")(hidden_dims=(16, 16), batch_size=32, bc_warmup_steps=0, min_q_weight=1.0,
                                clip_dataset_actions=0.999)
    actor = state.actor.replace(apply_fn=at_balance(state.actor.apply_fn, 1.0))
    cql_state = CQLState(actor=actor, critic=state.critic,
                         target_critic_params=state.target_critic_params, log_alpha=state.log_alpha,
                         log_alpha_prime=state.log_alpha_prime, step=state.step)
    update_key = jax.random.split(jax.random.key(2), 4)[3]  # FamO2O-CQL's key for the CQL part
    cql_new, cql_metrics = jax.jit(cql.update)(cql_state, batch, update_key)
    for ctx in (OFFLINE, ONLINE):
        new, metrics = jax.jit(algo.update)(state, batch, jax.random.key(2), ctx)
        assert float(metrics["actor_balance"]) == 1.0
        for key in cql_metrics:
            np.testing.assert_allclose(metrics[key], cql_metrics[key], rtol=1e-5, err_msg=key)
        for part in ("actor", "critic", "log_alpha"):
            assert_trees_close(getattr(new, part).params, getattr(cql_new, part).params, 1e-5, 1e-6, part)


def test_cql_online_balances_follow_the_code_map_unless_clamped():
    """The CQL code maps x in (-1, 1) to low + x (high - low): a balance model leaning to x < 0 gives
    the policy b below the offline range online; `balance_map=clamped` keeps it at the range's low."""
    batch = random_batch(jax.random.key(1))
    balances = {}
    for mapping in ("jaxcql", "clamped"):
        algo = small("famo2o_cql", balance_map=mapping)
        state = initial_state("famo2o_cql")
        params = jax.tree.map(lambda x: x, state.balance.params)
        head = params["params"]["ReferenceTanhGaussianActor_0"]["Dense_0"]
        head["kernel"] = jnp.zeros_like(head["kernel"])
        head["bias"] = jnp.array([math.atanh(-0.6), -30.0])  # x = -0.6, log std clipped to -20
        state = state.replace(balance=state.balance.replace(params=params))
        metrics = jax.jit(algo.update)(state, batch, jax.random.key(2), ONLINE)[1]
        balances[mapping] = float(metrics["actor_balance"])
    np.testing.assert_allclose(balances["jaxcql"], 0.5 - 0.6, atol=1e-5)
    np.testing.assert_allclose(balances["clamped"], 0.5, atol=1e-6)


@pytest.mark.integration
def test_famo2o_resumes_during_the_online_phase_to_the_same_numbers(offline_data, tmp_path):
    """Both phases through the engine: a run killed between two online checkpoints resumes (the
    balance model, its temperature and the policy family restored) to an uninterrupted run's numbers,
    with offline and online scores and metrics lines per phase."""
    settings = ["algo=famo2o_iql", "dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]",
                "algo.batch_size=32", "steps=40", "log_every=20", "eval.every=40", "eval.episodes=2",
                "online.steps=60", "online.eval_every=20", "online.log_every=20", "online.episodes=2",
                "seeds=2"]
    # killed online, between the checkpoints at environment steps 20 and 40
    straight = helpers.resume_is_exact(settings, 40 + 30, tmp_path)
    lines = straight.lines
    train = {line["phase"] for line in lines if line["type"] == "train" and "actor_balance" in line}
    assert train == {"offline", "online"}
    for seed in straight.results["seeds"]:
        assert seed["offline_score"] is not None and seed["online_final_score"] is not None
