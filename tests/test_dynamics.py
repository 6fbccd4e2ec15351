"""The dynamics ensemble (algorithms/core/dynamics.py) and the termination rules (envs/termination.py)."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import constant_model, soft_clamp

from algorithms.core import dynamics
from algorithms.core.algorithm import Spec
from envs.dataset import Dataset
from envs.termination import termination_for
from experiments.stages import train_stage

# A linear-Gaussian system: s' - s = A s + B a + N(0, diag(sigma_s^2)), r = c.s + d a + N(0, sigma_r^2).
A = np.array([[0.1, -0.2], [0.3, 0.05]])
B = np.array([0.5, -0.3])
C, D_REWARD = np.array([0.7, -0.4]), 0.2
SIGMA = np.array([0.05, 0.1, 0.2])  # (state change, reward)
SPEC = Spec(observation_dim=2, action_dim=1, total_steps=0)
SMALL = dict(hidden_dims=(64, 64), weight_decays=(2.5e-5, 5e-5, 1e-4))


def linear_gaussian(rows: int, seed: int) -> tuple[Dataset, np.ndarray]:
    """Transitions of the system and the true mean of (s' - s, r) per row."""
    rng = np.random.default_rng(seed)
    states, actions = rng.normal(size=(rows, 2)), rng.uniform(-1, 1, size=(rows, 1))
    mean = np.concatenate([states @ A.T + actions * B, (states @ C + D_REWARD * actions[:, 0])[:, None]], 1)
    sample = mean + rng.normal(size=mean.shape) * SIGMA
    as_array = lambda x: jnp.asarray(x, jnp.float32)
    zeros = as_array(np.zeros(rows))
    return Dataset(as_array(states), as_array(actions), as_array(sample[:, 2]),
                   as_array(states + sample[:, :2]), zeros, zeros), mean


@pytest.mark.integration
def test_ensemble_recovers_a_linear_gaussian_system():
    data, _ = linear_gaussian(6000, seed=0)
    config = dynamics.DynamicsConfig(**SMALL, batch_size=128, validate_every=50, max_steps=2000,
                                     patience=10_000, improvement=-1.0)
    stage = dynamics.dynamics_stage(config, SPEC)
    model, record = train_stage(stage, SPEC, data, log_every=500)  # the engine's stage training
    record, steps = record.finish, record.steps

    # Snapshots at every validation (improvement -1), so the result is the last parameters: with the
    # references' 1% rule the snapshot is taken when the mean has converged, before the variances.
    test, true_mean = linear_gaussian(2000, seed=1)
    mean, logvar = model(test.observations, test.actions)
    elite_mean, elite_var = mean[model.elites], jnp.exp(logvar[model.elites])
    # The mean: errors far below the noise (sigma 0.05 ... 0.2; measured 0.10-0.15 sigma).
    rmse = np.sqrt(((np.asarray(elite_mean) - true_mean) ** 2).mean(axis=(0, 1)))
    assert np.all(rmse < 0.25 * SIGMA), rmse
    # The variance: each output's predicted variance within 15% of the true one (measured: 1-4%).
    ratio = np.asarray(elite_var).mean(axis=(0, 1)) / SIGMA**2
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)
    # The record: per-member holdout MSE of the mean, close to the noise's mean variance.
    assert len(record["holdout_mse"]) == 7
    np.testing.assert_allclose(np.asarray(record["holdout_mse"]), (SIGMA**2).mean(), rtol=0.3)
    np.testing.assert_array_equal(record["elites"], model.elites)
    assert steps == 2000


def test_loss_terms_by_hand():
    mean = jnp.array([[[1.0, 2.0]], [[0.0, 0.0]]])  # 2 members, 1 row, 2 outputs
    logvar = jnp.array([[[0.0, jnp.log(4.0)]], [[0.0, 0.0]]])
    targets = jnp.array([[0.0, 0.0]])
    # member 0: mean((1 * 1, 4 / 4)) + mean((0, log 4)); member 1: 0 + 0
    np.testing.assert_allclose(dynamics.gaussian_nll(mean, logvar, targets), [1.0 + np.log(4.0) / 2, 0.0],
                               rtol=1e-6)
    params = {"params": {"layer_0": {"kernel": jnp.full((2, 3, 4), 2.0)},
                         "layer_1": {"kernel": jnp.full((2, 4, 1), 1.0)}}}
    # 0.1 * 0.5 * (24 * 4) + 0.01 * 0.5 * 8
    np.testing.assert_allclose(dynamics.weight_decay_loss(params, (0.1, 0.01)), 4.8 + 0.04, rtol=1e-6)


