"""MOPO's benchmark rows (issue 11): the dynamics ensemble's training, and MOPO's updates with their
model rollouts, on 1M synthetic transitions of HalfCheetah's shapes (the offline benchmark's data).

    python -m experiments.benchmark.mopo --out benchmarks/mopo.json     # 30 min on 2 shared cores
    python -m experiments.benchmark.mopo --quick --out /tmp/mopo.json   # a smoke test, ~1 min

Everything runs in this one process through the engine's own programs (no training loop here):
  * dynamics: the ensemble's stage (algorithms/core/dynamics.py: 7 members of 4x200, batch 256 per
    member) trained by `experiments.stages.train_stage` in chunks of `validate_every` updates
    (updates.time_stage): updates/s, seconds per 1000 updates and per epoch of the training split,
    and that time extrapolated to `--epochs` epochs (6 is the earliest the early stop can end it:
    the first validation, then `patience` epochs without improvement). Training it to its early
    stop on 1M rows takes hours on 2 cores, so it is extrapolated, not run.
  * agent, for each seed count: `loop.ChunkRunner` chunks of `rollout_freq` (1000) updates, each
    holding exactly one rollout refresh (rollout_batch 50 000 start states, rollout_length 5), the
    first chunk a warm-up: updates/s with the refresh amortised. Then `MOPO.refresh` alone (vmapped
    over the seeds, jitted), timed `--repeats` times: the cost of one refresh.
  * FLOPs from XLA's cost analysis (machine.xla_flops), the matmul peak (machine.matmul_peak) at the
    start and the end, and the roofline fractions against the higher peak (see DEFINITIONS).
The machine may be shared: the load average is recorded around every measurement. Writes JSON and
Markdown (`--out`; their definitions and table: mopo_report.py), rewritten after every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from algorithms import Spec
from algorithms.core.replay import sample_batch
from experiments import config, loop
from experiments.benchmark.cli import parse_options
from experiments.benchmark.machine import (
    ROOT,
    PeakRSS,
    cores,
    load_average,
    machine_info,
    matmul_peak,
    xla_flops,
    xla_memory,
)
from experiments.benchmark.mopo_report import DEFINITIONS, markdown
from experiments.benchmark.updates import (
    compile_program,
    compose_run,
    time_calls,
    time_stage,
    write_synthetic_dataset,
)
from experiments.data import load

ALGO = "mopo"
FULL = {"dataset_size": 1_000_000, "seeds": [1, 4, 8], "width": 256, "batch_size": 256, "repeats": 2,
        "dynamics_chunks": 5, "epochs": [6, 30], "matmul_sizes": [256, 512, 1024, 2048],
        "matmul_seconds": 0.5, "options": ["rollout_length=5"]}
# Tiny networks and rollouts: every part runs, in seconds.
QUICK = {"dataset_size": 3000, "seeds": [1, 2], "width": 16, "batch_size": 32, "repeats": 2,
         "dynamics_chunks": 2, "epochs": [6], "matmul_sizes": [256], "matmul_seconds": 0.05,
         "options": ["rollout_length=3", "rollout_batch=64", "rollout_freq=20", "retain_epochs=2",
                     "dynamics.hidden_dims=[16,16]", "dynamics.weight_decays=[0,0,0]",
                     "dynamics.batch_size=16", "dynamics.validate_every=10"]}

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it all runs")
    parser.add_argument("--seeds", nargs="+", type=int, help="vmapped seed counts (default 1 4 8)")
    parser.add_argument("--width", type=int, help="SAC's hidden width, two layers (default 256)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dataset-size", type=int, help="synthetic transitions (default 1M)")
    parser.add_argument("--repeats", type=int, help="timed chunks and refreshes per seed count")
    parser.add_argument("--dynamics-chunks", type=int, help="timed dynamics chunks")
    parser.add_argument("--epochs", nargs="+", type=int, help="dynamics epochs to extrapolate to")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="set a MOPO field (YAML value), e.g. rollout_batch=10000 or "
                        "dynamics.num_members=5; replaces the defaults (full: rollout_length=5)")
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-seconds", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-timeout", type=float, default=3600.0,
                        help="watchdog seconds per compiled call")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mopo.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.options = parse_options(parser, args.option if args.option is not None else args.options)
    args.markdown = args.out.with_suffix(".md")
    return args


def run_settings(args, data_file: Path) -> argparse.Namespace:
    """What updates.compose_run reads: the synthetic file, MOPO's width, batch and options."""
    return argparse.Namespace(dataset=None, data_file=data_file, batch_size=args.batch_size,
                              options=args.options, seed=args.seed)


