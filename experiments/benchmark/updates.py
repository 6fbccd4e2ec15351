"""What one configuration of the offline benchmark measures, in its own process (see cli.py).

Nothing here trains in a loop of its own: the bare figure times the engine's compiled chunk through
`loop.ChunkRunner` (the programs, watchdog and checks `experiments.train` uses), stages run through
`experiments.stages.train_stage`, and the pipeline figure is a real `experiments.train.run` on the
same data, its timing read from the results.json and metrics.jsonl it writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import algorithms
import envs
from algorithms import Spec
from experiments import config, loop
from experiments.benchmark.machine import PeakRSS, nice_floor, xla_flops, xla_memory
from experiments.data import load
from experiments.stages import train_stage

SYNTHETIC_DATASET = "d4rl/halfcheetah-medium-v2"  # synthetic data: only its env and scores are used
OBSERVATION_DIM, ACTION_DIM = 17, 6  # HalfCheetah's, so the pipeline can evaluate in its environment
WARMUP_CHUNK = 1000  # updates per timed warm-up chunk


def write_synthetic_dataset(path: Path, size: int, seed: int, episode_length: int = 1000) -> Path:
    """Random transitions of HalfCheetah's shapes in a D4RL-format HDF5 file (so `experiments.train`
    loads it like any D4RL file, `dataset.path=...`), cut into episodes so IQL's return-range reward
    scaling has episodes to measure. Values do not matter for speed, only shapes."""
    import h5py

    rng = np.random.default_rng(seed)
    timeouts = np.zeros(size, bool)
    timeouts[episode_length - 1::episode_length] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5["observations"] = rng.standard_normal((size, OBSERVATION_DIM), dtype=np.float32)
        h5["actions"] = rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32)
        h5["rewards"] = rng.standard_normal(size, dtype=np.float32)
        h5["terminals"] = np.zeros(size, bool)
        h5["timeouts"] = timeouts
    return path


def hydra_value(value) -> str:
    """A Python value as a Hydra override's right-hand side."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def algorithm_overrides(name: str, width: int, batch_size: int, options: dict | None) -> list[str]:
    """algo=..., its width and batch size, and the --option settings the algorithm has."""
    fields = {field.name for field in dataclasses.fields(algorithms.get(name))}
    return [f"algo={name}", f"algo.hidden_dims=[{width},{width}]", f"algo.batch_size={batch_size}",
            *(f"algo.{key}={hydra_value(value)}" for key, value in (options or {}).items()
              if key.split(".")[0] in fields)]  # dynamics.hidden_dims: a field of a nested config


def make_algorithm(name: str, width: int, batch_size: int, options: dict | None = None,
                   dataset: str = SYNTHETIC_DATASET) -> algorithms.Algorithm:
    """The algorithm exactly as `experiments.train` builds it for `dataset` (its configs/algo YAML
    included), two hidden layers of `width`, and the options it has."""
    cfg = config.compose([*algorithm_overrides(name, width, batch_size, options), f"dataset={dataset}"])
    return config.make_algorithm(cfg.algo)


def compose_run(name: str, width: int, seeds: int, settings, *extra: str):
    """The run configuration of one benchmark configuration: the real dataset (--dataset) or the
    synthetic file, read by experiments.train's own loaders."""
    dataset = ([f"dataset={settings.dataset}"] if settings.dataset else
               [f"dataset={SYNTHETIC_DATASET}", f"dataset.path={settings.data_file}",
                "dataset.download=false"])
    return config.compose([*algorithm_overrides(name, width, settings.batch_size, settings.options),
                           *dataset, f"seed={settings.seed}", f"seeds={seeds}", *extra])


def time_stage(stage, spec: Spec, data, settings) -> tuple[object, dict]:
    """Time a stage (SPOT's VAE, a dynamics ensemble) through `train_stage`: six one-step chunks
    size the chunk, then 1 + repeats chunks of it, the first (which compiles) apart. A stage that
    validates runs chunks of at most `validate_every` steps (train_stage's schedule): the chunk
    length is then what it ran. Returns (its result, timings); the result has seen those chunks,
    not the stage's full `steps`: enough to start the agent."""
    marks = []

    def progress(step, means, kind):
        if kind == "train":
            marks.append((step, time.perf_counter()))

    train_stage(dataclasses.replace(stage, steps=6), spec, data, 1, progress)
    step_seconds = statistics.median(np.diff([seconds for _, seconds in marks]))
    length = settings.chunk or min(max(20, nice_floor(settings.chunk_seconds / step_seconds)), 10_000)
    if stage.validate is not None and stage.validate_every:
        length = math.gcd(length, stage.validate_every)
    marks = [(0, time.perf_counter())]
    result, _ = train_stage(dataclasses.replace(stage, steps=length * (1 + settings.repeats)), spec,
                            data, length, progress)
    chunks = np.diff([seconds for _, seconds in marks])
    seconds = chunks[1:].tolist()
    return result, {"stage": stage.name, "steps_in_a_real_run": stage.steps, "chunk_length": length,
                    "compile": {"total_seconds": max(float(chunks[0]) - statistics.median(seconds), 0.0)},
                    "chunk_seconds": seconds,
                    "updates_per_second": length / statistics.median(seconds)}


