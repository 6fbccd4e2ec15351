"""Training throughput of the algorithms on this machine, and what limits it.

    python -m experiments.benchmark                  # ~25 min on an idle 2-core CPU; keep it idle
    python -m experiments.benchmark --quick --out /tmp/bench.json       # a smoke test, ~1-2 min
    python -m experiments.benchmark --algos spot a2pr --no-torch --out benchmarks/support.json
    python -m experiments.benchmark --algos prdc --dataset local/hopper-medium \
        --option neighbour_search=kdtree --out benchmarks/prdc-kdtree.json

For every algorithm, network width and number of vmapped seeds it measures
  * bare:     the compiled train chunk of `experiments.loop.make_train_chunk` (sampling and updates,
              nothing else) on a dataset held on the device: by default 1M synthetic
              transitions of HalfCheetah's shapes, or a real one (`--dataset source/name`, which
              matters where the data's structure sets the cost, as for PRDC's KD-tree);
  * pipeline: the training loop as `experiments.train` runs it (chunks, metrics to the host,
              divergence check, `loop.summarize_metrics` logging to a JSON-lines file, periodic
              evaluation with `loop.make_policy` + `envs.evaluate` in HalfCheetah-v5), as a
              fraction of the bare throughput;
  * compile time, XLA's FLOP count and memory analysis of the chunk, peak RSS, and the fraction of
    this machine's measured matmul throughput that the updates reach;
  * at the small width, a Python loop calling one jitted update per step, against the scan;
  * for algorithms with a pretraining stage (SPOT's VAE), that stage's own updates/s and compile
    time; its result then initialises the agent, as in a real run;
  * with `--warmup-updates N`, N updates trained before timing, each chunk of 1000 timed and
    printed as it ends: the speed along training, where it changes (PRDC's KD-tree search);
and times the same IQL update in plain PyTorch (experiments/torch_iql.py) in a subprocess.
Each configuration runs in a fresh process (`--worker`), killed and retried if it exceeds
`--config-timeout`. Results go to a JSON file and a Markdown table (`--out`, default
benchmarks/results.json and .md), rewritten after every configuration; `definitions` in the JSON
says exactly what each number measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import faulthandler
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import algorithms
import envs
from algorithms import Spec
from envs.dataset import from_arrays
from experiments import loop

ROOT = Path(__file__).resolve().parent.parent
OBSERVATION_DIM, ACTION_DIM = 17, 6  # HalfCheetah's, so the pipeline can evaluate in HalfCheetah-v5
EVAL_DATASET = ("d4rl", "halfcheetah-medium-v2")  # synthetic data: only its env and scores are used
ENTRY_MARKER = "benchmark-entry: "
WARMUP_CHUNK = 1000  # updates per timed warm-up chunk

DEFINITIONS = {
    "update": "One gradient step of one seed on a batch sampled from the on-device dataset.",
    "bare": (
        "The compiled train chunk (experiments.loop.make_train_chunk: lax.scan over `chunk_length` "
        "steps of vmap over seeds of sample_batch + algo.update) called back to back with the "
        "state on the device; timed after one warm-up call, block_until_ready after each call; the "
        "median over `repeats` calls is reported. Excludes compilation."),
    "pipeline": (
        "What experiments.train does between compilation and the end of training, minus "
        "checkpointing: chunks on loop.chunk_schedule(log_every, eval_every), jax.device_get of "
        "the per-step metrics, loop.check_finite, loop.summarize_metrics, one JSON line per "
        "logging interval written to a file, and at every eval_every steps envs.evaluate of all "
        "seeds in one vector env with the batched loop.make_policy (deterministic actions), plus "
        "envs.normalized_score. Environments are created by envs.evaluate at every evaluation, as "
        "in a real run. Excludes compilation of the chunk and of the policy (done before timing) "
        "and orbax checkpoints. Wall-clock time of the whole schedule; fraction_of_bare = "
        "pipeline updates/s / bare updates/s."),
    "pipeline_eval_scaling": (
        "A real locomotion run evaluates every 5000 steps with 10 episodes of up to 1000 steps and "
        "logs every 1000 steps. The benchmark divides eval_every and the episodes by `eval_scale`, "
        "so environment steps per gradient step are those of a real run (2 per seed), but the "
        "vector env is `eval_scale` times narrower, so there are eval_scale times more batched "
        "policy calls per update: the measured fraction slightly underestimates a real run's. "
        "HalfCheetah-v5 never terminates, so every episode is 1000 steps, as for a good policy."),
    "compile_seconds": (
        "AOT jit(...).lower(...) plus .compile() of the train chunk, wall clock. With a persistent "
        "compilation cache configured (see meta) it measures cache hits."),
    "flops_per_update": (
        "XLA's cost_analysis()['flops'] of the one-step program (make_train_chunk(algo, 1)) "
        "divided by the number of seeds. XLA counts a while loop's body once whatever its trip "
        "count, so the long chunk's own count (chunk_reported_flops) is not divided by its "
        "length. XLA counts a lax.cond as its most expensive branch: TD3+BC updates its actor "
        "every 2nd step, so its flops_per_update and roofline_fraction are upper bounds."),
    "roofline_fraction": (
        "achieved_gflops (flops_per_update x bare updates/s of all seeds) / the peak float32 "
        "matmul GFLOP/s: the best rate of jitted chains of square n x n matmuls (n >= 256), "
        "measured at the start and at the end of the same run (matmul.start, matmul.end)."),
    "peak_rss_bytes": (
        "Peak resident set size of the configuration's own process (each configuration runs in a "
        "fresh process) from before the state is initialised to the end (VmHWM, reset through "
        "/proc/self/clear_refs, because a child inherits its parent's ru_maxrss); rss_scope is "
        "'process' where the reset is not possible. Includes the dataset and the runtime."),
    "attempts": (
        "Processes started for the configuration: one is killed and retried after "
        "settings.config_timeout seconds (a safety net: a compiled program that deadlocks must not "
        "stop the whole benchmark). "
        "An entry with `error` instead of measurements failed every attempt."),
    "xla_memory": "compiled.memory_analysis() of the train chunk: XLA's own buffer sizes.",
    "python_loop": (
        "The one-step program make_train_chunk(algo, 1) called once per step from a Python "
        "for-loop (asynchronous dispatch, blocking only at the end), against the scan."),
    "torch": (
        "experiments/torch_iql.py in a separate process: the same IQL update in eager PyTorch, "
        "one seed, batches sampled from CPU tensors, torch.set_num_threads(t) for each t in "
        "settings.torch_threads (default: the cores available, then 1). Ratios are JAX "
        "updates/s over PyTorch updates/s at the same width and thread setting."),
    "pretraining": (
        "The algorithm's pretraining stage (Algorithm.pretraining(), e.g. SPOT's VAE): "
        "experiments.loop.make_pretrain_chunk (one model, not vmapped over seeds) timed like the "
        "bare chunk; its final state initialises the agents. Its steps are not the agent's updates "
        "and are not in the agent's updates/s."),
    "options": "Algorithm fields set with --option key=value (those the algorithm has).",
    "warmup_updates": (
        "Updates trained between initialisation and the first timed call, in chunks of "
        "min(1000, N) (N rounded up to whole chunks); 0 times a fresh agent. Each warm-up chunk is "
        "timed once (no repeats; compiled beforehand): warmup.updates_per_second_per_seed is the "
        "speed along the way, chunk by chunk."),
}

FULL = {"dataset_size": 1_000_000, "chunk": 0, "chunk_seconds": 2.0, "repeats": 5,
        "eval_scale": 5, "pipeline_periods": 1, "max_episode_steps": None,
        "matmul_sizes": [64, 256, 512, 1024, 2048], "matmul_seconds": 0.5,
        "torch_steps": 200, "torch_repeats": 5, "seeds": [1, 4, 8], "widths": [256, 64],
        "config_timeout": 900}
QUICK = {"dataset_size": 20_000, "chunk": 25, "chunk_seconds": 0.2, "repeats": 2,
         "eval_scale": 0, "pipeline_periods": 1, "max_episode_steps": 100,
         "matmul_sizes": [256, 512], "matmul_seconds": 0.05,
         "torch_steps": 10, "torch_repeats": 2, "seeds": [2], "widths": [64],
         "config_timeout": 120}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (seconds per configuration) to check that everything works")
    parser.add_argument("--algos", nargs="+", default=["bc", "td3_bc", "iql"])
    parser.add_argument("--seeds", nargs="+", type=int, help="vmapped seed counts (default 1 4 8)")
    parser.add_argument("--widths", nargs="+", type=int,
                        help="hidden layer widths, two layers each (default 256 64; --quick: 64)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dataset-size", type=int, help="synthetic transitions (default 1M)")
    parser.add_argument("--dataset", help="a real dataset, source/name (e.g. local/hopper-medium), "
                        "instead of the synthetic one; the pipeline evaluates in its environment")
    parser.add_argument("--warmup-updates", type=int, default=0,
                        help="train this many updates before timing (where the cost depends on "
                        "how far training is, as PRDC's KD-tree search does); it counts in "
                        "--config-timeout: PRDC, 8 seeds, 3000 updates on 1M halfcheetah took 26 min")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="set an algorithm field (YAML value), e.g. neighbour_search=kdtree")
    parser.add_argument("--chunk", type=int,
                        help="updates per bare chunk; 0 picks it so a chunk takes --chunk-seconds")
    parser.add_argument("--chunk-seconds", type=float)
    parser.add_argument("--repeats", type=int, help="timed chunks per configuration")
    parser.add_argument("--eval-scale", type=int,
                        help="divide the real eval period (5000) and episodes (10) by this")
    parser.add_argument("--pipeline-periods", type=int, help="evaluation periods timed")
    parser.add_argument("--max-episode-steps", type=int,
                        help="cap evaluation episodes (default: the env's 1000)")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    parser.add_argument("--python-loop-widths", nargs="*", type=int, default=[64],
                        help="widths at which the per-step Python loop is also timed")
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-seconds", type=float)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    parser.add_argument("--torch-steps", type=int, help="PyTorch updates per timed block")
    parser.add_argument("--torch-repeats", type=int)
    parser.add_argument("--torch-threads", nargs="+", type=int,
                        help="PyTorch thread counts to time (default: cores available, then 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-timeout", type=float,
                        help="seconds before one configuration's process is killed and retried")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: ALGO:WIDTH:SEEDS
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--markdown", type=Path, help="default: --out with the suffix .md")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.torch_threads is None:
        args.torch_threads = [_cores()] if args.quick else sorted({_cores(), 1}, reverse=True)
    if args.markdown is None:
        args.markdown = args.out.with_suffix(".md")
    unknown = set(args.algos) - set(algorithms.available())
    if unknown:
        parser.error(f"unknown algorithm(s) {sorted(unknown)}; available: {algorithms.available()}")
    args.options = parse_options(parser, args.option)
    if args.dataset and "/" not in args.dataset:
        parser.error(f"--dataset takes source/name (e.g. local/hopper-medium), not '{args.dataset}'")
    return args


def parse_options(parser, items: list[str]) -> dict:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--option takes key=value, not '{item}'")
        options[key] = yaml.safe_load(value)
    return options


# ---------------------------------------------------------------------------------------------
# Environment and measurement helpers


def machine_info() -> dict:
    import flax
    import optax

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cores_available": _cores(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_start": list(os.getloadavg()),
        "argv": sys.argv,
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class PeakRSS:
    """Peak resident memory within a `with` block. Linux lets a process reset its high-water mark
    (write 5 to clear_refs), which makes the peak per configuration rather than per process."""

    def __enter__(self):
        self.start = _rss_now()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "configuration"
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM") if self.scope == "configuration" else None
        # ru_maxrss is KiB on Linux, bytes on macOS
        unit = 1 if sys.platform == "darwin" else 1024
        self.peak = (peak * 1024 if peak is not None
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit)
        if peak is None:
            self.scope = "process"
        return False

    def record(self) -> dict:
        return {"rss_start_bytes": self.start, "peak_rss_bytes": self.peak, "rss_scope": self.scope}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_now() -> int | None:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return None


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program; `cost_analysis()` has returned a dict in recent JAX
    and a one-element list of dicts in older versions."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory(compiled) -> dict | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")
    memory = {name: int(getattr(stats, name)) for name in fields if hasattr(stats, name)}
    if not memory.get("peak_memory_in_bytes"):
        memory["peak_memory_in_bytes"] = (
            memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0))
    return memory


def aot_compile(function, *args):
    tic = time.perf_counter()
    lowered = function.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return compiled, {"lower_seconds": lowered_at - tic, "compile_seconds": done - lowered_at,
                      "total_seconds": done - tic}


def nice_floor(value: float) -> int:
    """The largest 1, 2 or 5 x 10^k not above `value` (at least 1): readable chunk lengths."""
    if value < 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return max(m * power for m in (1, 2, 5) if m * power <= value)


# ---------------------------------------------------------------------------------------------
# Workloads


def synthetic_dataset(size: int, seed: int, episode_length: int = 1000) -> envs.Dataset:
    """Random transitions of HalfCheetah's shapes, cut into episodes (so IQL's return-range reward
    scaling has episodes to measure). Values do not matter for speed, only shapes."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((size + 1, OBSERVATION_DIM), dtype=np.float32)
    timeouts = np.zeros(size, np.float32)
    timeouts[episode_length - 1::episode_length] = 1.0
    return from_arrays(
        observations=states[:-1], actions=rng.uniform(-1, 1, (size, ACTION_DIM)),
        rewards=rng.standard_normal(size, dtype=np.float32), next_observations=states[1:],
        terminals=np.zeros(size, np.float32), timeouts=timeouts, source="synthetic")


