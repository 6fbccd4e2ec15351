"""Offline training throughput of the algorithms on this machine, and what limits it.

    python -m benchmarks updates                       # ~25 min on an idle 2-core CPU; keep it idle
    python -m benchmarks updates --preset quick --out /tmp/updates.json     # a smoke test, ~2-3 min
    python -m benchmarks updates --algos spot a2pr --no-torch --out benchmarks/support.json
    python -m benchmarks updates --algos prdc --dataset local/hopper-medium \\
        --option neighbour_search=kdtree --out benchmarks/prdc-kdtree.json

For every algorithm, network width and number of vmapped seeds, in a fresh process each (killed and
retried after --config-timeout):
  * bare: the compiled train chunk run by `experiments.loop.ChunkRunner` on a dataset held on the
    device: 1M synthetic transitions of HalfCheetah's shapes (a D4RL file), or a real one
    (`--dataset source/name`, where the data's structure sets the cost, as for PRDC's KD-tree);
  * pipeline: `experiments.train.run` itself on the same data (chunks, checks, metrics lines,
    periodic evaluation, checkpoints), as a fraction of the bare throughput;
  * compile time, XLA's FLOP count and memory analysis, peak RSS, the fraction of this machine's
    measured matmul peak, and (at --python-loop-widths) a Python loop of one-step calls against the scan;
  * the algorithm's stages (SPOT's VAE), each timed through `experiments.stages.train_stage`;
  * with `--warmup-updates N`, N updates before timing, each chunk of 1000 timed (PRDC's search);
and the same IQL update in eager PyTorch (torch_iql.py, another process). `definitions` in the JSON
says exactly what each number measures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import timing
from benchmarks.harness import (
    ROOT,
    command_line,
    cores,
    in_fresh_process,
    key_value_options,
    subprocess_environment,
    table,
)
from benchmarks.timing import number, percent

WARMUP_CHUNK = 1000  # updates per timed warm-up chunk

PRESETS = {
    "full": {"dataset_size": 1_000_000, "chunk": 0, "chunk_seconds": 2.0, "repeats": 5, "eval_scale": 5,
             "pipeline_periods": 2, "matmul_sizes": [64, 256, 512, 1024, 2048], "matmul_seconds": 0.5,
             "torch_steps": 200, "torch_repeats": 5, "seeds": [1, 4, 8], "widths": [256, 64],
             "config_timeout": 900, "torch_threads": sorted({cores(), 1}, reverse=True)},
    "quick": {"dataset_size": 20_000, "chunk": 25, "chunk_seconds": 0.2, "repeats": 2, "eval_scale": 0,
              "pipeline_periods": 1, "matmul_sizes": [256, 512], "matmul_seconds": 0.05,
              "torch_steps": 10, "torch_repeats": 2, "seeds": [2], "widths": [64], "config_timeout": 600,
              "torch_threads": [cores()]},
}

DEFINITIONS = {
    "update": "One gradient step of one seed on a batch sampled from the on-device dataset.",
    "bare": (
        "The compiled train chunk (experiments.loop.make_train_chunk: lax.scan over `chunk_length` steps "
        "of vmap over seeds of draw + algo.update) run by loop.ChunkRunner, the runner experiments.train "
        "uses, back to back with the state on the device; each call timed as the runner times it (the "
        "compiled call and fetching its metrics); the median over `repeats` calls after one warm-up call. "
        "Excludes compilation."),
    "pipeline": (
        "experiments.train.run itself, on the same data and configuration, for pipeline_periods "
        "evaluation periods: its offline loop's wall clock (results.json timings.offline.seconds) minus "
        "the chunk's compilation (results.json compile_seconds): the chunks with their checks, metrics "
        "lines, evaluation of all seeds in one vector env (the first also compiles the policy), and the "
        "checkpoint at every evaluation. Stages are not retrained: the run reads the ones the bare "
        "measurement trained (stage_paths). breakdown_seconds: updates (from results.json "
        "updates_per_second_per_seed), evaluation (metrics.jsonl), other (logging, checks, checkpoints). "
        "fraction_of_bare = pipeline updates/s / bare updates/s."),
    "pipeline_eval_scaling": (
        "A real locomotion run evaluates every 5000 steps with 10 episodes of up to 1000 steps. The "
        "benchmark divides eval_every and the episodes by `eval_scale` (0: one episode every two "
        "chunks, a smoke test), so environment steps per gradient step are a real run's, in a vector "
        "env eval_scale times narrower: the fraction slightly underestimates a real run's."),
    "compile_seconds": "loop.ChunkRunner.compile of the train chunk (AOT lower + compile), wall clock.",
    "flops_per_update": (
        "XLA's cost_analysis()['flops'] of the one-step program divided by the number of seeds (XLA "
        "counts a loop's body once, so the long chunk's count is not divided by its length; a lax.cond "
        "counts as its costlier branch: TD3+BC's, marked *, is an upper bound)."),
    "roofline_fraction": (
        "achieved_gflops (flops_per_update x bare updates/s of all seeds) / the peak float32 matmul "
        "GFLOP/s (the best of jitted chains of n x n matmuls, n >= 256, at the start and at the end)."),
    "peak_rss_bytes": (
        "Peak resident set size of the configuration's own process from before the state is initialised "
        "to the end (VmHWM after a reset through /proc/self/clear_refs; rss_scope 'process' where the "
        "reset is not possible). Includes the dataset and the runtime."),
    "attempts": "Processes started for the configuration; an entry with `error` failed every attempt.",
    "xla_memory": "compiled.memory_analysis() of the train chunk: XLA's own buffer sizes.",
    "python_loop": "The one-step program called once per step from a Python for-loop, against the scan.",
    "torch": (
        "torch_iql.py in a separate process (settings.torch_python): the same IQL update in eager "
        "PyTorch, one seed, torch.set_num_threads(t) for each t in settings.torch_threads. Ratios: JAX "
        "updates/s over PyTorch updates/s at the same width."),
    "stages": (
        "The algorithm's stages trained by experiments.stages.train_stage (one model): 1 + repeats "
        "chunks timed from its progress calls; compile is the first chunk's time minus the median."),
    "warmup_updates": (
        "Updates trained before the first timed call, in chunks of min(1000, N), each timed once: "
        "warmup.updates_per_second_per_seed is the speed along the way."),
}


def add_arguments(parser) -> None:
    parser.add_argument("--algos", nargs="+", default=["bc", "td3_bc", "iql"])
    parser.add_argument("--seeds", nargs="+", type=int, help="vmapped seed counts (full: 1 4 8)")
    parser.add_argument("--widths", nargs="+", type=int, help="hidden widths, two layers (full: 256 64)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dataset-size", type=int, help="synthetic transitions (full: 1M)")
    parser.add_argument("--dataset", help="a real dataset, source/name (e.g. local/hopper-medium), instead "
                        "of the synthetic one; the pipeline evaluates in its environment")
    parser.add_argument("--warmup-updates", type=int, default=0,
                        help="updates trained before timing (PRDC's KD-tree search gets cheaper); they "
                        "count in --config-timeout")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="set an algorithm field (YAML value), e.g. neighbour_search=kdtree")
    parser.add_argument("--chunk", type=int, help="updates per bare chunk; 0: about --chunk-seconds each")
    parser.add_argument("--chunk-seconds", type=float)
    parser.add_argument("--repeats", type=int, help="timed chunks per configuration")
    parser.add_argument("--eval-scale", type=int, help="divide the real eval period (5000) and episodes "
                        "(10) by this; 0: one episode every two chunks")
    parser.add_argument("--pipeline-periods", type=int, help="evaluation periods timed")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    parser.add_argument("--python-loop-widths", nargs="*", type=int, default=[64])
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-seconds", type=float)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    parser.add_argument("--torch-steps", type=int, help="PyTorch updates per timed block")
    parser.add_argument("--torch-repeats", type=int)
    parser.add_argument("--torch-python", default=sys.executable,
                        help="the Python that runs the PyTorch side (one where torch imports)")
    parser.add_argument("--torch-threads", nargs="+", type=int, help="PyTorch thread counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-timeout", type=float, help="seconds before a configuration is retried")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: ALGO:WIDTH:SEEDS
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)  # internal: the synthetic file


def check(args, parser) -> None:
    import algorithms

    unknown = sorted(set(args.algos) - set(algorithms.available()))
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; available: {algorithms.available()}")
    if args.dataset and "/" not in args.dataset:
        parser.error(f"--dataset takes source/name (e.g. local/hopper-medium), not '{args.dataset}'")
    if args.eval_scale and (5000 % args.eval_scale or 10 % args.eval_scale):
        parser.error("--eval-scale must divide 5000 and 10 (1, 2, 5 or 10), or be 0")
    if not args.eval_scale and not args.chunk:
        parser.error("--eval-scale 0 evaluates every two chunks: give the chunk length, e.g. --chunk 25")
    args.options = key_value_options(parser, args.option)
    if args.eval_scale:  # a real locomotion run's evaluation, scaled down
        args.eval_every, args.eval_episodes = 5000 // args.eval_scale, 10 // args.eval_scale
        args.log_every = min(1000, args.eval_every)
    else:  # two chunks and one evaluation: every part of the pipeline runs once
        args.eval_every, args.eval_episodes, args.log_every = 2 * args.chunk, 1, args.chunk


def run_config(args, name: str, width: int, seeds: int, *extra: str):
    return timing.compose_run(name, width, args.batch_size, args.options, args.data_file, args.dataset,
                              [f"seed={args.seed}", f"seeds={seeds}", *extra])


def measure(args, report) -> None:
    """Every configuration in its own process, the matmul peak before and after, then PyTorch."""
    import envs

    info = envs.lookup(*(args.dataset or timing.SYNTHETIC_DATASET).split("/", 1))
    report["settings"].update(eval_env=info.env_id, eval_max_episode_steps=info.max_episode_steps)
    start_peak = timing.matmul_peak(args.matmul_sizes, args.matmul_seconds, args.repeats)
    report["matmul"] = timing.matmul_section(start_peak)
    report["results"], report["comparisons"] = [], {"jax_vs_torch_iql": []}
    report["torch"] = {"available": None, "skipped": "not run yet"}
    with tempfile.TemporaryDirectory(prefix="offrl-benchmark-") as folder:
        data_file = [] if args.dataset else [
            "--data-file", str(timing.write_synthetic_dataset(Path(folder) / "synthetic.hdf5",
                                                              args.dataset_size, args.seed))]
        for name, width, seeds in ((a, w, s) for a in args.algos for w in args.widths for s in args.seeds):
            tic = time.perf_counter()
            command = [sys.executable, "-m", "benchmarks", *report["meta"]["argv"],
                       "--worker", f"{name}:{width}:{seeds}", *data_file]
            entry = {"algo": name, "hidden": [width, width], "seeds": seeds,
                     **in_fresh_process(command, args.config_timeout, args.retries)}
            report["results"].append(entry)
            print(f"{name:>7} {width:>4}x2 seeds={seeds}: " + (
                f"FAILED {entry['error'][-1][:300]}" if "error" in entry else
                f"{entry['updates_per_second_per_seed']:,.0f}/s per seed "
                f"({time.perf_counter() - tic:.0f} s)"), flush=True)
            set_rooflines(report)
            report.write()
    report["matmul"] = timing.matmul_section(start_peak, timing.matmul_peak(
        args.matmul_sizes, args.matmul_seconds, args.repeats))
    set_rooflines(report)
    report["torch"] = run_torch(args, args.widths if "iql" in args.algos else [])
    report["comparisons"] = comparisons(report["results"], report["torch"])


def set_rooflines(report) -> None:
    for entry in report["results"]:
        if "error" not in entry:
            achieved = entry["achieved_gflops"]
            peak = report["matmul"]["peak_gflops"]
            entry["roofline_fraction"] = None if achieved is None else achieved / peak


def measure_worker(args) -> dict:
    """Every measurement of the one configuration --worker names (ALGO:WIDTH:SEEDS)."""
    import faulthandler

    import jax

    from experiments.assembly import Assembly

    name, width, seeds = args.worker.split(":")
    width, seeds = int(width), int(seeds)
    # Stacks on stderr shortly before the parent's timeout, so a hang can be diagnosed.
    faulthandler.dump_traceback_later(max(1.0, args.config_timeout - 30), exit=False)
    cfg = run_config(args, name, width, seeds, f"watchdog_seconds={args.config_timeout}")
    shapes = Assembly.build(cfg, stages="abstract")  # the algorithm and the data its stages train on
    entry = {"batch_size": args.batch_size, "dataset_size": int(shapes.prepared.data.size),
             "options": {k: v for k, v in args.options.items() if hasattr(shapes.algo, k)}}
    stage_results = {}
    with timing.PeakRSS() as rss:
        for stage in shapes.algo.stages(shapes.spec):
            stage_results[stage.name], stage_timing = timing.time_stage(
                stage, shapes.spec, shapes.prepared.data, args.chunk, args.chunk_seconds, args.repeats)
            entry.setdefault("stages", []).append(stage_timing)
        del shapes
        run = timing.assemble(cfg, stage_results)  # search structures (PRDC's KD-tree) count in the peak
        runner = run.asm.runner("offline")
        if args.warmup_updates:
            entry["warmup"] = warm_up(runner, run, args.warmup_updates, seeds)
        # The one-step program: XLA's FLOPs per update, the time that sizes the chunk, the Python loop.
        step, step_compile = timing.compile_program(runner, 1, run)
        step_seconds = statistics.median(timing.time_calls(runner, run, 1, 6)[1:])
        entry["one_step_program"] = {"compile": step_compile, "seconds_per_call": step_seconds,
                                     "reported_flops": timing.xla_flops(step)}
        if width in args.python_loop_widths:
            entry["python_loop"] = time_python_loop(step, run, min(max(50, timing.nice_floor(
                args.chunk_seconds / step_seconds)), 20_000), args.repeats)
        length = timing.chunk_length(step_seconds, args.chunk, args.chunk_seconds)
        chunk, compile_timing = timing.compile_program(runner, length, run)
        seconds = timing.time_calls(runner, run, length, 1 + args.repeats)[1:]  # the first warms up
        rate = length / statistics.median(seconds)
        flops = None if entry["one_step_program"]["reported_flops"] is None else (
            entry["one_step_program"]["reported_flops"] / seeds)
        entry.update({
            "chunk_length": length, "compile": compile_timing, "chunk_seconds": seconds,
            "updates_per_second_per_seed": rate, "updates_per_second_total": rate * seeds,
            "flops_per_update": flops,
            "achieved_gflops": None if flops is None else flops * rate * seeds / 1e9,
            "chunk_reported_flops": timing.xla_flops(chunk),
            "has_conditional": "conditional(" in chunk.as_text(), "xla_memory": timing.xla_memory(chunk)})
        if "python_loop" in entry:
            entry["python_loop"]["scan_speedup"] = rate / entry["python_loop"]["updates_per_second_per_seed"]
        jax.block_until_ready(run.states)
    entry.update(rss.record())
    del run
    if args.pipeline:
        entry["pipeline"] = run_pipeline(args, name, width, seeds, stage_results)
        entry["pipeline"]["fraction_of_bare"] = entry["pipeline"]["updates_per_second_per_seed"] / rate
    faulthandler.cancel_dump_traceback_later()
    return entry


def time_python_loop(program, run, steps: int, repeats: int) -> dict:
    """`steps` calls of the one-step program per timing, blocking only at the end of each, as a plain
    Python training loop would (dispatch is asynchronous, so Python may run ahead)."""
    import jax

    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(steps):
            run.states, run.buffers, run.keys, _ = program(run.states, run.buffers, run.keys, run.ctx,
                                                           None, run.values)
        jax.block_until_ready((run.states, run.keys))
        seconds.append(time.perf_counter() - tic)
    return {"steps_per_timing": steps, "seconds": seconds,
            "updates_per_second_per_seed": steps / statistics.median(seconds)}


def warm_up(runner, run, updates: int, seeds: int) -> dict:
    """`updates` updates (rounded up to whole chunks) before timing, each chunk timed, so the speed
    along the way is measured too (PRDC's search gets cheaper as the actor learns)."""
    length = min(WARMUP_CHUNK, updates)
    _, compile_timing = timing.compile_program(runner, length, run)
    rates = []
    for index in range(-(-updates // length)):
        rates.append(length / timing.time_calls(runner, run, length, 1)[0])
        print(f"    warm-up updates {(index + 1) * length}: {rates[-1]:.1f}/s per seed, {seeds} seed(s)",
              file=sys.stderr, flush=True)
    return {"updates": len(rates) * length, "chunk_length": length, "compile": compile_timing,
            "updates_per_second_per_seed": rates}


def run_pipeline(args, name: str, width: int, seeds: int, stage_results: dict) -> dict:
    """`experiments.train.run` for `pipeline_periods` evaluation periods (see DEFINITIONS), starting
    from the stage results the bare measurement trained."""
    import json

    from experiments.stage_cache import StageRecord, write_cached
    from experiments.train import run

    steps = args.eval_every * args.pipeline_periods
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for stage, result in stage_results.items():
            paths[stage] = Path(folder, "stages", stage).absolute()
            write_cached(paths[stage], result, StageRecord(stage, 0, None, False, 0.0))
        cfg = run_config(args, name, width, seeds, f"steps={steps}", f"log_every={args.log_every}",
                         f"eval.every={args.eval_every}", f"eval.episodes={args.eval_episodes}",
                         "checkpoint.keep=1", "pretrain.cache_dir=null",
                         f"watchdog_seconds={args.config_timeout}",
                         *(f"+stage_paths.{stage}={path}" for stage, path in paths.items()))
        out = run(cfg, Path(folder, "run"))
        lines = [json.loads(line) for line in Path(folder, "run", "metrics.jsonl").read_text().splitlines()]
    evaluations = [line["seconds"] for line in lines if line["type"] == "eval"]
    seconds = out["timings"]["offline"]["seconds"] - out["compile_seconds"]
    updates = steps / out["updates_per_second_per_seed"]
    return {"steps": steps, "log_every": args.log_every, "eval_every": args.eval_every,
            "episodes_per_seed": args.eval_episodes, "evaluations": len(evaluations), "seconds": seconds,
            # the first evaluation also compiles the policy
            "seconds_per_evaluation": (statistics.median(evaluations[1:] or evaluations)
                                       if evaluations else None),
            "breakdown_seconds": {"updates": updates, "evaluation": sum(evaluations),
                                  "other": seconds - updates - sum(evaluations)},
            "compile_seconds": out["compile_seconds"], "updates_per_second_per_seed": steps / seconds,
            "updates_per_second_total": steps / seconds * seeds}


def run_torch(args, widths: list[int]) -> dict:
    """torch_iql.py in a fresh process per setting, so PyTorch's and XLA's thread pools never compete."""
    import json
    import subprocess

    if not args.torch:
        return {"available": None, "skipped": "--no-torch"}
    if subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True).returncode:
        return {"available": False, "skipped": f"torch does not import in {args.torch_python} "
                "(pip install -e '.[bench]' installs it, or pass --torch-python)"}
    results = []
    for width, threads in ((w, t) for w in widths for t in args.torch_threads):
        command = [args.torch_python, "-m", "benchmarks.torch_iql", "--hidden", str(width), str(width),
                   "--batch-size", str(args.batch_size), "--dataset-size", str(args.dataset_size),
                   "--steps", str(args.torch_steps), "--repeats", str(args.torch_repeats),
                   "--threads", str(threads), "--seed", str(args.seed), "--json"]
        row = {"hidden": [width, width], "threads": threads}
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env=subprocess_environment(), timeout=args.config_timeout)
        except subprocess.TimeoutExpired:
            results.append({**row, "error": f"timed out after {args.config_timeout:.0f} s"})
            continue
        results.append({**row, "error": done.stderr.strip()[-2000:]} if done.returncode else
                       json.loads(done.stdout.strip().splitlines()[-1]))
    return {"available": True, "results": results}


def comparisons(entries: list[dict], torch: dict) -> dict:
    """JAX/PyTorch ratios for IQL at each width (PyTorch runs one seed)."""
    rows = []
    for theirs in (r for r in torch.get("results", []) if "updates_per_second" in r):
        ours = [e for e in entries
                if e["algo"] == "iql" and e["hidden"] == theirs["hidden"] and "error" not in e]
        if not ours:
            continue
        fewest = min(ours, key=lambda e: e["seeds"])
        best = max(ours, key=lambda e: e["updates_per_second_total"])
        rows.append({"hidden": theirs["hidden"], "torch_threads": theirs["threads"],
                     "torch_updates_per_second": theirs["updates_per_second"],
                     "jax_seeds": fewest["seeds"],
                     "jax_updates_per_second_per_seed": fewest["updates_per_second_per_seed"],
                     "ratio_per_seed": fewest["updates_per_second_per_seed"] / theirs["updates_per_second"],
                     "jax_best_total_seeds": best["seeds"],
                     "jax_best_updates_per_second_total": best["updates_per_second_total"],
                     "ratio_best_total": best["updates_per_second_total"] / theirs["updates_per_second"]})
    return {"jax_vs_torch_iql": rows}


def markdown(report: dict) -> str:
    meta, settings, peak = report["meta"], report["settings"], report["matmul"]
    mib = lambda value: number(value, ",.0f", 2**20)
    data = (f"dataset {settings['dataset']}" if settings.get("dataset") else
            f"{settings['dataset_size']:,} synthetic transitions (obs {timing.OBSERVATION_DIM}, "
            f"act {timing.ACTION_DIM})")
    lines = [f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), JAX "
             f"{meta['jax']} on {', '.join(meta['devices'])}, XLA_FLAGS={meta['xla_flags'] or 'unset'}; "
             f"batch {settings['batch_size']}, {data}; load average {meta['load_average_start']} at the "
             f"start, {meta.get('load_average_end', '?')} at the end. `{command_line(report)}`.", ""]
    rows = []
    for e in report["results"]:
        if "error" in e:
            rows.append([e["algo"], f"{e['hidden'][0]}x2", e["seeds"], "failed: see JSON", *[""] * 10])
            continue
        pipeline = e.get("pipeline", {})
        updates_only = pipeline and (pipeline["steps"] / pipeline["breakdown_seconds"]["updates"]
                                     / e["updates_per_second_per_seed"])
        rows.append([
            _label(e) + ("*" if e["has_conditional"] else ""), f"{e['hidden'][0]}x2", e["seeds"],
            f"{e['compile']['total_seconds']:.1f}", f"{e['updates_per_second_per_seed']:,.0f}",
            f"{e['updates_per_second_total']:,.0f}", percent(pipeline.get("fraction_of_bare")),
            percent(updates_only or None), number(pipeline.get("seconds_per_evaluation"), ".2f"),
            number(e["flops_per_update"], ".3f", 1e9), number(e["achieved_gflops"], ".1f"),
            percent(e.get("roofline_fraction")), mib((e["xla_memory"] or {}).get("peak_memory_in_bytes")),
            mib(e["peak_rss_bytes"])])
    lines += table(["algo", "hidden", "seeds", "compile s", "updates/s per seed", "updates/s total",
                    "pipeline / bare", "its updates / bare", "s per evaluation", "GFLOP/update", "GFLOP/s",
                    "of matmul peak", "XLA MiB", "peak RSS MiB"], "lllrrrrrrrrrrr", rows)
    sizes = "; ".join(f"{when}: " + ", ".join(f"n={r['n']} {r['gflops']:.1f}" for r in peak[when]["results"])
                      for when in ("start", "end") if peak[when])
    lines += ["", f"Matmul peak: {peak['peak_gflops']:.1f} GFLOP/s float32 at n={peak['peak_n']} ({sizes}). "
              f"Pipeline: experiments.train.run, evaluating in {settings['eval_env']} every "
              f"{settings['eval_every']} steps, {settings['eval_episodes']} episode(s) of "
              f"{settings['eval_max_episode_steps']} steps per seed, a checkpoint at every evaluation; "
              "\"its updates / bare\": its runner's update time alone against the bare chunk. FLOPs: XLA's "
              "cost analysis; * marks a lax.cond, counted as its costlier branch (an upper bound)."]
    staged = [(e, stage) for e in report["results"] for stage in e.get("stages", [])]
    if staged:
        lines += ["", *table(
            ["algo", "stage", "steps in a real run", "compile s", "updates/s", "time for the real run"],
            "llrrrr", [[_label(e), s["stage"], f"{s['steps_in_a_real_run']:,}",
                        f"{s['compile']['total_seconds']:.1f}", f"{s['updates_per_second']:,.0f}",
                        f"{s['steps_in_a_real_run'] / s['updates_per_second'] / 60:.1f} min"]
                       for e, s in staged])]
    warmed = [e for e in report["results"] if "warmup" in e]
    if warmed:
        lines += ["", "Warm-up, updates/s per seed for each chunk of "
                  f"{warmed[0]['warmup']['chunk_length']:,} updates in order:"]
        lines += [f"- {_label(e)}, {e['seeds']} seed(s), {e['warmup']['updates']:,} updates: "
                  + ", ".join(f"{rate:.1f}" for rate in e["warmup"]["updates_per_second_per_seed"])
                  for e in warmed]
    loops = [e for e in report["results"] if "python_loop" in e]
    if loops:
        lines += ["", *table(
            ["algo", "hidden", "seeds", "Python loop updates/s", "scan updates/s", "scan speed-up"], "lllrrr",
            [[e["algo"], f"{e['hidden'][0]}x2", e["seeds"],
              f"{e['python_loop']['updates_per_second_per_seed']:,.0f}",
              f"{e['updates_per_second_per_seed']:,.0f}", f"{e['python_loop']['scan_speedup']:.2f}x"]
             for e in loops])]
    if report["comparisons"]["jax_vs_torch_iql"]:
        lines += ["", *table(
            ["IQL hidden", "PyTorch threads", "PyTorch updates/s", "JAX updates/s (seeds)", "JAX / PyTorch",
             "JAX best total (seeds)", "best total / PyTorch"], "lrrrrrr",
            [[f"{r['hidden'][0]}x2", r["torch_threads"], f"{r['torch_updates_per_second']:,.0f}",
              f"{r['jax_updates_per_second_per_seed']:,.0f} ({r['jax_seeds']})", f"{r['ratio_per_seed']:.2f}",
              f"{r['jax_best_updates_per_second_total']:,.0f} ({r['jax_best_total_seeds']})",
              f"{r['ratio_best_total']:.2f}"] for r in report["comparisons"]["jax_vs_torch_iql"]])]
    elif report["torch"].get("skipped"):
        lines += ["", f"PyTorch comparison skipped: {report['torch']['skipped']}."]
    return "\n".join(lines) + "\n"


def _label(entry: dict) -> str:
    options = entry.get("options") or {}
    return entry["algo"] + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
