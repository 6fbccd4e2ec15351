"""MOPO (algorithms/mopo.py): rollouts into the per-seed buffer, the penalty, and SAC as its limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import constant_model, resume_is_exact, soft_clamp

from algorithms.core.algorithm import Context, Sampling, Spec
from algorithms.core.replay import Transitions, draw, sample_batch
from algorithms.mopo import MOPO
from algorithms.sac import SAC

SPEC = Spec(observation_dim=2, action_dim=1, total_steps=100)
SMALL = dict(hidden_dims=(8, 8), batch_size=16)


def start_states(rows=64, height=1.25) -> Transitions:
    """Dataset rows whose observations are (height, 0): a Hopper-like start for the rollouts."""
    observations = jnp.tile(jnp.array([[height, 0.0]]), (rows, 1))
    zeros = jnp.zeros(rows)
    return Transitions(observations, jnp.zeros((rows, 1)), zeros, observations, zeros, zeros, zeros)


def falling_model():
    """Every member: the height falls by 0.3 per step, reward 1, variance at the clamp's floor."""
    return constant_model(np.tile([-0.3, 0.0, 1.0], (3, 1)), np.full((3, 3), -30.0), elites=[0, 2])


def mopo(**overrides) -> MOPO:
    settings = dict(SMALL, termination="hopper", rollout_batch=4, rollout_length=5, retain_epochs=2,
                    rollout_freq=10, penalty=50.0)
    return MOPO(**{**settings, **overrides})


def test_offline_batches_mix_the_dataset_and_the_rollouts_at_real_ratio():
    assert mopo(real_ratio=0.05).model_data().sampling() == Sampling("mixed", 0.05)
    assert mopo().buffer_capacity() == 2 * 4 * 5  # retain_epochs * rollout_batch * rollout_length


def test_rollouts_fill_the_buffer_without_terminated_steps():
    """From height 1.25 every rollout terminates at its second step (0.65 <= 0.7): 2 of the 5 steps
    of each of the 4 rollouts are stored; sampling never returns an unfilled (zero) slot."""
    algo = mopo()
    ctx = Context(start_states(), {"dynamics": falling_model()})
    state = algo.init(jax.random.key(0), SPEC, ctx)
    buffer = algo.fill_rollouts(state, algo.init_rollouts(SPEC, ctx), jax.random.key(1), ctx)
    assert int(buffer.size) == 8
    stored = jax.tree.map(lambda column: column[:8], buffer.transitions)
    np.testing.assert_allclose(np.sort(stored.observations[:, 0]), [0.95] * 4 + [1.25] * 4, atol=0.05)
    np.testing.assert_array_equal(np.sort(stored.terminals), [0] * 4 + [1] * 4)
    # The reward is penalised by lambda * max_i ||sigma_i||, sigma = e^-5 per output.
    u = np.sqrt(3) * np.exp(0.5 * soft_clamp(-30.0))
    np.testing.assert_allclose(stored.rewards, 1.0 - 50.0 * u, atol=0.03)
    sampled = buffer.sample(jax.random.key(2), 1000)
    assert np.all(np.asarray(sampled.observations[:, 0]) > 0.9)


def test_rollouts_refresh_every_rollout_freq_updates_and_keep_the_last_epochs():
    algo = mopo()
    ctx = Context(start_states(height=1.85), {"dynamics": falling_model()})  # 4 steps each: 16 rows
    state = algo.init(jax.random.key(0), SPEC, ctx)
    fill = jax.jit(algo.fill_rollouts)
    buffer = algo.init_rollouts(SPEC, ctx)
    sizes = []
    for step in (0, 1, 9, 10, 20, 25):
        buffer = fill(state.replace(step=jnp.asarray(step)), buffer, jax.random.key(step), ctx)
        sizes.append((int(buffer.size), int(buffer.position)))
    # Refreshes at 0, 10, 20; capacity 40 keeps the last 2.5 refreshes' worth.
    assert sizes == [(16, 16), (16, 16), (16, 16), (32, 32), (40, 8), (40, 8)]


