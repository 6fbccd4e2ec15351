"""How many trainings one accelerator holds: throughput with 1 to 512 trainings per program.

    benchmarks/gpu.sh                                  # on the GPU machine: installs, runs, writes
    python -m experiments.benchmark.gpu --out benchmarks/gpu.json     # any backend
    python -m experiments.benchmark.gpu --trainings 1 4 --width 16 --dataset-size 5000 \\
        --seconds 0.5 --eval-steps 5 --out /tmp/gpu.json               # a CPU smoke test

For IQL, TD3+BC and CQL at 256 wide (CQL: its 3 hidden layers) and each number of trainings per
program N (seeds x grid points: N = 1 is one seed; otherwise 4 seeds x N/4 values of one numeric
hyperparameter, the grid of experiments/grid.py), the real `loop.ChunkRunner` runs compiled chunks
on 1M synthetic transitions of HalfCheetah's shapes held on the device, batch 256 per training:
  * updates/s per training and in total (chunks repeated for `--seconds`, metrics fetched to the
    host and checked after each, as `experiments.train` does), compile seconds, and the time one
    training takes for 1M updates at that speed;
  * device memory: XLA's memory analysis of the chunk and the device's peak bytes in use so far
    (sizes run in increasing order, so the peak is the largest program's);
  * for IQL, the evaluation cost: the batched policy of N trainings stepping N HalfCheetah-v5
    environments of one gymnasium vector env on the host CPUs, seconds per step, and what the
    D4RL protocol's evaluation (10 episodes of 1000 steps per training) costs at that rate;
  * evaluation over worker processes (`eval.workers`, experiments/benchmark/evaluation.py): the
    D4RL hopper's evaluation of 8, 32 and 128 trainings (10 episodes each, `--workers-eval-steps`
    steps) on the main process, with 2 workers and with one per host core;
  * with `--torch`, the same IQL update in eager PyTorch (experiments/benchmark/torch_iql.py) on
    the same device, one training, when torch is importable.
The anchor (issue 16): JAX-CORL's 1M IQL updates in 9 min on one GTX 1080 Ti, one training per
program; the target is 100 trainings of 1M IQL updates in less wall time on one modern GPU.
Writes JSON and Markdown (`--out`), rewritten after every configuration; stops starting new
configurations after `--budget` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np

import algorithms
import envs
from algorithms import Spec
from experiments import loop, policies
from experiments.benchmark import evaluation as evaluation_benchmark
from experiments.grid import Grid

GRID_FIELD = {"iql": ("expectile", 0.6, 0.9), "td3_bc": ("alpha", 1.0, 10.0),
              "cql": ("min_q_weight", 1.0, 10.0)}
ANCHOR_SECONDS = 9 * 60  # JAX-CORL: 1M IQL updates, one GTX 1080 Ti


def synthetic_dataset(size: int, observation_dim: int = 17, action_dim: int = 6) -> envs.Dataset:
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(size, observation_dim)).astype(np.float32)
    return envs.Dataset(observations, rng.uniform(-1, 1, (size, action_dim)).astype(np.float32),
                        rng.normal(size=size).astype(np.float32),
                        rng.normal(size=(size, observation_dim)).astype(np.float32),
                        np.zeros(size, np.float32), (np.arange(size) % 1000 == 999).astype(np.float32))


def trainings_grid(name: str, trainings: int) -> Grid:
    """N trainings as seeds x grid points: one seed alone, else 4 seeds x N/4 values."""
    if trainings < 4 or trainings % 4:
        return Grid(tuple(range(trainings)))
    field, low, high = GRID_FIELD[name]
    values = np.geomspace(low, high, trainings // 4)
    return Grid(tuple(range(4)), (field,), tuple({field: float(v)} for v in values))


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_training(name: str, trainings: int, width: int, raw, seconds: float, chunk: int) -> dict:
    cls = algorithms.get(name)
    algo = cls(hidden_dims=(width,) * len(cls.hidden_dims))
    prepared = loop.prepare(algo, raw)
    spec = Spec(raw.observation_dim, raw.action_dim, 1_000_000)
    ctx = loop.make_context(algo, prepared)
    grid = trainings_grid(name, trainings)
    init_keys, keys = jax.vmap(jax.random.split, out_axes=1)(
        jax.vmap(jax.random.key)(np.asarray(grid.training_seeds)))
    values = grid.values()
    states = loop.init_states(algo, spec, ctx, init_keys, values=values)
    states, _, values, keys = loop.shard_seeds(states, None, values, keys)
    runner = loop.ChunkRunner(algo, values=values)
    states, _, keys, _ = runner(states, None, keys, ctx, chunk, chunk)  # compiles, then warms up
    runner.updates = runner.update_seconds = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or runner.updates == 0:
        states, _, keys, _ = runner(states, None, keys, ctx, chunk, chunk)
    per_training = runner.updates_per_second
    memory = runner.programs[(chunk, False)].memory_analysis()
    return {
        "algo": name, "width": width, "hidden_dims": list(algo.hidden_dims), "trainings": trainings,
        "seeds": len(grid.seeds), "grid": {field: [p[field] for p in grid.points] for field in grid.fields},
        "batch_size": algo.batch_size, "chunk_length": chunk, "timed_updates": runner.updates,
        "updates_per_second_per_training": per_training,
        "updates_per_second_total": per_training * trainings,
        "seconds_to_1M_updates": 1e6 / per_training, "compile_seconds": runner.compile_seconds,
        "xla_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "xla_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "peak_device_bytes_so_far": peak_device_bytes(),
        "policy": (algo, prepared.preprocessor, states, values),
    }


def bench_evaluation(policy_parts, trainings: int, steps: int) -> dict:
    """Seconds per step of `trainings` HalfCheetah-v5 environments with one batched policy call."""
    import gymnasium as gym

    algo, preprocessor, states, values = policy_parts
    tic = time.perf_counter()
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("HalfCheetah-v5") for _ in range(trainings)])
    observations, _ = vector.reset(seed=list(range(trainings)))
    created = time.perf_counter() - tic
    policy = policies.make_policy(algo, preprocessor, values=values)(states)
    policy(observations[:, None].astype(np.float32))  # compile
    tic = time.perf_counter()
    for _ in range(steps):
        actions = policy(observations[:, None].astype(np.float32))[:, 0]
        observations, *_ = vector.step(actions)
    per_step = (time.perf_counter() - tic) / steps
    vector.close()
    return {"eval_envs": trainings, "eval_steps_timed": steps, "eval_seconds_per_step": per_step,
            "eval_env_creation_seconds": created,
            "eval_seconds_d4rl_protocol": per_step * 10 * 1000}  # 10 episodes x 1000 steps


def bench_evaluation_workers(trainings: list[int], steps: int) -> dict:
    """`eval.workers` on the host cores (experiments/benchmark/evaluation.py): 10 episodes per
    training on 1, 2 and one process per core, timed once each; an error is recorded."""
    section = {"episodes": 10, "steps": steps, "repeats": 1,
               "load_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        section["rows"] = evaluation_benchmark.run(trainings, evaluation_benchmark.default_workers(),
                                                   section["episodes"], steps, section["repeats"])
    except Exception as error:  # recorded; the report is still written
        section["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    section["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return section


def bench_torch(width: int, dataset_size: int, seconds: float) -> dict:
    """IQL in eager PyTorch (experiments/benchmark/torch_iql.py's update) on the GPU if there is one."""
    try:
        import torch

        from experiments.benchmark import torch_iql
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


def markdown(report: dict) -> str:
    lines = [f"# Trainings per program on {report['device']}", "",
             f"JAX {report['jax']}, backend {report['backend']}, {report['cores']} host cores; "
             f"command `{report['command']}`.", "",
             "| algo | trainings (seeds x grid) | updates/s per training | total updates/s | "
             "1M updates (min) | compile s | XLA temp MiB | peak device MiB | eval s/step | "
             "D4RL eval s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    mib = lambda b: "" if b is None else f"{b / 2**20:,.0f}"
    for e in report["configs"]:
        if "error" in e or "skipped" in e:
            lines.append(f"| {e['algo']} | {e['trainings']} | {e.get('error') or e['skipped']} ||||||||")
            continue
        points = len(next(iter(e["grid"].values()))) if e["grid"] else 1
        evaluation = (f"{e['eval_seconds_per_step']:.4f} | {e['eval_seconds_d4rl_protocol']:,.0f}"
                      if "eval_seconds_per_step" in e else " | ")
        lines.append(
            f"| {e['algo']} | {e['trainings']} ({e['seeds']} x {points}) | "
            f"{e['updates_per_second_per_training']:,.0f} | {e['updates_per_second_total']:,.0f} | "
            f"{e['seconds_to_1M_updates'] / 60:,.1f} | {e['compile_seconds']:.1f} | "
            f"{mib(e['xla_temp_bytes'])} | {mib(e['peak_device_bytes_so_far'])} | {evaluation} |")
    workers = report.get("evaluation_workers")
    if workers:
        lines += ["", "## Evaluation over worker processes (eval.workers)", "",
                  f"{evaluation_benchmark.describe(workers)} Load average {workers['load_before']} before, "
                  f"{workers['load_after']} after.", "",
                  *(evaluation_benchmark.table(workers["rows"]) if "rows" in workers else [workers["error"]])]
    torch_result = report.get("torch")
    if torch_result:
        lines += ["", f"PyTorch IQL (eager, one training): {json.dumps(torch_result)}"]
    lines += ["", f"Anchor: JAX-CORL's 1M IQL updates in {ANCHOR_SECONDS / 60:.0f} min on one GTX "
              "1080 Ti (one training). Target: 100 trainings of 1M IQL updates in less wall time: "
              "read the IQL row nearest 128 trainings, column '1M updates (min)'."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=["iql", "td3_bc", "cql"])
    parser.add_argument("--trainings", nargs="+", type=int, default=[1, 8, 32, 128, 512])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--dataset-size", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--chunk", type=int, default=100, help="updates per compiled call")
    parser.add_argument("--eval-steps", type=int, default=50, help="environment steps timed (0: off)")
    parser.add_argument("--workers-eval-trainings", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--workers-eval-steps", type=int, default=100,
                        help="steps of each episode of the eval.workers measurement (0: off)")
    parser.add_argument("--torch", action="store_true", help="also time IQL in eager PyTorch")
    parser.add_argument("--budget", type=float, default=390.0,
                        help="seconds after which no new configuration starts")
    parser.add_argument("--out", help="JSON path (default benchmarks/gpu-<device>.json); .md beside it")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    device = jax.devices()[0]
    name = getattr(device, "device_kind", device.platform)
    out = Path(args.out or f"benchmarks/gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json")
    report = {"device": name, "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
              "jax": jax.__version__, "cores": len(os.sched_getaffinity(0)),
              "command": " ".join(["python -m experiments.benchmark.gpu",
                                   *(sys.argv[1:] if argv is None else argv)]), "configs": []}
    raw = synthetic_dataset(args.dataset_size)

    def write():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))

    for algo_name in args.algos:
        for trainings in sorted(args.trainings):
            entry = {"algo": algo_name, "trainings": trainings}
            if time.perf_counter() - started > args.budget:
                entry["skipped"] = f"budget of {args.budget:g} s spent"
            else:
                try:
                    entry = bench_training(algo_name, trainings, args.width, raw, args.seconds, args.chunk)
                    parts = entry.pop("policy")
                    if algo_name == "iql" and args.eval_steps:
                        entry.update(bench_evaluation(parts, trainings, args.eval_steps))
                except Exception as error:  # e.g. out of device memory: recorded, the others go on
                    entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            report["configs"].append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "grid"}), flush=True)
            write()
    if args.workers_eval_steps:
        report["evaluation_workers"] = bench_evaluation_workers(args.workers_eval_trainings,
                                                                args.workers_eval_steps)
        write()
    if args.torch:
        report["torch"] = bench_torch(args.width, args.dataset_size, args.seconds)
        write()
    report["total_seconds"] = time.perf_counter() - started
    write()
    return report


if __name__ == "__main__":
    main()
