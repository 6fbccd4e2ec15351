"""How many trainings one accelerator holds: throughput with 1 to 512 trainings per program.

    benchmarks/gpu.sh                                  # on the GPU machine: installs, runs, writes
    python -m benchmarks gpu                           # any backend: benchmarks/gpu-<device>.json
    python -m benchmarks gpu --preset quick --out /tmp/gpu.json        # a CPU smoke test

For IQL, TD3+BC and CQL at 256 wide (CQL: its 3 hidden layers) and each number of trainings per
program N (seeds x grid points: N < 4 is N seeds; otherwise 4 seeds x N/4 values of one numeric
hyperparameter, the grid of experiments/grid.py), `loop.ChunkRunner` runs compiled chunks on
synthetic transitions of HalfCheetah's shapes held on the device, batch 256 per training:
  * updates/s per training and in total (chunks repeated for `--seconds`, metrics fetched and checked
    after each, as `experiments.train` does), compile seconds, the time of 1M updates at that speed;
  * device memory: XLA's memory analysis of the chunk and the device's peak bytes in use so far;
  * for IQL, the evaluation cost: the batched policy of N trainings stepping N HalfCheetah-v5
    environments of one vector env on the host, and what the D4RL protocol's evaluation costs;
  * evaluation over worker processes (`eval.workers`, evaluation.py) for `--workers-eval-trainings`;
  * with `--torch`, the same IQL update in eager PyTorch (torch_iql.py) on the same device.
The anchor (issue 16): JAX-CORL's 1M IQL updates in 9 min on one GTX 1080 Ti, one training per
program; the target is 100 trainings of 1M IQL updates in less wall time on one modern GPU. No new
configuration starts after `--budget` seconds.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import evaluation, timing
from benchmarks.harness import ROOT, command_line

GRID_FIELD = {"iql": ("expectile", 0.6, 0.9), "td3_bc": ("alpha", 1.0, 10.0),
              "cql": ("min_q_weight", 1.0, 10.0)}
LAYERS = {"iql": 2, "td3_bc": 2, "cql": 3}  # their own hidden layer counts
ANCHOR_SECONDS = 9 * 60  # JAX-CORL: 1M IQL updates, one GTX 1080 Ti
PRESETS = {
    "full": {"algos": ["iql", "td3_bc", "cql"], "trainings": [1, 8, 32, 128, 512], "width": 256,
             "dataset_size": 1_000_000, "seconds": 3.0, "chunk": 100, "eval_steps": 50,
             "workers_eval_trainings": [8, 32, 128], "workers_eval_steps": 100, "budget": 390.0},
    "quick": {"algos": ["iql"], "trainings": [1, 4], "width": 8, "dataset_size": 2000, "seconds": 0.2,
              "chunk": 5, "eval_steps": 3, "workers_eval_trainings": [1], "workers_eval_steps": 2,
              "budget": 300.0},
}
DEFINITIONS = {
    "updates_per_second_per_training": (
        "Updates of one training per second: ChunkRunner calls of `chunk` updates repeated for `seconds` "
        "after one that compiles and one that warms up, metrics fetched and checked after each."),
    "eval_seconds_per_step": "One batched policy call and one step of the N environments' vector env.",
    "eval_seconds_d4rl_protocol": "eval_seconds_per_step x 10 episodes x 1000 steps.",
    "peak_device_bytes_so_far": (
        "The device's peak bytes in use since the start (sizes run in increasing order)."),
}


def add_arguments(parser) -> None:
    parser.add_argument("--algos", nargs="+", choices=sorted(GRID_FIELD))
    parser.add_argument("--trainings", nargs="+", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--dataset-size", type=int)
    parser.add_argument("--seconds", type=float, help="timed seconds per configuration")
    parser.add_argument("--chunk", type=int, help="updates per compiled call")
    parser.add_argument("--eval-steps", type=int, help="environment steps timed (0: off)")
    parser.add_argument("--workers-eval-trainings", nargs="+", type=int)
    parser.add_argument("--workers-eval-steps", type=int, help="steps of each episode of the eval.workers "
                        "measurement (0: off)")
    parser.add_argument("--torch", action="store_true", help="also time IQL in eager PyTorch")
    parser.add_argument("--budget", type=float, help="seconds after which no new configuration starts")


def check(args, parser) -> None:
    if args.out == ROOT / "benchmarks" / "gpu.json":  # the default: named by the device
        import jax

        device = jax.devices()[0]
        name = getattr(device, "device_kind", device.platform)
        args.out = ROOT / "benchmarks" / f"gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"


def trainings_grid(name: str, trainings: int):
    """N trainings as seeds x grid points: N seeds below 4 (or not a multiple of 4), else 4 seeds x
    N/4 values."""
    from experiments.grid import Grid

    if trainings < 4 or trainings % 4:
        return Grid(tuple(range(trainings)))
    field, low, high = GRID_FIELD[name]
    values = np.geomspace(low, high, trainings // 4)
    return Grid(tuple(range(4)), (field,), tuple({field: float(v)} for v in values))


def bench_training(args, name: str, trainings: int, data_file: Path) -> dict:
    import jax

    from experiments import loop

    grid = trainings_grid(name, trainings)
    axes = [f"grid.algo.{field}={timing.hydra_value([p[field] for p in grid.points])}"
            for field in grid.fields]
    cfg = timing.compose_run(name, args.width, None, None, data_file, layers=LAYERS[name],
                             extra=[f"seeds={len(grid.seeds)}", *axes])
    run = timing.build_run(cfg, {})
    runner = loop.ChunkRunner(run.algo, values=run.values)
    timing.time_calls(runner, run, args.chunk, 2)  # compiles, then warms up
    runner.updates = runner.update_seconds = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds or runner.updates == 0:
        timing.time_calls(runner, run, args.chunk, 1)
    per_training = runner.updates_per_second
    memory = runner.programs[(args.chunk, False)].memory_analysis()
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "algo": name, "width": args.width, "hidden_dims": list(run.algo.hidden_dims), "trainings": trainings,
        "seeds": len(run.grid.seeds),
        "grid": {field: [p[field] for p in run.grid.points] for field in run.grid.fields},
        "batch_size": run.algo.batch_size, "chunk_length": args.chunk, "timed_updates": runner.updates,
        "updates_per_second_per_training": per_training, "updates_per_second_total": per_training * trainings,
        "seconds_to_1M_updates": 1e6 / per_training, "compile_seconds": runner.compile_seconds,
        "xla_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "xla_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "peak_device_bytes_so_far": stats.get("peak_bytes_in_use"), "run": run,
    }


def bench_evaluation(run, trainings: int, steps: int) -> dict:
    """Seconds per step of `trainings` HalfCheetah-v5 environments with one batched policy call."""
    import gymnasium as gym

    from experiments import policies

    tic = time.perf_counter()
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("HalfCheetah-v5") for _ in range(trainings)])
    observations, _ = vector.reset(seed=list(range(trainings)))
    created = time.perf_counter() - tic
    policy = policies.make_policy(run.algo, run.prepared.preprocessor, values=run.values)(run.states)
    policy(observations[:, None].astype(np.float32))  # compile
    tic = time.perf_counter()
    for _ in range(steps):
        observations, *_ = vector.step(policy(observations[:, None].astype(np.float32))[:, 0])
    per_step = (time.perf_counter() - tic) / steps
    vector.close()
    return {"eval_envs": trainings, "eval_steps_timed": steps, "eval_seconds_per_step": per_step,
            "eval_env_creation_seconds": created, "eval_seconds_d4rl_protocol": per_step * 10 * 1000}


def bench_torch(width: int, dataset_size: int, seconds: float) -> dict:
    """IQL in eager PyTorch (torch_iql.py's update) on the GPU if there is one."""
    try:
        import torch

        from benchmarks import torch_iql
    except ImportError as error:
        return {"skipped": f"torch not importable: {error}"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    agent = torch_iql.IQL(17, 6, (width, width))
    for module in (agent.critics, agent.target_critics, agent.value, agent.actor):
        module.to(device)  # before the first step: the optimisers' state is still empty
    data = tuple(column.to(device) for column in torch_iql.synthetic_data(dataset_size, 17, 6, 0))

    def update():
        rows = torch.randint(0, dataset_size, (256,), device=device)
        return agent.update(*(column[rows] for column in data))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(50):
        update()
    sync()
    updates, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or updates == 0:
        for _ in range(50):
            update()
        updates += 50
        sync()
    return {"torch": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "updates_per_second": updates / (time.perf_counter() - started)}


def measure(args, report) -> None:
    started = time.perf_counter()
    report["configs"] = []
    with tempfile.TemporaryDirectory(prefix="offrl-gpu-benchmark-") as folder:
        data_file = timing.write_synthetic_dataset(Path(folder) / "synthetic.hdf5", args.dataset_size)
        for name, trainings in ((a, t) for a in args.algos for t in sorted(args.trainings)):
            entry = {"algo": name, "trainings": trainings}
            if time.perf_counter() - started > args.budget:
                entry["skipped"] = f"budget of {args.budget:g} s spent"
            else:
                try:
                    entry = bench_training(args, name, trainings, data_file)
                    run = entry.pop("run")
                    if name == "iql" and args.eval_steps:
                        entry.update(bench_evaluation(run, trainings, args.eval_steps))
                    del run
                except Exception as error:  # e.g. out of device memory: recorded, the others go on
                    entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            report["configs"].append(entry)
            print({k: v for k, v in entry.items() if k != "grid"}, flush=True)
            report.write()
    if args.workers_eval_steps:
        section = {"episodes": 10, "steps": args.workers_eval_steps, "repeats": 1}
        try:
            section["rows"] = evaluation.rows(args.workers_eval_trainings, evaluation.default_workers(),
                                              section["episodes"], section["steps"], section["repeats"])
        except Exception as error:  # recorded; the report is still written
            section["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        report["evaluation_workers"] = section
        report.write()
    if args.torch:
        report["torch"] = bench_torch(args.width, args.dataset_size, args.seconds)
    report["total_seconds"] = time.perf_counter() - started


def markdown(report: dict) -> str:
    meta = report["meta"]
    mib = lambda b: "" if b is None else f"{b / 2**20:,.0f}"
    lines = [f"# Trainings per program on {meta['devices'][0]}", "",
             f"JAX {meta['jax']}, backend {meta['backend']}, {meta['cores_available']} host cores; "
             "load average "
             f"{meta['load_average_start']} at the start, {meta.get('load_average_end', '?')} at the end; "
             f"`{command_line(report)}`.", "",
             "| algo | trainings (seeds x grid) | updates/s per training | total updates/s "
             "| 1M updates (min) "
             "| compile s | XLA temp MiB | peak device MiB | eval s/step | D4RL eval s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in report.get("configs", []):
        if "error" in e or "skipped" in e:
            lines.append(f"| {e['algo']} | {e['trainings']} | {e.get('error') or e['skipped']} ||||||||")
            continue
        points = len(next(iter(e["grid"].values()))) if e["grid"] else 1
        evaluated = (f"{e['eval_seconds_per_step']:.4f} | {e['eval_seconds_d4rl_protocol']:,.0f}"
                     if "eval_seconds_per_step" in e else " | ")
        lines.append(f"| {e['algo']} | {e['trainings']} ({e['seeds']} x {points}) | "
                     f"{e['updates_per_second_per_training']:,.0f} | {e['updates_per_second_total']:,.0f} | "
                     f"{e['seconds_to_1M_updates'] / 60:,.1f} | {e['compile_seconds']:.1f} | "
                     f"{mib(e['xla_temp_bytes'])} | {mib(e['peak_device_bytes_so_far'])} | {evaluated} |")
    workers = report.get("evaluation_workers")
    if workers:
        lines += ["", "## Evaluation over worker processes (eval.workers)", "",
                  evaluation.describe(workers["episodes"], workers["steps"], workers["repeats"]), "",
                  *(evaluation.table(workers["rows"]) if "rows" in workers else [workers["error"]])]
    if report.get("torch"):
        lines += ["", f"PyTorch IQL (eager, one training): {report['torch']}"]
    lines += ["", f"Anchor: JAX-CORL's 1M IQL updates in {ANCHOR_SECONDS / 60:.0f} min on one GTX 1080 Ti "
              "(one training). Target: 100 trainings of 1M IQL updates in less wall time: read the IQL "
              "row nearest "
              "128 trainings, column '1M updates (min)'."]
    return "\n".join(lines) + "\n"
