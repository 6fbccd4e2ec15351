"""MOPO's dynamics ensemble and its updates with model rollouts, on synthetic transitions of
HalfCheetah's shapes (the offline benchmark's data).

    python -m benchmarks mopo --out benchmarks/mopo.json         # 30 min on 2 shared cores
    python -m benchmarks mopo --preset quick --out /tmp/mopo.json   # a smoke test, ~1 min

Everything runs in this one process through the engine's own programs:
  * dynamics: the ensemble's stage (7 members of 4x200, batch 256 per member) trained by
    `experiments.stages.train_stage` in chunks of `validate_every` updates: updates/s, seconds per
    1000 updates and per epoch of the training split, extrapolated to `--epochs` epochs (training it
    to its early stop on 1M rows takes hours on 2 cores);
  * agent, for each seed count: `loop.ChunkRunner` chunks of `rollout_freq` updates, each holding
    exactly one rollout refresh, the first a warm-up; then `MOPO.refresh` alone (vmapped over seeds);
  * FLOPs from XLA's cost analysis, the matmul peak at the start and the end, roofline fractions.
The load average and CPU share are recorded around every measurement.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import timing
from benchmarks.harness import command_line, key_value_options, table
from benchmarks.timing import number, percent

PRESETS = {
    "full": {"dataset_size": 1_000_000, "seeds": [1, 4, 8], "width": 256, "batch_size": 256, "repeats": 2,
             "dynamics_chunks": 5, "epochs": [6, 30], "matmul_sizes": [256, 512, 1024, 2048],
             "matmul_seconds": 0.5, "option": ["rollout_length=5"]},
    # Tiny networks and rollouts: every part runs, in seconds.
    "quick": {"dataset_size": 3000, "seeds": [1, 2], "width": 16, "batch_size": 32, "repeats": 2,
              "dynamics_chunks": 2, "epochs": [6], "matmul_sizes": [256], "matmul_seconds": 0.05,
              "option": ["rollout_length=3", "rollout_batch=64", "rollout_freq=20", "retain_epochs=2",
                         "dynamics.hidden_dims=[16,16]", "dynamics.weight_decays=[0,0,0]",
                         "dynamics.batch_size=16", "dynamics.validate_every=10"]},
}
DEFINITIONS = {
    "dynamics.updates_per_second": (
        "Ensemble updates (one Adam step of all members, each on its own batch) per second: train_stage "
        "on the dataset in chunks of validate_every updates (each ends with a validation call, a no-op "
        "until an epoch ends); the median over `dynamics_chunks` chunks after one that compiles."),
    "dynamics.epoch": (
        "ceil(training rows / batch_size) updates: one pass over the training split (the dataset less "
        "min(holdout x rows, max_holdout) rows), the unit of the early stop's patience."),
    "dynamics.extrapolated_seconds": "epochs x updates per epoch / updates_per_second: not run.",
    "agent.updates_per_second_per_seed": (
        "rollout_freq / the median seconds of a ChunkRunner call of rollout_freq updates (each holds "
        "exactly one rollout refresh, inside the compiled scan), after one warm-up call."),
    "agent.refresh_seconds": (
        "One rollout refresh of every seed (MOPO.refresh vmapped over seeds, jitted, buffers donated); "
        "median over `repeats` calls."),
    "agent.update_only_per_second_per_seed": "rollout_freq / (chunk seconds - refresh seconds).",
    "flops": (
        "XLA's cost_analysis()['flops'], which counts a scan's body once and a lax.cond as its costlier "
        "branch. update_flops = (chunk program - refresh program) / seeds; refresh_flops counted from "
        "the network sizes: rollout_batch x rollout_length x 2 x (the actor's kernel sizes + every "
        "member's); flops_per_update = update_flops + refresh_flops / rollout_freq."),
    "roofline_fraction": "achieved FLOP/s / the peak float32 matmul FLOP/s (start and end of the run).",
    "cpu_share": "The process's CPU seconds / wall seconds / cores over the measurement.",
}


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", nargs="+", type=int, help="vmapped seed counts (full: 1 4 8)")
    parser.add_argument("--width", type=int, help="SAC's hidden width, two layers (full: 256)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dataset-size", type=int, help="synthetic transitions (full: 1M)")
    parser.add_argument("--repeats", type=int, help="timed chunks and refreshes per seed count")
    parser.add_argument("--dynamics-chunks", type=int, help="timed dynamics chunks")
    parser.add_argument("--epochs", nargs="+", type=int, help="dynamics epochs to extrapolate to")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="set a MOPO field (YAML value), e.g. rollout_batch=10000; replaces the preset's")
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-seconds", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-timeout", type=float, default=3600.0, help="watchdog seconds per call")


def check(args, parser) -> None:
    args.options = key_value_options(parser, args.option)


def bench_dynamics(asm, args) -> tuple[object, dict]:
    """The ensemble's stage timed on the data of `asm` (an Assembly), its FLOPs, and the epoch
    extrapolation."""
    import jax

    from algorithms.core.replay import sample_batch

    (stage,) = asm.algo.stages(asm.spec)
    dynamics, data = asm.algo.dynamics, asm.prepared.data
    with timing.PeakRSS() as rss, timing.Busy() as busy:
        model, measured = timing.time_stage(stage, asm.spec, data, dynamics.validate_every, None,
                                            args.dynamics_chunks)
    rows = int(data.rewards.shape[0])
    holdout = int(rows * dynamics.holdout)
    holdout = holdout if dynamics.max_holdout is None else min(holdout, dynamics.max_holdout)
    epoch_updates = math.ceil((rows - holdout) / dynamics.batch_size)  # as dynamics.init_training
    key = jax.random.key(0)
    state = jax.eval_shape(lambda k: stage.init(k, asm.spec, data), key)
    batch = jax.eval_shape(lambda k: sample_batch(data, k, stage.batch_size), key)
    flops = timing.xla_flops(jax.jit(stage.update).lower(state, batch, key).compile())
    rate = measured["updates_per_second"]
    return model, {
        "members": dynamics.num_members, "elites": dynamics.num_elites, "hidden": list(dynamics.hidden_dims),
        "batch_size_per_member": dynamics.batch_size, "dataset_rows": rows, "holdout_rows": holdout,
        "updates_per_epoch": epoch_updates, "patience": dynamics.patience,
        "chunk_length": measured["chunk_length"], "chunk_seconds": measured["chunk_seconds"],
        "compile": measured["compile"], "updates_per_second": rate, "seconds_per_1000_updates": 1000 / rate,
        "seconds_per_epoch": epoch_updates / rate,
        "extrapolated_seconds": {str(epochs): epochs * epoch_updates / rate for epochs in args.epochs},
        "flops_per_update": flops, "achieved_gflops": None if flops is None else flops * rate / 1e9,
        **rss.record(), **busy.record}


def dense_flops_per_row(params) -> float:
    """Matmul FLOPs of one input row's forward pass through every dense kernel in `params` (an
    ensemble's kernels (members, in, out): through every member): 2 x their sizes."""
    import jax

    return 2.0 * sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                     if getattr(path[-1], "key", None) == "kernel")


