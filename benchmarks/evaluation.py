"""What an evaluation costs with many trainings, stepped on the main process or over worker processes.

    python -m benchmarks evaluation --out benchmarks/evaluation.json
    python -m benchmarks evaluation --preset quick --out /tmp/evaluation.json     # a smoke test

For each number of trainings N, `envs.evaluate` (the code a run evaluates with) runs N x `--episodes`
episodes of D4RL's Hopper-v4 (`d4rl/hopper-medium-v2`'s evaluation environment) with a fixed
tanh-linear policy in one batched numpy call per step, with each number of worker processes in
`--workers` (`eval.workers`; 1: one vector env on the main process). Every episode lasts exactly
`--steps` steps (the hopper does not terminate when it falls), so the figures compare like with like;
the seconds are the fastest of `--repeats` evaluations and include starting the workers and building
the environments. The returns of every worker count are checked to be the serial ones. Extrapolated:
the D4RL protocol's 1000-step episodes (the start-up counted once).
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from benchmarks.harness import command_line, cores

DATASET = ("d4rl", "hopper-medium-v2")
PROTOCOL_STEPS = 1000
PRESETS = {"full": {"trainings": [8, 32, 128], "episodes": 10, "steps": 100, "repeats": 2},
           "quick": {"trainings": [2], "episodes": 2, "steps": 5, "repeats": 1}}
DEFINITIONS = {
    "seconds": "The fastest of `repeats` evaluations, starting the workers and the environments included.",
    "startup_seconds": "The same evaluation with one-step episodes: workers, environments, reset, one step.",
    "protocol_seconds": "startup + seconds per step x 999: the D4RL protocol's 1000-step episodes.",
    "same_returns_as_first": "The returns equal those of the first worker count, exactly.",
}


def add_arguments(parser) -> None:
    parser.add_argument("--trainings", nargs="+", type=int)
    parser.add_argument("--episodes", type=int, help="episodes per training (D4RL: 10)")
    parser.add_argument("--steps", type=int, help="steps of every episode")
    parser.add_argument("--workers", nargs="+", help="worker counts (the first is the baseline) or auto; "
                        "default: 1, 2 and every core")
    parser.add_argument("--repeats", type=int)


def default_workers() -> list[int]:
    return sorted({1, 2, cores()})


def fixed_length_hopper(steps: int):
    """The D4RL hopper's evaluation environment with episodes of exactly `steps` steps."""
    import envs

    info = envs.lookup(*DATASET)
    return dataclasses.replace(info, max_episode_steps=steps,
                               eval_overrides={**info.eval_overrides, "terminate_when_unhealthy": False})


def linear_policy(observation_dim: int, action_dim: int):
    weights = np.random.default_rng(0).normal(size=(observation_dim, action_dim)) / np.sqrt(observation_dim)
    return lambda observations: np.tanh(observations @ weights)


def measure_one(trainings: int, workers, episodes: int, steps: int, repeats: int) -> tuple[dict, np.ndarray]:
    import envs

    policy = linear_policy(11, 3)
    seeds = envs.episode_seeds(range(trainings), 0, episodes)
    best, one_step, returns = float("inf"), float("inf"), None
    for _ in range(repeats):
        tic = time.perf_counter()
        returns = envs.evaluate(policy, fixed_length_hopper(steps), seeds, observation_dim=11,
                                workers=workers)
        best = min(best, time.perf_counter() - tic)
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


def rows(trainings: list[int], workers: list, episodes: int, steps: int, repeats: int) -> list[dict]:
    """Every (trainings, workers) measurement, each checked against the first worker count's returns."""
    out = []
    for count in trainings:
        first, serial = None, None
        for worker in workers:
            row, returns = measure_one(count, worker, episodes, steps, repeats)
            first, serial = first or row, returns if serial is None else serial
            row["same_returns_as_first"] = bool(np.array_equal(returns, serial))
            row["speedup_over_first"] = first["seconds"] / row["seconds"]
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def measure(args, report) -> None:
    workers = [w if w == "auto" else int(w) for w in args.workers] if args.workers else default_workers()
    report["rows"] = rows(args.trainings, workers, args.episodes, args.steps, args.repeats)


def table(measured: list[dict]) -> list[str]:
    lines = ["| trainings | environments | workers | seconds | start-up s | µs per env step | "
             "1000-step protocol s | speed-up | same returns |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    lines += [f"| {row['trainings']} | {row['environments']} | {row['workers']} | {row['seconds']:.2f} | "
              f"{row['startup_seconds']:.2f} | {row['microseconds_per_environment_step']:.1f} | "
              f"{row['protocol_seconds']:.1f} | {row['speedup_over_first']:.2f} | "
              f"{'yes' if row['same_returns_as_first'] else 'NO'} |" for row in measured]
    return lines


def describe(episodes: int, steps: int, repeats: int) -> str:
    return (f"D4RL Hopper-v4, {episodes} episodes per training of exactly {steps} steps, a tanh-linear "
            f"numpy policy; seconds: the fastest of {repeats} evaluation(s), start-up (workers, "
            "environments, reset, one step) included; speed-up: over the first worker count of the "
            "same size.")


def markdown(report: dict) -> str:
    meta, settings = report["meta"], report["settings"]
    return "\n".join([
        f"# Evaluation cost with many trainings on {meta['cores_available']} host cores", "",
        f"Measured {meta['date']}, `{command_line(report)}`; load average {meta['load_average_start']} "
        f"before, {meta.get('load_average_end', '?')} after (1, 5, 15 min). "
        f"{describe(settings['episodes'], settings['steps'], settings['repeats'])}", "",
        *table(report.get("rows", []))]) + "\n"