def matmul_peak(sizes: list[int], seconds: float, repeats: int) -> dict:
    """float32 matmul throughput of this machine through XLA: x <- x @ w, `count` times inside one
    jitted fori_loop (so dispatch is amortised), with an orthogonal w (so values stay finite)."""
    rows = []
    for n in sizes:
        w = jnp.linalg.qr(jax.random.normal(jax.random.key(n), (n, n)))[0]
        x = jax.random.normal(jax.random.key(n + 1), (n, n))
        count = max(1, round(seconds * 20e9 / (2 * n**3)))
        while True:
            chain = jax.jit(lambda x, w, count=count: jax.lax.fori_loop(
                0, count, lambda _, y: y @ w, x))
            compiled = chain.lower(x, w).compile()
            tic = time.perf_counter()
            compiled(x, w).block_until_ready()
            elapsed = time.perf_counter() - tic
            if elapsed >= seconds / 4:
                break
            count = math.ceil(count * seconds / max(elapsed, 1e-6))
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            compiled(x, w).block_until_ready()
            times.append(time.perf_counter() - tic)
        flops = 2.0 * n**3 * count
        rows.append({"n": n, "matmuls": count, "seconds_median": statistics.median(times),
                     "gflops": flops / statistics.median(times) / 1e9})
    eligible = [r for r in rows if r["n"] >= 256] or rows
    best = max(eligible, key=lambda r: r["gflops"])
    return {"results": rows, "peak_gflops": best["gflops"], "peak_n": best["n"],
            "dtype": "float32", "peak_over": "n >= 256" if eligible is not rows else "all sizes"}


