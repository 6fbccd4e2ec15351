"""Environment steps per second: gymnasium's MuJoCo (C, on the host) against its MJX copy (envs/mjx).

    python -m benchmarks mjx                                   # this CPU: 1, 8 and 64 environments
    benchmarks/mjx_gpu.sh                                      # one accelerator: 1 to 4096 (preset gpu)
    python -m benchmarks mjx --preset quick --out /tmp/mjx.json          # a smoke test

For each number of environments N, both backends run the dataset's evaluation environment (default
D4RL's Hopper-v4) closed-loop with the same fixed tanh-linear policy,
every episode stepped on through terminations so that both do the same work:
  * host: N `envs.make_env` environments, one batched numpy policy call and N `env.step` per step
    (what evaluation and the online phase's host backend do on one process);
  * mjx: `jax.jit` of a `lax.scan` over `--steps` steps of the policy and `jax.vmap(env.step)`, all
    N environments in one program (float32, JAX's default); compile seconds are reported apart.
Seconds are the fastest of `--repeats` runs after the compiling one. The host is skipped above
`--host-max-environments`. No new configuration starts after `--budget` seconds.
"""

from __future__ import annotations

import json
import time

import numpy as np

from benchmarks.harness import command_line, table

PRESETS = {
    "full": {"dataset": "d4rl/hopper-medium-v2", "environments": [1, 8, 64], "steps": 200,
             "host_steps": 200, "repeats": 2, "host_max_environments": 64, "budget": 1800.0},
    "gpu": {"dataset": "d4rl/hopper-medium-v2", "environments": [1, 8, 64, 512, 4096],
            "steps": 1000, "host_steps": 200, "repeats": 3, "host_max_environments": 64, "budget": 360.0},
    "quick": {"dataset": "d4rl/hopper-medium-v2", "environments": [2], "steps": 3, "host_steps": 3,
              "repeats": 1, "host_max_environments": 2, "budget": 600.0},
}
DEFINITIONS = {
    "env_steps_per_second": "Environment steps of all N environments per second, the policy included.",
    "compile_seconds": "mjx: the first call (compiling the scan of steps) less a timed run.",
    "reset_compile_seconds": "mjx: compiling and running `jax.vmap(env.reset)` once.",
    "seconds": "The fastest of `repeats` runs of `steps` steps of all N environments.",
}


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", help="source/name whose evaluation environment is stepped")
    parser.add_argument("--environments", nargs="+", type=int, help="numbers of environments N")
    parser.add_argument("--steps", type=int, help="mjx: steps per compiled call")
    parser.add_argument("--host-steps", type=int, help="host: steps timed")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--host-max-environments", type=int)
    parser.add_argument("--budget", type=float, help="seconds after which no configuration starts")


def check(args, parser) -> None:
    if any(n < 1 for n in args.environments) or args.steps < 1 or args.host_steps < 1 or args.repeats < 1:
        parser.error("--environments, --steps, --host-steps and --repeats take integers >= 1")
    if "/" not in args.dataset:
        parser.error(f"--dataset takes source/name, e.g. d4rl/hopper-medium-v2 (got '{args.dataset}')")


def info_of(dataset: str):
    import envs

    return envs.lookup(*dataset.split("/", 1))


def policy_weights(observation_dim: int, action_dim: int) -> np.ndarray:
    """The fixed policy tanh(observation @ weights) both backends run."""
    return np.random.default_rng(0).normal(size=(observation_dim, action_dim)) / np.sqrt(observation_dim)


def measure_host(info, count: int, steps: int, repeats: int) -> dict:
    import warnings

    from envs.environment import make_env

    environments = [make_env(info) for _ in range(count)]
    first = environments[0]
    weights = policy_weights(first.observation_space.shape[0], first.action_space.shape[0])
    best = float("inf")
    with warnings.catch_warnings():  # stepping on after a termination is deliberate
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            observations = np.stack([env.reset(seed=i)[0] for i, env in enumerate(environments)])
            tic = time.perf_counter()
            for _ in range(steps):
                actions = np.tanh(observations @ weights)
                observations = np.stack([env.step(action)[0]
                                         for env, action in zip(environments, actions, strict=True)])
            best = min(best, time.perf_counter() - tic)
    for env in environments:
        env.close()
    return {"backend": "host", "environments": count, "steps": steps, "seconds": best,
            "env_steps_per_second": count * steps / best}


def measure_mjx(info, count: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from envs.mjx import make_mjx_env

    env = make_mjx_env(info)
    weights = jnp.asarray(policy_weights(env.observation_size, env.action_size), jnp.float32)
    tic = time.perf_counter()
    states = jax.block_until_ready(jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), count)))
    reset_seconds = time.perf_counter() - tic

    def one_step(state, _):
        return jax.vmap(env.step)(state, jnp.tanh(state.observation @ weights)), None

    run = jax.jit(lambda state: jax.lax.scan(one_step, state, None, length=steps)[0])
    tic = time.perf_counter()
    jax.block_until_ready(run(states))
    first = time.perf_counter() - tic
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(run(states))
        best = min(best, time.perf_counter() - tic)
    return {"backend": "mjx", "environments": count, "steps": steps, "seconds": best,
            "env_steps_per_second": count * steps / best, "compile_seconds": max(first - best, 0.0),
            "reset_compile_seconds": reset_seconds, "device": str(jax.devices()[0])}


def measure(args, report) -> None:
    info = info_of(args.dataset)
    report["environment"] = info.env_id
    report["rows"] = []
    start = time.perf_counter()
    for count in args.environments:
        for backend in ("host", "mjx"):
            if time.perf_counter() - start > args.budget:
                report["stopped_at_budget"] = {"backend": backend, "environments": count}
                return
            if backend == "host" and count > args.host_max_environments:
                continue
            row = (measure_host(info, count, args.host_steps, args.repeats) if backend == "host"
                   else measure_mjx(info, count, args.steps, args.repeats))
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            report.write()


def markdown(report: dict) -> str:
    meta, settings = report["meta"], report["settings"]
    rows = report.get("rows", [])
    host = {row["environments"]: row["env_steps_per_second"] for row in rows if row["backend"] == "host"}
    cells = []
    for row in (row for row in rows if row["backend"] == "mjx"):
        base = host.get(row["environments"])
        speed = row["env_steps_per_second"]
        cells.append([row["environments"], f"{base:.0f}" if base else "-", f"{speed:.0f}",
                      f"{speed / base:.2f}" if base else "-",
                      f"{row['compile_seconds']:.1f}", f"{row['reset_compile_seconds']:.1f}"])
    device = next((row["device"] for row in rows if "device" in row), meta["backend"])
    stopped = report.get("stopped_at_budget")
    return "\n".join([
        f"# Environment steps per second: gymnasium (host) and MJX ({device})", "",
        f"Measured {meta['date']}, `{command_line(report)}`; {report.get('environment')}, "
        f"{meta['cores_available']} host cores, load average {meta['load_average_start']} before, "
        f"{meta.get('load_average_end', '?')} after (1, 5, 15 min). MJX: {settings['steps']} steps per "
        f"compiled call, host: {settings['host_steps']} steps; the fastest of {settings['repeats']} runs; "
        "a tanh-linear policy in the loop on both.", "",
        *table(["environments", "host steps/s", "MJX steps/s", "MJX / host", "MJX compile s",
                "MJX reset compile s"], "rrrrrr", cells),
        *(["", f"Stopped at the {settings['budget']:.0f} s budget before {stopped}."] if stopped else []),
    ]) + "\n"
