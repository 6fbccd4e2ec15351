"""SPOT (algorithms/spot.py) and the loop's pretraining stage: the actor loss by hand, the frozen VAE,
the pretrained VAE cached and reused across runs, the Q > 1e4 stop, per-dataset values."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_batch as random_batch

import algorithms
import envs
from algorithms import Spec
from algorithms.core.algorithm import Context
from algorithms.core.vae import elbo_loss, iwae_loss, vae_for
from algorithms.spot import spot_actor_loss
from experiments import loop, run_parts, stage_cache
from experiments.config import compose, make_algorithm
from experiments.train import run

SPEC = Spec(observation_dim=3, action_dim=2, total_steps=100)
TINY = ["dataset=local/pendulum-mixed",
        "algo=spot", "algo.hidden_dims=[16,16]", "algo.vae_hidden_dims=[16,16]", "algo.batch_size=32",
        "algo.vae_batch_size=32", "algo.vae_steps=30", "steps=20", "log_every=10", "eval.every=20",
        "eval.episodes=2"]


def test_actor_loss_by_hand():
    q_pi = jnp.array([1.0, -3.0])  # mean |Q| = 2: -mean(Q) / 2 = 0.5
    density = jnp.array([0.2, 0.4])  # mean 0.3
    loss, mean_density = spot_actor_loss(q_pi, density, lambd=0.5)
    assert float(loss) == pytest.approx(0.5 + 0.5 * 0.3)
    assert float(mean_density) == pytest.approx(0.3)
    # the normaliser mean|Q| is not differentiated: d/dQ_i = -1 / (n * 2)
    grad = jax.grad(lambda q: spot_actor_loss(q, density, 0.5)[0])(q_pi)
    np.testing.assert_allclose(grad, [-0.25, -0.25], rtol=1e-6)


def context_with_vae(algo, batch, seed=0):
    """A context holding an (untrained) VAE from the algorithm's stage, as the loop would share it."""
    stage = algo.stages(SPEC)[0]
    return Context(batch, {"vae": stage.result(stage.init(jax.random.key(seed), SPEC, batch))})


@pytest.mark.parametrize("density, estimate", [("elbo", elbo_loss), ("iwae", iwae_loss)])
def test_actor_loss_uses_the_frozen_vae_density_of_the_policy_action(density, estimate):
    algo = algorithms.get("spot")(hidden_dims=(8, 8), vae_hidden_dims=(8,), actor_dropout=0.0,
                                  lambd=0.3, density=density, density_samples=3)
    batch = random_batch()
    ctx = context_with_vae(algo, batch)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    key = jax.random.key(1)
    loss, metrics = algo.actor_loss(state.actor.params, state, batch, key, ctx)
    pi = state.actor.apply_fn(state.actor.params, batch.observations)
    q_pi = state.critic.apply_fn(state.critic.params, batch.observations, pi)[0]
    vae = vae_for(2, (8,))
    _, density_key = jax.random.split(key)
    neg_log = estimate(vae.apply, ctx.stages["vae"], batch.observations, pi, density_key, 0.5, 3)
    expected = -q_pi.mean() / jnp.abs(q_pi).mean() + 0.3 * neg_log.mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["density_loss"]) == pytest.approx(float(neg_log.mean()), rel=1e-5)


def test_actor_dropout_is_on_in_the_loss_and_off_when_acting():
    batch = random_batch()

    def losses(dropout):  # lambda 0: only the actor's forward pass depends on the key
        algo = algorithms.get("spot")(hidden_dims=(32, 32), vae_hidden_dims=(8,), actor_dropout=dropout,
                                      lambd=0.0)
        ctx = context_with_vae(algo, batch)
        state = algo.init(jax.random.key(0), SPEC, ctx)
        acted = [algo.act(state, batch.observations, jax.random.key(k)) for k in range(2)]
        np.testing.assert_array_equal(acted[0], acted[1])
        # the loss value itself is +-1 when every Q has one sign; its gradient is not
        grad = jax.grad(lambda params, key: algo.actor_loss(params, state, batch, key, ctx)[0])
        return {float(jax.tree.leaves(grad(state.actor.params, jax.random.key(k)))[0].sum())
                for k in range(3)}

    assert len(losses(0.5)) == 3
    assert len(losses(0.0)) == 1


@pytest.mark.parametrize("target_dropout", [True, False])
def test_target_policy_runs_with_dropout_as_in_the_code(target_dropout):
    """SPOT.py's target actor is a copy of the actor left in training mode: its actions in the TD
    target vary with the dropout mask. `target_dropout=False`: the deterministic target policy."""
    batch = random_batch()
    algo = algorithms.get("spot")(hidden_dims=(32, 32), vae_hidden_dims=(8,), actor_dropout=0.5,
                                  target_dropout=target_dropout)
    state = algo.init(jax.random.key(0), SPEC, batch)
    targets = [algo.target_actions(state, batch.next_observations, jax.random.key(k)) for k in range(3)]
    plain = state.actor.apply_fn(state.target_actor_params, batch.next_observations)
    if target_dropout:
        assert not np.allclose(targets[0], targets[1]) and not np.allclose(targets[0], plain)
    else:
        for actions in targets:
            np.testing.assert_array_equal(actions, plain)
    assert algorithms.get("spot")().target_dropout  # the code's behaviour is the default