def make_algorithm(name: str, width: int, batch_size: int, options: dict | None = None):
    cls = algorithms.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(hidden_dims=(width, width), batch_size=batch_size,
               **{k: v for k, v in (options or {}).items() if k in fields})


def run_pretraining(stage, spec: Spec, data, settings) -> tuple[object, dict]:
    """Time the pretraining stage's chunk like the bare chunk; returns (its state, timings). The
    state has seen (1 + repeats) chunks, not the stage's full `steps`: enough to initialise the
    agent for timing."""
    key = jax.random.key(0)
    state = jax.jit(stage.init, static_argnums=1)(key, spec, data)
    step, _ = aot_compile(loop.make_pretrain_chunk(stage, 1), state, data, key)
    state, key, calls = time_chunks(step, state, data, key, 5)
    length = settings.chunk or min(max(20, nice_floor(settings.chunk_seconds
                                                      / statistics.median(calls))), 10_000)
    chunk, timing = aot_compile(loop.make_pretrain_chunk(stage, length), state, data, key)
    state, key, seconds = time_chunks(chunk, state, data, key, settings.repeats)
    return state, {"stage": stage.name, "steps_in_a_real_run": stage.steps, "chunk_length": length,
                   "compile": timing, "chunk_seconds": seconds,
                   "updates_per_second": length / statistics.median(seconds)}