def save_stage_results(results: dict, records: dict, folder: Path) -> dict:
    """Write stage results where `stage_paths.<name>=...` reads them, so the pipeline's run starts
    from them instead of training the stage for its full length; {name: folder}."""
    import orbax.checkpoint as ocp

    paths = {}
    for name, result in results.items():
        target = (folder / name).absolute()
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(target / "result", result)
        checkpointer.wait_until_finished()
        (target / "record.json").write_text(json.dumps({"steps": records[name]}))
        paths[name] = str(target)
    return paths


def time_calls(runner: loop.ChunkRunner, states, buffers, keys, ctx, length: int, calls: int):
    """`calls` calls of the runner's `length`-update program; the seconds of each as the runner
    timed it (the compiled call and fetching its metrics)."""
    seconds = []
    for _ in range(calls):
        before = runner.update_seconds
        states, buffers, keys, _ = runner(states, buffers, keys, ctx, length,
                                          int(states.step) + length)
        seconds.append(runner.update_seconds - before)
    return states, buffers, keys, seconds


def compile_program(runner: loop.ChunkRunner, length: int, states, buffers, keys, ctx):
    """The runner's AOT-compiled program for `length` updates and its compile time in seconds."""
    before = runner.compile_seconds
    program = runner.compile(length, states, buffers, keys, ctx, None, runner.values)
    return program, {"total_seconds": runner.compile_seconds - before}


def time_python_loop(program, states, buffers, keys, ctx, steps: int, repeats: int, values=None):
    """`steps` calls of the one-step program per timing, blocking only at the end of each, as a
    plain Python training loop would (dispatch is asynchronous, so Python may run ahead)."""
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(steps):
            states, buffers, keys, _ = program(states, buffers, keys, ctx, None, values)
        jax.block_until_ready((states, keys))
        seconds.append(time.perf_counter() - tic)
    return states, buffers, keys, seconds