def bench_agent(cfg, model, args) -> dict:
    """Chunks of rollout_freq updates (one refresh each) through ChunkRunner, then the refresh alone."""
    import jax

    from experiments import seed_axis

    seeds = int(cfg.seeds)
    with timing.PeakRSS() as rss, timing.Busy() as busy:
        run = timing.assemble(cfg, {"dynamics": model})
        algo, length = run.algo, run.algo.rollout_freq
        runner = run.asm.runner("offline")
        chunk, compile_timing = timing.compile_program(runner, length, run)
        refresh = jax.vmap(algo.refresh,
                           in_axes=(seed_axis.seed_axes(run.states), 0, 0, seed_axis.context_axes(run.ctx)))
        tic = time.perf_counter()
        refresh = jax.jit(refresh, donate_argnums=(1,)).lower(run.states, run.buffers, run.keys,
                                                              run.ctx).compile()
        refresh_compile = time.perf_counter() - tic
        seconds = timing.time_calls(runner, run, length, 1 + args.repeats)
        refresh_seconds = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            run.buffers = jax.block_until_ready(refresh(run.states, run.buffers, run.keys, run.ctx))
            refresh_seconds.append(time.perf_counter() - tic)
    chunk_seconds, refresh_median = statistics.median(seconds[1:]), statistics.median(refresh_seconds)
    rate = length / chunk_seconds
    chunk_flops, refresh_xla = timing.xla_flops(chunk), timing.xla_flops(refresh)
    update_flops = None if None in (chunk_flops, refresh_xla) else (chunk_flops - refresh_xla) / seeds
    # one seed's refresh: every step of every rollout runs the actor and all the members
    actor = dense_flops_per_row(run.states.actor.params) / seeds  # the parameters have a seed axis
    per_refresh = algo.rollout_batch * algo.rollout_length * (actor + dense_flops_per_row(model.params))
    amortised = None if update_flops is None else update_flops + per_refresh / length
    return {
        "seeds": seeds, "chunk_length": length, "warmup_chunk_seconds": seconds[0],
        "chunk_seconds": seconds[1:],
        "compile": {"chunk_seconds": compile_timing["total_seconds"], "refresh_seconds": refresh_compile},
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
        "xla_memory": timing.xla_memory(chunk), **rss.record(), **busy.record}


def set_rooflines(report) -> None:
    fraction = lambda gflops: None if gflops is None else gflops / report["matmul"]["peak_gflops"]
    if report.get("dynamics"):
        report["dynamics"]["roofline_fraction"] = fraction(report["dynamics"]["achieved_gflops"])
    for row in report["agent"]:
        row["roofline_fraction"] = fraction(row["achieved_gflops"])
        row["refresh_roofline_fraction"] = fraction(row["refresh_achieved_gflops"])