class Busy:
    """Wall and process CPU seconds within a `with` block, and the load averages around it: on a
    shared machine, `cpu_share` (CPU seconds / wall seconds / cores) says how much of the cores
    this measurement had (1.0: all of them)."""

    def __enter__(self):
        self.before, self.wall, self.cpu = load_average(), time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.record = {"load_average": {"before": self.before, "after": load_average()},
                       "wall_seconds": wall, "cpu_share": cpu / wall / cores()}
        return False


def bench_dynamics(algo, spec: Spec, data, args) -> tuple[object, dict]:
    """The ensemble's stage timed (updates.time_stage), its FLOPs, and the epoch extrapolation."""
    (stage,) = algo.stages(spec)
    dynamics = algo.dynamics
    timing_settings = argparse.Namespace(chunk=dynamics.validate_every, chunk_seconds=None,
                                         repeats=args.dynamics_chunks)
    with PeakRSS() as rss, Busy() as busy:
        model, timing = time_stage(stage, spec, data, timing_settings)
    rows = int(data.rewards.shape[0])
    holdout = int(rows * dynamics.holdout)
    holdout = holdout if dynamics.max_holdout is None else min(holdout, dynamics.max_holdout)
    epoch_updates = math.ceil((rows - holdout) / dynamics.batch_size)  # as dynamics.init_training
    key = jax.random.key(0)
    state = jax.eval_shape(lambda k: stage.init(k, spec, data), key)
    batch = jax.eval_shape(lambda k: sample_batch(data, k, stage.batch_size), key)
    flops = xla_flops(jax.jit(stage.update).lower(state, batch, key).compile())
    rate = timing["updates_per_second"]
    return model, {
        "members": dynamics.num_members, "elites": dynamics.num_elites,
        "hidden": list(dynamics.hidden_dims), "batch_size_per_member": dynamics.batch_size,
        "dataset_rows": rows, "holdout_rows": holdout, "updates_per_epoch": epoch_updates,
        "patience": dynamics.patience, "chunk_length": timing["chunk_length"],
        "chunk_seconds": timing["chunk_seconds"], "compile": timing["compile"],
        "updates_per_second": rate, "seconds_per_1000_updates": 1000 / rate,
        "seconds_per_epoch": epoch_updates / rate,
        "extrapolated_seconds": {str(epochs): epochs * epoch_updates / rate for epochs in args.epochs},
        "flops_per_update": flops, "achieved_gflops": None if flops is None else flops * rate / 1e9,
        **rss.record(), **busy.record,
    }


def dense_flops_per_row(params) -> float:
    """Matmul FLOPs of one input row's forward pass through every dense kernel in `params` (an
    ensemble's kernels (members, in, out): through every member): 2 x their sizes."""
    return 2.0 * sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                     if getattr(path[-1], "key", None) == "kernel")


def refresh_matmul_flops(algo, states, model, seeds: int) -> float:
    """One seed's refresh, counted from the network sizes (XLA counts the rollout's scan body once,
    not rollout_length times): every step of every rollout runs the actor and all the ensemble's
    members (the penalty reads every member). Matmuls only: the activations, sampling and buffer
    writes are a few percent more."""
    actor = dense_flops_per_row(states.actor.params) / seeds  # the parameters have a seed axis
    return algo.rollout_batch * algo.rollout_length * (actor + dense_flops_per_row(model.params))


def compile_refresh(algo, states, buffers, keys, ctx):
    """MOPO.refresh for every seed as one compiled program (buffers donated); its compile time."""
    refresh = jax.vmap(algo.refresh, in_axes=(loop.seed_axes(states), 0, 0, None))
    tic = time.perf_counter()
    program = jax.jit(refresh, donate_argnums=(1,)).lower(states, buffers, keys, ctx).compile()
    return program, time.perf_counter() - tic