def test_the_last_refresh_is_summarised_in_the_buffer_and_logged_with_every_update():
    """From height 1.25 every rollout takes 2 steps, from 1.85 four; the model reward is 1 and the
    penalty lambda u with the clamp's floor variance, as in the test above. The train chunk logs
    the last refresh's statistics with each update."""
    from experiments import loop, run_parts

    u = np.sqrt(3) * np.exp(0.5 * soft_clamp(-30.0))
    for height, length in ((1.25, 2.0), (1.85, 4.0)):
        algo = mopo()
        ctx = Context(start_states(height=height), {"dynamics": falling_model()})
        state = algo.init(jax.random.key(0), SPEC, ctx)
        buffer = algo.init_rollouts(SPEC, ctx)
        assert float(buffer.last_refresh.length) == 0.0  # before the first refresh
        buffer = algo.fill_rollouts(state, buffer, jax.random.key(1), ctx)
        logged = algo.rollout_metrics(buffer)
        np.testing.assert_allclose(logged["rollout_length"], length)
        np.testing.assert_allclose(logged["rollout_model_reward"], 1.0, atol=0.03)
        np.testing.assert_allclose(logged["rollout_uncertainty"], u, rtol=1e-4)
        np.testing.assert_allclose(logged["rollout_penalty"], 50.0 * u, rtol=1e-4)

    keys = jax.random.split(jax.random.key(0), 2)
    states = run_parts.init_states(algo, SPEC, ctx, keys)
    buffers = loop.init_buffers(algo, SPEC, ctx, 2)
    _, buffers, _, metrics = loop.make_train_chunk(algo, 3)(states, buffers, keys, ctx)
    np.testing.assert_allclose(metrics["rollout_length"], np.full((3, 2), 4.0))
    assert "critic_loss" in metrics
    # Without model data there are no rollouts to report.
    assert mopo(rollout_length=0).rollout_metrics(buffers) == {}


def test_the_refresh_is_a_real_branch_under_vmapped_seeds():
    """The loop vmaps seeds but keeps `step` shared: the rollout stays behind a `cond`, not a
    `select` that would roll out at every update."""
    algo = mopo()
    ctx = Context(start_states(), {"dynamics": falling_model()})
    keys = jax.random.split(jax.random.key(0), 2)
    states = jax.vmap(lambda key: algo.init(key, SPEC, ctx))(keys)
    states = states.replace(step=jnp.asarray(0))
    buffers = jax.vmap(lambda _: algo.init_rollouts(SPEC, ctx))(keys)
    axes = jax.tree.map(lambda _: 0, states).replace(step=None)
    fill = jax.vmap(algo.fill_rollouts, in_axes=(axes, 0, 0, None))
    assert "cond" in str(jax.make_jaxpr(fill)(states, buffers, keys, ctx))
    filled = jax.jit(fill)(states, buffers, keys, ctx)
    np.testing.assert_array_equal(filled.size, [8, 8])


