"""The benchmarks (`python -m benchmarks <measurement>`): each quick preset runs end to end and writes the
report it promises, checked once against its schema (`check_schema`); the pieces they time with
(stages, warm-up, the Uni-O4 online rows, the trainings grid) and the command line's bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MEASURED = "a finite number > 0"  # a rate, a time, FLOPs, bytes: anything measured


def check_schema(value, schema, where: str = "report") -> None:
    """`value` has the shape `schema` describes: a dict holds at least the schema's keys, each
    checked in turn; a one-element list is a list (of at least one item) whose every item matches
    that element; MEASURED is a finite number > 0; a type is an instance of it; any other value
    must equal it. Derived figures (a total from a per-seed rate) are the report's own arithmetic
    and are not restated."""
    if isinstance(schema, dict):
        assert isinstance(value, dict), (where, value)
        for key, inner in schema.items():
            assert key in value, f"{where} has no '{key}' (it has {sorted(value)})"
            check_schema(value[key], inner, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list) and value, (where, value)
        for index, item in enumerate(value):
            check_schema(item, schema[0], f"{where}[{index}]")
    elif schema is MEASURED:
        assert isinstance(value, int | float) and not isinstance(value, bool), (where, value)
        assert math.isfinite(value) and value > 0, (where, value)
    elif isinstance(schema, type):
        assert isinstance(value, schema), (where, value)
    else:
        assert value == schema, (where, value)


def head(**settings) -> dict:
    """What every report holds besides its measurements."""
    return {"meta": {"date": str, "jax": str, "devices": [str], "cores_available": MEASURED,
                     "argv": [str], "load_average_start": list, "load_average_end": list},
            "definitions": dict, "settings": settings, "complete": True}


def benchmark(tmp_path: Path, measurement: str, *options: str, timeout: int = 900) -> tuple[dict, str]:
    """`python -m benchmarks <measurement> --preset quick <options>` in a subprocess (a stuck run fails
    the test at the timeout instead of hanging the suite); its JSON report and Markdown table."""
    out = tmp_path / f"{measurement}.json"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "benchmarks", measurement, "--preset", "quick", *options,
                           "--out", str(out)], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


@pytest.mark.integration
def test_updates_report(tmp_path):
    report, table = benchmark(tmp_path, "updates", "--algos", "bc", "iql", "--retries", "2")
    configuration = {
        "updates_per_second_per_seed": MEASURED, "updates_per_second_total": MEASURED,
        "flops_per_update": MEASURED, "achieved_gflops": MEASURED, "roofline_fraction": MEASURED,
        "peak_rss_bytes": MEASURED, "compile": {"total_seconds": MEASURED}, "attempts": MEASURED,
        "xla_memory": {"peak_memory_in_bytes": MEASURED},
        "pipeline": {"updates_per_second_per_seed": MEASURED, "evaluations": MEASURED,
                     "fraction_of_bare": MEASURED},
        "python_loop": {"updates_per_second_per_seed": MEASURED}}
    check_schema(report, {**head(preset="quick", algos=list, widths=[64]),
                          "matmul": {"peak_gflops": MEASURED}, "results": [configuration],
                          "torch": {"available": object}, "comparisons": {"jax_vs_torch_iql": list}})
    assert [(r["algo"], r["hidden"]) for r in report["results"]] == [("bc", [64, 64]), ("iql", [64, 64])]
    assert report["torch"]["available"] or report["torch"]["skipped"]  # a comparison, or why not
    # IQL does more work per update than BC.
    assert report["results"][1]["flops_per_update"] > report["results"][0]["flops_per_update"]
    assert "| algo | hidden | seeds |" in table and table.count("| 64x2 |") >= 2


@pytest.mark.integration
def test_online_report(offline_data, tmp_path):
    """Our IQL online phase through `experiments.train` (OFFRL_DATA_DIR: the small local/pendulum-mixed of
    conftest), one and two seeds, and d3rlpy's where it imports ($D3RLPY_PYTHON), else a reason."""
    report, table = benchmark(tmp_path, "online", "--steps", "40")
    row = {"env_steps_per_second_per_seed": MEASURED, "env_steps_per_second_total": MEASURED,
           "parts_seconds": {"policy": MEASURED, "environment": MEASURED, "updates": MEASURED}}
    check_schema(report, {**head(preset="quick", steps=40), "environment": "Pendulum-v1",
                          "results": [row], "d3rlpy": {"skipped": object}})
    ours = [row for row in report["results"] if row["library"] == "offrl-jax"]
    assert [(row["hidden"], row["seeds"]) for row in ours] == [([16, 16], 1), ([16, 16], 2)]
    for row in ours:  # every step but the first block (one step), which compiles
        assert row["env_steps"] == 39 and row["timings"]["env_steps"] == 39
    if report["d3rlpy"]["skipped"]:
        assert "d3rlpy" in report["d3rlpy"]["skipped"] and not report["comparisons"]
    else:
        assert {r["seeds"] for r in report["comparisons"]} == {1, 2}
    assert table.count("| offrl-jax iql | 16x2 |") == 2