def timed_call(chunk, states, data, keys):
    """One call of `chunk`, waited for; (states, keys, wall seconds)."""
    tic = time.perf_counter()
    states, keys, metrics = chunk(states, data, keys)
    jax.block_until_ready((states, keys, metrics))
    return states, keys, time.perf_counter() - tic


def time_chunks(chunk, states, data, keys, repeats: int):
    """Run `chunk` once to warm up, then `repeats` times; wall seconds of each timed call."""
    states, keys, _ = timed_call(chunk, states, data, keys)
    seconds = []
    for _ in range(repeats):
        states, keys, elapsed = timed_call(chunk, states, data, keys)
        seconds.append(elapsed)
    return states, keys, seconds


def time_python_loop(step, states, data, keys, steps: int, repeats: int):
    """`steps` calls of the one-step program per timing, blocking only at the end of each, as a
    plain Python training loop would (dispatch is asynchronous, so Python may run ahead)."""
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(steps):
            states, keys, _ = step(states, data, keys)
        jax.block_until_ready((states, keys))
        seconds.append(time.perf_counter() - tic)
    return states, keys, seconds


def run_pipeline(algo, prepared, states, keys, chunks: dict, seeds: int, settings, eval_info):
    """The loop of experiments.train.run from the first chunk to the end (see DEFINITIONS)."""
    period = settings.pipeline_eval_every
    steps = period * settings.pipeline_periods
    log_every = settings.pipeline_log_every
    schedule = loop.chunk_schedule(0, steps, log_every, period)
    lengths = sorted({b - a for a, b in zip([0, *schedule[:-1]], schedule, strict=True)})
    compile_seconds = 0.0
    for length in lengths:
        if length not in chunks:
            chunks[length], timing = aot_compile(
                loop.make_train_chunk(algo, length), states, prepared.data, keys)
            compile_seconds += timing["total_seconds"]
    # One-off compilations a real run also pays once: the policy and the divergence check.
    policy = loop.make_policy(algo, prepared.normalizer)
    observation_dim = prepared.data.observations.shape[-1]
    policy(states)(np.zeros((seeds, settings.pipeline_episodes, observation_dim), np.float32))
    loop.finite_per_seed(states).block_until_ready()

    spent = {"updates": 0.0, "logging": 0.0, "evaluation": 0.0}
    evaluations, step = [], 0
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "metrics.jsonl", "w") as out:
        start = time.perf_counter()
        for stop in schedule:
            tic = time.perf_counter()
            states, keys, metrics = chunks[stop - step](states, prepared.data, keys)
            metrics = jax.device_get(metrics)
            logged = time.perf_counter()
            spent["updates"] += logged - tic
            loop.check_finite(states, metrics, stop)
            rows = loop.summarize_metrics(metrics, log_every)
            for offset, row in zip(range(step, stop, log_every), rows, strict=True):
                out.write(json.dumps({"type": "train", "step": min(offset + log_every, stop),
                                      **row}) + "\n")
                out.flush()
            spent["logging"] += time.perf_counter() - logged
            step = stop
            if step % period == 0 or step == steps:
                tic = time.perf_counter()
                env_seeds = envs.episode_seeds(range(seeds), len(evaluations),
                                               settings.pipeline_episodes)
                returns = envs.evaluate(policy(states), eval_info, env_seeds,
                                        observation_dim=observation_dim)
                scores = envs.normalized_score(returns, eval_info)
                record = {"step": step, "return": returns.mean(axis=1).tolist(),
                          "normalized_score": None if scores is None else scores.tolist()}
                out.write(json.dumps({"type": "eval", **record}) + "\n")
                out.flush()
                evaluations.append(time.perf_counter() - tic)
                spent["evaluation"] += evaluations[-1]
        seconds = time.perf_counter() - start
    rate = steps / seconds
    episode_steps = eval_info.max_episode_steps
    result = {
        "steps": steps,
        "chunk_lengths": lengths,
        "log_every": log_every,
        "eval_every": period,
        "episodes_per_seed": settings.pipeline_episodes,
        "evaluations": len(evaluations),
        "env_steps_per_evaluation": seeds * settings.pipeline_episodes * episode_steps,
        "policy_calls_per_evaluation": episode_steps,
        "seconds": seconds,
        "seconds_per_evaluation": statistics.median(evaluations) if evaluations else None,
        "breakdown_seconds": spent,
        "compile_seconds": compile_seconds,
        "updates_per_second_per_seed": rate,
        "updates_per_second_total": rate * seeds,
    }
    return states, keys, result