def test_training_loss_combines_the_terms():
    config = dynamics.DynamicsConfig(num_members=3, num_elites=2, hidden_dims=(8,),
                                     weight_decays=(1e-2, 2e-2))
    network = dynamics.ensemble_network(config, SPEC)
    params = network.init(jax.random.key(0), jnp.zeros((1, 3)))
    data, _ = linear_gaussian(16, seed=0)
    inputs = dynamics.model_inputs(data.observations, data.actions)
    targets = dynamics.model_targets(data)
    loss, _ = dynamics.ensemble_loss(params, network.apply, inputs, targets, config)
    mean, logvar = network.apply(params, inputs)
    bounds = params["params"]
    expected = (dynamics.gaussian_nll(mean, logvar, targets).sum()
                + dynamics.weight_decay_loss(params, config.weight_decays)
                + 0.01 * (bounds["max_logvar"].sum() - bounds["min_logvar"].sum()))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # The log-variance bounds are learned: the loss has a gradient for them.
    loss_of = lambda p: dynamics.ensemble_loss(p, network.apply, inputs, targets, config)[0]  # noqa: E731
    grads = jax.jit(jax.grad(loss_of))(params)  # one program, not one per operation
    assert float(jnp.abs(grads["params"]["max_logvar"]).sum()) > 0


def test_members_are_one_batched_computation_with_their_own_weights():
    config = dynamics.DynamicsConfig(num_members=4, num_elites=2, hidden_dims=(8, 8),
                                     weight_decays=(0, 0, 0))
    network = dynamics.ensemble_network(config, SPEC)
    params = network.init(jax.random.key(0), jnp.zeros((1, 3)))
    assert params["params"]["layer_0"]["kernel"].shape == (4, 3, 8)
    inputs = jax.random.normal(jax.random.key(1), (5, 3))
    shared, _ = network.apply(params, inputs)
    per_member, _ = network.apply(params, jnp.broadcast_to(inputs, (4, 5, 3)))
    np.testing.assert_allclose(shared, per_member, rtol=1e-6)
    assert not np.allclose(shared[0], shared[1])  # different initialisations
    # Member 2 alone, as a plain MLP of its own slices.
    p = jax.tree.map(lambda x: x[2] if x.ndim == 3 else x, params["params"])
    hidden = jax.nn.swish(jax.nn.swish(inputs @ p["layer_0"]["kernel"] + p["layer_0"]["bias"])
                          @ p["layer_1"]["kernel"] + p["layer_1"]["bias"])
    out = hidden @ p["layer_2"]["kernel"] + p["layer_2"]["bias"]
    np.testing.assert_allclose(shared[2], out[:, :3], rtol=1e-5, atol=1e-6)


def stage_state(members=3, rows=40, batch=8):
    config = dynamics.DynamicsConfig(num_members=members, num_elites=2, hidden_dims=(8,),
                                     weight_decays=(0, 0), batch_size=batch, patience=2)
    data, _ = linear_gaussian(rows, seed=0)
    state = dynamics.init_training(config, SPEC, jax.random.key(0), data)
    # Zero weights: every member predicts its output bias, so shifting a bias moves its holdout MSE
    # predictably (mean over outputs of shift^2 - 2 shift mean(y) + mean(y^2)).
    zeroed = jax.tree.map(jnp.zeros_like, state.model.params)
    return config, state.replace(model=state.model.replace(params=zeroed)), data


def shift_output(state, member, amount):
    """Add `amount` to one member's predicted means (its output bias), so its holdout MSE grows."""
    params = state.model.params
    bias = params["params"]["layer_1"]["bias"].at[member, :, :3].add(amount)
    layer = {**params["params"]["layer_1"], "bias": bias}
    return state.replace(model=state.model.replace(params={"params": {**params["params"], "layer_1": layer}}))


def test_validation_acts_once_per_epoch_and_stops_after_patience_epochs():
    config, state, holdout = stage_state(rows=40, batch=8)
    assert int(state.epoch_steps) == 5  # ceil(40 / 8)
    state, stop, _ = dynamics.validate(config, state, holdout)  # step 0 < 5: not an epoch's end
    assert not np.isfinite(np.asarray(state.best_holdout)).any() and not stop

    at_epoch_end = lambda state, step: state.replace(model=state.model.replace(step=jnp.asarray(step)))
    for member in range(3):
        state = shift_output(state, member, 0.5)
    state, stop, _ = dynamics.validate(config, at_epoch_end(state, 5), holdout)
    first = np.asarray(state.best_holdout)
    assert np.isfinite(first).all() and int(state.next_validation) == 10 and not stop
    # Worse for every member: no snapshot, one epoch without improvement, then patience (2) reached.
    worse = shift_output(shift_output(shift_output(state, 0, 1.0), 1, 1.0), 2, 1.0)
    worse, stop, _ = dynamics.validate(config, at_epoch_end(worse, 10), holdout)
    np.testing.assert_array_equal(worse.best_holdout, first)
    assert int(worse.epochs_since_improvement) == 1 and not stop
    worse, stop, _ = dynamics.validate(config, at_epoch_end(worse, 12), holdout)  # mid-epoch: no-op
    assert int(worse.epochs_since_improvement) == 1 and not stop
    worse, stop, _ = dynamics.validate(config, at_epoch_end(worse, 15), holdout)
    assert int(worse.epochs_since_improvement) == 2 and stop
    # One member improving by more than 1% resets the count and snapshots only that member.
    better = shift_output(worse, 1, -1.5)
    better, stop, _ = dynamics.validate(config, at_epoch_end(better, 20), holdout)
    assert int(better.epochs_since_improvement) == 0 and not stop
    changed = np.asarray(better.best_holdout) != first
    np.testing.assert_array_equal(changed, [False, True, False])
    assert better.best_holdout[1] < 0.99 * first[1]