def test_the_vae_lives_in_the_shared_context_not_in_each_seed():
    algo = algorithms.get("spot")(hidden_dims=(8, 8), vae_hidden_dims=(8,), batch_size=16, lambd=1.0)
    batch = random_batch()
    contexts = [context_with_vae(algo, batch, seed) for seed in (0, 1)]
    state = algo.init(jax.random.key(0), SPEC, contexts[0])
    assert not any("vae" in name for name in vars(state))  # never copied into a seed's state
    update = jax.jit(algo.update)
    actors = []
    for ctx in contexts:  # step 0 runs the actor: its update reads the context's VAE
        new, metrics = update(state, batch, jax.random.key(1), ctx)
        actors.append(jax.tree.leaves(new.actor.params)[0])
        assert np.isfinite(float(metrics["critic_loss"]))
    assert not np.allclose(actors[0], actors[1])


def test_early_stop_flags_each_seed_whose_q_explodes():
    algo = algorithms.get("spot")()
    flags, _ = algo.early_stop({"q_pi": np.array([[1.0, 5.0], [2.0, 3.0]])})
    assert not flags.any()
    flags, message = algo.early_stop({"q_pi": np.array([[1.0, 5.0], [np.nan, 2e4]])})
    assert flags.tolist() == [False, True] and "q_abort=10000" in message
    assert not algorithms.get("spot")(q_abort=0.0).early_stop({"q_pi": np.array([[1e9]])})[0].any()


def test_loop_refuses_to_train_without_the_pretrained_stage():
    algo = algorithms.get("spot")(hidden_dims=(8, 8), vae_hidden_dims=(8,))
    with pytest.raises(ValueError, match="pretraining stage 'vae'"):
        run_parts.init_states(algo, SPEC, Context(random_batch()), jax.random.split(jax.random.key(0), 2))


@pytest.mark.integration
def test_pretrained_vae_is_cached_reused_and_frozen(offline_data, tmp_path):
    overrides = [*TINY, "seeds=2", f"pretrain.cache_dir={tmp_path / 'cache'}"]
    first = run(compose(overrides), tmp_path / "a")
    second = run(compose(overrides), tmp_path / "b")
    first_vae, second_vae = first["stages"][0], second["stages"][0]
    assert first_vae["reused"] is False and second_vae["reused"] is True
    assert first_vae["cache"] == second_vae["cache"]
    assert first["seeds"] == second["seeds"]  # the reused VAE is the trained one
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    pretrain = [line for line in lines if line["type"] == "pretrain"]
    assert [line["step"] for line in pretrain] == [10, 20, 30]
    assert all(np.isfinite(line["vae_loss"]) for line in pretrain)
    assert not any(line["type"] == "pretrain" for line in
                   map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()))
    # other VAE settings or other data: another cache entry
    def cache_of(extra, data_scale=1.0):
        cfg = compose([*overrides, *extra])
        algo = make_algorithm(cfg.algo)
        raw, _ = envs.load(cfg.dataset.source, cfg.dataset.name)
        prepared = run_parts.prepare(algo, raw._replace(rewards=raw.rewards * data_scale))
        stage = algo.stages(Spec(3, 1, 20))[0]
        return str(stage_cache.cache_dir(cfg.pretrain.cache_dir, algo, stage, prepared.data,
                                    (cfg.dataset.source, cfg.dataset.name, cfg.dataset.path)))

    assert cache_of([]) == first_vae["cache"]
    assert cache_of(["algo.vae_steps=20"]) != first_vae["cache"]
    assert cache_of([], data_scale=2.0) != first_vae["cache"]


@pytest.mark.integration
def test_q_explosion_stops_the_run(offline_data, tmp_path):
    # Pendulum's Q-values are negative: a threshold below every value makes the first chunk stop
    with pytest.raises(loop.TrainingStopped, match="q_abort"):
        run(compose([*TINY, "algo.q_abort=-1e9", "pretrain.cache_dir=null"]), tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("dataset, lambd", [
    ("d4rl/halfcheetah-medium-v2", 0.05), ("d4rl/halfcheetah-medium-replay-v2", 0.05),
    ("d4rl/halfcheetah-medium-expert-v2", 1.0), ("d4rl/hopper-medium-v2", 0.1),
    ("d4rl/hopper-medium-expert-v2", 0.2), ("d4rl/walker2d-medium-replay-v2", 0.2),
    ("d4rl/walker2d-medium-expert-v2", 0.5), ("d4rl/antmaze-umaze-v2", 0.25),
    ("d4rl/antmaze-umaze-diverse-v2", 0.25), ("d4rl/antmaze-medium-play-v2", 0.05),
    ("d4rl/antmaze-medium-diverse-v2", 0.025), ("d4rl/antmaze-large-play-v2", 0.025),
    # no paper value: the environment's (configs/algo/spot.yaml), else 0.1
    ("d4rl/halfcheetah-random-v2", 0.05), ("d4rl/walker2d-expert-v2", 0.2), ("d4rl/pen-human-v1", 0.1),
])
def test_paper_lambda_is_chosen_by_dataset(dataset, lambd):
    algo = make_algorithm(compose(["algo=spot", f"dataset={dataset}"]).algo)
    assert algo.lambd == lambd
    antmaze = "antmaze" in dataset
    assert algo.normalize_states is not antmaze
    assert (algo.actor_lr, algo.actor_dropout) == ((1e-4, 0.0) if antmaze else (3e-4, 0.1))
    assert (algo.actor_final_init, algo.critic_final_init) == ((1e-3, 3e-3) if antmaze else (None, None))
    assert algo.reward.shift == (-1.0 if antmaze else 0.0)
