"""Uni-O4 on this machine: each offline stage's updates per second (and the time its full step count
would take), BPPO updates per second for 4 members x each seed count, one AM-Q evaluation, at the
code's network sizes on synthetic data of HalfCheetah's shapes; and the online PPO phase's
environment steps per second in the dataset's HalfCheetah (rollouts of 2048 steps, the
halfcheetah-medium script's 30 epochs of minibatches of 128), with where the time goes.

    python -m benchmarks unio4 --out benchmarks/unio4.json            # ~10 min on 2 busy cores
    python -m benchmarks unio4 --preset quick --out /tmp/unio4.json   # a smoke test

BPPO is timed without AM-Q (eval_step beyond the chunk) and AM-Q apart, at `--amq-length` model steps
(the code: 1000, linear in the length): BPPO's time per update is then update + AM-Q / eval_step.
Every timed program is compiled first (compile time apart) and run `--repeats` times; the best is kept.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import timing
from benchmarks.harness import command_line, table

PRESETS = {"full": {"rows": 100_000, "stage_length": 50, "bppo_length": 50, "amq_length": 20, "seeds": [1, 8],
                    "repeats": 2, "online_rollouts": 2},
           "quick": {"rows": 4000, "stage_length": 2, "bppo_length": 2, "amq_length": 2, "seeds": [1],
                     "repeats": 1, "online_rollouts": 0}}
DEFINITIONS = {
    "stages.updates_per_second": "A stage's compiled chunk of stage_length steps, the best of `repeats`.",
    "bppo.updates_per_second_per_seed": "ChunkRunner calls of bppo_length updates (no AM-Q); the best.",
    "amq.seconds": "One AM-Q scoring of every member of every seed at amq_length model steps; the best.",
    "online": ("The online phase after the hand-over: online_rollouts timed rollouts per seed, after one "
               "that compiles."),
}


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, help="synthetic transitions")
    parser.add_argument("--stage-length", type=int)
    parser.add_argument("--bppo-length", type=int)
    parser.add_argument("--amq-length", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--online-rollouts", type=int, help="timed online rollouts of 2048 steps per seed "
                        "(0: no online rows)")


def best_of(call, repeats: int) -> float:
    import jax

    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - tic)
    return min(times)


def time_stage(stage, run, length: int, repeats: int) -> tuple[object, dict]:
    """A stage's compiled chunk timed; its result after init (and finish): enough to start BPPO."""
    import jax

    from experiments.stages import make_stage_chunk

    data = run.prepared.data
    state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), run.spec, data)
    tic = time.perf_counter()
    compiled = make_stage_chunk(stage, length).lower(state, data, jax.random.key(1)).compile()
    compile_seconds = time.perf_counter() - tic
    holder = {"state": state}  # the chunk donates its state: each call continues from the last

    def call():
        holder["state"], _, metrics = compiled(holder["state"], data, jax.random.key(1))
        return metrics

    rate = length / best_of(call, repeats)
    state = holder["state"]
    if stage.finish is not None:
        state, _ = jax.jit(stage.finish)(state, jax.tree.map(lambda x: x[:1000], data))
    return stage.result(state), {"stage": stage.name, "updates_per_second": rate,
                                 "compile_seconds": compile_seconds, "full_steps": stage.steps,
                                 "full_minutes": stage.steps / rate / 60}


def time_bppo(run, results: dict, seeds: int, length: int, repeats: int) -> dict:
    from experiments import loop

    algo = run.algo
    run.algo = replace(algo, rollout_length=1)  # the AM-Q of the initialisation: timed apart
    timing.start(run, results, seeds)
    run.algo = algo
    runner = loop.ChunkRunner(algo, "offline")
    _, compiled = timing.compile_program(runner, length, run)
    seconds = min(timing.time_calls(runner, run, length, repeats))
    return {"seeds": seeds, "members": algo.num_members, "updates_per_second_per_seed": length / seconds,
            "updates_per_second_total": length * seeds / seconds,
            "compile_seconds": compiled["total_seconds"]}


def time_amq(run, seeds: int, repeats: int) -> dict:
    """AM-Q on the states time_bppo left in `run`."""
    import jax

    from experiments import loop

    algo = run.algo
    score = jax.jit(jax.vmap(lambda s, k, c: algo.amq(s.policies.params, s.normalizer, k, c),
                             in_axes=(loop.seed_axes(run.states), 0, loop.context_axes(run.ctx))))
    tic = time.perf_counter()
    compiled = score.lower(run.states, run.keys, run.ctx).compile()
    compile_seconds = time.perf_counter() - tic
    seconds = best_of(lambda: compiled(run.states, run.keys, run.ctx), repeats)
    return {"seeds": seeds, "rollout_length": algo.rollout_length, "rollout_batch": algo.rollout_batch,
            "seconds": seconds, "seconds_per_model_step": seconds / algo.rollout_length,
            "compile_seconds": compile_seconds}


