"""Uni-O4 on this machine: each offline stage's updates per second (and the time its full step count
would take), BPPO updates per second for 4 members x 1 and 8 seeds, one AM-Q evaluation, at the code's
network sizes on synthetic data of HalfCheetah's shapes; and the online PPO phase's environment steps
per second in HalfCheetah-v4 (rollouts of 2048 steps, the halfcheetah-medium script's 30 epochs of
minibatches of 128) for 1 and 8 seeds, with where the time goes.

    python -m experiments.benchmark.unio4 --out benchmarks/unio4.json     # ~10 min on 2 busy cores

BPPO is timed without AM-Q (eval_step beyond the chunk) and AM-Q apart, at `--amq-length` model steps
(the code: 1000, linear in the length): BPPO's time per update is then update + AM-Q / eval_step.
Every timed program is compiled first (compile time reported apart) and run `--repeats` times; the
best is kept. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.core.algorithm import Spec
from algorithms.core.ppo import PPOConfig
from algorithms.core.replay import Transitions
from algorithms.unio4 import UniO4
from envs import Preprocessor
from experiments import loop, online
from experiments.benchmark.machine import load_average, machine_info
from experiments.stages import make_stage_chunk

OBSERVATION_DIM, ACTION_DIM = 17, 6


def synthetic_data(rows: int, seed: int = 0) -> Transitions:
    """Random transitions of HalfCheetah's shapes, episodes of 1000 steps ending in a timeout."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(rows + 1, OBSERVATION_DIM)).astype(np.float32)
    timeouts = (np.arange(rows) % 1000 == 999).astype(np.float32)
    return jax.device_put(Transitions(
        observations[:-1], rng.uniform(-1, 1, (rows, ACTION_DIM)).astype(np.float32),
        rng.normal(size=rows).astype(np.float32), observations[1:], np.zeros(rows, np.float32), timeouts,
        rng.normal(size=rows).astype(np.float32)))


def best_of(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - tic)
    return min(times)


def time_stage(stage, spec: Spec, data, length: int, repeats: int) -> dict:
    state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), spec, data)
    tic = time.perf_counter()
    chunk = make_stage_chunk(stage, length)
    compiled = chunk.lower(state, data, jax.random.key(1)).compile()
    compile_seconds = time.perf_counter() - tic
    holder = {"state": state}

    def call():
        holder["state"], _, metrics = compiled(holder["state"], data, jax.random.key(1))
        return metrics

    seconds = best_of(call, repeats)
    rate = length / seconds
    return {"stage": stage.name, "updates_per_second": rate, "compile_seconds": compile_seconds,
            "full_steps": stage.steps, "full_minutes": stage.steps / rate / 60}


def time_bppo(algo: UniO4, spec: Spec, ctx, seeds: int, length: int, repeats: int) -> dict:
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    states = loop.init_states(replace(algo, rollout_length=1), spec, ctx, keys)  # AM-Q: timed apart
    runner = loop.ChunkRunner(algo, "offline")
    tic = time.perf_counter()
    runner.compile(length, states, None, keys, ctx, None, None)
    compile_seconds = time.perf_counter() - tic
    holder = {"states": states, "keys": keys}

    def call():
        holder["states"], _, holder["keys"], metrics = runner(holder["states"], None, holder["keys"], ctx,
                                                              length, length)
        return metrics

    seconds = best_of(call, repeats)
    return {"seeds": seeds, "members": algo.num_members, "updates_per_second_per_seed": length / seconds,
            "updates_per_second_total": length * seeds / seconds, "compile_seconds": compile_seconds}


def time_amq(algo: UniO4, spec: Spec, ctx, seeds: int, repeats: int) -> dict:
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    states = loop.init_states(replace(algo, rollout_length=1), spec, ctx, keys)
    axes = loop.seed_axes(states)
    score = jax.jit(jax.vmap(lambda s, k: algo.amq(s.policies.params, s.normalizer, k, ctx),
                             in_axes=(axes, 0)))
    tic = time.perf_counter()
    compiled = score.lower(states, keys).compile()
    compile_seconds = time.perf_counter() - tic
    seconds = best_of(lambda: compiled(states, keys), repeats)
    return {"seeds": seeds, "rollout_length": algo.rollout_length, "rollout_batch": algo.rollout_batch,
            "seconds": seconds, "seconds_per_model_step": seconds / algo.rollout_length,
            "compile_seconds": compile_seconds}


def time_online(algo: UniO4, spec: Spec, results: dict, data, seeds: int, rollouts: int) -> dict:
    """Environment steps per second of the online phase: the hand-over, then `rollouts` + 1 rollouts
    per seed in HalfCheetah-v4 (the first, which compiles the policy and the update, not counted)."""
    prepared = loop.PreparedData(data, None)
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    states = loop.init_states(algo, spec, loop.make_context(algo, prepared, results, host={}), keys)
    ctx = loop.make_context(algo, prepared, results, "online", spec.total_steps, host={})
    states = loop.begin(algo, spec, ctx, states)
    steps = (rollouts + 1) * algo.online.block
    run = online.OnlineRun(states, loop.replay_buffers(loop.buffer_capacity(algo, 0, steps), spec, seeds),
                           keys)
    timings: dict = {}
    online.train_online(algo, ctx, Preprocessor.identity(OBSERVATION_DIM), lambda: gym.make("HalfCheetah-v4"),
                        online.OnlineSchedule(steps, eval_every=0, checkpoint_every=0, log_every=0),
                        list(range(seeds)), run, loop.ChunkRunner(algo, "online"), timings=timings)
    per_seed = timings["env_steps"] / timings["seconds"]
    return {"seeds": seeds, "rollout": algo.online.block, "epochs": algo.ppo.epochs,
            "minibatch": algo.ppo.minibatch_size, "env_steps_per_second_per_seed": per_seed,
            "env_steps_per_second_total": per_seed * seeds,
            **{f"{part}_seconds": timings[part] for part in ("policy", "environment", "updates")},
            "seconds": timings["seconds"], "env_steps": timings["env_steps"]}