@pytest.mark.integration
def test_mopo_report(tmp_path):
    """Quick sizes: SAC 16x2, ensemble 7 x 16x16, 64 rollouts of 3 steps every 20 updates."""
    report, table = benchmark(tmp_path, "mopo")
    dynamics = {"updates_per_second": MEASURED, "seconds_per_1000_updates": MEASURED,
                "flops_per_update": MEASURED, "roofline_fraction": MEASURED, "cpu_share": MEASURED,
                "extrapolated_seconds": {"6": MEASURED},
                "chunk_length": 10}  # validate_every: train_stage's chunks of a validating stage
    agent = {"refresh_seconds_median": MEASURED, "updates_per_second_per_seed": MEASURED,
             "updates_per_second_total": MEASURED, "update_flops": MEASURED, "roofline_fraction": MEASURED,
             "peak_rss_bytes": MEASURED, "cpu_share": MEASURED, "compile": {"chunk_seconds": MEASURED},
             "chunk_length": 20}
    check_schema(report, {**head(preset="quick", algorithm={"rollout_freq": 20, "rollout_batch": 64,
                                                             "rollout_length": 3}),
                          "matmul": {"peak_gflops": MEASURED}, "dynamics": dynamics, "agent": [agent]})
    assert [row["seeds"] for row in report["agent"]] == [1, 2]
    # By hand, per rollout step and row: the actor 2 (17*16 + 16*16 + 16*12) = 1440 and the seven
    # members 7 * 2 (23*16 + 16*16 + 16*36) = 16 800; 64 rows x 3 steps.
    assert {row["refresh_flops"] for row in report["agent"]} == {64 * 3 * (1440 + 16_800)}
    assert "Dynamics ensemble" in table and table.count("\n| 1 |") == 1 and table.count("\n| 2 |") == 1


@pytest.mark.integration
def test_gpu_report(tmp_path):
    """The accelerator benchmark (benchmarks/gpu.sh runs it on a GPU) at tiny sizes on the CPU: plain
    seeds and seeds x grid, the evaluation costs, over worker processes too."""
    from benchmarks import harness

    report = harness.main(["gpu", "--preset", "quick", "--torch", "--out", str(tmp_path / "gpu.json")])
    configuration = {"updates_per_second_total": MEASURED, "updates_per_second_per_training": MEASURED,
                     "seconds_to_1M_updates": MEASURED, "eval_seconds_per_step": MEASURED,
                     "xla_temp_bytes": MEASURED, "compile_seconds": MEASURED}
    check_schema(report, {**head(preset="quick"), "configs": [configuration],
                          "evaluation_workers": {"rows": [{"same_returns_as_first": True,
                                                           "environments": 10}]},
                          "torch": dict})
    assert [(e["trainings"], e["seeds"], e["eval_envs"]) for e in report["configs"]] == [(1, 1, 1),
                                                                                        (4, 4, 4)]
    assert report["configs"][1]["grid"] == {"expectile": [0.6]}
    workers = [row["workers"] for row in report["evaluation_workers"]["rows"]]
    assert workers == sorted({1, 2, harness.cores()})
    assert "| iql | 4 (4 x 1) |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.integration
def test_evaluation_report(tmp_path):
    """Evaluation over worker processes: every worker count's returns are the main process's."""
    from benchmarks import harness

    out = tmp_path / "evaluation.json"
    report = harness.main(["evaluation", "--preset", "quick", "--steps", "3", "--workers", "1", "2",
                           "--out", str(out)])
    check_schema(json.loads(out.read_text()), {**head(preset="quick"), "rows": [
        {"seconds": MEASURED, "same_returns_as_first": True, "environments": 4}]})
    assert [row["workers"] for row in report["rows"]] == [1, 2]
    assert "| 2 | 4 | 2 |" in out.with_suffix(".md").read_text()


