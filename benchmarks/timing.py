"""What several measurements time with: the synthetic dataset and the run configuration, the one
place a benchmark builds a run (`assemble`, through `experiments.assembly.Assembly`), the runner's
chunks and the stages timed, XLA's cost and memory analysis, the matmul peak, peak memory and the
CPU share.

Nothing here trains in a loop of its own: chunks run through `experiments.loop.ChunkRunner` (the
programs, watchdog and checks `experiments.train` uses), stages through `experiments.stages`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import cores, load_average

SYNTHETIC_DATASET = "d4rl/halfcheetah-medium-v2"  # synthetic data: only its env and scores are used
OBSERVATION_DIM, ACTION_DIM = 17, 6  # HalfCheetah's, so a run can evaluate in its environment


def write_synthetic_dataset(path: Path, size: int, seed: int = 0, episode_length: int = 1000) -> Path:
    """Random transitions of HalfCheetah's shapes in a D4RL-format HDF5 file (read like any D4RL file,
    `dataset.path=...`), cut into episodes so return-based reward scaling has episodes to measure.
    Values do not matter for speed, only shapes."""
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


def compose_run(name: str, width: int | None, batch_size: int | None = None, options: dict | None = None,
                data_file: Path | None = None, dataset: str | None = None, extra=(), layers: int = 2):
    """The run configuration `python -m experiments.train` would compose: algo=`name` with `layers`
    hidden layers of `width` (None: its own), `batch_size`, the `options` the algorithm has (a key
    it lacks is left out: one option list serves several algorithms), on `dataset` (source/name) or
    the synthetic file `data_file`, plus `extra` overrides. Stages are never cached."""
    import algorithms
    from experiments import config

    fields = {field.name for field in dataclasses.fields(algorithms.get(name))}
    data = ([f"dataset={dataset}"] if dataset else
            [f"dataset={SYNTHETIC_DATASET}", f"dataset.path={data_file}", "dataset.download=false"])
    return config.compose([
        f"algo={name}", *([f"algo.hidden_dims={hydra_value([width] * layers)}"] if width else []),
        *([f"algo.batch_size={batch_size}"] if batch_size else []),
        *(f"algo.{key}={hydra_value(value)}" for key, value in (options or {}).items()
          if key.split(".")[0] in fields),  # dynamics.hidden_dims: a field of a nested config
        *data, "pretrain.cache_dir=null", *extra])


def assemble(cfg, stage_results: dict | None = None, **fields):
    """The run `cfg` describes, built by `experiments.assembly.Assembly` (every check, the data, the
    stages' results, a context per phase, the seeds and keys), with fresh trees of its trainings:
    what a measurement's compiled chunks take. `stage_results`: {stage: result} the measurement
    trained, timed or made up itself, handed over as `stage_paths` (a per-seed stage's result is
    then every seed's). `fields`: Assembly fields replaced for making the trees only (Uni-O4 starts
    its states without AM-Q's cost)."""
    from omegaconf import OmegaConf

    from experiments.assembly import Assembly
    from experiments.stage_cache import StageRecord, write_cached

    cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="offrl-benchmark-stages-") as folder:
        for name, result in (stage_results or {}).items():
            path = Path(folder, name).absolute()
            write_cached(path, result, StageRecord(name, 0, None, False, 0.0))
            OmegaConf.update(cfg, f"stage_paths.{name}", str(path), force_add=True)
        asm = Assembly.build(cfg)
    trees = (dataclasses.replace(asm, **fields) if fields else asm).fresh()
    return SimpleNamespace(asm=asm, algo=asm.algo, spec=asm.spec, prepared=asm.prepared, values=asm.values,
                           ctx=asm.contexts["offline"], **trees)


def compile_program(runner, length: int, run) -> tuple[object, dict]:
    """The runner's AOT-compiled program for `length` updates and its compile time."""
    before = runner.compile_seconds
    program = runner.compile(length, run.states, run.buffers, run.keys, run.ctx, None, runner.values)
    return program, {"total_seconds": runner.compile_seconds - before}


def time_calls(runner, run, length: int, calls: int) -> list[float]:
    """`calls` calls of the runner's `length`-update program, `run`'s trees carried along; the
    seconds of each as the runner timed it (the compiled call and fetching its metrics)."""
    seconds = []
    for _ in range(calls):
        before = runner.update_seconds
        run.states, run.buffers, run.keys, _ = runner(run.states, run.buffers, run.keys, run.ctx, length,
                                                      int(run.states.step) + length)
        seconds.append(runner.update_seconds - before)
    return seconds


def chunk_length(step_seconds: float, chunk: int | None, chunk_seconds: float, cap: int = 10_000) -> int:
    """`chunk` where given, else the readable length whose call takes about `chunk_seconds`."""
    return chunk or min(max(20, nice_floor(chunk_seconds / step_seconds)), cap)


def time_stage(stage, spec, data, chunk: int | None, chunk_seconds: float | None, repeats: int):
    """A stage (SPOT's VAE, a dynamics ensemble) timed through `train_stage`: six one-step chunks
    size the chunk (unless `chunk` is given), then 1 + repeats chunks of it, the first (which
    compiles) apart. A validating stage runs chunks of at most `validate_every` steps (train_stage's
    schedule). Returns (its result, timings); the result has seen those chunks, not the stage's
    full `steps`: enough to start the agent."""
    from experiments.stages import train_stage

    marks = []

    def progress(step, means, kind):
        if kind == "train":
            marks.append(time.perf_counter())

    if not chunk:
        train_stage(dataclasses.replace(stage, steps=6), spec, data, 1, progress)
        chunk = chunk_length(statistics.median(np.diff(marks)), None, chunk_seconds)
    if stage.validate is not None and stage.validate_every:
        chunk = math.gcd(chunk, stage.validate_every)
    marks = [time.perf_counter()]
    result, _ = train_stage(dataclasses.replace(stage, steps=chunk * (1 + repeats)), spec, data, chunk,
                            progress)
    chunks = np.diff(marks)
    seconds = chunks[1:].tolist()
    return result, {"stage": stage.name, "steps_in_a_real_run": stage.steps, "chunk_length": chunk,
                    "compile": {"total_seconds": max(float(chunks[0]) - statistics.median(seconds), 0.0)},
                    "chunk_seconds": seconds, "updates_per_second": chunk / statistics.median(seconds)}


class PeakRSS:
    """Peak resident memory within a `with` block. Linux lets a process reset its high-water mark
    (write 5 to clear_refs), which makes the peak per configuration rather than per process."""

    def __enter__(self):
        self.start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "configuration"
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM") if self.scope == "configuration" else None
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
        self.peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        if peak is None:
            self.scope = "process"
        return False

    def record(self) -> dict:
        return {"rss_start_bytes": self.start, "peak_rss_bytes": self.peak, "rss_scope": self.scope}


def _status_kib(field: str) -> int | None:
    """A /proc/self/status memory field, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Busy:
    """Wall and process CPU seconds within a `with` block, and the load averages around it: on a
    shared machine, `cpu_share` (CPU seconds / wall seconds / cores) says how much of the cores
    this measurement had (1.0: all of them)."""

    def __enter__(self):
        self.before, self.wall, self.cpu = load_average(), time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.record = {"load_average": {"before": self.before, "after": load_average()},
                       "wall_seconds": wall, "cpu_share": cpu / wall / cores()}
        return False


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (a dict, or a one-element list in older JAX)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def xla_memory(compiled) -> dict | None:
    """XLA's own buffer sizes of a compiled program."""
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


def nice_floor(value: float) -> int:
    """The largest 1, 2 or 5 x 10^k not above `value` (at least 1): readable chunk lengths."""
    if value < 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return max(m * power for m in (1, 2, 5) if m * power <= value)


def matmul_peak(sizes: list[int], seconds: float, repeats: int) -> dict:
    """float32 matmul throughput of this machine through XLA: x <- x @ w, `count` times inside one
    jitted fori_loop (so dispatch is amortised), with an orthogonal w (so values stay finite)."""
    rows = []
    for n in sizes:
        w = jnp.linalg.qr(jax.random.normal(jax.random.key(n), (n, n)))[0]
        x = jax.random.normal(jax.random.key(n + 1), (n, n))
        count = max(1, round(seconds * 20e9 / (2 * n**3)))
        while True:
            chain = jax.jit(lambda x, w, count=count: jax.lax.fori_loop(0, count, lambda _, y: y @ w, x))
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
        rows.append({"n": n, "matmuls": count, "seconds_median": statistics.median(times),
                     "gflops": 2.0 * n**3 * count / statistics.median(times) / 1e9})
    eligible = [r for r in rows if r["n"] >= 256] or rows
    best = max(eligible, key=lambda r: r["gflops"])
    return {"results": rows, "peak_gflops": best["gflops"], "peak_n": best["n"], "dtype": "float32",
            "peak_over": "n >= 256" if eligible is not rows else "all sizes"}


def matmul_section(start: dict, end: dict | None = None) -> dict:
    """The report's `matmul`: both measurements and the higher peak (a burst of load during one of
    them does not set the peak)."""
    best = max(filter(None, (start, end)), key=lambda m: m["peak_gflops"])
    return {"start": start, "end": end, "peak_gflops": best["peak_gflops"], "peak_n": best["peak_n"]}


def number(value, spec: str, scale: float = 1.0) -> str:
    """`value / scale` formatted, or a dash where there is none (Markdown cells)."""
    return "–" if value is None else format(value / scale, spec)


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"
