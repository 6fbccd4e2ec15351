"""What the offline benchmark's numbers mean (DEFINITIONS, written into its JSON), the PyTorch
comparison, and the Markdown table."""

from __future__ import annotations

import json
import subprocess

from experiments.benchmark.machine import ROOT, subprocess_environment
from experiments.benchmark.updates import ACTION_DIM, OBSERVATION_DIM

DEFINITIONS = {
    "update": "One gradient step of one seed on a batch sampled from the on-device dataset.",
    "bare": (
        "The compiled train chunk (experiments.loop.make_train_chunk: lax.scan over `chunk_length` "
        "steps of vmap over seeds of draw + algo.update) run by loop.ChunkRunner, the runner "
        "experiments.train uses, back to back with the state on the device; each call timed as "
        "the runner times it (the compiled call and fetching its metrics, which waits for it); "
        "the median over `repeats` calls after one warm-up call. Excludes compilation."),
    "pipeline": (
        "experiments.train.run itself, on the same data and configuration, for pipeline_periods "
        "evaluation periods: its offline loop's wall clock (results.json timings.offline.seconds) "
        "minus the chunk's compilation (results.json compile_seconds). It includes everything a "
        "real run does there: the chunks with their finiteness and early-stop checks, metrics "
        "lines, evaluation of all seeds in one vector env with the batched policy (the first one "
        "also compiles the policy), and the orbax checkpoint written at every evaluation. Stages "
        "(SPOT's VAE) are not retrained: the run reads the ones the bare measurement trained "
        "(stage_paths). breakdown_seconds: updates (the runner's own time, from results.json "
        "updates_per_second_per_seed), evaluation (metrics.jsonl), other (logging, checks, "
        "checkpoints). fraction_of_bare = pipeline updates/s / bare updates/s."),
    "pipeline_eval_scaling": (
        "A real locomotion run evaluates every 5000 steps with 10 episodes of up to 1000 steps and "
        "logs every 1000 steps. The benchmark divides eval_every and the episodes by `eval_scale`, "
        "so environment steps per gradient step are those of a real run (2 per seed), but the "
        "vector env is `eval_scale` times narrower, so there are eval_scale times more batched "
        "policy calls per update: the measured fraction slightly underestimates a real run's. "
        "HalfCheetah (the synthetic data evaluates in the D4RL file's environment) never terminates, "
        "so every episode is 1000 steps, as for a good policy."),
    "compile_seconds": (
        "loop.ChunkRunner.compile of the train chunk (AOT lower + compile), wall clock. With a "
        "persistent compilation cache configured (see meta) it measures cache hits."),
    "flops_per_update": (
        "XLA's cost_analysis()['flops'] of the one-step program (make_train_chunk(algo, 1)) "
        "divided by the number of seeds. XLA counts a while loop's body once whatever its trip "
        "count, so the long chunk's own count (chunk_reported_flops) is not divided by its "
        "length. XLA counts a lax.cond as its most expensive branch: TD3+BC updates its actor "
        "every 2nd step, so its flops_per_update and roofline_fraction are upper bounds."),
    "roofline_fraction": (
        "achieved_gflops (flops_per_update x bare updates/s of all seeds) / the peak float32 "
        "matmul GFLOP/s: the best rate of jitted chains of square n x n matmuls (n >= 256), "
        "measured at the start and at the end of the same run (matmul.start, matmul.end)."),
    "peak_rss_bytes": (
        "Peak resident set size of the configuration's own process (each configuration runs in a "
        "fresh process) from before the state is initialised to the end (VmHWM, reset through "
        "/proc/self/clear_refs, because a child inherits its parent's ru_maxrss); rss_scope is "
        "'process' where the reset is not possible. Includes the dataset and the runtime."),
    "attempts": (
        "Processes started for the configuration: one is killed and retried after "
        "settings.config_timeout seconds (a safety net: a compiled program that deadlocks must not "
        "stop the whole benchmark). "
        "An entry with `error` instead of measurements failed every attempt."),
    "xla_memory": "compiled.memory_analysis() of the train chunk: XLA's own buffer sizes.",
    "python_loop": (
        "The one-step program make_train_chunk(algo, 1) called once per step from a Python "
        "for-loop (asynchronous dispatch, blocking only at the end), against the scan."),
    "torch": (
        "experiments/benchmark/torch_iql.py in a separate process (settings.torch_python, default "
        "this interpreter): the same IQL update in eager PyTorch, one seed, batches sampled from "
        "CPU tensors, torch.set_num_threads(t) for each t in settings.torch_threads (default: the "
        "cores available, then 1). Ratios are JAX updates/s over PyTorch updates/s at the same "
        "width and thread setting."),
    "stages": (
        "The algorithm's stages (Algorithm.stages(), e.g. SPOT's VAE) trained by "
        "experiments.stages.train_stage (one model, not vmapped over seeds): six one-step chunks "
        "size the chunk, then 1 + repeats chunks, each timed from train_stage's progress calls; "
        "compile.total_seconds is the first chunk's time (initialisation and compilation) minus "
        "the median chunk. The result is the agents' ctx.stages. Its steps are not the agent's "
        "updates and are not in the agent's updates/s."),
    "options": "Algorithm fields set with --option key=value (those the algorithm has).",
    "warmup_updates": (
        "Updates trained between initialisation and the first timed call, in chunks of "
        "min(1000, N) (N rounded up to whole chunks); 0 times a fresh agent. Each warm-up chunk is "
        "timed once (no repeats; compiled beforehand): warmup.updates_per_second_per_seed is the "
        "speed along the way, chunk by chunk."),
}


