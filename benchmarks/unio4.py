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

import copy
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


def config(rows_file: Path, seeds: int, options: dict):
    """Uni-O4 on the synthetic file, its code's sizes for halfcheetah-medium, `options` on top."""
    options = {"termination": "halfcheetah", "eval_step": 10**9, **options}
    return timing.compose_run("unio4", None, options=options, data_file=rows_file, extra=[f"seeds={seeds}"])


def time_stage(stage, shapes, length: int, repeats: int) -> tuple[object, dict]:
    """A stage's compiled chunk timed on the data of `shapes` (an Assembly); its result after init (and
    finish): enough to start BPPO."""
    import jax

    from experiments.stages import make_stage_chunk

    data = shapes.prepared.data
    state = jax.jit(stage.init, static_argnums=1)(jax.random.key(0), shapes.spec, data)
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


def time_bppo(run, length: int, repeats: int) -> dict:
    """BPPO's chunks on `run`, assembled with rollout_length 1: its AM-Q (at initialisation) is timed
    apart, and none runs within the chunks (eval_step lies beyond them)."""
    runner = run.asm.runner("offline")
    _, compiled = timing.compile_program(runner, length, run)
    seconds = min(timing.time_calls(runner, run, length, repeats))
    seeds = len(run.asm.seeds)
    return {"seeds": seeds, "members": run.algo.num_members, "updates_per_second_per_seed": length / seconds,
            "updates_per_second_total": length * seeds / seconds,
            "compile_seconds": compiled["total_seconds"]}


def time_amq(run, length: int, repeats: int) -> dict:
    """One AM-Q of every member of every seed of `run`, `length` model steps."""
    import jax

    from experiments import seed_axis

    algo = replace(run.algo, rollout_length=length)
    score = jax.jit(jax.vmap(lambda s, k, c: algo.amq(s.policies.params, s.normalizer, k, c),
                             in_axes=(seed_axis.seed_axes(run.states), 0, seed_axis.context_axes(run.ctx))))
    tic = time.perf_counter()
    compiled = score.lower(run.states, run.keys, run.ctx).compile()
    compile_seconds = time.perf_counter() - tic
    seconds = best_of(lambda: compiled(run.states, run.keys, run.ctx), repeats)
    return {"seeds": len(run.asm.seeds), "rollout_length": length, "rollout_batch": algo.rollout_batch,
            "seconds": seconds, "seconds_per_model_step": seconds / length,
            "compile_seconds": compile_seconds}


def time_online(cfg, results: dict, rollouts: int) -> dict:
    """Environment steps per second of the online phase (`experiments.phases.run_online`) of `cfg`
    with the stages' `results`: the hand-over, then `rollouts` + 1 rollouts per seed (the first,
    which compiles the policy and the update, not counted)."""
    from omegaconf import OmegaConf

    from experiments import phases

    cfg = copy.deepcopy(cfg)
    block = int(cfg.algo.online.block)
    for key, value in {"online.steps": (rollouts + 1) * block, "online.eval_every": 0, "online.log_every": 0,
                       "checkpoint.every": 0, "algo.rollout_length": 1}.items():  # AM-Q: none here
        OmegaConf.update(cfg, key, value)
    run = timing.assemble(cfg, results)
    trees = run.asm.begin_online({"states": run.states, "buffers": run.buffers, "keys": run.keys})
    quiet = phases.Hooks(log=lambda line: None, evaluate=lambda phase, states, step, env_step: states,
                         checkpoint=lambda position, trees: None, leave=lambda where: None)
    measured: dict = {}
    phases.run_online(run.asm, trees, phases.Position(), quiet, run.asm.runner("online"), timings=measured)
    seeds = len(run.asm.seeds)
    per_seed = measured["env_steps"] / measured["seconds"]
    return {"seeds": seeds, "rollout": block, "env_steps_per_second_per_seed": per_seed,
            "env_steps_per_second_total": per_seed * seeds,
            **{f"{part}_seconds": measured[part] for part in ("policy", "environment", "updates")},
            "seconds": measured["seconds"], "env_steps": measured["env_steps"]}


def measure(args, report) -> None:
    from experiments.assembly import Assembly

    report.update(stages=[], bppo=[], amq=[], online=[])
    with tempfile.TemporaryDirectory(prefix="offrl-unio4-benchmark-") as folder:
        rows_file = timing.write_synthetic_dataset(Path(folder) / "synthetic.hdf5", args.rows)
        shapes = Assembly.build(config(rows_file, 1, {}), stages="abstract")  # the data the stages train on
        results = {}
        for stage in shapes.algo.stages(shapes.spec):
            results[stage.name], row = time_stage(stage, shapes, args.stage_length, args.repeats)
            report["stages"].append(row)
            print(row, flush=True)
        del shapes
        for seeds in args.seeds:
            run = timing.assemble(config(rows_file, seeds, {"rollout_length": 1}), results)
            report["bppo"].append(time_bppo(run, args.bppo_length, args.repeats))
            report["amq"].append(time_amq(run, args.amq_length, args.repeats))
            print(report["bppo"][-1], report["amq"][-1], flush=True)
            report.write()
        for seeds in args.seeds if args.online_rollouts else []:  # the halfcheetah-medium script's epochs
            report["online"].append(time_online(config(rows_file, seeds, {"ppo.epochs": 30}), results,
                                                args.online_rollouts))
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