def test_the_command_line_refuses_bad_input(capsys):
    from benchmarks import harness

    for argv, message in ((["nothing"], "takes a measurement first, one of updates"),
                          (["updates", "--preset", "huge"], "invalid choice: 'huge'"),
                          (["updates", "--option", "no-equals-sign"], "--option takes key=value"),
                          (["updates", "--algos", "nope"], "unknown algorithm(s) ['nope']"),
                          (["online", "--dataset", "hopper"], "--dataset takes source/name")):
        with pytest.raises(SystemExit) as exit_:
            harness.main(argv)
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert exit_.value.code == 2 and len(errors) == 1 and message in errors[0], (argv, errors)


def test_presets_fill_only_what_is_unset():
    from benchmarks import harness

    _, args = harness.parse("updates", ["--preset", "quick", "--seeds", "3", "--option", "alpha=2.5"])
    assert (args.seeds, args.widths, args.chunk, args.options) == ([3], [64], 25, {"alpha": 2.5})
    _, args = harness.parse("updates", [])
    assert (args.seeds, args.widths, args.eval_every, args.eval_episodes) == ([1, 4, 8], [256, 64], 1000, 2)


def test_algorithm_options_apply_where_the_algorithm_has_the_field():
    from benchmarks import timing
    from experiments.config import make_algorithm

    options = {"neighbour_search": "kdtree", "lambd": 0.5}
    prdc = make_algorithm(timing.compose_run("prdc", 64, 32, options, Path("unused.hdf5")).algo)
    spot = make_algorithm(timing.compose_run("spot", 64, 32, options, Path("unused.hdf5")).algo)
    assert prdc.neighbour_search == "kdtree" and not hasattr(prdc, "lambd")
    assert spot.lambd == 0.5 and spot.hidden_dims == (64, 64) and spot.batch_size == 32
    cql = make_algorithm(timing.compose_run("cql", 8, None, None, Path("unused.hdf5"), layers=3).algo)
    assert cql.hidden_dims == (8, 8, 8)


def tiny_data():
    from envs.dataset import from_arrays

    rng = np.random.default_rng(0)
    return from_arrays(observations=rng.normal(size=(64, 3)), actions=rng.uniform(-1, 1, (64, 2)),
                       rewards=rng.normal(size=64), next_observations=rng.normal(size=(64, 3)),
                       terminals=np.zeros(64), timeouts=np.zeros(64), source="test")


@pytest.mark.integration
def test_stage_is_timed_and_starts_the_agent():
    import jax
    from helpers import tiny

    from algorithms import Spec
    from benchmarks import timing
    from experiments import loop, run_parts

    algo = tiny("spot", 16, 32, vae_hidden_dims=(16, 16), vae_batch_size=32)
    prepared = run_parts.prepare(algo, tiny_data())
    spec = Spec(3, 2, 100)
    (stage,) = algo.stages(spec)
    vae, measured = timing.time_stage(stage, spec, prepared.data, 5, None, 2)
    assert (measured["stage"], measured["steps_in_a_real_run"]) == ("vae", algo.vae_steps)
    assert measured["chunk_length"] == 5 and len(measured["chunk_seconds"]) == 2
    # It trained: the result differs from the stage's initial parameters.
    untrained = stage.result(stage.init(jax.random.split(jax.random.key(0))[0], spec, prepared.data))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(vae), jax.tree.leaves(untrained),
                                                      strict=True))
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="vae"):
        run_parts.init_states(algo, spec, run_parts.make_context(algo, prepared), keys)
    ctx = run_parts.make_context(algo, prepared, {"vae": vae})
    states = run_parts.init_states(algo, spec, ctx, keys)
    states, _, _, metrics = loop.make_train_chunk(algo, 2)(states, None, keys, ctx)
    assert int(states.step) == 2 and np.isfinite(np.asarray(metrics["critic_loss"])).all()


