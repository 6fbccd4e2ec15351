"""The stages engine (experiments/stages.py): one model per training seed or one shared, the cache
key (the columns a stage reads, its budget, its version), atomic writes by concurrent jobs, corrupt
entries retrained, rows without a known next state left out, and why a stage stopped."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.core.algorithm import Context, Spec
from algorithms.core.dynamics import DynamicsConfig, dynamics_stage
from algorithms.core.replay import Transitions
from algorithms.mopo import MOPO
from experiments import seed_axis, stage_cache, stages

SPEC = Spec(observation_dim=2, action_dim=1, total_steps=0)
TINY = dict(num_members=3, num_elites=2, hidden_dims=(8,), weight_decays=(0, 0), batch_size=8,
            max_steps=20, validate_every=10, max_holdout=8)
KEY = ("local", "tiny", None)


def tiny_data(rows=64, seed=0) -> Transitions:
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(rows, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(rows, 1)).astype(np.float32)
    nexts = observations + 0.1 * actions
    terminals = (np.arange(rows) % 16 == 15).astype(np.float32)
    return Transitions(observations, actions, observations[:, 0].copy(), nexts, terminals,
                       np.zeros(rows, np.float32), np.zeros(rows, np.float32))


def tiny_mopo(**dynamics) -> MOPO:
    return MOPO(termination="pendulum", dynamics=DynamicsConfig(**{**TINY, **dynamics}))


def test_each_training_seed_gets_its_own_dynamics_model_unless_shared(tmp_path):
    """Two seeds: two models, trained from seeds 0 and 1, stacked on a leading seed axis in the
    order of the trainings, and inside the vmapped program each seed reads its own; shared: one."""
    data = tiny_data()
    results, records = stages.train_stages(tiny_mopo(), SPEC, data, cache_root=str(tmp_path), dataset_key=KEY,
                                           log_every=10, seeds=[0, 1, 0])
    model = results["dynamics"]
    kernel = model.params["params"]["layer_0"]["kernel"]
    assert kernel.shape[0] == 3  # the trainings 0, 1, 0
    np.testing.assert_array_equal(kernel[0], kernel[2])
    assert not np.allclose(kernel[0], kernel[1])
    (record,) = records
    assert [entry["seed"] for entry in record.seeds] == [0, 1]  # each seed trained once
    assert len({entry["cache"] for entry in record.seeds}) == 2

    ctx = Context(data, results, per_seed=stages.per_seed_names(tiny_mopo(), SPEC))
    read = jax.vmap(lambda c: c.stages["dynamics"].params["params"]["layer_0"]["kernel"],
                    in_axes=(seed_axis.context_axes(ctx),))(ctx)
    np.testing.assert_array_equal(read, kernel)

    shared, records = stages.train_stages(tiny_mopo(shared=True), SPEC, data, cache_root=str(tmp_path),
                                          dataset_key=KEY, log_every=10, seeds=[0, 1])
    assert shared["dynamics"].params["params"]["layer_0"]["kernel"].shape == kernel.shape[1:]
    assert records[0].seed == 0 and records[0].seeds == [] and records[0].reused  # = seed 0's model
    assert stages.per_seed_names(tiny_mopo(shared=True), SPEC) == ()


def test_the_cache_key_covers_what_the_stage_reads_and_every_setting():
    data = tiny_data()
    stage = dynamics_stage(DynamicsConfig(**TINY), SPEC)
    key = lambda stage=stage, data=data: stage_cache.cache_dir("/c", None, stage, data, KEY)
    # columns the dynamics does not read (another algorithm's returns-to-go), and the file's place
    assert key(data=data._replace(returns_to_go=data.returns_to_go + 1)) == key()
    assert key(data=data._replace(terminals=1 - data.terminals)) == key()
    assert stage_cache.cache_dir("/c", None, stage, data, ("local", "tiny", "/elsewhere")) == key()
    # what changes the model: its data, every setting, the validation interval, the code's version
    assert key(data=data._replace(rewards=data.rewards + 1)) != key()
    assert key(dynamics_stage(DynamicsConfig(**{**TINY, "validate_every": 5}), SPEC)) != key()
    assert key(dynamics_stage(DynamicsConfig(**{**TINY, "max_epochs": 3}), SPEC)) != key()
    assert key(dataclasses.replace(stage, version=stage.version + 1)) != key()


def test_a_corrupt_cache_entry_is_retrained_with_one_warning(tmp_path, caplog):
    data = tiny_data()
    train = lambda: stages.train_stages(tiny_mopo(shared=True), SPEC, data, cache_root=str(tmp_path),
                                        dataset_key=KEY, log_every=10, seeds=[0])
    first, (record,) = train()
    for path in (tmp_path / "dynamics").rglob("*"):
        if path.is_file() and path.parent.name != "dynamics" and "record" not in path.name:
            path.write_bytes(b"\0" * 8)  # every array file of the entry overwritten
    with caplog.at_level(logging.WARNING, logger="stages"):
        again, (retrained,) = train()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0].getMessage()
    assert not retrained.reused and retrained.cache == record.cache
    third, (reused,) = train()
    assert reused.reused
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(third), strict=True):
        np.testing.assert_array_equal(a, b)


def _train_in_process(root: str, barrier, results):
    """One job: train, wait until the other job has trained too, then write the same entry."""
    real = stages.train_stage

    def train_then_wait(*args, **kwargs):
        trained = real(*args, **kwargs)
        barrier.wait(timeout=300)
        return trained

    stages.train_stage = train_then_wait
    _, (record,) = stages.train_stages(tiny_mopo(shared=True), SPEC, tiny_data(), cache_root=root,
                                       dataset_key=KEY, log_every=10, seeds=[0])
    results.put((record.reused, record.cache))


@pytest.mark.integration
def test_two_jobs_writing_the_same_stage_cache_both_finish(tmp_path):
    """Both jobs miss the cache, train, and write the same entry at once: neither crashes, and
    the entry they leave is complete (a third job reuses it)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    jobs = [context.Process(target=_train_in_process, args=(str(tmp_path), barrier, results))
            for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=600)
    assert [job.exitcode for job in jobs] == [0, 0]
    outcomes = [results.get(timeout=5) for _ in jobs]
    assert [reused for reused, _ in outcomes] == [False, False]
    assert len({cache for _, cache in outcomes}) == 1
    assert not [path for path in (tmp_path / "dynamics").iterdir() if path.name.startswith(".")]
    _, (third,) = stages.train_stages(tiny_mopo(shared=True), SPEC, tiny_data(), cache_root=str(tmp_path),
                                      dataset_key=KEY, log_every=10, seeds=[0])
    assert third.reused