def test_finish_restores_each_members_best_snapshot_and_picks_the_elites():
    config, state, holdout = stage_state(members=4)
    # Members made worse by different amounts: the elites are the two least shifted, best first.
    for member, amount in enumerate([0.3, 0.0, 0.6, 0.1]):
        state = shift_output(state, member, amount)
    state, _, _ = dynamics.validate(config, state, holdout, force=True)
    snapshot = state.model.params
    mse = np.asarray(dynamics.holdout_mse(snapshot, state.model.apply_fn, state.scaler, holdout))
    assert list(np.argsort(mse)[:2]) == [1, 3]
    # Later, member 2 improves by > 1% and member 0 gets worse: finish keeps 2's new and 0's old weights.
    later = shift_output(shift_output(state, 2, -0.6), 0, 1.0)
    finished, record = dynamics.finish(config, later, holdout)
    restored = finished.model.params["params"]["layer_1"]["bias"]
    np.testing.assert_array_equal(restored[0], snapshot["params"]["layer_1"]["bias"][0])
    np.testing.assert_array_equal(restored[2], later.model.params["params"]["layer_1"]["bias"][2])
    final_mse = np.asarray(dynamics.holdout_mse(finished.model.params, finished.model.apply_fn,
                                                finished.scaler, holdout))
    np.testing.assert_allclose(record["holdout_mse"], final_mse, rtol=1e-6)
    np.testing.assert_array_equal(record["elites"], np.argsort(final_mse)[:2])
    assert 2 in list(record["elites"])  # 2 and 1 are now the two best


def test_step_samples_a_random_elite_per_row():
    means = np.array([[1.0, 0.0, 10.0], [2.0, 0.0, 20.0], [3.0, 0.0, 30.0], [4.0, 0.0, 40.0]])
    model = constant_model(means, np.full((4, 3), -30.0), elites=[1, 3])  # variance e^-10: ~exact
    observations = jnp.array([[0.5, 0.5]] * 2000)
    imagined = dynamics.step(model, observations, jnp.zeros((2000, 1)), jax.random.key(0))
    chosen = np.round(np.asarray(imagined.rewards) / 10).astype(int) - 1
    assert set(chosen) == {1, 3} and 0.45 < (chosen == 1).mean() < 0.55
    np.testing.assert_allclose(imagined.next_observations[:, 0], 0.5 + means[chosen, 0], atol=0.05)


def test_step_samples_from_the_gaussian():
    means = np.zeros((2, 3))
    raw = np.log(np.array([[0.04, 0.25, 1.0], [0.04, 0.25, 1.0]]))
    model = constant_model(means, raw, elites=[0, 1])
    imagined = dynamics.step(model, jnp.zeros((20000, 2)), jnp.zeros((20000, 1)), jax.random.key(1))
    samples = np.concatenate([imagined.next_observations, imagined.rewards[:, None]], axis=1)
    np.testing.assert_allclose(samples.std(axis=0), np.sqrt(np.exp(soft_clamp(raw[0]))), rtol=0.03)


def test_uncertainty_measures_by_hand():
    means = np.array([[0.0, 0.0, 5.0], [2.0, 0.0, 6.0], [1.0, 3.0, 7.0]])
    raw = np.log(np.array([[1.0, 1.0, 1.0], [0.01, 0.04, 0.09], [0.25, 0.25, 0.25]]))
    model = constant_model(means, raw, elites=[1, 2])
    mean, logvar = model(jnp.zeros((1, 2)), jnp.zeros((1, 1)))
    std = np.sqrt(np.exp(soft_clamp(raw)))  # the soft clamp moves these by up to 3%
    np.testing.assert_allclose(std[1], [0.1, 0.2, 0.3], rtol=0.03)
    u = lambda measure, members=None: float(dynamics.uncertainty_of(mean, logvar, measure, members)[0])
    # aleatoric: max over members of ||sigma_i|| over all outputs (reward included)
    np.testing.assert_allclose(u("aleatoric"), np.linalg.norm(std, axis=1).max(), rtol=1e-5)
    np.testing.assert_allclose(u("aleatoric", model.elites), np.linalg.norm(std[1:], axis=1).max(), rtol=1e-5)
    # pairwise_diff: max_i ||mu_i - mean_j mu_j|| over the state outputs; the mean is (1, 1)
    np.testing.assert_allclose(u("pairwise_diff"), max(np.sqrt(2), np.sqrt(2), 2.0), rtol=1e-5)
    # ensemble_std: sqrt(mean over state outputs of the variance over members): var (2/3, 2)
    np.testing.assert_allclose(u("ensemble_std"), np.sqrt((2 / 3 + 2) / 2), rtol=1e-5)