def warm_up(runner: loop.ChunkRunner, states, buffers, keys, ctx, updates: int, seeds: int):
    """Train `updates` updates (rounded up to whole chunks) before timing, each chunk timed, so the
    speed along the way is measured too (PRDC's search gets cheaper as the actor learns)."""
    length = min(WARMUP_CHUNK, updates)
    _, timing = compile_program(runner, length, states, buffers, keys, ctx)
    rates = []
    for index in range(-(-updates // length)):
        states, buffers, keys, (seconds,) = time_calls(runner, states, buffers, keys, ctx, length, 1)
        rates.append(length / seconds)
        print(f"    warm-up updates {(index + 1) * length}: {rates[-1]:.1f}/s per seed, {seeds} seed(s)",
              file=sys.stderr, flush=True)
    return states, buffers, keys, {"updates": len(rates) * length, "chunk_length": length,
                                   "compile": timing, "updates_per_second_per_seed": rates}


def run_pipeline(name: str, width: int, seeds: int, settings, stage_paths: dict) -> dict:
    """`experiments.train.run` for `pipeline_periods` evaluation periods (see DEFINITIONS)."""
    from experiments.train import run

    period, episodes = settings.pipeline_eval_every, settings.pipeline_episodes
    steps = period * settings.pipeline_periods
    cfg = compose_run(name, width, seeds, settings, f"steps={steps}",
                      f"log_every={settings.pipeline_log_every}", f"eval.every={period}",
                      f"eval.episodes={episodes}", "checkpoint.keep=1", "pretrain.cache_dir=null",
                      f"watchdog_seconds={settings.config_timeout}",
                      *(f"+stage_paths.{stage}={path}" for stage, path in stage_paths.items()))
    with tempfile.TemporaryDirectory() as run_dir:
        out = run(cfg, Path(run_dir))
        lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line["seconds"] for line in lines if line["type"] == "eval"]
    seconds = out["timings"]["offline"]["seconds"] - out["compile_seconds"]
    updates = steps / out["updates_per_second_per_seed"]
    rate = steps / seconds
    episode_steps = envs.lookup(cfg.dataset.source, cfg.dataset.name).max_episode_steps
    return {
        "steps": steps,
        "log_every": settings.pipeline_log_every,
        "eval_every": period,
        "episodes_per_seed": episodes,
        "evaluations": len(evaluations),
        "env_steps_per_evaluation": seeds * episodes * episode_steps,
        "policy_calls_per_evaluation": episode_steps,
        "seconds": seconds,
        # the first evaluation also compiles the policy
        "seconds_per_evaluation": statistics.median(evaluations[1:] or evaluations) if evaluations else None,
        "breakdown_seconds": {"updates": updates, "evaluation": sum(evaluations),
                              "other": seconds - updates - sum(evaluations)},
        "compile_seconds": out["compile_seconds"],
        "updates_per_second_per_seed": rate,
        "updates_per_second_total": rate * seeds,
    }


def bench_config(name: str, width: int, seeds: int, settings) -> dict:
    """Every measurement of one (algorithm, width, seeds) configuration."""
    cfg = compose_run(name, width, seeds, settings)
    algo = config.make_algorithm(cfg.algo)
    raw, _ = load(cfg.dataset.source, cfg.dataset.name, cfg.dataset.path, cfg.dataset.download)
    prepared = loop.prepare(algo, raw)
    spec = Spec(raw.observation_dim, raw.action_dim, 1_000_000)
    del raw
    init_keys, keys = jax.random.split(jax.random.key(settings.seed), (2, seeds))
    entry = {"algo": name, "hidden": [width, width], "seeds": seeds, "batch_size": settings.batch_size,
             "dataset_size": int(prepared.data.size),
             "options": {k: v for k, v in settings.options.items() if hasattr(algo, k)}}
    stage_results, stage_steps = {}, {}
    with PeakRSS() as rss:
        for stage in algo.stages(spec):
            stage_results[stage.name], timing = time_stage(stage, spec, prepared.data, settings)
            stage_steps[stage.name] = stage.steps
            entry.setdefault("stages", []).append(timing)
        # Search structures built from the data (PRDC's KD-tree) count in this peak RSS.
        ctx = loop.make_context(algo, prepared, stage_results)
        states = loop.init_states(algo, spec, ctx, init_keys)
        buffers = loop.init_buffers(algo, spec, ctx, seeds)
        runner = loop.ChunkRunner(algo, "offline", settings.config_timeout)
        if settings.warmup_updates:
            states, buffers, keys, entry["warmup"] = warm_up(runner, states, buffers, keys, ctx,
                                                             settings.warmup_updates, seeds)

        # The one-step program gives XLA's FLOP count per update (see DEFINITIONS), the time per
        # step that sizes the chunk, and the per-step Python loop.
        step, step_timing = compile_program(runner, 1, states, buffers, keys, ctx)
        step_flops = xla_flops(step)
        states, buffers, keys, calls = time_calls(runner, states, buffers, keys, ctx, 1, 6)
        step_seconds = statistics.median(calls[1:])
        entry["one_step_program"] = {"compile": step_timing, "seconds_per_call": step_seconds,
                                     "reported_flops": step_flops}
        if width in settings.python_loop_widths:
            steps = min(max(50, nice_floor(settings.chunk_seconds / step_seconds)), 20_000)
            states, buffers, keys, seconds = time_python_loop(step, states, buffers, keys, ctx, steps,
                                                              settings.repeats)
            entry["python_loop"] = {"steps_per_timing": steps, "seconds": seconds,
                                    "updates_per_second_per_seed": steps / statistics.median(seconds)}

        length = settings.chunk or min(max(20, nice_floor(settings.chunk_seconds / step_seconds)),
                                       10_000)
        chunk, compile_timing = compile_program(runner, length, states, buffers, keys, ctx)
        states, buffers, keys, seconds = time_calls(runner, states, buffers, keys, ctx, length,
                                                    1 + settings.repeats)
        seconds = seconds[1:]  # the first call warms up
        rate = length / statistics.median(seconds)
        flops = None if step_flops is None else step_flops / seeds
        entry.update({
            "chunk_length": length,
            "compile": compile_timing,
            "chunk_seconds": seconds,
            "updates_per_second_per_seed": rate,
            "updates_per_second_total": rate * seeds,
            "flops_per_update": flops,
            "achieved_gflops": None if flops is None else flops * rate * seeds / 1e9,
            "chunk_reported_flops": xla_flops(chunk),
            "has_conditional": "conditional(" in chunk.as_text(),
            "xla_memory": xla_memory(chunk),
        })
        if "python_loop" in entry:
            entry["python_loop"]["scan_speedup"] = rate / entry["python_loop"][
                "updates_per_second_per_seed"]
        jax.block_until_ready(states)
    entry.update(rss.record())
    del states, buffers, ctx, prepared
    if settings.pipeline:
        with tempfile.TemporaryDirectory() as folder:
            paths = save_stage_results(stage_results, stage_steps, Path(folder))
            entry["pipeline"] = run_pipeline(name, width, seeds, settings, paths)
        entry["pipeline"]["fraction_of_bare"] = entry["pipeline"]["updates_per_second_per_seed"] / rate
    return entry
