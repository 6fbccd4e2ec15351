"""What an evaluation costs with many trainings, stepped on the main process or over worker processes.

    python -m experiments.benchmark.evaluation --out benchmarks/evaluation.json   # .md beside it
    python -m experiments.benchmark.evaluation --trainings 2 --episodes 2 --steps 5 --workers 1 2 \\
        --out /tmp/evaluation.json                                                # a smoke test

For each number of trainings N, `envs.evaluate` (the code a run evaluates with) runs N x `--episodes`
episodes of D4RL's Hopper-v4 (`d4rl/hopper-medium-v2`'s evaluation environment) with a fixed tanh-
linear policy in one batched numpy call per step, with each number of worker processes in
`--workers` (`eval.workers`; 1: one vector env on the main process). Every episode lasts exactly
`--steps` steps (the hopper does not terminate when it falls), so the figures compare like with
like; the seconds are the fastest of `--repeats` evaluations (the machine may be shared) and
include starting the workers and building the environments. The returns of every worker count are
checked to be the serial ones. Extrapolated: the D4RL protocol's 1000-step episodes (the start-up
counted once). The load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import envs

DATASET = ("d4rl", "hopper-medium-v2")
PROTOCOL_STEPS = 1000


def fixed_length_hopper(steps: int) -> envs.DatasetInfo:
    """The D4RL hopper's evaluation environment with episodes of exactly `steps` steps."""
    info = envs.lookup(*DATASET)
    return dataclasses.replace(info, max_episode_steps=steps,
                               eval_overrides={**info.eval_overrides, "terminate_when_unhealthy": False})


def linear_policy(observation_dim: int, action_dim: int):
    weights = np.random.default_rng(0).normal(size=(observation_dim, action_dim)) / np.sqrt(observation_dim)
    return lambda observations: np.tanh(observations @ weights)


def measure(trainings: int, workers: int, episodes: int, steps: int, repeats: int) -> tuple[dict, np.ndarray]:
    info = fixed_length_hopper(steps)
    policy = linear_policy(11, 3)
    seeds = envs.episode_seeds(range(trainings), 0, episodes)
    best, one_step, returns = float("inf"), float("inf"), None
    for _ in range(repeats):
        tic = time.perf_counter()
        returns = envs.evaluate(policy, info, seeds, observation_dim=11, workers=workers)
        best = min(best, time.perf_counter() - tic)
        # the start-up: starting the workers, building and resetting the environments, one step
        tic = time.perf_counter()
        envs.evaluate(policy, fixed_length_hopper(1), seeds, observation_dim=11, workers=workers)
        one_step = min(one_step, time.perf_counter() - tic)
    per_step = max(best - one_step, 0.0) / max(steps - 1, 1)
    environments = trainings * episodes
    return {"trainings": trainings, "episodes_per_training": episodes, "environments": environments,
            "workers": envs.worker_count(workers, environments), "steps": steps, "seconds": best,
            "startup_seconds": one_step, "seconds_per_step": per_step,
            "microseconds_per_environment_step": 1e6 * per_step / environments,
            "protocol_seconds": one_step + per_step * (PROTOCOL_STEPS - 1)}, returns


def run(trainings: list[int], workers: list, episodes: int, steps: int, repeats: int) -> list[dict]:
    rows = []
    for count in trainings:
        first, serial = None, None
        for worker in workers:
            row, returns = measure(count, worker, episodes, steps, repeats)
            first, serial = first or row, returns if serial is None else serial
            row["same_returns_as_first"] = bool(np.array_equal(returns, serial))
            row["speedup_over_first"] = first["seconds"] / row["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| trainings | environments | workers | seconds | start-up s | µs per env step | "
             "1000-step protocol s | speed-up | same returns |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for row in rows:
        lines.append(f"| {row['trainings']} | {row['environments']} | {row['workers']} | "
                     f"{row['seconds']:.2f} | {row['startup_seconds']:.2f} | "
                     f"{row['microseconds_per_environment_step']:.1f} | "
                     f"{row['protocol_seconds']:.1f} | {row['speedup_over_first']:.2f} | "
                     f"{'yes' if row['same_returns_as_first'] else 'NO'} |")
    return lines


def describe(report: dict) -> str:
    return (f"D4RL Hopper-v4, {report['episodes']} episodes per training of exactly {report['steps']} "
            "steps, a tanh-linear numpy policy; seconds: the fastest of "
            f"{report['repeats']} evaluation(s), start-up (workers, environments, reset, one step) "
            "included; speed-up: over the first worker count of the same size.")


def markdown(report: dict) -> str:
    lines = [f"# Evaluation cost with many trainings on {report['cores']} host cores", "",
             f"Measured {report['date']}, command `{report['command']}`; load average "
             f"{report['load_before']} before, {report['load_after']} after (1, 5, 15 min). "
             f"{describe(report)}", "", *table(report["rows"])]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainings", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--episodes", type=int, default=10, help="episodes per training (D4RL: 10)")
    parser.add_argument("--steps", type=int, default=100, help="steps of every episode")
    parser.add_argument("--workers", nargs="+", default=None,
                        help="worker counts (the first is the baseline); default: 1, 2 and every core")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/evaluation.json", help="JSON path; .md beside it")
    return parser.parse_args(argv)


def default_workers() -> list[int]:
    return sorted({1, 2, len(os.sched_getaffinity(0))})


def main(argv=None) -> dict:
    args = parse_args(argv)
    workers = [w if w == "auto" else int(w) for w in args.workers] if args.workers else default_workers()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["python -m experiments.benchmark.evaluation",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "cores": len(os.sched_getaffinity(0)), "episodes": args.episodes, "steps": args.steps,
              "repeats": args.repeats, "load_before": [round(x, 2) for x in os.getloadavg()]}
    report["rows"] = run(args.trainings, workers, args.episodes, args.steps, args.repeats)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