def run_torch(settings, widths: list[int]) -> dict:
    """Time experiments/benchmark/torch_iql.py in a fresh process per setting, so PyTorch's and XLA's thread
    pools never compete and each gets its own peak RSS."""
    if not settings.torch:
        return {"available": None, "skipped": "--no-torch"}
    probe = subprocess.run([settings.torch_python, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        return {"available": False, "skipped": f"torch does not import in {settings.torch_python} "
                "(pip install -e '.[bench]' installs it, or pass --torch-python)"}
    results = []
    for width, threads in ((w, t) for w in widths for t in settings.torch_threads):
        command = [settings.torch_python, "-m", "experiments.benchmark.torch_iql",
                   "--hidden", str(width), str(width), "--batch-size", str(settings.batch_size),
                   "--dataset-size", str(settings.dataset_size),
                   "--steps", str(settings.torch_steps), "--repeats", str(settings.torch_repeats),
                   "--threads", str(threads), "--seed", str(settings.seed), "--json"]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env=subprocess_environment(), timeout=settings.config_timeout)
        except subprocess.TimeoutExpired:
            results.append({"hidden": [width, width], "threads": threads,
                            "error": f"timed out after {settings.config_timeout:.0f} s"})
            continue
        if done.returncode != 0:
            results.append({"hidden": [width, width], "threads": threads,
                            "error": done.stderr.strip()[-2000:]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"available": True, "results": results}


def comparisons(entries: list[dict], torch_results: dict) -> dict:
    """JAX/PyTorch ratios for IQL at each width (torch runs one seed)."""
    rows = []
    for torch_row in torch_results.get("results", []):
        if "updates_per_second" not in torch_row:
            continue
        width = torch_row["hidden"][0]
        jax_rows = [e for e in entries
                    if e["algo"] == "iql" and e["hidden"][0] == width and "error" not in e]
        if not jax_rows:
            continue
        fewest = min(jax_rows, key=lambda e: e["seeds"])
        best = max(jax_rows, key=lambda e: e["updates_per_second_total"])
        rows.append({
            "hidden": [width, width],
            "torch_threads": torch_row["threads"],
            "torch_updates_per_second": torch_row["updates_per_second"],
            "jax_seeds": fewest["seeds"],
            "jax_updates_per_second_per_seed": fewest["updates_per_second_per_seed"],
            "ratio_per_seed": fewest["updates_per_second_per_seed"]
                              / torch_row["updates_per_second"],
            "jax_best_total_seeds": best["seeds"],
            "jax_best_updates_per_second_total": best["updates_per_second_total"],
            "ratio_best_total": best["updates_per_second_total"] / torch_row["updates_per_second"],
        })
    return {"jax_vs_torch_iql": rows}


def markdown(report: dict) -> str:
    meta, settings, peak = report["meta"], report["settings"], report["matmul"]
    lines = [
        f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), "
        f"JAX {meta['jax']} on {', '.join(meta['devices'])}, "
        f"XLA_FLAGS={meta['xla_flags'] or 'unset'}; batch {settings['batch_size']}, "
        + (f"dataset {settings['dataset']}" if settings.get("dataset") else
           f"{settings['dataset_size']:,} synthetic transitions (obs {OBSERVATION_DIM}, "
           f"act {ACTION_DIM})")
        + f"; load average {meta['load_average_start']} at the start, "
        f"{meta.get('load_average_end', '?')} at the end. "
        f"`python -m experiments.benchmark {' '.join(meta.get('argv', []))}`.",
        "",
        "| algo | hidden | seeds | compile s | updates/s per seed | updates/s total "
        "| pipeline / bare | its updates / bare | s per evaluation | GFLOP/update | GFLOP/s "
        "| of matmul peak | XLA MiB | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["results"]:
        if "error" in e:
            lines.append(f"| {e['algo']} | {e['hidden'][0]}x2 | {e['seeds']} | failed: see JSON "
                         "| | | | | | | | | | |")
            continue
        flops = e["flops_per_update"]
        pipeline = e.get("pipeline", {})
        updates_only = pipeline and (pipeline["steps"] / pipeline["breakdown_seconds"]["updates"]
                                     / e["updates_per_second_per_seed"])
        lines.append(
            f"| {_label(e)}{'*' if e['has_conditional'] else ''} | {e['hidden'][0]}x2 "
            f"| {e['seeds']} | {e['compile']['total_seconds']:.1f} "
            f"| {e['updates_per_second_per_seed']:,.0f} | {e['updates_per_second_total']:,.0f} "
            f"| {_percent(pipeline.get('fraction_of_bare'))} | {_percent(updates_only or None)} "
            f"| {_number(pipeline.get('seconds_per_evaluation'), '.2f')} "
            f"| {_number(flops and flops / 1e9, '.3f')} | {_number(e['achieved_gflops'], '.1f')} "
            f"| {_percent(e['roofline_fraction'])} "
            f"| {_mib((e['xla_memory'] or {}).get('peak_memory_in_bytes'))} "
            f"| {_mib(e['peak_rss_bytes'])} |")
    sizes = "; ".join(
        f"{when}: " + ", ".join(f"n={r['n']} {r['gflops']:.1f}" for r in peak[when]["results"])
        for when in ("start", "end") if peak[when])
    lines += [
        "",
        f"Matmul peak: {peak['peak_gflops']:.1f} GFLOP/s float32 at n={peak['peak_n']} "
        f"({sizes}). "
        f"Pipeline: experiments.train.run, with logging, evaluation in {settings['eval_env']} every "
        f"{settings['pipeline_eval_every']} steps, {settings['pipeline_episodes']} episode(s) of "
        f"{settings['eval_max_episode_steps']} steps per seed (a real run: every 5000 steps, 10 "
        "episodes: the same evaluation cost per update) and a checkpoint at every evaluation; "
        "\"its updates / bare\" is its runner's update time alone against the bare chunk, i.e. "
        "the loop's overhead without evaluation. "
        "FLOPs are XLA's cost analysis; * marks a lax.cond, counted as its costlier branch "
        "(an upper bound).",
    ]
    staged = [(e, stage) for e in report["results"] for stage in e.get("stages", [])]
    if staged:
        lines += ["", "| algo | stage | steps in a real run | compile s | updates/s "
                  "| time for the real run |", "|---|---|---:|---:|---:|---:|"]
        for e, stage in staged:
            lines.append(f"| {_label(e)} | {stage['stage']} | {stage['steps_in_a_real_run']:,} "
                         f"| {stage['compile']['total_seconds']:.1f} "
                         f"| {stage['updates_per_second']:,.0f} "
                         f"| {stage['steps_in_a_real_run'] / stage['updates_per_second'] / 60:.1f} min |")
    warmed = [e for e in report["results"] if "warmup" in e]
    if warmed:
        lines += ["", "Warm-up before timing, updates/s per seed for each chunk of "
                  f"{warmed[0]['warmup']['chunk_length']:,} updates in order (timed once each):"]
        for e in warmed:
            rates = e["warmup"]["updates_per_second_per_seed"]
            lines.append(f"- {_label(e)}, {e['seeds']} seed(s), {e['warmup']['updates']:,} updates: "
                         + ", ".join(f"{rate:.1f}" for rate in rates))
    loops = [e for e in report["results"] if "python_loop" in e]
    if loops:
        lines += ["", "| algo | hidden | seeds | Python loop updates/s | scan updates/s "
                  "| scan speed-up |", "|---|---|---|---:|---:|---:|"]
        for e in loops:
            lines.append(f"| {e['algo']} | {e['hidden'][0]}x2 | {e['seeds']} "
                         f"| {e['python_loop']['updates_per_second_per_seed']:,.0f} "
                         f"| {e['updates_per_second_per_seed']:,.0f} "
                         f"| {e['python_loop']['scan_speedup']:.2f}x |")
    torch_rows = report["comparisons"]["jax_vs_torch_iql"]
    if torch_rows:
        lines += ["", "| IQL hidden | PyTorch threads | PyTorch updates/s | JAX updates/s (seeds) "
                  "| JAX / PyTorch "
                  "| JAX best total (seeds) | best total / PyTorch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in torch_rows:
            lines.append(f"| {r['hidden'][0]}x2 | {r['torch_threads']} "
                         f"| {r['torch_updates_per_second']:,.0f} "
                         f"| {r['jax_updates_per_second_per_seed']:,.0f} ({r['jax_seeds']}) "
                         f"| {r['ratio_per_seed']:.2f} "
                         f"| {r['jax_best_updates_per_second_total']:,.0f} "
                         f"({r['jax_best_total_seeds']}) | {r['ratio_best_total']:.2f} |")
    elif report["torch"].get("skipped"):
        lines += ["", f"PyTorch comparison skipped: {report['torch']['skipped']}."]
    return "\n".join(lines) + "\n"


def _label(entry: dict) -> str:
    options = entry.get("options") or {}
    return entry["algo"] + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})"
                            if options else "")


def _number(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"