def bench_agent(algo, spec: Spec, prepared, model, seeds: int, args) -> dict:
    """Chunks of rollout_freq updates (one refresh each) through ChunkRunner, then the refresh alone."""
    ctx = loop.make_context(algo, prepared, {"dynamics": model})
    init_keys, keys = jax.random.split(jax.random.key(args.seed), (2, seeds))
    length = algo.rollout_freq
    with PeakRSS() as rss, Busy() as busy:
        states = loop.init_states(algo, spec, ctx, init_keys)
        buffers = loop.init_buffers(algo, spec, ctx, seeds)
        runner = loop.ChunkRunner(algo, "offline", args.config_timeout)
        chunk, compile_timing = compile_program(runner, length, states, buffers, keys, ctx)
        refresh, refresh_compile = compile_refresh(algo, states, buffers, keys, ctx)
        states, buffers, keys, seconds = time_calls(runner, states, buffers, keys, ctx, length,
                                                    1 + args.repeats)
        refresh_seconds = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            buffers = jax.block_until_ready(refresh(states, buffers, keys, ctx))
            refresh_seconds.append(time.perf_counter() - tic)
    chunk_seconds = statistics.median(seconds[1:])
    refresh_median = statistics.median(refresh_seconds)
    rate = length / chunk_seconds
    chunk_flops, refresh_xla = xla_flops(chunk), xla_flops(refresh)
    update_flops = None if None in (chunk_flops, refresh_xla) else (chunk_flops - refresh_xla) / seeds
    per_refresh = refresh_matmul_flops(algo, states, model, seeds)
    amortised = None if update_flops is None else update_flops + per_refresh / length
    return {
        "seeds": seeds, "chunk_length": length, "warmup_chunk_seconds": seconds[0],
        "chunk_seconds": seconds[1:], "compile": {"chunk_seconds": compile_timing["total_seconds"],
                                                  "refresh_seconds": refresh_compile},
        "updates_per_second_per_seed": rate, "updates_per_second_total": rate * seeds,
        "refresh_seconds": refresh_seconds, "refresh_seconds_median": refresh_median,
        "refresh_share_of_chunk": refresh_median / chunk_seconds,
        "update_only_per_second_per_seed": (length / (chunk_seconds - refresh_median)
                                            if chunk_seconds > refresh_median else None),
        "update_flops": update_flops, "refresh_flops": per_refresh,
        "refresh_flops_xla": None if refresh_xla is None else refresh_xla / seeds,
        "flops_per_update": amortised,
        "achieved_gflops": None if amortised is None else amortised * rate * seeds / 1e9,
        "refresh_achieved_gflops": per_refresh * seeds / refresh_median / 1e9,
        "xla_memory": xla_memory(chunk), **rss.record(), **busy.record,
    }


def set_rooflines(report: dict) -> None:
    peak = report["matmul"]["peak_gflops"]
    fraction = lambda gflops: None if gflops is None else gflops / peak
    if report.get("dynamics"):
        report["dynamics"]["roofline_fraction"] = fraction(report["dynamics"]["achieved_gflops"])
    for row in report["agent"]:
        row["roofline_fraction"] = fraction(row["achieved_gflops"])
        row["refresh_roofline_fraction"] = fraction(row["refresh_achieved_gflops"])


def write_report(report: dict, args) -> None:
    set_rooflines(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report))


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    report = {"meta": {**machine_info(), "argv": argv}, "definitions": DEFINITIONS, "complete": False,
              "settings": {key: str(value) if isinstance(value, Path) else value
                           for key, value in vars(args).items()}, "dynamics": None, "agent": []}
    print(f"matmul peak over n={args.matmul_sizes} ...", flush=True)
    start_peak = matmul_peak(args.matmul_sizes, args.matmul_seconds, 3)
    report["matmul"] = {"start": start_peak, "end": None, "peak_gflops": start_peak["peak_gflops"]}
    with tempfile.TemporaryDirectory(prefix="offrl-mopo-benchmark-") as folder:
        print(f"writing {args.dataset_size:,} synthetic transitions ...", flush=True)
        data_file = write_synthetic_dataset(Path(folder) / "synthetic.hdf5", args.dataset_size, args.seed)
        cfg = compose_run(ALGO, args.width, 1, run_settings(args, data_file))
        algo = config.make_algorithm(cfg.algo)
        raw, _ = load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path, cfg.dataset.download)
    spec = Spec(raw.observation_dim, raw.action_dim, 1_000_000)
    prepared = loop.prepare(algo, raw)
    del raw
    report["settings"]["algorithm"] = {key: getattr(algo, key) for key in (
        "rollout_length", "rollout_batch", "rollout_freq", "retain_epochs", "real_ratio",
        "hidden_dims", "batch_size", "uncertainty", "termination")}
    print("dynamics ensemble ...", flush=True)
    model, report["dynamics"] = bench_dynamics(algo, spec, prepared.data, args)
    print(f"  {report['dynamics']['updates_per_second']:.1f} updates/s, "
          f"{report['dynamics']['seconds_per_epoch'] / 60:.1f} min per epoch", flush=True)
    write_report(report, args)
    for seeds in args.seeds:
        row = bench_agent(algo, spec, prepared, model, seeds, args)
        report["agent"].append(row)
        print(f"  {seeds} seed(s): {row['updates_per_second_per_seed']:.1f} updates/s per seed, "
              f"one refresh {row['refresh_seconds_median']:.1f} s", flush=True)
        write_report(report, args)
    end_peak = matmul_peak(args.matmul_sizes, args.matmul_seconds, 3)
    report["matmul"] = {"start": start_peak, "end": end_peak,
                        "peak_gflops": max(start_peak["peak_gflops"], end_peak["peak_gflops"])}
    report["meta"]["load_average_end"] = load_average()
    report["complete"] = True
    write_report(report, args)
    print(args.markdown.read_text())
    return report


if __name__ == "__main__":
    main()