def measure(args, report) -> None:
    from experiments.assembly import Assembly

    start_peak = timing.matmul_peak(args.matmul_sizes, args.matmul_seconds, 3)
    report.update(matmul=timing.matmul_section(start_peak), dynamics=None, agent=[])
    with tempfile.TemporaryDirectory(prefix="offrl-mopo-benchmark-") as folder:
        data_file = timing.write_synthetic_dataset(Path(folder) / "synthetic.hdf5", args.dataset_size,
                                                   args.seed)
        configs = {seeds: timing.compose_run("mopo", args.width, args.batch_size, args.options, data_file,
                                             extra=[f"seed={args.seed}", f"seeds={seeds}",
                                                    f"watchdog_seconds={args.config_timeout}"])
                   for seeds in args.seeds}
        shapes = Assembly.build(configs[args.seeds[0]], stages="abstract")  # what the ensemble trains on
        report["settings"]["algorithm"] = {key: getattr(shapes.algo, key) for key in (
            "rollout_length", "rollout_batch", "rollout_freq", "retain_epochs", "real_ratio", "hidden_dims",
            "batch_size", "uncertainty", "termination")}
        print("dynamics ensemble ...", flush=True)
        model, report["dynamics"] = bench_dynamics(shapes, args)
        del shapes
        set_rooflines(report)
        report.write()
        for seeds, cfg in configs.items():
            report["agent"].append(bench_agent(cfg, model, args))
            rate = report["agent"][-1]["updates_per_second_per_seed"]
            print(f"  {seeds} seed(s): {rate:.1f} updates/s per seed", flush=True)
            set_rooflines(report)
            report.write()
    report["matmul"] = timing.matmul_section(start_peak, timing.matmul_peak(args.matmul_sizes,
                                                                            args.matmul_seconds, 3))
    set_rooflines(report)


def markdown(report: dict) -> str:
    meta, settings, algo = report["meta"], report["settings"], report["settings"].get("algorithm", {})
    lines = [f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), JAX "
             f"{meta['jax']} on {', '.join(meta['devices'])}; {settings['dataset_size']:,} synthetic "
             f"transitions of HalfCheetah's shapes; load average {meta['load_average_start']} at the start, "
             f"{meta.get('load_average_end', '?')} at the end (a shared machine). `{command_line(report)}`. "
             f"Matmul peak {report['matmul']['peak_gflops']:.1f} GFLOP/s float32."]
    d = report["dynamics"]
    if d:
        extrapolated = ", ".join(f"{epochs} epochs {seconds / 60:.0f} min"
                                 for epochs, seconds in d["extrapolated_seconds"].items())
        lines += ["", f"Dynamics ensemble ({d['members']} members, {d['elites']} elites, "
                  f"{'x'.join(map(str, d['hidden']))}, batch {d['batch_size_per_member']} per member), "
                  f"{d['dataset_rows'] - d['holdout_rows']:,} training rows = {d['updates_per_epoch']:,} "
                  f"updates per epoch: {d['updates_per_second']:.1f} updates/s "
                  f"({number(d['flops_per_update'], '.2f', 1e9)} GFLOP each, "
                  f"{percent(d.get('roofline_fraction'))} of the matmul peak), "
                  f"{d['seconds_per_1000_updates']:.1f} s per 1000 updates, "
                  f"{d['seconds_per_epoch'] / 60:.1f} min per epoch; extrapolated (not run): {extrapolated}. "
                  f"Compile {d['compile']['total_seconds']:.1f} s; load average "
                  f"{d['load_average']['before'][0]} / {d['load_average']['after'][0]}, "
                  f"CPU share {percent(d['cpu_share'])}."]
    lines += ["", f"MOPO (SAC {algo.get('hidden_dims')}, batch {algo.get('batch_size')}; every "
              f"{algo.get('rollout_freq')} updates {algo.get('rollout_batch', 0):,} rollouts of "
              f"{algo.get('rollout_length')} steps):", ""]
    lines += table(
        ["seeds", "updates/s per seed", "total", "s per chunk", "one refresh s (all seeds)", "refresh share",
         "update-only /s per seed", "GFLOP/update", "of matmul peak", "GFLOP/refresh/seed", "refresh of peak",
         "compile s", "peak RSS MiB", "load before/after", "CPU share"], "rrrrrrrrrrrrrlr",
        [[r["seeds"], f"{r['updates_per_second_per_seed']:,.1f}", f"{r['updates_per_second_total']:,.1f}",
          f"{statistics.median(r['chunk_seconds']):.1f}", f"{r['refresh_seconds_median']:.2f}",
          percent(r["refresh_share_of_chunk"]), number(r["update_only_per_second_per_seed"], ",.1f"),
          number(r["flops_per_update"], ".3f", 1e9), percent(r.get("roofline_fraction")),
          number(r["refresh_flops"], ",.0f", 1e9), percent(r.get("refresh_roofline_fraction")),
          f"{r['compile']['chunk_seconds']:.1f}", number(r["peak_rss_bytes"], ",.0f", 2**20),
          f"{r['load_average']['before'][0]} / {r['load_average']['after'][0]}", percent(r["cpu_share"])]
         for r in report["agent"]])
    lines += ["", "Updates/s: chunks of rollout_freq updates, each with one refresh (amortised); definitions "
              "in the JSON."]
    return "\n".join(lines) + "\n"