def test_rollouts_stop_at_predicted_terminations():
    """Hopper's rule: the height s[0] falls by 0.3 per step from 1.25, so the second step (0.65 <=
    0.7) terminates; the step is kept (terminal 1), the ones after it are not alive."""
    means = np.tile([-0.3, 0.0, 1.0], (2, 1))
    model = constant_model(means, np.full((2, 3), -30.0), elites=[0, 1])
    starts = jnp.array([[1.25, 0.0], [1.85, 0.0]])  # the second one lasts 4 steps
    policy = lambda observations, key: jnp.zeros((observations.shape[0], 1))
    rolled = dynamics.rollout(model, policy, starts, jax.random.key(0), 6, termination_for("hopper"),
                              penalty=50.0)
    np.testing.assert_array_equal(rolled.alive[:, 0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(rolled.terminals[:, 0][:2], [0, 1])
    np.testing.assert_array_equal(rolled.alive[:, 1], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rolled.terminals[:, 1][:4], [0, 0, 0, 1])
    np.testing.assert_allclose(rolled.observations[1:, 1, 0], rolled.next_observations[:-1, 1, 0])
    # The penalised reward: r - lambda max_i ||sigma_i||, sigma = e^-5 per output (the clamp's floor)
    u = np.sqrt(3) * np.exp(0.5 * soft_clamp(-30.0))
    np.testing.assert_allclose(rolled.uncertainty, u, rtol=1e-5)
    np.testing.assert_allclose(rolled.rewards, 1.0 - 50.0 * u, atol=0.03)  # 50 u = 0.58; noise sd 0.007


# ---------------------------------------------------------------------------------------------
# Termination rules against gymnasium's environments

FIRST_JOINT = {"Hopper-v5": 3, "Walker2d-v5": 3, "HalfCheetah-v5": 3, "Ant-v5": 7}  # in qpos


def transitions(env_id: str, steps: int, seed: int):
    """(s, a, s', terminated) under random actions. Half of the episodes start from a state whose
    joint angles are pushed far out (and Ant's height set anywhere in [0.1, 1.3]): they reach the
    range limits (|s| >= 100) and heights where the rules differ between versions; episodes are
    cut after 50 steps so that many start that way."""
    env = gym.make(env_id)
    sim = env.unwrapped
    rng = np.random.default_rng(seed)
    rows = []

    def reset():
        observation, _ = env.reset(seed=int(rng.integers(1 << 30)))
        if env_id in FIRST_JOINT and rng.uniform() < 0.5:
            qpos, first = sim.init_qpos.copy(), FIRST_JOINT[env_id]
            qpos[first:] += rng.normal(size=qpos.size - first) * 150
            if env_id == "Ant-v5":
                qpos[2] = rng.uniform(0.1, 1.3)
            sim.set_state(qpos, sim.init_qvel + rng.normal(size=sim.model.nv))
            observation = sim._get_obs()
        return observation

    observation = reset()
    for t in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high)
        next_observation, _, terminated, truncated, _ = env.step(action)
        rows.append((observation, action, next_observation, terminated))
        observation = reset() if terminated or truncated or t % 50 == 49 else next_observation
    env.close()
    return [np.array(column) for column in zip(*rows, strict=True)]


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "Ant-v5", "HalfCheetah-v5", "Pendulum-v1"])
def test_termination_agrees_with_the_environment(env_id):
    observations, actions, next_observations, terminated = transitions(env_id, 2000, seed=0)
    predicted = termination_for(env_id)(jnp.asarray(observations), jnp.asarray(actions),
                                        jnp.asarray(next_observations))
    np.testing.assert_array_equal(np.asarray(predicted), terminated)
    if env_id in ("Hopper-v5", "Walker2d-v5", "Ant-v5"):
        assert 0 < terminated.sum() < len(terminated)  # both outcomes were checked
    if env_id in ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"):
        assert (np.abs(next_observations) >= 100).any()  # the state-range rule was exercised


def test_termination_names():
    assert termination_for("hopper") is termination_for("Hopper-v5")
    with pytest.raises(KeyError, match="no termination function"):
        termination_for("AntMaze_UMaze-v4")