def markdown(report: dict) -> str:
    lines = [f"Measured {report['machine']['date']} on {report['machine']['cpu_model']} "
             f"({report['machine']['cores_available']} cores), JAX {report['machine']['jax']} on "
             f"{report['machine']['devices'][0]}; load average {report['load_start']} at the start, "
             f"{report['load_end']} at the end (a shared machine: other jobs ran). `{report['command']}`. "
             f"Synthetic data: {report['rows']:,} transitions (obs {OBSERVATION_DIM}, act {ACTION_DIM}); "
             "the code's sizes: Q 2x1024, V 3x512, 4 policies 3x256, dynamics 7x(4x200), batch 512.", "",
             "| stage | updates/s | compile s | code's steps | minutes for them |",
             "|---|---:|---:|---:|---:|"]
    for row in report["stages"]:
        lines.append(f"| {row['stage']} | {row['updates_per_second']:.1f} | {row['compile_seconds']:.1f} | "
                     f"{row['full_steps']:,} | {row['full_minutes']:.1f} |")
    lines += ["", "| BPPO, members x seeds | updates/s per seed | updates/s total | compile s | "
              "AM-Q s (length) | AM-Q s at 1000 steps | updates/s per seed with AM-Q every 100 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for bppo, amq in zip(report["bppo"], report["amq"], strict=True):
        at_1000 = amq["seconds_per_model_step"] * 1000
        # one program step updates every seed once; one AM-Q scores every seed's members at once
        with_amq = 1.0 / (1.0 / bppo["updates_per_second_per_seed"] + at_1000 / 100)
        lines.append(f"| {bppo['members']} x {bppo['seeds']} | {bppo['updates_per_second_per_seed']:.1f} | "
                     f"{bppo['updates_per_second_total']:.1f} | {bppo['compile_seconds']:.1f} | "
                     f"{amq['seconds']:.1f} ({amq['rollout_length']}) | {at_1000:.0f} | {with_amq:.2f} |")
    lines += ["", "AM-Q scores every member of every seed at once (512 rollouts per member); its time at "
              "1000 steps is scaled linearly from the measured length. The last column is what a run "
              "with the code's eval_step 100 and rollout_step 1000 would reach. The dynamics' "
              "1,000,000 steps are its cap (max_steps); early stopping ends it sooner."]
    if report.get("online"):
        lines += ["", "| online PPO, seeds | env steps/s per seed | env steps/s total | policy s | "
                  "environment s | updates s | timed env steps per seed |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in report["online"]:
            lines.append(f"| {row['seeds']} | {row['env_steps_per_second_per_seed']:.0f} | "
                         f"{row['env_steps_per_second_total']:.0f} | {row['policy_seconds']:.1f} | "
                         f"{row['environment_seconds']:.1f} | {row['updates_seconds']:.1f} | "
                         f"{row['env_steps']:,} |")
        lines += ["", "Online: HalfCheetah-v4 on the host (one vector env of every seed, one batched policy "
                  "call per step), one PPO update per rollout of 2048 steps per seed (30 epochs x 16 "
                  "minibatches of 128, the halfcheetah-medium script's K); the first rollout, which "
                  "compiles, is not counted."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--stage-length", type=int, default=50)
    parser.add_argument("--bppo-length", type=int, default=50)
    parser.add_argument("--amq-length", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--online-rollouts", type=int, default=2,
                        help="timed online rollouts of 2048 steps per seed (0: no online rows)")
    parser.add_argument("--out", default="benchmarks/unio4.json")
    args = parser.parse_args(argv)
    report = {"machine": machine_info(), "load_start": load_average(), "rows": args.rows,
              "command": " ".join(["python -m experiments.benchmark.unio4", *(sys.argv[1:] if argv is None
                                                                               else argv)]), "stages": [],
              "bppo": [], "amq": [], "online": []}
    data = synthetic_data(args.rows)
    spec = Spec(OBSERVATION_DIM, ACTION_DIM, 10_000)
    algo = UniO4(termination="halfcheetah", eval_step=10 ** 9, rollout_length=args.amq_length)
    results = {}
    for stage in algo.stages(spec):
        report["stages"].append(time_stage(stage, spec, data, args.stage_length, args.repeats))
        print(report["stages"][-1], flush=True)
        state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), spec, data)
        if stage.finish is not None:
            state, _ = jax.jit(stage.finish)(state, jax.tree.map(lambda x: x[:1000], data))
        results[stage.name] = stage.result(state)
    ctx = loop.make_context(algo, loop.PreparedData(data, None), results, host={})
    for seeds in args.seeds:
        report["bppo"].append(time_bppo(algo, spec, ctx, seeds, args.bppo_length, args.repeats))
        report["amq"].append(time_amq(algo, spec, ctx, seeds, args.repeats))
        print(report["bppo"][-1], report["amq"][-1], flush=True)
    for seeds in args.seeds if args.online_rollouts else []:
        online_algo = replace(algo, rollout_length=1, ppo=PPOConfig(epochs=30))  # AM-Q: only in init here
        report["online"].append(time_online(online_algo, spec, results, data, seeds, args.online_rollouts))
        print(report["online"][-1], flush=True)
    report["load_end"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
