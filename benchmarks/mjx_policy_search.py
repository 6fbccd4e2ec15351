"""The search that found benchmarks/mjx_policies.json's fixed policies (benchmarks/mjx_scores.py).

    python -m benchmarks.mjx_policy_search hopper --seconds 120
    python -m benchmarks.mjx_policy_search halfcheetah --seconds 900 --horizon 250
    python -m benchmarks.mjx_policy_search ant --iterations 75 --horizon 300

Augmented random search (Mania, Guy and Recht 2018, "V2-t") of a linear policy on gymnasium's v5
environment of the robot (`envs.make_env` of the generated data): each iteration perturbs the matrix
in 8 random directions (noise 0.03), runs one episode with each sign, and steps (step size 0.02)
along the 4 best directions' return differences, scaled by their standard deviation; observations
are normalized by running statistics. Hopper's and Walker2d's returns are searched with the healthy
reward (1 per step) taken off, as the paper does, so that standing still earns nothing (not Ant's:
see HEALTHY_SHIFT).
Ant's policy reads only the first 27 observation values (`mjx_scores.POLICY_INPUTS`), so that its
weights run on v4's D4RL layout and v5's alike. Every 5
iterations the policy is written with the normalization folded in: `clip(observation @ weights +
bias, -1, 1)`. It stops after `--seconds` of wall time (on a shared machine, the iterations done
depend on the load: the file records how many).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.mjx_scores import POLICIES, POLICY_INPUTS, ROBOTS

DIRECTIONS, TOP, STEP_SIZE, NOISE = 8, 4, 0.02, 0.03
# Ant keeps its healthy reward: with it taken off, every step costs control, and the search learned
# to end episodes early (measured: 9-step episodes after 110 iterations)
HEALTHY_SHIFT = {"hopper": 1.0, "walker2d": 1.0, "halfcheetah": 0.0, "ant": 0.0}
ABOUT = ("Fixed deterministic linear policies action = clip(observation @ weights + bias, -1, 1), one per "
         "robot, for benchmarks/mjx_scores.py and tests/test_mjx.py: found on the shared development "
         "machine on 2026-12-06 by benchmarks/mjx_policy_search.py (augmented random search) on gymnasium's "
         "v5 environment, for a few minutes each; the same weights run on v4 (D4RL's). Not trained "
         "agents: policies that make the robot move. Ant's weights cover the observation's first 27 "
         "values (benchmarks/mjx_scores.POLICY_INPUTS), so that they run on v4's and v5's layouts alike.")


def search(robot: str, seconds: float, horizon: int, seed: int = 0,
           iterations_at_most: int | None = None) -> dict:
    import envs
    from envs.environment import make_env

    env = make_env(envs.lookup("local", f"{robot}-medium"))
    action_size = env.action_space.shape[0]
    # the policy's inputs: the first POLICY_INPUTS values (Ant), or the whole observation
    observation_size = POLICY_INPUTS.get(robot, env.observation_space.shape[0])
    rng = np.random.default_rng(seed)
    matrix = np.zeros((action_size, observation_size))
    mean, second_moment, count = np.zeros(observation_size), np.ones(observation_size), 1e-4
    visited = []

    def episode(candidate, std, episode_seed):
        observation, _ = env.reset(seed=int(episode_seed))
        observation = observation[:observation_size]
        total, shifted, steps = 0.0, 0.0, 0
        for _ in range(horizon):
            visited.append(observation)
            action = np.clip(candidate @ ((observation - mean) / std), -1.0, 1.0)
            observation, reward, terminated, truncated, _ = env.step(action)
            observation = observation[:observation_size]
            total, shifted = total + reward, shifted + reward - HEALTHY_SHIFT[robot]
            steps += 1
            if terminated or truncated:
                break
        return shifted, total, steps

    def folded(std):
        weights = (matrix / std).T
        return weights, -mean @ weights  # M @ ((x - mean) / std) = x @ weights - mean @ weights

    start, iterations, result = time.perf_counter(), 0, None
    def more():
        return time.perf_counter() - start < seconds and (iterations_at_most is None
                                                          or iterations < iterations_at_most)

    while more():
        std = np.sqrt(np.maximum(second_moment, 1e-8))
        directions = rng.normal(size=(DIRECTIONS, action_size, observation_size))
        seeds = rng.integers(1 << 30, size=DIRECTIONS)
        pairs = list(zip(directions, seeds, strict=True))
        plus = np.array([episode(matrix + NOISE * d, std, s)[0] for d, s in pairs])
        minus = np.array([episode(matrix - NOISE * d, std, s)[0] for d, s in pairs])
        best = np.argsort(-np.maximum(plus, minus))[:TOP]
        spread = np.concatenate([plus[best], minus[best]]).std() + 1e-8
        matrix = matrix + STEP_SIZE / (TOP * spread) * np.einsum(
            "i,ijk->jk", plus[best] - minus[best], directions[best])
        # running statistics: the second moment about the previous mean
        batch = np.array(visited)
        visited.clear()
        new_mean = (mean * count + batch.sum(0)) / (count + len(batch))
        second_moment = np.maximum(
            (second_moment * count + ((batch - mean) ** 2).sum(0)) / (count + len(batch)), 1e-8)
        mean, count = new_mean, count + len(batch)
        iterations += 1
        if iterations % 5 == 0:
            std = np.sqrt(np.maximum(second_moment, 1e-8))
            evaluation = [episode(matrix, std, 10_000 + k)[1:] for k in range(3)]
            visited.clear()
            weights, bias = folded(std)
            result = {"iterations": iterations, "horizon": horizon,
                      "search_evaluation": [{"return": round(r, 1), "steps": s} for r, s in evaluation],
                      "weights": np.round(weights, 6).tolist(), "bias": np.round(bias, 6).tolist()}
            print(json.dumps({"iterations": iterations, "seconds": round(time.perf_counter() - start),
                              "evaluation": result["search_evaluation"]}), flush=True)
    env.close()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("robot", choices=ROBOTS)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--horizon", type=int, default=1000, help="steps per search episode at most")
    parser.add_argument("--iterations", type=int, help="stop after this many iterations (a multiple of 5), "
                        "whatever the load; --seconds still bounds the time")
    parser.add_argument("--out", default=str(POLICIES), help="policies file to write")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.horizon < 1 or (args.iterations is not None and args.iterations < 5):
        parser.error("--seconds takes a number > 0, --horizon an integer >= 1 and --iterations one >= 5")
    result = search(args.robot, args.seconds, args.horizon, iterations_at_most=args.iterations)
    if result is None:
        parser.error(f"no policy after {args.seconds} s (fewer than 5 iterations): give it more --seconds")
    out = Path(args.out)
    policies = json.loads(out.read_text()) if out.exists() else {"about": ABOUT, "policies": {}}
    policies["policies"][args.robot] = result
    out.write_text(json.dumps(policies, indent=1) + "\n")


if __name__ == "__main__":
    main()
