"""CQL: the conservative gap by hand, its effect on out-of-distribution Q-values, the Lagrange
multiplier, the BC warm-up branch, shapes and determinism, and the named configs."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context, Sampling
from algorithms.cql import backup_value, conservative_gap, lagrange_penalty, scalar_state
from envs.dataset import Dataset
from experiments.config import compose, make_algorithm

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)
# Compiling one CQL update takes 10-15 s on 2 cores, so every test shares these two, compiled once.
CONFIGS = {
    "default": dict(bc_warmup_steps=1),
    # Cal-QL's critic settings (tau_gap = 0 is the same constraint in either Lagrange form)
    "lagrange_max": dict(bc_warmup_steps=0, lagrange=True, lagrange_form="jaxcql", backup="max",
                         max_backup_order="min_then_max", policy_head="jaxcql", init_scheme="orthogonal",
                         critic_final_init_scale=1e-2, target_action_gap=0.0, num_critics=3, critic_lr=3e-3),
    "clipped_actions": dict(bc_warmup_steps=0, clip_dataset_actions=0.999),
}
_compiled = {}


def small(config):
    """The algorithm of one of CONFIGS (tiny networks) with its jitted init, update and act."""
    if config not in _compiled:
        algo = algorithms.get("cql")(hidden_dims=(16, 16), batch_size=64, **CONFIGS[config])

        def act(state, observations, key):  # deterministic, sampled, and the mean before tanh
            mean = state.actor.apply_fn(state.actor.params, observations).distribution.mean()
            return algo.act(state, observations, key, True), algo.act(state, observations, key, False), mean

        init = jax.jit(algo.init, static_argnums=1)
        _compiled[config] = SimpleNamespace(
            algo=algo, init=lambda batch: init(jax.random.key(1), SPEC, batch),
            update=jax.jit(algo.update), act=jax.jit(act))
    return _compiled[config]


@jax.jit
def q_values(state, observations, actions):
    return state.critic.apply_fn(state.critic.params, observations, actions)


def narrow_batch(key, size=64) -> Dataset:
    """Random states; the behaviour policy only ever takes actions in [0.3, 0.6]^2."""
    keys = jax.random.split(key, 4)
    return Dataset(
        observations=jax.random.normal(keys[0], (size, 3)),
        actions=jax.random.uniform(keys[1], (size, 2), minval=0.3, maxval=0.6),
        rewards=jax.random.normal(keys[2], (size,)),
        next_observations=jax.random.normal(keys[3], (size, 3)),
        terminals=jnp.zeros(size).at[0].set(1.0),
        timeouts=jnp.zeros(size),
    )


def test_conservative_gap_by_hand():
    # |A| = 1: a uniform action (density 1/2) with Q = 0 and a policy action with Q = log 3 and
    # log pi = 0; logsumexp(0 - log 1/2, log 3 - 0) = log(2 + 3), minus Q(s, a) = 1.
    q_sampled = jnp.array([0.0, jnp.log(3.0)])
    log_density = jnp.array([jnp.log(0.5), 0.0])
    gap = conservative_gap(jnp.array(1.0), q_sampled, log_density)
    assert gap == pytest.approx(np.log(5.0) - 1.0, rel=1e-6)
    # the gradient pushes the sampled actions' Q down with softmax weights 2/5 and 3/5 and the
    # dataset action's Q up; the densities are constants
    grads = jax.grad(conservative_gap, argnums=(0, 1, 2))(jnp.array(1.0), q_sampled, log_density)
    np.testing.assert_allclose(grads[0], -1.0)
    np.testing.assert_allclose(grads[1], [0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(grads[2], [0.0, 0.0])
    # temperature T: T logsumexp(x / T); two values 2 with T = 2 give 2 (1 + log 2)
    hot = conservative_gap(jnp.array(0.0), jnp.array([2.0, 2.0]), jnp.zeros(2), temperature=2.0)
    assert hot == pytest.approx(2.0 * (1.0 + np.log(2.0)), rel=1e-6)
    # batched: (critics, states, samples)
    q = jnp.zeros((2, 5, 30))
    assert conservative_gap(jnp.zeros((2, 5)), q, jnp.zeros_like(q)).shape == (2, 5)


def test_backups_by_hand():
    # 2 critics, 1 state, 3 sampled next actions
    next_q = jnp.array([[[1.0, 5.0, 2.0]], [[3.0, 0.0, 4.0]]])
    log_probs = jnp.array([[-1.0, 0.0, 0.0]])
    alpha = jnp.array(0.5)
    # deterministic: min over critics at the first action; entropy: minus alpha log pi
    np.testing.assert_allclose(backup_value(next_q[..., :1], log_probs[:, :1], alpha, "deterministic"), [1.0])
    np.testing.assert_allclose(backup_value(next_q[..., :1], log_probs[:, :1], alpha, "entropy"), [1.5])
    # max, the original's order: each critic's best action (5 and 4), then the smaller: 4
    np.testing.assert_allclose(backup_value(next_q, log_probs, alpha, "max"), [4.0])
    np.testing.assert_allclose(backup_value(next_q, log_probs, alpha, "max", "max_then_min"), [4.0])
    # JaxCQL's and Cal-QL's order: per action the smaller critic (1, 0, 2), then the best: 2
    np.testing.assert_allclose(backup_value(next_q, log_probs, alpha, "max", "min_then_max"), [2.0])


@pytest.mark.parametrize("gap, rises", [(2.0, True), (0.5, False)])
def test_lagrange_multiplier_follows_the_gap(gap, rises):
    w, threshold = 5.0, 5.0  # w * gap against tau_gap: the constraint binds at gap = 1
    gaps = jnp.array([gap, gap])
    multiplier = scalar_state(0.0, 1e-2)
    for _ in range(3):
        grads = jax.grad(lambda p: lagrange_penalty(gaps, p["value"], w, threshold)[1])(multiplier.params)
        multiplier = multiplier.apply_gradients(grads=grads)
    assert (float(multiplier.params["value"]) > 0.0) == rises
    # the critics see alpha' (w gap - tau) with alpha' = exp(0) = 1 held constant
    penalty, _, alpha_prime = lagrange_penalty(gaps, jnp.array(0.0), w, threshold)
    np.testing.assert_allclose(penalty, w * gaps - threshold)
    grads = jax.grad(lambda g: lagrange_penalty(g, jnp.array(0.0), w, threshold)[0].sum())(gaps)
    np.testing.assert_allclose(grads, [w, w])
    assert alpha_prime == 1.0
    # alpha' = clip(exp(log alpha'), 0, 1e6)
    assert lagrange_penalty(gaps, jnp.array(30.0), w, threshold)[2] == 1e6


def test_jaxcql_lagrange_form_scales_the_threshold_by_w():
    w, threshold = 5.0, 0.8
    gaps = jnp.array([1.0, 3.0])
    penalty, multiplier_loss, _ = lagrange_penalty(gaps, jnp.array(0.0), w, threshold, "jaxcql")
    np.testing.assert_allclose(penalty, [w * (1.0 - 0.8), w * (3.0 - 0.8)], rtol=1e-6)
    assert float(multiplier_loss) == pytest.approx(-w * (2.0 - 0.8), rel=1e-6)  # mean over critics
    grads = jax.grad(lambda g: lagrange_penalty(g, jnp.array(0.0), w, threshold, "jaxcql")[0].sum())(gaps)
    np.testing.assert_allclose(grads, [w, w])


def multiplier_gradient(algo, gap: float) -> float:
    """d L_alpha' / d log alpha' at log alpha' = 0 when both critics' mean gap is `gap`, from the
    loss the update steps with the algorithm's Lagrange settings."""
    return float(jax.grad(lambda log_alpha_prime: lagrange_penalty(
        jnp.array([gap, gap]), log_alpha_prime, algo.min_q_weight, algo.target_action_gap,
        algo.lagrange_form)[1])(jnp.array(0.0)))