def test_warm_up_trains_whole_chunks_and_times_each(monkeypatch):
    from types import SimpleNamespace

    import jax
    from helpers import tiny

    from algorithms import Spec
    from benchmarks import updates
    from experiments import loop, run_parts

    monkeypatch.setattr(updates, "WARMUP_CHUNK", 5)
    algo = tiny("td3_bc", 16, 8)
    init_keys, keys = jax.random.split(jax.random.key(0), (2, 2))
    ctx = run_parts.make_context(algo, run_parts.prepare(algo, tiny_data()))
    run = SimpleNamespace(states=run_parts.init_states(algo, Spec(3, 2, 100), ctx, init_keys), buffers=None,
                          keys=keys, ctx=ctx)
    warmup = updates.warm_up(loop.ChunkRunner(algo), run, 12, seeds=2)
    assert int(run.states.step) == 15  # 12 rounded up to three chunks of 5
    rates = warmup["updates_per_second_per_seed"]
    assert (warmup["updates"], warmup["chunk_length"], len(rates)) == (15, 5, 3)


@pytest.mark.integration
def test_unio4_online_rows_time_the_online_phase_after_the_hand_over(tmp_path):
    """The hand-over, then timed rollouts of `phases.run_online` (the first, compiling one not
    counted); the split adds up."""
    import jax

    from benchmarks import harness, timing
    from benchmarks import unio4 as bench
    from experiments.assembly import Assembly

    options = {"num_members": 2, "policy_hidden_dims": [8], "q_hidden_dims": [8], "v_hidden_dims": [8],
               "rollout_batch": 4, "dynamics.hidden_dims": [8], "dynamics.weight_decays": [0.0, 0.0],
               "dynamics.num_members": 3, "dynamics.num_elites": 2, "online.block": 32,
               "ppo.minibatch_size": 16, "ppo.epochs": 2}
    cfg = bench.config(timing.write_synthetic_dataset(tmp_path / "synthetic.hdf5", 256), 2, options)
    shapes = Assembly.build(cfg, stages="abstract")
    results = {}
    for stage in shapes.algo.stages(shapes.spec):
        state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), shapes.spec, shapes.prepared.data)
        if stage.finish is not None:
            state, _ = jax.jit(stage.finish)(state, jax.tree.map(lambda x: x[:32], shapes.prepared.data))
        results[stage.name] = stage.result(state)
    row = bench.time_online(cfg, results, rollouts=2)
    check_schema(row, {"env_steps": 64, "env_steps_per_second_per_seed": MEASURED,
                       "env_steps_per_second_total": MEASURED, "seconds": MEASURED})
    assert row["policy_seconds"] + row["environment_seconds"] + row["updates_seconds"] <= row["seconds"]
    report = {"meta": {"date": "d", "cpu_model": "c", "cores_available": 2, "jax": "j",
                       "devices": ["cpu"], "load_average_start": [0, 0, 0], "argv": ["unio4"]},
              "settings": {"rows": 1}, "online": [row]}
    table = bench.markdown(report)
    assert "| online PPO, seeds |" in table and "\n| 2 |" in table
    assert harness.command_line(report) == "python -m benchmarks unio4"


def test_trainings_are_seeds_times_grid_points():
    from benchmarks import gpu
    from experiments.grid import Grid

    assert gpu.trainings_grid("iql", 1) == Grid((0,))
    grid = gpu.trainings_grid("td3_bc", 32)
    assert grid.trainings == 32 and len(grid.seeds) == 4 and grid.fields == ("alpha",)
    assert [p["alpha"] for p in grid.points][::7] == [1.0, 10.0]


@pytest.mark.integration
def test_worker_progress_is_echoed_and_a_hung_worker_is_retried(capfd):
    from benchmarks import harness

    script = ("import sys; print('    step 1', file=sys.stderr); print('noise', file=sys.stderr); "
              f"print({harness.WORKER_MARKER!r} + '{{\"rate\": 2}}')")
    assert harness.in_fresh_process([sys.executable, "-c", script], 60, retries=0) == {
        "rate": 2, "attempts": 1, "failed_attempts": []}
    assert capfd.readouterr().err == "    step 1\n"  # only the progress lines reach the terminal
    hung = harness.in_fresh_process([sys.executable, "-c", "import time; time.sleep(30)"], 1, retries=1)
    assert [why.split(";")[0] for why in hung["error"]] == ["timed out after 1 s"] * 2
