"""Normalized scores of one fixed policy on gymnasium (the host evaluation environment) and on its MJX
copy (envs/mjx), 20 episodes each, compared with Welch's t-test (issue 26, part 2).

    python -m benchmarks mjx_scores                            # Hopper, Walker2d, HalfCheetah, Ant, v4 and v5
    python -m benchmarks mjx_scores --datasets d4rl/hopper-medium-v2 --episodes 20
    python -m benchmarks mjx_scores --preset quick --out /tmp/mjx_scores.json   # a smoke test

Both backends run each robot's fixed deterministic policy `clip(observation @ weights + bias, -1,
1)` (benchmarks/mjx_policies.json: linear policies found by random search on gymnasium's v5
environments, the same one for v4 and v5) over complete episodes, each backend with its own resets:
  * host: `envs.make_env` reset with `envs.environment.episode_seeds`, stepped by `run_episodes`, as
    evaluation does (float64, MuJoCo's C code);
  * mjx: one compiled program, `jax.vmap` over the episodes of `env.reset` (jax.random) and a
    `lax.scan` over `max_episode_steps` steps of the policy and `env.step`, in float32 (JAX's
    default, what an accelerator trains with); the return stops at the episode's termination or
    time limit.
Scores are D4RL's normalized scores, with D4RL's reference returns for v5 too (the generated data's
references are the data's own; a linear map of the return either way). The margin is Welch's
95% confidence interval of the difference of the two means; `agree` says it contains 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import command_line, table

POLICIES = Path(__file__).with_name("mjx_policies.json")
ROBOTS = ("hopper", "walker2d", "halfcheetah", "ant")
# Ant's policy reads the first 27 observation values (positions without x and y, velocities), not
# v5's 78 contact forces nor D4RL's 84 zeros after them, so that the same weights run on both layouts.
POLICY_INPUTS = {"ant": 27}
PRESETS = {
    "full": {"datasets": [f"{family}/{robot}-medium{suffix}" for robot in ROBOTS
                          for family, suffix in (("d4rl", "-v2"), ("local", ""))],
             "episodes": 20, "seed": 0},
    "quick": {"datasets": ["d4rl/hopper-medium-v2"], "episodes": 2, "seed": 0,
              "max_episode_steps": 5},
}
DEFINITIONS = {
    "host_scores": "Normalized score of every gymnasium episode (envs.make_env, episode_seeds).",
    "mjx_scores": "Normalized score of every MJX episode (float32, jax.random resets).",
    "difference": "Mean MJX score less mean host score.",
    "welch_ci95": "Welch's 95% confidence interval of the difference of the means.",
    "welch_p": "Welch's two-sided t-test p-value for equal means.",
    "agree": "The confidence interval contains 0.",
    "compile_seconds": "mjx: the first call of the program less a second, timed call.",
}


def add_arguments(parser) -> None:
    parser.add_argument("--datasets", nargs="+", help="source/name of each dataset whose environment runs")
    parser.add_argument("--episodes", type=int, help="episodes per backend")
    parser.add_argument("--seed", type=int, help="seeds both backends' resets")
    parser.add_argument("--max-episode-steps", type=int, help="shorter episodes (smoke tests)")


def check(args, parser) -> None:
    if args.episodes < 2:
        parser.error("--episodes takes an integer >= 2 (Welch's test needs two episodes per backend)")
    for dataset in args.datasets:
        if "/" not in dataset or dataset.split("/")[1].split("-")[0] not in ROBOTS:
            parser.error(f"--datasets takes source/name of a {', '.join(ROBOTS)} dataset, e.g. "
                         f"d4rl/hopper-medium-v2 (got '{dataset}')")


# -- the policy and the two backends ------------------------------------------------------------------


def load_policy(robot: str) -> tuple[np.ndarray, np.ndarray]:
    """The robot's fixed linear policy: weights (inputs, action) and bias (action,). It reads the
    observation's first `inputs` values (all of them but for Ant, `POLICY_INPUTS`)."""
    policy = json.loads(POLICIES.read_text())["policies"][robot]
    return np.asarray(policy["weights"]), np.asarray(policy["bias"])


def reference_info(info):
    """`info` with D4RL's reference returns (the generated data's own are in its metadata)."""
    import dataclasses

    from envs.registry import D4RL_REFERENCE

    low, high = D4RL_REFERENCE[info.name.split("-")[0]]
    return dataclasses.replace(info, ref_min_score=low, ref_max_score=high)


def host_returns(info, weights: np.ndarray, bias: np.ndarray, episodes: int, seed: int) -> np.ndarray:
    """One gymnasium episode per seed of `episode_seeds([seed], 0, episodes)`, as evaluation runs them."""
    from envs.environment import episode_seeds, make_env, run_episodes

    def policy(observations):
        return np.clip(observations[..., :weights.shape[0]] @ weights + bias, -1.0, 1.0)

    return run_episodes(policy, lambda: make_env(info), episode_seeds([seed], 0, episodes), workers=1)[0]