def warm_up(algo, states, data, keys, updates: int, seeds: int):
    """Train `updates` updates (rounded up to whole chunks) before timing, each chunk timed, so the
    speed along the way is measured too (PRDC's search gets cheaper as the actor learns)."""
    length = min(WARMUP_CHUNK, updates)
    chunk, timing = aot_compile(loop.make_train_chunk(algo, length), states, data, keys)
    rates = []
    for index in range(-(-updates // length)):
        states, keys, elapsed = timed_call(chunk, states, data, keys)
        rates.append(length / elapsed)
        print(f"    warm-up updates {(index + 1) * length}: {rates[-1]:.1f}/s per seed, {seeds} seed(s)",
              file=sys.stderr, flush=True)
    return states, keys, {"updates": len(rates) * length, "chunk_length": length,
                          "compile": timing, "updates_per_second_per_seed": rates}


def bench_config(name: str, width: int, seeds: int, prepared, settings, eval_info) -> dict:
    algo = make_algorithm(name, width, settings.batch_size, settings.options)
    spec = Spec(prepared.data.observations.shape[-1], prepared.data.actions.shape[-1], 1_000_000)
    init_keys, keys = jax.random.split(jax.random.key(settings.seed), (2, seeds))
    entry = {"algo": name, "hidden": [width, width], "seeds": seeds,
             "batch_size": settings.batch_size,
             "options": {k: v for k, v in settings.options.items() if hasattr(algo, k)}}
    with PeakRSS() as rss:
        # Search structures built from the data (PRDC's KD-tree) count in this peak RSS.
        algo = algo.bind_dataset(prepared.data)
        pretrained = None
        if algo.pretraining() is not None:
            pretrained, entry["pretraining"] = run_pretraining(algo.pretraining(), spec,
                                                               prepared.data, settings)
        states = loop.init_states(algo, spec, prepared.data, init_keys, pretrained)
        if settings.warmup_updates:
            states, keys, entry["warmup"] = warm_up(algo, states, prepared.data, keys,
                                                    settings.warmup_updates, seeds)

        # The one-step program gives XLA's FLOP count per update (see DEFINITIONS), the time per
        # step that sizes the chunk, and the per-step Python loop.
        step, step_timing = aot_compile(loop.make_train_chunk(algo, 1), states, prepared.data, keys)
        step_flops = xla_flops(step)
        states, keys, calls = time_chunks(step, states, prepared.data, keys, 5)
        step_seconds = statistics.median(calls)
        entry["one_step_program"] = {"compile": step_timing, "seconds_per_call": step_seconds,
                                     "reported_flops": step_flops}
        if width in settings.python_loop_widths:
            steps = min(max(50, nice_floor(settings.chunk_seconds / step_seconds)), 20_000)
            states, keys, seconds = time_python_loop(step, states, prepared.data, keys, steps,
                                                     settings.repeats)
            entry["python_loop"] = {
                "steps_per_timing": steps, "seconds": seconds,
                "updates_per_second_per_seed": steps / statistics.median(seconds)}

        length = settings.chunk or min(max(20, nice_floor(settings.chunk_seconds / step_seconds)),
                                       10_000)
        chunk, compile_timing = aot_compile(loop.make_train_chunk(algo, length), states,
                                            prepared.data, keys)
        states, keys, seconds = time_chunks(chunk, states, prepared.data, keys, settings.repeats)
        rate = length / statistics.median(seconds)
        flops = None if step_flops is None else step_flops / seeds
        achieved = None if flops is None else flops * rate * seeds / 1e9
        entry.update({
            "chunk_length": length,
            "compile": compile_timing,
            "chunk_seconds": seconds,
            "updates_per_second_per_seed": rate,
            "updates_per_second_total": rate * seeds,
            "flops_per_update": flops,
            "achieved_gflops": achieved,
            "chunk_reported_flops": xla_flops(chunk),
            "has_conditional": "conditional(" in chunk.as_text(),
            "xla_memory": xla_memory(chunk),
        })
        if "python_loop" in entry:
            entry["python_loop"]["scan_speedup"] = rate / entry["python_loop"][
                "updates_per_second_per_seed"]
        if settings.pipeline:
            states, keys, entry["pipeline"] = run_pipeline(
                algo, prepared, states, keys, {length: chunk}, seeds, settings, eval_info)
            entry["pipeline"]["fraction_of_bare"] = (
                entry["pipeline"]["updates_per_second_per_seed"] / rate)
        jax.block_until_ready(states)
    entry.update(rss.record())
    return entry


def run_torch(settings, widths: list[int]) -> dict:
    """Time experiments/torch_iql.py in a fresh process per setting, so PyTorch's and XLA's thread
    pools never compete and each gets its own peak RSS."""
    if not settings.torch:
        return {"available": None, "skipped": "--no-torch"}
    if importlib.util.find_spec("torch") is None:
        return {"available": False,
                "skipped": "torch is not installed (pip install -e '.[bench]' installs it)"}
    results = []
    for width, threads in ((w, t) for w in widths for t in settings.torch_threads):
        command = [sys.executable, "-m", "experiments.torch_iql",
                   "--hidden", str(width), str(width), "--batch-size", str(settings.batch_size),
                   "--dataset-size", str(settings.dataset_size),
                   "--steps", str(settings.torch_steps), "--repeats", str(settings.torch_repeats),
                   "--threads", str(threads), "--seed", str(settings.seed), "--json"]
        environment = {**os.environ,
                       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env=environment, timeout=settings.config_timeout)
        except subprocess.TimeoutExpired:
            results.append({"hidden": [width, width], "threads": threads,
                            "error": f"timed out after {settings.config_timeout:.0f} s"})
            continue
        if done.returncode != 0:
            results.append({"hidden": [width, width], "threads": threads,
                            "error": done.stderr.strip()[-2000:]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"available": True, "results": results}


def comparisons(entries: list[dict], torch_results: dict) -> dict:
    """JAX/PyTorch ratios for IQL at each width (torch runs one seed)."""
    rows = []
    for torch_row in torch_results.get("results", []):
        if "updates_per_second" not in torch_row:
            continue
        width = torch_row["hidden"][0]
        jax_rows = [e for e in entries
                    if e["algo"] == "iql" and e["hidden"][0] == width and "error" not in e]
        if not jax_rows:
            continue
        fewest = min(jax_rows, key=lambda e: e["seeds"])
        best = max(jax_rows, key=lambda e: e["updates_per_second_total"])
        rows.append({
            "hidden": [width, width],
            "torch_threads": torch_row["threads"],
            "torch_updates_per_second": torch_row["updates_per_second"],
            "jax_seeds": fewest["seeds"],
            "jax_updates_per_second_per_seed": fewest["updates_per_second_per_seed"],
            "ratio_per_seed": fewest["updates_per_second_per_seed"]
                              / torch_row["updates_per_second"],
            "jax_best_total_seeds": best["seeds"],
            "jax_best_updates_per_second_total": best["updates_per_second_total"],
            "ratio_best_total": best["updates_per_second_total"] / torch_row["updates_per_second"],
        })
    return {"jax_vs_torch_iql": rows}


# ---------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    meta, settings, peak = report["meta"], report["settings"], report["matmul"]
    lines = [
        f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), "
        f"JAX {meta['jax']} on {', '.join(meta['devices'])}, "
        f"XLA_FLAGS={meta['xla_flags'] or 'unset'}; batch {settings['batch_size']}, "
        + (f"dataset {settings['dataset']}" if settings.get("dataset") else
           f"{settings['dataset_size']:,} synthetic transitions (obs {OBSERVATION_DIM}, "
           f"act {ACTION_DIM})")
        + f". `python -m experiments.benchmark {' '.join(meta.get('argv', []))}`.",
        "",
        "| algo | hidden | seeds | compile s | updates/s per seed | updates/s total "
        "| pipeline / bare | its updates / bare | s per evaluation | GFLOP/update | GFLOP/s "
        "| of matmul peak | XLA MiB | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["results"]:
        if "error" in e:
            lines.append(f"| {e['algo']} | {e['hidden'][0]}x2 | {e['seeds']} | failed: see JSON "
                         "| | | | | | | | | | |")
            continue
        flops = e["flops_per_update"]
        pipeline = e.get("pipeline", {})
        updates_only = pipeline and (pipeline["steps"] / pipeline["breakdown_seconds"]["updates"]
                                     / e["updates_per_second_per_seed"])
        lines.append(
            f"| {_label(e)}{'*' if e['has_conditional'] else ''} | {e['hidden'][0]}x2 "
            f"| {e['seeds']} | {e['compile']['total_seconds']:.1f} "
            f"| {e['updates_per_second_per_seed']:,.0f} | {e['updates_per_second_total']:,.0f} "
            f"| {_percent(pipeline.get('fraction_of_bare'))} | {_percent(updates_only or None)} "
            f"| {_number(pipeline.get('seconds_per_evaluation'), '.2f')} "
            f"| {_number(flops and flops / 1e9, '.3f')} | {_number(e['achieved_gflops'], '.1f')} "
            f"| {_percent(e['roofline_fraction'])} "
            f"| {_mib((e['xla_memory'] or {}).get('peak_memory_in_bytes'))} "
            f"| {_mib(e['peak_rss_bytes'])} |")
    sizes = "; ".join(
        f"{when}: " + ", ".join(f"n={r['n']} {r['gflops']:.1f}" for r in peak[when]["results"])
        for when in ("start", "end") if peak[when])
    lines += [
        "",
        f"Matmul peak: {peak['peak_gflops']:.1f} GFLOP/s float32 at n={peak['peak_n']} "
        f"({sizes}). "
        f"Pipeline: the whole training loop with logging and evaluation in {settings['eval_env']} every "
        f"{settings['pipeline_eval_every']} steps, {settings['pipeline_episodes']} episode(s) of "
        f"{settings['eval_max_episode_steps']} steps per seed (a real run: every 5000 steps, 10 "
        "episodes: the same evaluation cost per update), no checkpoints; \"its updates / bare\" "
        "is the pipeline's update time alone against the bare chunk, i.e. the loop's overhead "
        "without evaluation. "
        "FLOPs are XLA's cost analysis; * marks a lax.cond, counted as its costlier branch "
        "(an upper bound).",
    ]
    stages = [e for e in report["results"] if "pretraining" in e]
    if stages:
        lines += ["", "| algo | pretraining stage | steps in a real run | compile s | updates/s "
                  "| time for the real run |", "|---|---|---:|---:|---:|---:|"]
        for e in stages:
            stage = e["pretraining"]
            lines.append(f"| {_label(e)} | {stage['stage']} | {stage['steps_in_a_real_run']:,} "
                         f"| {stage['compile']['total_seconds']:.1f} "
                         f"| {stage['updates_per_second']:,.0f} "
                         f"| {stage['steps_in_a_real_run'] / stage['updates_per_second'] / 60:.1f} min |")
    warmed = [e for e in report["results"] if "warmup" in e]
    if warmed:
        lines += ["", "Warm-up before timing, updates/s per seed for each chunk of "
                  f"{warmed[0]['warmup']['chunk_length']:,} updates in order (timed once each):"]
        for e in warmed:
            rates = e["warmup"]["updates_per_second_per_seed"]
            lines.append(f"- {_label(e)}, {e['seeds']} seed(s), {e['warmup']['updates']:,} updates: "
                         + ", ".join(f"{rate:.1f}" for rate in rates))
    loops = [e for e in report["results"] if "python_loop" in e]
    if loops:
        lines += ["", "| algo | hidden | seeds | Python loop updates/s | scan updates/s "
                  "| scan speed-up |", "|---|---|---|---:|---:|---:|"]
        for e in loops:
            lines.append(f"| {e['algo']} | {e['hidden'][0]}x2 | {e['seeds']} "
                         f"| {e['python_loop']['updates_per_second_per_seed']:,.0f} "
                         f"| {e['updates_per_second_per_seed']:,.0f} "
                         f"| {e['python_loop']['scan_speedup']:.2f}x |")
    torch_rows = report["comparisons"]["jax_vs_torch_iql"]
    if torch_rows:
        lines += ["", "| IQL hidden | PyTorch threads | PyTorch updates/s | JAX updates/s (seeds) "
                  "| JAX / PyTorch "
                  "| JAX best total (seeds) | best total / PyTorch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in torch_rows:
            lines.append(f"| {r['hidden'][0]}x2 | {r['torch_threads']} "
                         f"| {r['torch_updates_per_second']:,.0f} "
                         f"| {r['jax_updates_per_second_per_seed']:,.0f} ({r['jax_seeds']}) "
                         f"| {r['ratio_per_seed']:.2f} "
                         f"| {r['jax_best_updates_per_second_total']:,.0f} "
                         f"({r['jax_best_total_seeds']}) | {r['ratio_best_total']:.2f} |")
    elif report["torch"].get("skipped"):
        lines += ["", f"PyTorch comparison skipped: {report['torch']['skipped']}."]
    return "\n".join(lines) + "\n"


def _label(entry: dict) -> str:
    options = entry.get("options") or {}
    return entry["algo"] + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})"
                            if options else "")


def _number(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


# ---------------------------------------------------------------------------------------------


def build_settings(args: argparse.Namespace):
    """The derived pipeline settings, and the evaluation env's DatasetInfo (of --dataset, else of
    EVAL_DATASET)."""
    from experiments.config import PROTOCOL

    protocol = {**PROTOCOL["locomotion"], "log_every": 1000}  # log_every: configs/train.yaml
    if args.quick:
        # Two chunks and one evaluation: every part of the pipeline runs once, nothing is scaled.
        args.eval_scale = None
        eval_every, episodes, log_every = 2 * args.chunk, 1, args.chunk
    else:
        if protocol["eval_every"] % args.eval_scale or protocol["eval_episodes"] % args.eval_scale:
            raise SystemExit(f"--eval-scale must divide {protocol['eval_every']} and "
                             f"{protocol['eval_episodes']} (1, 2, 5 or 10)")
        eval_every = protocol["eval_every"] // args.eval_scale
        episodes = protocol["eval_episodes"] // args.eval_scale
        log_every = min(protocol["log_every"], eval_every)
    settings = argparse.Namespace(**vars(args), pipeline_eval_every=eval_every,
                                  pipeline_episodes=episodes, pipeline_log_every=log_every,
                                  real_protocol=protocol)
    try:
        eval_info = envs.lookup(*(args.dataset.split("/", 1) if args.dataset else EVAL_DATASET))
    except KeyError as error:
        raise SystemExit(f"error: {error.args[0]}") from None
    if args.max_episode_steps:
        eval_info = dataclasses.replace(eval_info, max_episode_steps=args.max_episode_steps)
    return settings, eval_info


def worker(settings, eval_info) -> None:
    """Measure the one configuration named by --worker and print it on stdout after a marker."""
    name, width, seeds = settings.worker.split(":")
    # Stacks on stderr shortly before the parent's timeout, so a hang can be diagnosed.
    faulthandler.dump_traceback_later(max(1.0, settings.config_timeout - 30), exit=False)
    if settings.dataset:
        raw, _ = envs.load(*settings.dataset.split("/", 1))
    else:
        raw = synthetic_dataset(settings.dataset_size, settings.seed)
    prepared = loop.prepare(make_algorithm(name, int(width), settings.batch_size, settings.options),
                            raw)
    del raw
    entry = bench_config(name, int(width), int(seeds), prepared, settings, eval_info)
    faulthandler.cancel_dump_traceback_later()
    print(ENTRY_MARKER + json.dumps(entry), flush=True)


def run_echoing_progress(command: list[str], environment: dict, timeout: float):
    """Run `command`; (exit code or None on timeout, stdout, stderr). Its stderr lines that start
    with four spaces (the worker's progress) are echoed as they come."""
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
            command, cwd=ROOT, env=environment, text=True, stdout=out,
            stderr=subprocess.PIPE) as process:
        lines = []

        def pump():
            for line in process.stderr:
                lines.append(line)
                if line.startswith("    "):
                    print(line, end="", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        reader.join()
        out.seek(0)
        return code, out.read(), "".join(lines)


def run_config(argv: list[str], name: str, width: int, seeds: int, settings) -> dict:
    """One configuration in a fresh process: compile times without warm caches, a peak RSS of its
    own, and a timeout with retries, so a deadlocked program (see "No LAPACK in compiled programs"
    in the README) costs one configuration, not the whole benchmark."""
    command = [sys.executable, "-m", "experiments.benchmark", *argv,
               "--worker", f"{name}:{width}:{seeds}"]
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    failures = []
    for _ in range(1 + settings.retries):
        code, stdout, stderr = run_echoing_progress(command, environment, settings.config_timeout)
        if code is None:
            failures.append(f"timed out after {settings.config_timeout:.0f} s; stderr tail: "
                            f"{stderr[-3000:]}")
            continue
        if code == 0:
            # MuJoCo's C-level warnings share stdout and may be flushed after the entry.
            lines = [line for line in stdout.splitlines() if line.startswith(ENTRY_MARKER)]
            entry = json.loads(lines[-1][len(ENTRY_MARKER):])
            entry["attempts"] = len(failures) + 1
            entry["failed_attempts"] = failures
            return entry
        failures.append(f"exit code {code}; stderr tail: {stderr[-3000:]}")
    return {"algo": name, "hidden": [width, width], "seeds": seeds, "error": failures}


def write_report(report: dict, args) -> str:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(table)
    return table


def main(argv=None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings, eval_info = build_settings(args)
    if args.worker:
        worker(settings, eval_info)
        return None

    report = {"meta": {**machine_info(), "argv": argv}, "definitions": DEFINITIONS,
              "complete": False}
    report["settings"] = {**{k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(settings).items()},
                          **({} if args.dataset else {"observation_dim": OBSERVATION_DIM,
                                                       "action_dim": ACTION_DIM}),
                          "eval_env": eval_info.env_id,
                          "eval_max_episode_steps": eval_info.max_episode_steps}
    print(f"matmul peak over n={args.matmul_sizes} ...", flush=True)
    start_peak = matmul_peak(args.matmul_sizes, args.matmul_seconds, args.repeats)
    report["matmul"] = {"start": start_peak, "end": None, **_best(start_peak)}
    print(f"  {start_peak['peak_gflops']:.1f} GFLOP/s at n={start_peak['peak_n']}", flush=True)

    entries = report["results"] = []
    report["torch"] = {"available": None, "skipped": "not run yet"}
    report["comparisons"] = {"jax_vs_torch_iql": []}
    for name in args.algos:
        for width in args.widths:
            for seeds in args.seeds:
                tic = time.perf_counter()
                entry = run_config(argv, name, width, seeds, settings)
                entries.append(entry)
                if "error" in entry:
                    print(f"{name:>7} {width:>4}x2 seeds={seeds}: FAILED "
                          f"{entry['error'][-1][:300]}", flush=True)
                else:
                    pipe = entry.get("pipeline", {}).get("fraction_of_bare")
                    print(f"{name:>7} {width:>4}x2 seeds={seeds}: "
                          f"{entry['updates_per_second_per_seed']:,.0f}/s per seed, "
                          f"{entry['updates_per_second_total']:,.0f}/s total, compile "
                          f"{entry['compile']['total_seconds']:.1f} s"
                          f"{'' if pipe is None else f', pipeline {100 * pipe:.0f}% of bare'} "
                          f"({time.perf_counter() - tic:.0f} s)", flush=True)
                _set_roofline(entries, report["matmul"]["peak_gflops"])
                write_report(report, args)  # partial results survive an interrupted run
    # Measured again at the end, so a burst of load during one of the two does not set the peak.
    end_peak = matmul_peak(args.matmul_sizes, args.matmul_seconds, args.repeats)
    report["matmul"] = {"start": start_peak, "end": end_peak,
                        **_best(max(start_peak, end_peak, key=lambda m: m["peak_gflops"]))}
    _set_roofline(entries, report["matmul"]["peak_gflops"])
    print("PyTorch IQL ...", flush=True)
    report["torch"] = run_torch(settings, args.widths if "iql" in args.algos else [])
    report["comparisons"] = comparisons(entries, report["torch"])
    report["meta"]["load_average_end"] = list(os.getloadavg())
    report["complete"] = True
    table = write_report(report, args)
    print("\n" + table)
    print(f"wrote {args.out} and {args.markdown}")
    return report


def _best(peak: dict) -> dict:
    return {"peak_gflops": peak["peak_gflops"], "peak_n": peak["peak_n"]}


def _set_roofline(entries: list[dict], peak_gflops: float) -> None:
    for entry in entries:
        if "error" not in entry:
            achieved = entry["achieved_gflops"]
            entry["roofline_fraction"] = None if achieved is None else achieved / peak_gflops


if __name__ == "__main__":
    main()
