"""The benchmark's --quick mode runs end to end and writes the JSON and Markdown it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_every_configuration_has_positive_measurements(report):
    data, _ = report
    results = data["results"]
    assert [(r["algo"], r["hidden"]) for r in results] == [("bc", [64, 64]), ("iql", [64, 64])]
    for r in results:
        assert "error" not in r, r.get("error")
        for key in ("updates_per_second_per_seed", "updates_per_second_total", "flops_per_update",
                    "achieved_gflops", "roofline_fraction", "peak_rss_bytes"):
            assert r[key] > 0, key
        assert r["updates_per_second_total"] == pytest.approx(
            r["updates_per_second_per_seed"] * r["seeds"])
        assert r["compile"]["total_seconds"] > 0
        assert r["xla_memory"]["peak_memory_in_bytes"] > 0
        pipeline = r["pipeline"]
        assert pipeline["updates_per_second_per_seed"] > 0 and pipeline["evaluations"] >= 1
        assert 0 < pipeline["fraction_of_bare"]
        assert r["python_loop"]["updates_per_second_per_seed"] > 0
        assert r["attempts"] >= 1
    # IQL does more work per update than BC.
    assert results[1]["flops_per_update"] > results[0]["flops_per_update"]


def test_torch_comparison_or_reason(report):
    data, _ = report
    torch = data["torch"]
    if torch["available"]:
        assert torch["results"][0]["updates_per_second"] > 0
        assert data["comparisons"]["jax_vs_torch_iql"][0]["ratio_per_seed"] > 0
    else:
        assert torch["skipped"]


def test_markdown_table(report):
    _, out = report
    table = out.with_suffix(".md").read_text()
    assert "| algo | hidden | seeds |" in table
    assert table.count("| 64x2 |") >= 2


def test_algorithm_options_apply_where_the_algorithm_has_the_field():
    from experiments import benchmark

    prdc = benchmark.make_algorithm("prdc", 64, 32, {"neighbour_search": "kdtree", "lambd": 0.5})
    spot = benchmark.make_algorithm("spot", 64, 32, {"neighbour_search": "kdtree", "lambd": 0.5})
    assert prdc.neighbour_search == "kdtree" and not hasattr(prdc, "lambd")
    assert spot.lambd == 0.5 and spot.hidden_dims == (64, 64) and spot.batch_size == 32
    args = benchmark.parse_args(["--option", "neighbour_search=kdtree", "--option", "alpha=2.5"])
    assert args.options == {"neighbour_search": "kdtree", "alpha": 2.5}
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--option", "no-equals-sign"])


def test_pretraining_stage_is_timed_and_initialises_the_agent():
    import argparse

    import jax
    import numpy as np

    from algorithms import Spec
    from envs.dataset import from_arrays
    from experiments import benchmark, loop

    algo = benchmark.make_algorithm("spot", 16, 32, {"vae_hidden_dims": (16, 16), "vae_batch_size": 32})
    rng = np.random.default_rng(0)
    data = from_arrays(observations=rng.normal(size=(64, 3)), actions=rng.uniform(-1, 1, (64, 2)),
                       rewards=rng.normal(size=64), next_observations=rng.normal(size=(64, 3)),
                       terminals=np.zeros(64), timeouts=np.zeros(64), source="test")
    prepared = loop.prepare(algo, data)
    spec = Spec(3, 2, 100)
    settings = argparse.Namespace(chunk=5, chunk_seconds=0.1, repeats=2)
    vae, timing = benchmark.run_pretraining(algo.pretraining(), spec, prepared.data, settings)
    assert timing["stage"] == "vae" and timing["steps_in_a_real_run"] == algo.vae_steps
    assert timing["chunk_length"] == 5 and timing["updates_per_second"] > 0
    states = loop.init_states(algo, spec, prepared.data, jax.random.split(jax.random.key(0), 2), vae)
    np.testing.assert_array_equal(jax.tree.leaves(states.vae_params)[0][1], jax.tree.leaves(vae.params)[0])


def test_warm_up_trains_whole_chunks_and_times_each(monkeypatch):
    import jax
    import numpy as np

    from algorithms import Spec
    from envs.dataset import from_arrays
    from experiments import benchmark, loop

    monkeypatch.setattr(benchmark, "WARMUP_CHUNK", 5)
    algo = benchmark.make_algorithm("td3_bc", 16, 8, {})
    rng = np.random.default_rng(0)
    data = from_arrays(observations=rng.normal(size=(64, 3)), actions=rng.uniform(-1, 1, (64, 2)),
                       rewards=rng.normal(size=64), next_observations=rng.normal(size=(64, 3)),
                       terminals=np.zeros(64), timeouts=np.zeros(64), source="test")
    prepared = loop.prepare(algo, data)
    init_keys, keys = jax.random.split(jax.random.key(0), (2, 2))
    states = loop.init_states(algo, Spec(3, 2, 100), prepared.data, init_keys)
    states, _, warmup = benchmark.warm_up(algo, states, prepared.data, keys, 12, seeds=2)
    assert int(states.step) == 15  # 12 rounded up to three chunks of 5
    assert warmup["updates"] == 15 and warmup["chunk_length"] == 5
    assert len(warmup["updates_per_second_per_seed"]) == 3
    assert all(rate > 0 for rate in warmup["updates_per_second_per_seed"])


def test_worker_progress_is_echoed_and_a_hung_worker_times_out(capfd):
    from experiments import benchmark

    script = "import sys; print('    step 1', file=sys.stderr); print('noise', file=sys.stderr); print('out')"
    code, stdout, stderr = benchmark.run_echoing_progress([sys.executable, "-c", script],
                                                          dict(os.environ), timeout=60)
    assert (code, stdout) == (0, "out\n") and stderr == "    step 1\nnoise\n"
    assert capfd.readouterr().err == "    step 1\n"  # only the progress lines reach the terminal
    code, _, _ = benchmark.run_echoing_progress([sys.executable, "-c", "import time; time.sleep(30)"],
                                                dict(os.environ), timeout=1)
    assert code is None