@pytest.mark.parametrize("name, settles_at", [("cal_ql", 0.8), ("cql", 1.0), ("cql_jaxcql", 1.0)])
def test_lagrange_multiplier_settles_at_the_references_gap(name, settles_at):
    """The dual's fixed point by hand: L_alpha' = -alpha' C with alpha' = e^(log alpha'), so its
    gradient in log alpha' is -alpha' C, zero exactly where the constraint C is. Cal-QL's authors,
    CORL and d3rlpy write alpha' w (gap - 0.8): the gap settles at 0.8 (not 0.8 / w = 0.16); the
    original CQL's AntMaze alpha' (w gap - 5) and JaxCQL's alpha' w (gap - 1), with w = 5, at 1."""
    algo = make_algorithm(compose([f"algo={name}", "dataset=d4rl/antmaze-medium-play-v2"]).algo)
    assert algo.lagrange and algo.min_q_weight == 5.0
    assert multiplier_gradient(algo, settles_at) == pytest.approx(0.0, abs=1e-6)
    # one unit of gap above the fixed point: -w (alpha' = 1); below it alpha' falls
    assert multiplier_gradient(algo, settles_at + 1.0) == pytest.approx(-5.0, rel=1e-6)
    assert multiplier_gradient(algo, settles_at / 5.0) > 0.0