def time_online(run, results: dict, seeds: int, rollouts: int) -> dict:
    """Environment steps per second of the online phase: the hand-over, then `rollouts` + 1 rollouts
    per seed (the first, which compiles the policy and the update, not counted)."""
    import envs
    from experiments import loop, online

    algo = run.algo
    run.algo = replace(algo, rollout_length=1)  # AM-Q: only in the initialisation here
    timing.start(run, results, seeds)
    states = online.begin(run.algo, run.spec, run.online_ctx, run.states)
    steps = (rollouts + 1) * run.algo.online.block
    buffers = loop.replay_buffers(online.buffer_capacity(run.algo, 0, steps), run.spec, seeds)
    measured: dict = {}
    online.train_online(run.algo, run.online_ctx, run.prepared.preprocessor, lambda: envs.make_env(run.info),
                        online.OnlineSchedule(steps, eval_every=0, checkpoint_every=0, log_every=0),
                        list(range(seeds)), online.OnlineRun(states, buffers, run.keys),
                        loop.ChunkRunner(run.algo, "online"), timings=measured)
    online_algo, run.algo = run.algo, algo
    per_seed = measured["env_steps"] / measured["seconds"]
    return {"seeds": seeds, "rollout": online_algo.online.block, "epochs": online_algo.ppo.epochs,
            "minibatch": online_algo.ppo.minibatch_size, "env_steps_per_second_per_seed": per_seed,
            "env_steps_per_second_total": per_seed * seeds,
            **{f"{part}_seconds": measured[part] for part in ("policy", "environment", "updates")},
            "seconds": measured["seconds"], "env_steps": measured["env_steps"]}


def measure(args, report) -> None:
    from algorithms.core.ppo import PPOConfig

    with tempfile.TemporaryDirectory(prefix="offrl-unio4-benchmark-") as folder:
        data_file = timing.write_synthetic_dataset(Path(folder) / "synthetic.hdf5", args.rows)
        options = {"termination": "halfcheetah", "eval_step": 10**9, "rollout_length": args.amq_length}
        run = timing.build_run(timing.compose_run("unio4", None, options=options, data_file=data_file),
                               spec_steps=10_000)
    report.update(stages=[], bppo=[], amq=[], online=[])
    results = {}
    for stage in run.algo.stages(run.spec):
        results[stage.name], row = time_stage(stage, run, args.stage_length, args.repeats)
        report["stages"].append(row)
        print(row, flush=True)
    for seeds in args.seeds:
        report["bppo"].append(time_bppo(run, results, seeds, args.bppo_length, args.repeats))
        report["amq"].append(time_amq(run, seeds, args.repeats))
        print(report["bppo"][-1], report["amq"][-1], flush=True)
        report.write()
    run.algo = replace(run.algo, ppo=PPOConfig(epochs=30))  # the halfcheetah-medium script's
    for seeds in args.seeds if args.online_rollouts else []:
        report["online"].append(time_online(run, results, seeds, args.online_rollouts))
        print(report["online"][-1], flush=True)
        report.write()


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), JAX "
             f"{meta['jax']} on {meta['devices'][0]}; load average {meta['load_average_start']} at the "
             f"start, {meta.get('load_average_end', '?')} at the end (a shared machine: other jobs ran). "
             f"`{command_line(report)}`. Synthetic data: {report['settings']['rows']:,} transitions (obs "
             f"{timing.OBSERVATION_DIM}, act {timing.ACTION_DIM}); the code's sizes for halfcheetah-medium.",
             ""]
    lines += table(["stage", "updates/s", "compile s", "code's steps", "minutes for them"], "lrrrr",
                   [[row["stage"], f"{row['updates_per_second']:.1f}", f"{row['compile_seconds']:.1f}",
                     f"{row['full_steps']:,}", f"{row['full_minutes']:.1f}"]
                    for row in report.get("stages", [])])
    rows = []
    for bppo, amq in zip(report.get("bppo", []), report.get("amq", []), strict=True):
        at_1000 = amq["seconds_per_model_step"] * 1000
        # one program step updates every seed once; one AM-Q scores every seed's members at once
        with_amq = 1.0 / (1.0 / bppo["updates_per_second_per_seed"] + at_1000 / 100)
        rows.append([f"{bppo['members']} x {bppo['seeds']}",
                     f"{bppo['updates_per_second_per_seed']:.1f}",
                     f"{bppo['updates_per_second_total']:.1f}", f"{bppo['compile_seconds']:.1f}",
                     f"{amq['seconds']:.1f} ({amq['rollout_length']})", f"{at_1000:.0f}", f"{with_amq:.2f}"])
    lines += ["", *table(["BPPO, members x seeds", "updates/s per seed", "updates/s total", "compile s",
                          "AM-Q s (length)", "AM-Q s at 1000 steps",
                          "updates/s per seed with AM-Q every 100"],
                         "lrrrrrr", rows)]
    lines += ["", "AM-Q scores every member of every seed at once; its time at 1000 steps is scaled linearly "
              "from the measured length. The last column is what a run with the code's eval_step 100 and "
              "rollout_step 1000 would reach."]
    if report.get("online"):
        lines += ["", *table(
            ["online PPO, seeds", "env steps/s per seed", "env steps/s total", "policy s", "environment s",
             "updates s", "timed env steps per seed"], "rrrrrrr",
            [[row["seeds"], f"{row['env_steps_per_second_per_seed']:.0f}",
              f"{row['env_steps_per_second_total']:.0f}", f"{row['policy_seconds']:.1f}",
              f"{row['environment_seconds']:.1f}", f"{row['updates_seconds']:.1f}", f"{row['env_steps']:,}"]
             for row in report["online"]])]
        lines += ["", "Online: one vector env of every seed, one batched policy call per step, one PPO "
                  "update per rollout of 2048 steps per seed (30 epochs x 16 minibatches of 128); the "
                  "first rollout, which compiles, is not counted."]
    return "\n".join(lines) + "\n"
