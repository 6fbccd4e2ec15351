"""The online phase's throughput: environment steps, with their updates, per second, against d3rlpy's
`fit_online` for IQL on the same environment and data, and where the time goes.

    python -m benchmarks online --d3rlpy-python .venv-d3rlpy/bin/python
    python -m benchmarks online --preset quick --out /tmp/online.json      # a smoke test

Ours is the training command itself, one fresh process per (algorithm, width, seeds, block):
`python -m experiments.train algo=iql dataset=<dataset> steps=1 online.steps=<steps> ...` with IQL's
online settings (one update per environment step, `algo.online.block` steps per compiled call, the
buffer pre-filled with the dataset). Its split comes from the run's results.json (`timings.online`):
policy calls, environment steps, updates (compilation excluded) and the rest; the first block, which
compiles, and the final evaluation and checkpoint are not counted. d3rlpy runs d3rlpy_online.py in
its own interpreter (`--d3rlpy-python`; skipped where d3rlpy does not import), one seed, timed by
d3rlpy's own per-step timers. Both start from untrained networks (`steps=1`): the figures measure
speed, not learning. `--algos iql famo2o_iql` adds algorithms on the same settings; d3rlpy is
compared with IQL only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, command_line, cores, subprocess_environment

PRESETS = {
    "full": {"dataset": "local/hopper-medium-50k", "steps": 2000, "widths": [256, 64], "seeds": [1, 8],
             "config_timeout": 1800, "d3rlpy_threads": sorted({cores(), 1}, reverse=True)},
    "quick": {"dataset": "local/pendulum-mixed", "steps": 100, "widths": [16], "seeds": [1, 2],
              "config_timeout": 600, "d3rlpy_threads": [1]},
}
PARTS = ("policy", "environment", "updates")
DEFINITIONS = {
    "env_steps_per_second_per_seed": (
        "Environment steps (each with its updates) per second of one seed, excluding compilation (our "
        "first block) and the final evaluation and checkpoint."),
    "parts_fraction": (
        "Shares of that time: policy calls, environment steps, updates, other (preprocessing and storing "
        "transitions, bookkeeping)."),
    "comparisons": (
        "Ours over d3rlpy's one-seed rate at the same width, per d3rlpy thread count: per_seed (the same "
        "work) and total (our seeds batched against d3rlpy running them one after another)."),
}


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", help="source/name (full: local/hopper-medium-50k)")
    parser.add_argument("--steps", type=int, help="online environment steps per seed")
    parser.add_argument("--widths", nargs="+", type=int, help="hidden widths, two layers each")
    parser.add_argument("--seeds", nargs="+", type=int, help="seed counts trained together")
    parser.add_argument("--algos", nargs="+", default=["iql"],
                        help="our algorithms, on IQL's online settings (d3rlpy runs IQL)")
    parser.add_argument("--blocks", nargs="+", type=int, default=[1],
                        help="algo.online.block values (environment steps per compiled update call)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--d3rlpy-python", default=os.environ.get("D3RLPY_PYTHON", sys.executable),
                        help="the Python that runs d3rlpy (default: $D3RLPY_PYTHON, else this one)")
    parser.add_argument("--d3rlpy-threads", nargs="+", type=int, help="torch thread counts for d3rlpy")
    parser.add_argument("--config-timeout", type=float, help="seconds before a run is abandoned")


def check(args, parser) -> None:
    if "/" not in args.dataset:
        parser.error(f"--dataset takes source/name (e.g. local/hopper-medium-50k), not '{args.dataset}'")
    if os.sep in args.d3rlpy_python:  # it runs from a temporary folder
        args.d3rlpy_python = str(Path(args.d3rlpy_python).absolute())


def split(timings: dict, steps: int, seeds: int, utd: int = 1) -> dict:
    """Throughput and the share of each part, from seconds spent over `steps` environment steps."""
    seconds = timings["seconds"] - timings.get("evaluation", 0.0) - timings.get("checkpoints", 0.0)
    parts = {part: timings[part] for part in PARTS}
    parts["other"] = seconds - sum(parts.values())
    rate = steps / seconds
    return {"env_steps": steps, "seconds": seconds, "parts_seconds": parts,
            "parts_fraction": {part: value / seconds for part, value in parts.items()},
            "env_steps_per_second_per_seed": rate, "env_steps_per_second_total": rate * seeds,
            "updates_per_second_total": rate * seeds * utd}


def run_ours(args, algo: str, width: int, seeds: int, block: int, folder: Path) -> dict:
    run_dir = folder / f"ours-{algo}-{width}-{seeds}-{block}"
    command = [sys.executable, "-m", "experiments.train", f"algo={algo}", f"dataset={args.dataset}",
               f"algo.hidden_dims=[{width},{width}]", f"algo.batch_size={args.batch_size}",
               f"algo.online.block={block}", f"seeds={seeds}", "steps=1", "eval.every=0",
               f"online.steps={args.steps}", "online.eval_every=0", "online.episodes=1",
               f"hydra.run.dir={run_dir}"]
    row = {"library": "offrl-jax", "algo": algo, "hidden": [width, width], "seeds": seeds, "block": block,
           "command": " ".join(command[1:])}
    error, _ = _run(command, args.config_timeout)
    if error:
        return {**row, "error": error}
    results = json.loads((run_dir / "results.json").read_text())
    timings = results["timings"]["online"]
    utd = results["config"]["algo"]["online"]["updates_per_step"]
    return {**row, **split(timings, timings["env_steps"], seeds, utd), "timings": timings,
            "compile_seconds": results["online"]["compile_seconds"],
            "updates_per_second_per_seed_while_updating": results["online"]["updates_per_second_per_seed"]}


def run_d3rlpy(args, width: int, threads: int, data_file: Path, info) -> dict:
    command = [args.d3rlpy_python, "-m", "benchmarks.d3rlpy_online", "--env", info.env_id,
               "--env-kwargs", json.dumps(info.env_kwargs or {}),
               "--max-episode-steps", str(info.max_episode_steps), "--dataset", str(data_file),
               "--hidden", str(width), str(width), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(threads), "--json"]
    row = {"library": "d3rlpy", "hidden": [width, width], "seeds": 1, "threads": threads}
    with tempfile.TemporaryDirectory() as cwd:  # d3rlpy writes a log folder into its cwd
        error, stdout = _run(command, args.config_timeout, cwd=cwd)
    if error:
        return {**row, "error": error}
    record = json.loads(stdout.strip().splitlines()[-1])
    return {**row, **split(record["timings"], record["env_steps"], 1), **record}


def _run(command: list[str], timeout: float, cwd=ROOT) -> tuple[str | None, str | None]:
    """(why it failed or None, its stdout)."""
    try:
        done = subprocess.run(command, cwd=cwd, env=subprocess_environment(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s", None
    error = None if done.returncode == 0 else f"exit code {done.returncode}: {done.stderr[-2000:]}"
    return error, done.stdout


def d3rlpy_available(python: str) -> str | None:
    """None if d3rlpy imports in `python`, else why not."""
    try:
        probe = subprocess.run([python, "-c", "import d3rlpy"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python}: {error}"
    if probe.returncode:
        return (f"d3rlpy does not import in {python} (d3rlpy 2.8 pins gymnasium 1.0: install it in its "
                "own environment, see docs/speed.md, and pass --d3rlpy-python)")
    return None


def comparisons(rows: list[dict]) -> list[dict]:
    ours = [r for r in rows if r["library"] == "offrl-jax" and r["algo"] == "iql" and "error" not in r]
    out = []
    for theirs in (r for r in rows if r["library"] == "d3rlpy" and "error" not in r):
        for row in (r for r in ours if r["hidden"] == theirs["hidden"]):
            base = theirs["env_steps_per_second_per_seed"]
            out.append({"hidden": row["hidden"], "seeds": row["seeds"], "block": row["block"],
                        "d3rlpy_threads": theirs["threads"],
                        "per_seed": row["env_steps_per_second_per_seed"] / base,
                        "total": row["env_steps_per_second_total"] / base})
    return out


def measure(args, report) -> None:
    from experiments.data import load

    raw, info = load(*args.dataset.split("/", 1))
    report.update(environment=info.env_id, dataset_transitions=raw.size, results=[], comparisons=[])
    skipped = d3rlpy_available(args.d3rlpy_python)
    report["d3rlpy"] = {"python": args.d3rlpy_python, "skipped": skipped}
    with tempfile.TemporaryDirectory(prefix="offrl-online-") as folder:
        folder = Path(folder)
        data_file = folder / "dataset.npz"
        np.savez(data_file, **{name: getattr(raw, name) for name in
                               ("observations", "actions", "rewards", "terminals", "timeouts")})
        jobs = [(run_ours, (args, a, w, s, b, folder)) for a in args.algos for w in args.widths
                for s in args.seeds for b in args.blocks]
        if not skipped:
            jobs += [(run_d3rlpy, (args, w, t, data_file, info))
                     for w in args.widths for t in args.d3rlpy_threads]
        for job, job_args in jobs:
            row = job(*job_args)
            report["results"].append(row)
            print(f"{row['library']} {row.get('algo', 'iql')} {row['hidden'][0]}x2 seeds={row['seeds']}: "
                  + (f"FAILED {row['error'][:300]}" if "error" in row else
                     f"{row['env_steps_per_second_per_seed']:,.1f} env steps/s per seed"), flush=True)
            report["comparisons"] = comparisons(report["results"])
            report.write()


def markdown(report: dict) -> str:
    meta, settings = report["meta"], report["settings"]
    lines = [f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), JAX "
             f"{meta['jax']} on {', '.join(meta['devices'])}; {', '.join(settings['algos'])} online with "
             f"IQL's settings on {settings['dataset']} ({report['environment']}), {settings['steps']:,} "
             f"environment steps per seed, one update per step, batch {settings['batch_size']}. Load "
             f"average (1, 5, 15 min) {meta['load_average_start']} at the start, "
             f"{meta.get('load_average_end')} at the end on {meta['cores_available']} cores. "
             f"`{command_line(report)}`.", "",
             "| library | hidden | seeds | block / threads | env steps/s per seed | env steps/s total "
             "| policy | environment | updates | other | vs d3rlpy, per seed | vs d3rlpy, total |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["results"]:
        setting = f"block {row['block']}" if "block" in row else f"{row['threads']} threads"
        library = f"{row['library']} {row['algo']}" if "algo" in row else row["library"]
        head = f"| {library} | {row['hidden'][0]}x2 | {row['seeds']} | {setting} "
        if "error" in row:
            lines.append(head + "| failed: see JSON | | | | | | | |")
            continue
        mine = [r for r in report["comparisons"] if row.get("algo") == "iql" and r["hidden"] == row["hidden"]
                and r["seeds"] == row["seeds"] and r["block"] == row["block"]]
        lines.append(head + f"| {row['env_steps_per_second_per_seed']:,.1f} "
                     f"| {row['env_steps_per_second_total']:,.1f} "
                     + "".join(f"| {100 * row['parts_fraction'][part]:.0f}% " for part in (*PARTS, "other"))
                     + f"| {_ratios(mine, 'per_seed')} | {_ratios(mine, 'total')} |")
    if report["d3rlpy"].get("skipped"):
        lines += ["", f"d3rlpy skipped: {report['d3rlpy']['skipped']}."]
    lines += ["", "Environment steps/s exclude compilation (our first block) and the final evaluation and "
              "checkpoint; policy/environment/updates/other are shares of that time. Ratios divide by "
              "d3rlpy's one-seed rate (one per d3rlpy thread setting, separated by /); 'total' is what the "
              "same cores give ours when seeds are batched, against d3rlpy running them one after another."]
    return "\n".join(lines) + "\n"


def _ratios(rows: list[dict], key: str) -> str:
    return " / ".join(f"{row[key]:.2f}x" for row in rows) or "–"