def test_lagrange_update_raises_alpha_prime_above_the_threshold():
    cql = small("lagrange_max")  # tau_gap = 0: every gap is above it
    batch = narrow_batch(jax.random.key(0))
    state = cql.init(batch)
    new_state, metrics = cql.update(state, batch, jax.random.key(2))
    assert float(metrics["cql_gap"]) > 0.0 and float(metrics["alpha_prime"]) == 1.0
    assert new_state.log_alpha_prime.params["value"] > state.log_alpha_prime.params["value"]


def test_regulariser_lowers_out_of_distribution_q():
    """After a few hundred updates on dataset actions from a narrow box, Q of uniformly random
    actions lies further below Q of the dataset actions with the regulariser than without. With
    tau_gap = 0 and alpha' = 1 the Lagrange form starts as the fixed weight w = 5; alpha' = e^-50
    makes the weight 0 (and it stays ~0: log alpha' moves by about lr per step)."""
    cql = small("lagrange_max")
    batch = narrow_batch(jax.random.key(0))
    ood_actions = jax.random.uniform(jax.random.key(5), (64, 32, 2), minval=-1.0, maxval=1.0)
    drops = {}
    for log_alpha_prime in (0.0, -50.0):
        state = cql.init(batch)
        state = state.replace(log_alpha_prime=state.log_alpha_prime.replace(
            params={"value": jnp.float32(log_alpha_prime)}))
        for i in range(200):
            state, metrics = cql.update(state, batch, jax.random.key(i))
        q_data = q_values(state, batch.observations, batch.actions)
        q_ood = q_values(state, batch.observations, ood_actions)
        drops[log_alpha_prime] = float((q_data - q_ood.mean(axis=-1)).mean())
    assert float(metrics["alpha_prime"]) < 1e-20
    assert drops[0.0] > drops[-50.0] + 1.0, drops


def test_bc_warmup_ignores_the_critic_then_uses_it():
    cql = small("default")  # bc_warmup_steps = 1: step 0 clones, step 1 maximises Q
    batch = narrow_batch(jax.random.key(0))
    state = cql.init(batch)
    other = state.replace(critic=state.critic.replace(
        params=jax.tree.map(lambda p: 3.0 * p + 0.1, state.critic.params)))
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(jnp.array_equal, a, b)))
    actor_after = lambda state: cql.update(state, batch, jax.random.key(2))[0].actor.params
    assert same(actor_after(state), actor_after(other))
    assert not same(actor_after(state.replace(step=jnp.int32(1))),
                    actor_after(other.replace(step=jnp.int32(1))))


@pytest.mark.parametrize("config", ["default", "lagrange_max"])
def test_update_and_act_shapes_and_determinism(config):
    cql = small(config)
    batch = narrow_batch(jax.random.key(0))
    state = cql.init(batch)
    new_state, metrics = cql.update(state, batch, jax.random.key(2))
    again, metrics_again = cql.update(state, batch, jax.random.key(2))
    assert int(new_state.step) == 1
    for name, value in metrics.items():
        assert value.shape == () and np.isfinite(value), name
        assert value == metrics_again[name]
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, new_state, again)))
    assert q_values(new_state, batch.observations, batch.actions).shape == (cql.algo.num_critics, 64)
    actions, sampled, mean = cql.act(new_state, batch.observations, jax.random.key(3))
    assert actions.shape == sampled.shape == (64, 2)
    assert jnp.all(jnp.abs(actions) < 1.0) and jnp.all(jnp.abs(sampled) <= 1.0)
    np.testing.assert_allclose(actions, jnp.tanh(mean), rtol=1e-6)  # the mode: tanh(mu)


