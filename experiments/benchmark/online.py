"""The online phase's throughput: environment steps, with their updates, per second, against
d3rlpy's `fit_online` for IQL on the same environment and data, and where the time goes.

    python -m experiments.benchmark.online --d3rlpy-python .venv-d3rlpy/bin/python
    python -m experiments.benchmark.online --quick --out /tmp/online.json     # a smoke test

Ours is the training command itself, one fresh process per (algorithm, width, seeds, block):
`python -m experiments.train algo=iql dataset=<dataset> steps=1 online.steps=<steps> ...`, IQL's
online settings (one update per environment step, `algo.online.block` steps per compiled call,
buffer pre-filled with the dataset). Its split comes from the run's results.json
(`timings.online`, timed inside experiments/online.py): policy calls, environment steps, updates
(compilation excluded), and the rest (preprocessing collected rows, bookkeeping); the first block,
which compiles, and the final evaluation and checkpoint are not counted. d3rlpy runs
d3rlpy_online.py in its own interpreter (`--d3rlpy-python`; skipped where d3rlpy does not import),
one seed (it has no seed batching), timed by d3rlpy's own per-step timers. Both start from
untrained networks (`steps=1`: IQL's cosine schedule needs one offline step): the figures measure
speed, not learning. `--algos iql famo2o_iql` adds other algorithms on the same settings (FamO2O's
balance model costs this much); d3rlpy is compared with IQL only. Writes benchmarks/online.json and
.md by default, with the load average before and after: on a shared machine the numbers say little
without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from experiments.benchmark.machine import ROOT, cores, load_average, machine_info, subprocess_environment

FULL = {"dataset": "local/hopper-medium-50k", "steps": 2000, "widths": [256, 64], "seeds": [1, 8],
        "config_timeout": 1800, "d3rlpy_threads": sorted({cores(), 1}, reverse=True)}
QUICK = {"dataset": "local/pendulum-mixed", "steps": 100, "widths": [16], "seeds": [1, 2],
         "config_timeout": 600, "d3rlpy_threads": [1]}
PARTS = ("policy", "environment", "updates")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run on local/pendulum-mixed")
    parser.add_argument("--dataset", help="source/name (default local/hopper-medium-50k)")
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
    parser.add_argument("--d3rlpy-threads", nargs="+", type=int,
                        help="torch thread counts for d3rlpy (default: the cores available, then 1; "
                        "--quick: 1)")
    parser.add_argument("--config-timeout", type=float, help="seconds before a run is abandoned")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "online.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if os.sep in args.d3rlpy_python:  # it runs from a temporary folder
        args.d3rlpy_python = str(Path(args.d3rlpy_python).absolute())
    if "/" not in args.dataset:
        parser.error(f"--dataset takes source/name (e.g. local/hopper-medium-50k), not '{args.dataset}'")
    return args


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
    row = {"library": "offrl-jax", "algo": algo, "hidden": [width, width], "seeds": seeds,
           "block": block, "command": " ".join(command[1:])}
    error = _run(command, args.config_timeout)
    if error:
        return {**row, "error": error}
    results = json.loads((run_dir / "results.json").read_text())
    timings = results["timings"]["online"]
    utd = results["config"]["algo"]["online"]["updates_per_step"]
    return {**row, **split(timings, timings["env_steps"], seeds, utd), "timings": timings,
            "compile_seconds": results["online"]["compile_seconds"],
            "updates_per_second_per_seed_while_updating": results["online"]["updates_per_second_per_seed"]}


def run_d3rlpy(args, width: int, threads: int, data_file: Path, info) -> dict:
    command = [args.d3rlpy_python, "-m", "experiments.benchmark.d3rlpy_online", "--env", info.env_id,
               "--env-kwargs", json.dumps(info.env_kwargs or {}),
               "--max-episode-steps", str(info.max_episode_steps), "--dataset", str(data_file),
               "--hidden", str(width), str(width), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(threads), "--json"]
    row = {"library": "d3rlpy", "hidden": [width, width], "seeds": 1, "threads": threads}
    with tempfile.TemporaryDirectory() as cwd:  # d3rlpy writes a log folder into its cwd
        error, stdout = _run(command, args.config_timeout, cwd=cwd, output=True)
    if error:
        return {**row, "error": error}
    record = json.loads(stdout.strip().splitlines()[-1])
    return {**row, **split(record["timings"], record["env_steps"], 1), **record}


def _run(command: list[str], timeout: float, cwd=ROOT, output: bool = False):
    try:
        done = subprocess.run(command, cwd=cwd, env=subprocess_environment(), capture_output=True,
                              text=True, timeout=timeout)
        error = None if done.returncode == 0 else f"exit code {done.returncode}: {done.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        done, error = None, f"timed out after {timeout:.0f} s"
    return (error, done and done.stdout) if output else error


def d3rlpy_available(python: str) -> str | None:
    """None if d3rlpy imports in `python`, else why not."""
    try:
        probe = subprocess.run([python, "-c", "import d3rlpy"], capture_output=True, text=True,
                               timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python}: {error}"
    if probe.returncode:
        return (f"d3rlpy does not import in {python} (d3rlpy 2.8 pins gymnasium 1.0: install it in "
                "its own environment, see the README, and pass --d3rlpy-python)")
    return None


def comparisons(rows: list[dict]) -> list[dict]:
    """Ours over d3rlpy's one-seed environment steps per second, per width and d3rlpy thread
    count: at one seed (the same work), and our total over seeds."""
    ours = [r for r in rows if r["library"] == "offrl-jax" and r["algo"] == "iql" and "error" not in r]
    out = []
    for theirs in (r for r in rows if r["library"] == "d3rlpy" and "error" not in r):
        for row in (r for r in ours if r["hidden"] == theirs["hidden"]):
            out.append({"hidden": row["hidden"], "seeds": row["seeds"], "block": row["block"],
                        "d3rlpy_threads": theirs["threads"],
                        "per_seed": row["env_steps_per_second_per_seed"]
                        / theirs["env_steps_per_second_per_seed"],
                        "total": row["env_steps_per_second_total"]
                        / theirs["env_steps_per_second_per_seed"]})
    return out


def markdown(report: dict) -> str:
    meta, settings = report["meta"], report["settings"]
    lines = [f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), "
             f"JAX {meta['jax']} on {', '.join(meta['devices'])}; {', '.join(settings['algos'])} online "
             f"with IQL's settings on {settings['dataset']} "
             f"({report['environment']}), {settings['steps']:,} environment steps per seed, one "
             f"update per step, batch {settings['batch_size']}. Load average (1, 5, 15 min) "
             f"{meta['load_average_start']} at the start, {meta.get('load_average_end')} at the end "
             f"on {meta['cores_available']} cores. `python -m experiments.benchmark.online "
             f"{' '.join(meta['argv'])}`.", "",
             "| library | hidden | seeds | block / threads | env steps/s per seed | env steps/s total "
             "| policy | environment | updates | other | vs d3rlpy, per seed | vs d3rlpy, total |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = report["comparisons"]
    for row in report["results"]:
        setting = f"block {row['block']}" if "block" in row else f"{row['threads']} threads"
        library = f"{row['library']} {row['algo']}" if "algo" in row else row["library"]
        head = f"| {library} | {row['hidden'][0]}x2 | {row['seeds']} | {setting} "
        if "error" in row:
            lines.append(head + "| failed: see JSON | | | | | | | |")
            continue
        share = row["parts_fraction"]
        mine = [r for r in ratios if row.get("algo") == "iql" and r["hidden"] == row["hidden"]
                and r["seeds"] == row["seeds"] and r["block"] == row["block"]]
        lines.append(head + f"| {row['env_steps_per_second_per_seed']:,.1f} "
                     f"| {row['env_steps_per_second_total']:,.1f} "
                     + "".join(f"| {100 * share[part]:.0f}% " for part in (*PARTS, "other"))
                     + f"| {_ratios(mine, 'per_seed')} | {_ratios(mine, 'total')} |")
    if report["d3rlpy"].get("skipped"):
        lines += ["", f"d3rlpy skipped: {report['d3rlpy']['skipped']}."]
    lines += ["", "Environment steps/s exclude compilation (our first block) and the final "
              "evaluation and checkpoint; policy/environment/updates/other are shares of that time "
              "(other: preprocessing and storing transitions, bookkeeping). Ratios divide by "
              "d3rlpy's one-seed rate (one per d3rlpy thread setting, separated by /); d3rlpy "
              "trains one seed per process, so 'total' is what the same cores give ours when "
              "seeds are batched against d3rlpy running them one after another."]
    return "\n".join(lines) + "\n"


def _ratios(rows: list[dict], key: str) -> str:
    return " / ".join(f"{row[key]:.2f}x" for row in rows) or "–"


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from experiments.data import load

    raw, info = load(*args.dataset.split("/", 1))
    report = {"meta": {**machine_info(), "argv": argv},
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "environment": info.env_id, "dataset_transitions": raw.size, "results": []}
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
            jobs += [(run_d3rlpy, (args, w, t, data_file, info)) for w in args.widths
                     for t in args.d3rlpy_threads]
        for job, job_args in jobs:
            row = job(*job_args)
            report["results"].append(row)
            name = f"{row['library']} {row.get('algo', 'iql')}"
            print(f"{name:>20} {row['hidden'][0]:>4}x2 seeds={row['seeds']}: "
                  + (f"FAILED {row['error'][:300]}" if "error" in row else
                     f"{row['env_steps_per_second_per_seed']:,.1f} env steps/s per seed ("
                     + ", ".join(f"{part} {100 * share:.0f}%" for part, share
                                 in row["parts_fraction"].items()) + ")"), flush=True)
    report["comparisons"] = comparisons(report["results"])
    report["meta"]["load_average_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print("\n" + table + f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