def test_without_model_data_mopo_updates_exactly_as_sac():
    """lambda = 0, h = 0 and real_ratio = 1: no rollouts, every row from the dataset, SAC's update."""
    keys = jax.random.split(jax.random.key(3), 6)
    data = Transitions(jax.random.normal(keys[0], (64, 2)), jax.random.uniform(keys[1], (64, 1), minval=-1),
                       jax.random.normal(keys[2], (64,)), jax.random.normal(keys[3], (64, 2)),
                       jnp.zeros(64).at[5].set(1.0), jnp.zeros(64), jnp.zeros(64))
    ctx = Context(data, {"dynamics": falling_model()})
    algo, sac = mopo(penalty=0.0, rollout_length=0, real_ratio=1.0), SAC(**SMALL)
    ours, theirs = algo.init(keys[4], SPEC, ctx), sac.init(keys[4], SPEC, ctx)
    buffer = algo.init_rollouts(SPEC, ctx)
    key = keys[5]
    for _ in range(3):
        key, fill_key, batch_key, update_key = jax.random.split(key, 4)
        buffer = algo.fill_rollouts(ours, buffer, fill_key, ctx)
        assert int(buffer.size) == 0
        batch = draw(algo.model_data().sampling(), data, buffer, batch_key, algo.batch_size)
        np.testing.assert_array_equal(batch.observations, sample_batch(data, jax.random.split(batch_key)[0],
                                                                       16).observations)
        ours, our_metrics = jax.jit(algo.update)(ours, batch, update_key, ctx)
        theirs, their_metrics = jax.jit(sac.update)(theirs, batch, update_key, ctx)
        as_floats = lambda metrics: {name: float(value) for name, value in metrics.items()}
        assert as_floats(our_metrics) == as_floats(their_metrics)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overrides, message", [
    (dict(uncertainty="variance"), "algo.uncertainty"),
    (dict(penalty_members="some"), "algo.penalty_members"),
    (dict(real_ratio=1.5), "algo.real_ratio"),
    (dict(normalize_states=True), "normalize_states=false"),
    (dict(termination="antmaze"), "no termination function"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        mopo(**overrides)


def test_a_dataset_without_a_termination_rule_is_refused():
    with pytest.raises(ValueError, match="set algo.termination"):
        mopo(termination=None)


def test_a_saved_dynamics_of_another_problem_or_a_corrupt_folder_is_refused(tmp_path):
    """`stage_paths.dynamics=...` (experiments.stage_cache.restore_result): the saved arrays' shapes are
    checked before reading; a right one restores exactly."""
    import orbax.checkpoint as ocp

    from algorithms.core.dynamics import DynamicsConfig, dynamics_stage
    from experiments.config import ConfigError
    from experiments.stage_cache import restore_result
    from experiments.stages import abstract_result

    data = start_states()
    small = DynamicsConfig(num_members=3, num_elites=2, hidden_dims=(4,), weight_decays=(0, 0))
    stage = dynamics_stage(small, SPEC)
    model = stage.result(stage.init(jax.random.key(0), SPEC, data))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "result").absolute(), model)
    restored = restore_result(tmp_path / "result", abstract_result(stage, SPEC, data), "dynamics", SPEC, "x")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)

    other_spec = Spec(observation_dim=5, action_dim=1, total_steps=0)
    other = dynamics_stage(small, other_spec)
    other_data = jax.tree.map(lambda column: jnp.zeros((8, 5)) if column.ndim == 2 and column.shape[1] == 2
                              else column[:8], data)
    with pytest.raises(ConfigError, match="does not hold a dynamics for this problem.*shapes"):
        restore_result(tmp_path / "result", abstract_result(other, other_spec, other_data), "dynamics",
                       other_spec, "stage_paths.dynamics=...")
    (tmp_path / "corrupt" / "result").mkdir(parents=True)
    (tmp_path / "corrupt" / "result" / "junk").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt or incomplete"):
        restore_result(tmp_path / "corrupt" / "result", abstract_result(stage, SPEC, data), "dynamics",
                       SPEC, "stage_paths.dynamics=...")


@pytest.mark.integration
def test_a_killed_run_resumes_exactly_with_its_rollout_buffers(offline_data, tmp_path, monkeypatch):
    """Killed after the checkpoint at step 20 (rollouts at 0 and 10 in the buffers), resumed: the
    same numbers as a straight run, so the checkpoint holds the buffers and the shared step."""
    monkeypatch.setenv("OFFRL_CACHE_DIR", str(tmp_path / "cache"))  # the dynamics stage's cache
    settings = ["algo=mopo", "dataset=local/pendulum-mixed", "seeds=2", "steps=40", "log_every=10",
                "eval.every=20", "eval.episodes=2", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
                "algo.rollout_freq=10", "algo.rollout_batch=16", "algo.rollout_length=2",
                "algo.dynamics.hidden_dims=[8,8]", "algo.dynamics.weight_decays=[0,0,0]",
                "algo.dynamics.max_steps=50", "algo.dynamics.batch_size=16"]
    # the dynamics stage is cached by the straight run: the killed run does not log it again
    straight = resume_is_exact(settings, 40, tmp_path, skip_types=("pretrain", "validate")).results
    dynamics = straight["stages"][0]  # one model per seed, each trained from its own seed
    assert dynamics["stage"] == "dynamics" and [model["seed"] for model in dynamics["seeds"]] == [0, 1]
    first, second = dynamics["seeds"]
    assert len(first["finish"]["elites"]) == len(second["finish"]["elites"]) == 5
    assert first["cache"] != second["cache"]
    assert first["finish"]["holdout_mse"] != second["finish"]["holdout_mse"]