def test_jaxcql_clips_dataset_actions():
    """With clip_dataset_actions=0.999 (JaxCQL) an update on actions at +-1 is the update on the
    same actions clipped to +-0.999; without the clip the critics would see different inputs."""
    cql = small("clipped_actions")
    batch = narrow_batch(jax.random.key(0))
    edge = batch._replace(actions=jnp.sign(batch.actions - 0.45))  # every action at -1 or +1
    state = cql.init(batch)
    at_edge, _ = cql.update(state, edge, jax.random.key(2))
    clipped, _ = cql.update(state, edge._replace(actions=0.999 * edge.actions), jax.random.key(2))
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, at_edge, clipped)))


def test_named_configs_per_family():
    original = make_algorithm(compose(["algo=cql", "dataset=d4rl/hopper-medium-v2"]).algo)
    assert (original.hidden_dims, original.actor_lr, original.bc_warmup_steps) == ((256,) * 3, 1e-4, 40_000)
    assert not original.lagrange and original.min_q_weight == 5.0 and original.backup == "deterministic"
    jax_cql = make_algorithm(compose(["algo=cql_jaxcql", "dataset=d4rl/hopper-medium-v2"]).algo)
    assert jax_cql.name == "cql" and jax_cql.hidden_dims == (256, 256) and jax_cql.actor_lr == 3e-4
    assert (jax_cql.bc_warmup_steps, jax_cql.init_log_alpha_prime, jax_cql.policy_head) == (0, 1.0, "jaxcql")
    assert (original.clip_dataset_actions, jax_cql.clip_dataset_actions) == (None, 0.999)
    for name, form, threshold in (("cql", "original", 5.0), ("cql_jaxcql", "jaxcql", 1.0)):
        antmaze = make_algorithm(compose([f"algo={name}", "dataset=d4rl/antmaze-umaze-v2"]).algo)
        assert antmaze.lagrange and antmaze.min_q_weight == 5.0
        assert (antmaze.lagrange_form, antmaze.target_action_gap) == (form, threshold)  # each its code's
        assert (antmaze.reward.scale, antmaze.reward.shift) == (4.0, -2.0)  # (r - 0.5) * 4
    assert (original.max_backup_order, jax_cql.max_backup_order) == ("max_then_min", "min_then_max")
    assert original.init_scheme == jax_cql.init_scheme == "default"
    for field in ("backup", "max_backup_order", "lagrange_form", "init_scheme", "policy_head"):
        with pytest.raises(KeyError, match=f"algo.{field} must be one of"):
            make_algorithm(compose(["algo=cql", f"algo.{field}=unknown"]).algo)


def test_cal_ql_pushes_policy_actions_down_only_to_the_behaviour_value():
    algo = algorithms.get("cal_ql")(num_sampled_actions=2)
    q = jnp.array([[[0.0, 5.0, -3.0, 1.0, -9.0, 7.0]]])  # (1 critic, 1 state, 3n): uniform | pi(s) | pi(s')
    batch = SimpleNamespace(returns_to_go=jnp.array([2.0]))
    calibrated = algo.push_down_values(q, batch, Context(None))
    # uniform actions as they are; the policy's max(Q, V^mu = 2)
    np.testing.assert_array_equal(calibrated, [[[0.0, 5.0, 2.0, 2.0, 2.0, 7.0]]])
    online = Context(None, phase="online")
    np.testing.assert_array_equal(algo.push_down_values(q, batch, online), q)  # CORL: off online
    on = algorithms.get("cal_ql")(num_sampled_actions=2, online_calibration=True)
    np.testing.assert_array_equal(on.push_down_values(q, batch, online), calibrated)
    np.testing.assert_array_equal(algorithms.get("cql")().push_down_values(q, batch, None), q)


