"""Learning parity of the compiled online phase (issue 26, part 5): IQL fine-tuned with
`env.backend=host` (gymnasium's MuJoCo on the host, the reference) and with `env.backend=mjx` (the
MJX copy of the model, environment steps and updates in one compiled program), same settings, same
seeds, the same number of environment steps; do their online scores differ by more than noise?

    python -m benchmarks mjx_hopper_parity                       # Hopper: local/hopper-medium-50k
    python -m benchmarks mjx_hopper_parity --preset quick --out /tmp/parity.json   # Pendulum, a smoke test

Each backend is one training command (`python -m experiments.train algo=iql ... env.backend=<b>`),
in its own process; `--parallel` runs the two side by side (on a CPU, MJX spends most of its first
minutes compiling on one core while the host run uses another). The offline phase is the same
program with the same seeds and settings in both, so both start fine-tuning from the same
parameters (the report checks that the offline scores agree seed by seed). Evaluation is the host's
in both (the dataset's gymnasium environment), so the scores measure the same thing. Reported per
backend: each seed's offline score and online evaluation scores, the final and the best online score
(mean ± std over seeds), Welch's t-test between the backends on both, wall and compile seconds, and
the load average sampled while training.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, command_line, load_average, subprocess_environment, table
from benchmarks.mjx_scores import welch

PRESETS = {
    # IQL at 64 wide (256 makes the host's updates the whole cost: docs/speed.md), 3 seeds; one
    # compiled chunk length (online.log_every = 1000 = 100 blocks of 10) so MJX compiles one program.
    "full": {"dataset": "local/hopper-medium-50k", "first_seed": 0, "seeds": 3, "hidden": 64,
             "offline_steps": 20000, "online_steps": 20000, "eval_every": 5000, "episodes": 10, "block": 10,
             "parallel": False, "timeout": 5400.0},
    "quick": {"dataset": "local/pendulum-medium", "first_seed": 0, "seeds": 2, "hidden": 32,
              "offline_steps": 200, "online_steps": 400, "eval_every": 200, "episodes": 2, "block": 10,
              "parallel": False, "timeout": 900.0},
}
DEFINITIONS = {
    "offline_score": "Normalized score of each seed's deterministic policy after the offline steps "
                     "(the same program on both backends).",
    "online_final_score": "Normalized score at the last online evaluation (online_steps environment steps); "
                          "mean ± std over seeds, std with ddof 0 as the training command prints it.",
    "online_best_score": "The highest of a seed's online evaluations.",
    "welch": "Welch's t-test over the seeds' scores (benchmarks/mjx_scores.welch): mean(mjx) - mean(host), "
             "two-sided p and the 95% confidence interval of the difference.",
    "wall_seconds": "The training command's wall time: data loading, offline phase, compiling, online "
                    "phase and every evaluation.",
    "online_compile_seconds": "Compiling the online phase's programs (results.json online.compile_seconds; "
                              "MJX: the chunk program, not the first reset).",
    "online_seconds": "The online phase after its first chunk (results.json timings.online.seconds), "
                      "evaluations included; env_steps_timed says how many steps it covers.",
    "load_average": "1-minute load average sampled every 30 s while the backend trained (min, max).",
}


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", help="source/name with a compiled environment (local/hopper-*, ...)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--first-seed", type=int, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--hidden", type=int, help="width of IQL's two hidden layers")
    parser.add_argument("--offline-steps", type=int)
    parser.add_argument("--online-steps", type=int, help="environment steps per seed")
    parser.add_argument("--eval-every", type=int, help="online environment steps between evaluations")
    parser.add_argument("--episodes", type=int, help="evaluation episodes per seed")
    parser.add_argument("--block", type=int, help="algo.online.block (steps, then as many updates)")
    parser.add_argument("--parallel", action="store_true", default=None, help="train both backends at once")
    parser.add_argument("--timeout", type=float, help="seconds before a backend's command is killed")
    parser.add_argument("--runs", type=Path, help="folder of the two run folders (default: beside --out)")


def check(args, parser) -> None:
    if min(args.first_seed + 1, args.seeds, args.hidden, args.offline_steps, args.online_steps,
           args.eval_every, args.episodes, args.block) < 1:
        parser.error("--first-seed takes an integer >= 0; --seeds, --hidden, --offline-steps, "
                     "--online-steps, --eval-every, --episodes and --block take integers >= 1")
    if args.online_steps % args.eval_every or args.eval_every % args.block:
        parser.error(f"--online-steps ({args.online_steps}) must be a multiple of --eval-every "
                     f"({args.eval_every}), and that of --block ({args.block}): the compiled phase "
                     "runs whole blocks between evaluations")
    if "/" not in args.dataset:
        parser.error(f"--dataset takes source/name, e.g. local/hopper-medium-50k (got '{args.dataset}')")


def overrides(args, backend: str) -> list[str]:
    """The training command's settings: identical for both backends but `env.backend`; both
    evaluate on the host (`eval.backend=host`), so that only the learning differs."""
    log_every = min(1000, args.eval_every)  # one chunk length: one compiled program
    return ["algo=iql", f"dataset={args.dataset}", f"seed={args.first_seed}", f"seeds={args.seeds}",
            f"algo.hidden_dims=[{args.hidden},{args.hidden}]", f"steps={args.offline_steps}",
            f"log_every={min(1000, args.offline_steps)}", f"eval.every={args.offline_steps}",
            f"eval.episodes={args.episodes}", f"online.steps={args.online_steps}",
            f"online.eval_every={args.eval_every}", f"online.log_every={log_every}",
            f"online.episodes={args.episodes}", f"algo.online.block={args.block}",
            f"env.backend={backend}", "eval.backend=host"]


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds until stopped."""

    def __init__(self, every: float = 30.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [load_average()[0]], threading.Event()

    def run(self):
        while not self.done.wait(self.every):
            self.samples.append(load_average()[0])

    def stop(self) -> list[float]:
        self.done.set()
        self.samples.append(load_average()[0])
        return [min(self.samples), max(self.samples)]


def start(args, backend: str, runs: Path) -> dict:
    run_dir = runs / backend
    command = [sys.executable, "-m", "experiments.train", *overrides(args, backend),
               f"hydra.run.dir={run_dir}", "resume=false"]
    log = (runs / f"{backend}.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=subprocess_environment(), stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    print(f"    {backend}: started {' '.join(command[1:])}", file=sys.stderr, flush=True)
    return {"backend": backend, "run_dir": run_dir, "process": process, "log": log,
            "started": time.perf_counter(), "sampler": LoadSampler(), "command": " ".join(command[1:])}


def finish(args, job: dict) -> dict:
    job["sampler"].start()
    try:
        code = job["process"].wait(timeout=max(1.0, args.timeout - (time.perf_counter() - job["started"])))
    except subprocess.TimeoutExpired:
        job["process"].kill()
        job["process"].wait()
        code = None
    wall = time.perf_counter() - job["started"]
    job["log"].close()
    row = {"backend": job["backend"], "command": job["command"], "wall_seconds": wall,
           "load_average": job["sampler"].stop(), "run_dir": str(job["run_dir"])}
    if code != 0:
        why = f"timed out after {args.timeout:.0f} s" if code is None else f"exit code {code}"
        tail = (job["run_dir"].parent / f"{job['backend']}.log").read_text()[-3000:]
        return {**row, "error": f"{why}; log tail: {tail}"}
    results = json.loads((job["run_dir"] / "results.json").read_text())
    timings = results["timings"]["online"]
    row.update(
        seeds=[seed["seed"] for seed in results["seeds"]],
        offline_score=[seed["offline_score"] for seed in results["seeds"]],
        online_final_score=[seed["online_final_score"] for seed in results["seeds"]],
        online_best_score=[seed["online_best_score"] for seed in results["seeds"]],
        online_evaluation_scores=[seed["online_evaluation_scores"] for seed in results["seeds"]],
        offline_compile_seconds=results["compile_seconds"],
        online_compile_seconds=results["online"]["compile_seconds"],
        online_seconds=timings.get("seconds"), env_steps_timed=timings.get("env_steps"),
        online_evaluation_seconds=timings.get("evaluation"),
        online_updates_per_second_per_seed=results["online"]["updates_per_second_per_seed"])
    print(f"    {job['backend']}: {json.dumps({k: v for k, v in row.items() if k != 'command'})}",
          file=sys.stderr, flush=True)
    return row


def measure(args, report) -> None:
    runs = Path(args.runs or args.out.with_suffix("").as_posix() + "-runs")
    runs.mkdir(parents=True, exist_ok=True)
    report["overrides"] = overrides(args, "<backend>")
    report["rows"] = []
    backends = ("host", "mjx")
    if args.parallel:
        jobs = [start(args, backend, runs) for backend in backends]
        rows = [finish(args, job) for job in jobs]
    else:
        rows = [finish(args, start(args, backend, runs)) for backend in backends]
    report["rows"] = rows
    done = {row["backend"]: row for row in rows if "error" not in row}
    if len(done) == 2:
        host, mjx = done["host"], done["mjx"]
        report["same_offline_scores"] = bool(np.allclose(host["offline_score"], mjx["offline_score"]))
        report["welch"] = {key: welch(np.asarray(host[key]), np.asarray(mjx[key]))
                           for key in ("online_final_score", "online_best_score")}
    report.write()


def _each(values: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in values)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def markdown(report: dict) -> str:
    meta, settings = report["meta"], report["settings"]
    rows = report.get("rows", [])
    cells, errors = [], []
    for row in rows:
        if "error" in row:
            errors.append(f"- {row['backend']}: {row['error'][:500]}")
            continue
        cells.append([row["backend"], _each(row["offline_score"]),
                      _each(row["online_final_score"]), _mean_std(row["online_final_score"]),
                      _each(row["online_best_score"]), _mean_std(row["online_best_score"]),
                      f"{row['wall_seconds']:.0f}", f"{row['online_compile_seconds']:.0f}",
                      f"{row['online_seconds']:.0f} ({row['env_steps_timed']})",
                      "–".join(f"{x:.1f}" for x in row["load_average"])])
    curves = [f"- {row['backend']}, seed {seed}: " + ", ".join(f"{score:.1f}" for score in scores.values())
              for row in rows if "error" not in row
              for seed, scores in zip(row["seeds"], row["online_evaluation_scores"], strict=True)]
    tests = [f"- {key}: mjx − host = {w['difference']:+.1f} (95% CI {w['welch_ci95'][0]:+.1f} to "
             f"{w['welch_ci95'][1]:+.1f}), Welch's p = {w['welch_p']:.2f}"
             for key, w in report.get("welch", {}).items()]
    first, seeds = settings["first_seed"], settings["seeds"]
    return "\n".join([
        f"# Learning parity: IQL fine-tuned with env.backend=host and =mjx ({settings['dataset']})", "",
        f"Measured {meta['date']}, `{command_line(report)}`; {meta['cores_available']} host cores, "
        f"load average {meta['load_average_start']} before, {meta.get('load_average_end', '?')} after "
        f"(1, 5, 15 min); backends {'side by side' if settings['parallel'] else 'one after the other'}. "
        f"{seeds} seeds ({first} to {first + seeds - 1}), hidden {settings['hidden']}×2, "
        f"{settings['offline_steps']} offline steps, then {settings['online_steps']} environment steps "
        f"per seed (algo.online.block={settings['block']}), evaluated every {settings['eval_every']} "
        f"with {settings['episodes']} episodes (the host's evaluation on both).", "",
        *table(["backend", "offline score per seed", "online final per seed", "final mean ± std",
                "online best per seed", "best mean ± std", "wall s", "online compile s",
                "online s (env steps timed)", "load"], "lllrlrrrrr", cells),
        "", f"Same offline scores on both backends: {report.get('same_offline_scores')}.",
        *tests, "", f"Online evaluations (every {settings['eval_every']} environment steps):", *curves,
        *(["", "Failed:", *errors] if errors else []),
    ]) + "\n"
