"""The benchmarks' --quick modes run end to end and write the JSON and Markdown they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_positive

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("benchmark") / "results.json"
    # A subprocess, so even a stuck run fails the test at the timeout instead of hanging the suite
    # (the benchmark already kills and retries a configuration whose process stops progressing).
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "experiments.benchmark", "--quick", "--algos", "bc", "iql",
               "--retries", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), out


@pytest.mark.integration
@pytest.mark.xdist_group("benchmark_report")
def test_meta_and_settings(report):
    data, _ = report
    meta = data["meta"]
    for key in ("jax", "devices", "cpu_model", "xla_flags", "date", "cores_available"):
        assert key in meta
    assert meta["devices"]
    settings = data["settings"]
    assert settings["quick"] and settings["algos"] == ["bc", "iql"] and settings["widths"] == [64]
    assert {"pipeline", "bare", "flops_per_update", "roofline_fraction"} <= set(data["definitions"])
    assert data["matmul"]["peak_gflops"] > 0 and data["complete"]


@pytest.mark.integration
@pytest.mark.xdist_group("benchmark_report")
def test_every_configuration_has_positive_measurements(report):
    data, _ = report
    results = data["results"]
    assert [(r["algo"], r["hidden"]) for r in results] == [("bc", [64, 64]), ("iql", [64, 64])]
    for r in results:
        assert "error" not in r, r.get("error")
        assert_positive(r, "updates_per_second_per_seed", "updates_per_second_total", "flops_per_update",
                        "achieved_gflops", "roofline_fraction", "peak_rss_bytes")
        assert_positive(r["compile"], "total_seconds")
        assert_positive(r["xla_memory"], "peak_memory_in_bytes")
        assert_positive(r["pipeline"], "updates_per_second_per_seed", "evaluations", "fraction_of_bare")
        assert_positive(r["python_loop"], "updates_per_second_per_seed")
        assert r["attempts"] >= 1
    # IQL does more work per update than BC.
    assert results[1]["flops_per_update"] > results[0]["flops_per_update"]


@pytest.mark.integration
@pytest.mark.xdist_group("benchmark_report")
def test_torch_comparison_or_reason(report):
    data, _ = report
    torch = data["torch"]
    if torch["available"]:
        assert torch["results"][0]["updates_per_second"] > 0
        assert data["comparisons"]["jax_vs_torch_iql"][0]["ratio_per_seed"] > 0
    else:
        assert torch["skipped"]


@pytest.mark.integration
@pytest.mark.xdist_group("benchmark_report")
def test_markdown_table(report):
    _, out = report
    table = out.with_suffix(".md").read_text()
    assert "| algo | hidden | seeds |" in table
    assert table.count("| 64x2 |") >= 2


def test_algorithm_options_apply_where_the_algorithm_has_the_field():
    from experiments.benchmark import cli, updates

    prdc = updates.make_algorithm("prdc", 64, 32, {"neighbour_search": "kdtree", "lambd": 0.5})
    spot = updates.make_algorithm("spot", 64, 32, {"neighbour_search": "kdtree", "lambd": 0.5})
    assert prdc.neighbour_search == "kdtree" and not hasattr(prdc, "lambd")
    assert spot.lambd == 0.5 and spot.hidden_dims == (64, 64) and spot.batch_size == 32
    args = cli.parse_args(["--option", "neighbour_search=kdtree", "--option", "alpha=2.5"])
    assert args.options == {"neighbour_search": "kdtree", "alpha": 2.5}
    with pytest.raises(SystemExit):
        cli.parse_args(["--option", "no-equals-sign"])


def test_stage_is_timed_and_starts_the_agent():
    import argparse

    import jax
    import numpy as np

    from algorithms import Spec
    from envs.dataset import from_arrays
    from experiments import loop
    from experiments.benchmark import updates

    algo = updates.make_algorithm("spot", 16, 32, {"vae_hidden_dims": (16, 16), "vae_batch_size": 32})
    rng = np.random.default_rng(0)
    data = from_arrays(observations=rng.normal(size=(64, 3)), actions=rng.uniform(-1, 1, (64, 2)),
                       rewards=rng.normal(size=64), next_observations=rng.normal(size=(64, 3)),
                       terminals=np.zeros(64), timeouts=np.zeros(64), source="test")
    prepared = loop.prepare(algo, data)
    spec = Spec(3, 2, 100)
    settings = argparse.Namespace(chunk=5, chunk_seconds=0.1, repeats=2)
    (stage,) = algo.stages(spec)
    vae, timing = updates.time_stage(stage, spec, prepared.data, settings)
    assert timing["stage"] == "vae" and timing["steps_in_a_real_run"] == algo.vae_steps
    assert timing["chunk_length"] == 5 and timing["updates_per_second"] > 0
    assert len(timing["chunk_seconds"]) == 2
    # It trained: the result differs from the stage's initial parameters.
    untrained = stage.result(stage.init(jax.random.split(jax.random.key(0))[0], spec, prepared.data))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(vae), jax.tree.leaves(untrained),
                                                      strict=True))
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="vae"):
        loop.init_states(algo, spec, loop.make_context(algo, prepared), keys)
    ctx = loop.make_context(algo, prepared, {"vae": vae})
    states = loop.init_states(algo, spec, ctx, keys)
    states, _, _, metrics = loop.make_train_chunk(algo, 2)(states, None, keys, ctx)
    assert int(states.step) == 2 and np.isfinite(np.asarray(metrics["critic_loss"])).all()


def test_warm_up_trains_whole_chunks_and_times_each(monkeypatch):
    import jax
    import numpy as np

    from algorithms import Spec
    from envs.dataset import from_arrays
    from experiments import loop
    from experiments.benchmark import updates

    monkeypatch.setattr(updates, "WARMUP_CHUNK", 5)
    algo = updates.make_algorithm("td3_bc", 16, 8, {})
    rng = np.random.default_rng(0)
    data = from_arrays(observations=rng.normal(size=(64, 3)), actions=rng.uniform(-1, 1, (64, 2)),
                       rewards=rng.normal(size=64), next_observations=rng.normal(size=(64, 3)),
                       terminals=np.zeros(64), timeouts=np.zeros(64), source="test")
    prepared = loop.prepare(algo, data)
    init_keys, keys = jax.random.split(jax.random.key(0), (2, 2))
    ctx = loop.make_context(algo, prepared)
    states = loop.init_states(algo, Spec(3, 2, 100), ctx, init_keys)
    runner = loop.ChunkRunner(algo)
    states, _, _, warmup = updates.warm_up(runner, states, None, keys, ctx, 12, seeds=2)
    assert int(states.step) == 15  # 12 rounded up to three chunks of 5
    assert warmup["updates"] == 15 and warmup["chunk_length"] == 5
    assert len(warmup["updates_per_second_per_seed"]) == 3
    assert all(rate > 0 for rate in warmup["updates_per_second_per_seed"])


@pytest.mark.integration
def test_worker_progress_is_echoed_and_a_hung_worker_times_out(capfd):
    from experiments.benchmark.machine import run_echoing_progress

    script = "import sys; print('    step 1', file=sys.stderr); print('noise', file=sys.stderr); print('out')"
    code, stdout, stderr = run_echoing_progress([sys.executable, "-c", script],
                                                          dict(os.environ), timeout=60)
    assert (code, stdout) == (0, "out\n") and stderr == "    step 1\nnoise\n"
    assert capfd.readouterr().err == "    step 1\n"  # only the progress lines reach the terminal
    code, _, _ = run_echoing_progress([sys.executable, "-c", "import time; time.sleep(30)"],
                                                dict(os.environ), timeout=1)
    assert code is None


@pytest.mark.integration
def test_online_benchmark_runs_end_to_end(offline_data, tmp_path):
    """The online benchmark on a tiny config: our IQL online phase through `experiments.train`, one
    and two seeds, and d3rlpy's fit_online where d3rlpy imports ($D3RLPY_PYTHON), else a reason."""
    out = tmp_path / "online.json"
    command = [sys.executable, "-m", "experiments.benchmark.online", "--quick", "--steps", "40",
               "--out", str(out)]
    environment = {**os.environ,  # OFFRL_DATA_DIR: the small local/pendulum-mixed of conftest
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"] == "Pendulum-v1" and len(report["meta"]["load_average_start"]) == 3
    ours = [row for row in report["results"] if row["library"] == "offrl-jax"]
    assert [(row["hidden"], row["seeds"]) for row in ours] == [([16, 16], 1), ([16, 16], 2)]
    for row in report["results"]:
        assert "error" not in row, row.get("error")
        assert_positive(row, "env_steps_per_second_per_seed", "env_steps_per_second_total")
        parts = row["parts_seconds"]
        assert_positive(parts, "policy", "environment", "updates")
        assert sum(parts.values()) == pytest.approx(row["seconds"])
    for row in ours:  # every step but the first block (one step), which compiles
        assert row["env_steps"] == 39 and row["timings"]["env_steps"] == 39
    if report["d3rlpy"]["skipped"]:
        assert "d3rlpy" in report["d3rlpy"]["skipped"] and not report["comparisons"]
    else:
        (theirs,) = [row for row in report["results"] if row["library"] == "d3rlpy"]
        assert theirs["env_steps"] == 40 and theirs["dataset_transitions"] > 0
        assert {(r["seeds"], r["per_seed"] > 0) for r in report["comparisons"]} == {(1, True), (2, True)}
    table = out.with_suffix(".md").read_text()
    assert "| library | hidden | seeds |" in table and table.count("| offrl-jax iql | 16x2 |") == 2


@pytest.mark.integration
def test_mopo_benchmark_writes_its_rows(tmp_path):
    """`experiments.benchmark.mopo --quick`: every part runs and the files hold what docs/speed.md
    reports. Quick sizes: SAC 16x2, ensemble 7 x 16x16, 64 rollouts of 3 steps every 20 updates."""
    import math

    out = tmp_path / "mopo.json"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "experiments.benchmark.mopo", "--quick", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["matmul"]["peak_gflops"] > 0
    assert report["meta"]["load_average_start"] and report["meta"]["load_average_end"]
    assert {"flops", "roofline_fraction", "agent.refresh_seconds"} <= set(report["definitions"])
    algo = report["settings"]["algorithm"]
    assert (algo["rollout_freq"], algo["rollout_batch"], algo["rollout_length"]) == (20, 64, 3)

    dynamics = report["dynamics"]
    # Chunks of validate_every (10) updates, as train_stage runs a validating stage.
    assert dynamics["chunk_length"] == 10 and len(dynamics["chunk_seconds"]) == 2
    train_rows = dynamics["dataset_rows"] - dynamics["holdout_rows"]
    assert dynamics["holdout_rows"] == int(0.2 * dynamics["dataset_rows"])  # under the 1000 cap
    assert dynamics["updates_per_epoch"] == math.ceil(train_rows / 16)
    assert_positive(dynamics, "updates_per_second", "seconds_per_1000_updates", "flops_per_update",
                    "roofline_fraction", "cpu_share")
    assert_positive(dynamics["extrapolated_seconds"], "6")
    assert len(dynamics["load_average"]["after"]) == 3

    assert [row["seeds"] for row in report["agent"]] == [1, 2]
    for row in report["agent"]:
        assert row["chunk_length"] == 20 and len(row["chunk_seconds"]) == 2
        assert len(row["refresh_seconds"]) == 2
        assert_positive(row, "refresh_seconds_median", "updates_per_second_per_seed",
                        "updates_per_second_total", "update_flops", "roofline_fraction", "peak_rss_bytes",
                        "cpu_share")
        # By hand, per rollout step and row: the actor 2 (17*16 + 16*16 + 16*12) = 1440 and the
        # seven members 7 * 2 (23*16 + 16*16 + 16*36) = 16 800; 64 rows x 3 steps.
        assert row["refresh_flops"] == 64 * 3 * (1440 + 16_800)
        assert_positive(row["compile"], "chunk_seconds")
    table = out.with_suffix(".md").read_text()
    assert "Dynamics ensemble" in table and table.count("\n| 1 |") == 1 and table.count("\n| 2 |") == 1


def test_unio4_online_rows_time_the_online_phase_after_the_hand_over():
    """`experiments.benchmark.unio4`'s online rows: the hand-over, then timed rollouts in
    HalfCheetah-v4 (the first, compiling one not counted); the time split adds up."""
    import jax

    from algorithms.core.algorithm import OnlineConfig, Spec
    from algorithms.core.dynamics import DynamicsConfig
    from algorithms.core.ppo import PPOConfig
    from algorithms.unio4 import UniO4
    from experiments.benchmark import unio4 as bench

    algo = UniO4(num_members=2, policy_hidden_dims=(8,), q_hidden_dims=(8,), v_hidden_dims=(8,),
                 rollout_batch=4, rollout_length=1, termination="halfcheetah",
                 dynamics=DynamicsConfig(hidden_dims=(8,), weight_decays=(0.0, 0.0), num_members=3,
                                         num_elites=2),
                 online=OnlineConfig(replay="on_policy", block=32),
                 ppo=PPOConfig(minibatch_size=16, epochs=2))
    spec = Spec(bench.OBSERVATION_DIM, bench.ACTION_DIM, 10)
    data = bench.synthetic_data(256)
    results = {}
    for stage in algo.stages(spec):
        state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), spec, data)
        if stage.finish is not None:
            state, _ = jax.jit(stage.finish)(state, jax.tree.map(lambda x: x[:32], data))
        results[stage.name] = stage.result(state)
    row = bench.time_online(algo, spec, results, data, seeds=2, rollouts=2)
    assert row["env_steps"] == 64
    assert_positive(row, "env_steps_per_second_per_seed", "env_steps_per_second_total")
    parts = row["policy_seconds"] + row["environment_seconds"] + row["updates_seconds"]
    assert 0 < parts <= row["seconds"]
    table = bench.markdown({**TINY_UNIO4_REPORT, "online": [row]})
    assert "| online PPO, seeds |" in table and "| 2 |" in table


TINY_UNIO4_REPORT = {"machine": {"date": "d", "cpu_model": "c", "cores_available": 2, "jax": "j",
                                 "devices": ["cpu"]},
                     "load_start": [0, 0, 0], "load_end": [0, 0, 0], "command": "c", "rows": 1,
                     "stages": [], "bppo": [], "amq": []}