def test_cal_ql_batches_carry_the_datasets_returns_to_go():
    from experiments import run_parts

    rewards = np.array([-5.0, -5.0, -5.0, 1.0, 2.0], np.float32)
    obs = np.zeros((5, 3), np.float32)
    ends = np.array([0, 0, 1, 0, 1], np.float32)  # two episodes: a failure, then rewards 1, 2
    data = Dataset(obs, np.zeros((5, 2), np.float32), rewards, obs, ends * 0, ends)
    algo = algorithms.get("cal_ql")(discount=0.5, failure_reward=-5.0)
    prepared = run_parts.prepare(algo, data)
    # failure: -5 / (1 - 0.5) everywhere; then 1 + 0.5 * 2 and 2
    np.testing.assert_allclose(prepared.data.returns_to_go, [-10.0, -10.0, -10.0, 2.0, 2.0])
    assert not np.asarray(run_parts.prepare(algorithms.get("cql")(), data).data.returns_to_go).any()
    assert algo.driver().sampling() == Sampling("mixed", 0.5)


def test_cal_ql_config_is_the_codes_antmaze_recipe():
    algo = make_algorithm(compose(["algo=cal_ql", "dataset=d4rl/antmaze-medium-play-v2"]).algo)
    assert (algo.lagrange, algo.lagrange_form, algo.target_action_gap) == (True, "jaxcql", 0.8)
    assert (algo.min_q_weight, algo.init_log_alpha_prime) == (5.0, 1.0)
    assert (algo.backup, algo.max_backup_order, algo.num_sampled_actions) == ("max", "min_then_max", 10)
    assert algo.critic_hidden_dims == (256,) * 4 and algo.hidden_dims == (256, 256)
    assert (algo.actor_lr, algo.critic_lr, algo.bc_warmup_steps) == (1e-4, 3e-4, 0)
    assert algo.clip_dataset_actions == 0.99999  # conservative_sac_main.py: clip_action
    assert (algo.reward.scale, algo.reward.shift, algo.failure_reward) == (10.0, -5.0, -5.0)
    assert algo.online.replay == "mixed" and algo.online.dataset_fraction == 0.5
    # the max backup of a 2-critic, 3-action example: min over critics (1, 0, 2), then max
    next_q = jnp.array([[[1.0, 5.0, 2.0]], [[3.0, 0.0, 4.0]]])
    value = backup_value(next_q, jnp.zeros((1, 3)), jnp.array(1.0), algo.backup, algo.max_backup_order)
    np.testing.assert_allclose(value, [2.0])  # max-then-min: min(5, 4) = 4


def test_cal_ql_initialises_as_the_codes_orthogonal_init():
    """model.py with orthogonal_init=True (Cal-QL's default): every hidden layer an orthogonal
    matrix of gain sqrt(2), the last layers of gain 1e-2 (policy and Q alike), zero biases. So
    W^T W (or W W^T for a wide W) is gain^2 times the identity: the last Q layer is a vector of
    norm 1e-2, where lecun-normal or U(+-0.011) layers are not orthogonal at all."""
    algo = make_algorithm(compose(["algo=cal_ql", "dataset=d4rl/antmaze-medium-play-v2",
                                   "algo.hidden_dims=[6,6]", "algo.critic_hidden_dims=[6,6,6]"]).algo)
    actor_net, critic_net = algo.networks(action_dim=2)
    observations, actions = jnp.zeros((1, 3)), jnp.zeros((1, 2))
    actor = actor_net.init(jax.random.key(0), observations)["params"]
    critic = critic_net.init(jax.random.key(1), observations, actions)["params"]["VmapQNetwork_0"]["MLP_0"]
    hidden, last = np.sqrt(2.0), 1e-2
    layers = [(actor["MLP_0"]["Dense_0"], hidden), (actor["MLP_0"]["Dense_1"], hidden),
              (actor["Dense_0"], last)]
    for member in range(algo.num_critics):  # the ensemble stacks its members' parameters on axis 0
        layers += [(jax.tree.map(lambda leaf, m=member: leaf[m], critic[f"Dense_{i}"]), gain)
                   for i, gain in enumerate((hidden, hidden, hidden, last))]
    for layer, gain in layers:
        kernel = np.asarray(layer["kernel"])
        gram = kernel.T @ kernel if kernel.shape[0] >= kernel.shape[1] else kernel @ kernel.T
        np.testing.assert_allclose(gram, gain**2 * np.eye(min(kernel.shape)), atol=1e-5 * gain**2)
        assert not np.asarray(layer["bias"]).any()