def test_rows_without_a_known_next_state_are_left_out_of_the_dynamics_only():
    """D4RL terminal rows of a file without next_observations: the dynamics trains without them
    (its input scaler is fit on the other rows); a stage that does not fit next states sees all."""
    data = tiny_data()
    unknown = np.asarray(data.terminals) > 0
    results, _ = stages.train_stages(tiny_mopo(shared=True), SPEC, data, cache_root=None, dataset_key=KEY,
                                     log_every=10, seeds=[0], unknown_next=unknown)
    stage = tiny_mopo(shared=True).stages(SPEC)[0]
    inputs = lambda rows: np.concatenate([rows.observations, rows.actions], axis=1).mean(axis=0)
    known, _ = stages.split_holdout(stage, jax.tree.map(lambda column: column[~unknown], data))
    everything, _ = stages.split_holdout(stage, data)
    np.testing.assert_allclose(results["dynamics"].scaler.mean, inputs(known), rtol=1e-5)
    assert not np.allclose(results["dynamics"].scaler.mean, inputs(everything))
    assert stages.rows_known(data, None) is data


def test_a_stage_says_why_it_stopped(caplog):
    """max_epochs ends the ensemble's training after that many epochs and the record says so;
    without early stopping the step budget ends it."""
    data = tiny_data()
    capped = dynamics_stage(DynamicsConfig(**{**TINY, "max_steps": 1000, "max_epochs": 2}), SPEC)
    with caplog.at_level(logging.INFO, logger="stages"):
        _, record = stages.train_stage(capped, SPEC, jax.tree.map(jnp.asarray, data), log_every=10)
    epoch = -(-(64 - 8) // 8)  # rows after the holdout / batch
    assert record.stopped_early_at == 20 and 2 * epoch <= 20 and "max_epochs" in record.stop_reason
    assert "max_epochs" in caplog.text
    _, record = stages.train_stage(dynamics_stage(DynamicsConfig(**TINY), SPEC), SPEC, data, log_every=10)
    assert record.stopped_early_at is None and record.stop_reason == "ran its step budget (20 updates)"


def test_the_toy_family_caps_the_dynamics_at_ten_epochs():
    from experiments.config import compose, make_algorithm

    for name in ("mopo", "unio4"):
        toy = make_algorithm(compose([f"algo={name}", "dataset=local/pendulum-mixed"]).algo)
        hopper = make_algorithm(compose([f"algo={name}", "dataset=d4rl/hopper-medium-v2"]).algo)
        assert (toy.dynamics.max_epochs, hopper.dynamics.max_epochs) == (10, None)
        assert not toy.dynamics.shared


SHARDING_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from algorithms.core.algorithm import Context
from experiments import seed_axis
assert len(jax.devices()) == 2, jax.devices()
ctx = Context(jnp.ones(3), {"model": {"w": jnp.arange(8.0).reshape(2, 4)}, "shared": jnp.ones(4)},
              per_seed=("model",))
placed = seed_axis.shard_context(ctx)
assert len(placed.stages["model"]["w"].sharding.device_set) == 2
read = jax.jit(jax.vmap(lambda c: c.stages["model"]["w"].sum() + c.stages["shared"].sum(),
                        in_axes=(seed_axis.context_axes(placed),)))
np.testing.assert_allclose(read(placed), [10.0, 26.0])
"""


@pytest.mark.integration
def test_per_seed_stage_results_are_sharded_like_the_seeds(tmp_path):
    """Two forced host devices: a per-seed result is split over them, one seed each, and every seed
    still reads its own (the shared results stay whole)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], check=True, env=env, cwd=tmp_path)