def mjx_program(env):
    """A jitted function of (weights, bias, keys): each key resets one environment, which the
    policy steps for `max_episode_steps` steps; the returns and lengths of the episodes."""
    import jax
    import jax.numpy as jnp

    steps = env.settings.max_episode_steps

    def episodes(weights, bias, keys):
        states = jax.vmap(env.reset)(keys)

        def one_step(carry, _):
            states, returns, lengths, running = carry
            actions = jnp.clip(states.observation[:, :weights.shape[0]] @ weights + bias, -1.0, 1.0)
            states = jax.vmap(env.step)(states, actions)
            returns = returns + jnp.where(running, states.reward, 0.0)
            lengths = lengths + running.astype(jnp.int32)
            running = running & ~(states.terminated | states.truncated)
            return (states, returns, lengths, running), None

        count = keys.shape[0]
        start = (states, jnp.zeros(count, states.reward.dtype), jnp.zeros(count, jnp.int32),
                 jnp.ones(count, bool))
        (_, returns, lengths, _), _ = jax.lax.scan(one_step, start, None, length=steps)
        return returns, lengths

    return jax.jit(episodes)


def mjx_returns(info, weights: np.ndarray, bias: np.ndarray, episodes: int, seed: int,
                timed: bool = False) -> dict:
    """`episodes` MJX episodes in float32 from resets drawn with jax.random.key(seed)."""
    import jax

    from envs.mjx import make_mjx_env

    env = make_mjx_env(info)
    program = mjx_program(env)
    arguments = (np.asarray(weights, np.float32), np.asarray(bias, np.float32),
                 jax.random.split(jax.random.key(seed), episodes))
    tic = time.perf_counter()
    returns, lengths = jax.block_until_ready(program(*arguments))
    first = time.perf_counter() - tic
    result = {"returns": np.asarray(returns, np.float64), "lengths": np.asarray(lengths)}
    if timed:
        tic = time.perf_counter()
        jax.block_until_ready(program(*arguments))
        result["seconds"] = time.perf_counter() - tic
        result["compile_seconds"] = max(first - result["seconds"], 0.0)
    return result


def welch(first: np.ndarray, second: np.ndarray) -> dict:
    """Welch's t-test of mean(second) - mean(first) and its 95% confidence interval."""
    from scipy import stats

    test = stats.ttest_ind(second, first, equal_var=False)
    interval = test.confidence_interval(0.95)
    return {"difference": float(np.mean(second) - np.mean(first)), "welch_p": float(test.pvalue),
            "welch_ci95": [float(interval.low), float(interval.high)]}


def compare(info, episodes: int, seed: int, timed: bool = False) -> dict:
    """Host and MJX normalized scores of the robot's fixed policy, and Welch's comparison."""
    from envs.environment import normalized_score

    scored = reference_info(info)
    weights, bias = load_policy(info.name.split("-")[0])
    host = normalized_score(host_returns(info, weights, bias, episodes, seed), scored)
    mjx = mjx_returns(info, weights, bias, episodes, seed, timed)
    row = {"dataset": info.key, "environment": info.env_id, "episodes": episodes,
           "host_scores": host.tolist(), "mjx_scores": normalized_score(mjx["returns"], scored).tolist(),
           "mjx_lengths": mjx["lengths"].tolist(),
           **{key: mjx[key] for key in ("seconds", "compile_seconds") if key in mjx}}
    row.update(welch(np.asarray(row["host_scores"]), np.asarray(row["mjx_scores"])))
    row["agree"] = bool(row["welch_ci95"][0] <= 0.0 <= row["welch_ci95"][1])
    return row


# -- the harness's measurement ------------------------------------------------------------------------


def measure(args, report) -> None:
    import dataclasses

    import envs

    report["rows"] = []
    for dataset in args.datasets:
        info = envs.lookup(*dataset.split("/", 1))
        if args.max_episode_steps:
            info = dataclasses.replace(info, max_episode_steps=args.max_episode_steps)
        row = compare(info, args.episodes, args.seed, timed=True)
        report["rows"].append(row)
        print(json.dumps({key: row[key] for key in ("dataset", "difference", "welch_ci95", "agree")}),
              flush=True)
        report.write()


def markdown(report: dict) -> str:
    meta = report["meta"]
    cells = []
    for row in report.get("rows", []):
        host, mjx = np.asarray(row["host_scores"]), np.asarray(row["mjx_scores"])
        low, high = row["welch_ci95"]
        cells.append([row["dataset"], row["environment"], f"{host.mean():.1f} ± {host.std(ddof=1):.1f}",
                      f"{mjx.mean():.1f} ± {mjx.std(ddof=1):.1f}", f"{row['difference']:+.1f}",
                      f"[{low:.1f}, {high:.1f}]", f"{row['welch_p']:.2f}",
                      "yes" if row["agree"] else "no", f"{row.get('compile_seconds', 0):.0f}"])
    return "\n".join([
        "# One fixed policy's normalized score: gymnasium (host) and MJX", "",
        f"Measured {meta['date']}, `{command_line(report)}`; {meta['cores_available']} host cores, load "
        f"average {meta['load_average_start']} before, {meta.get('load_average_end', '?')} after "
        "(1, 5, 15 min). Mean ± standard deviation over the episodes; the difference is MJX less host, "
        "with Welch's 95% confidence interval and p-value.", "",
        *table(["dataset", "environment", "host score", "MJX score", "difference", "Welch 95% CI",
                "p", "agree", "MJX compile s"], "llrrrrrlr", cells),
    ]) + "\n"
