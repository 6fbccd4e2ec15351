"""Facts about the machine and the measuring tools both benchmarks share: versions, load, peak
memory, XLA's cost and memory analysis, the matmul peak, and subprocesses that echo their progress."""

from __future__ import annotations

import datetime
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

ROOT = Path(__file__).resolve().parents[2]


def subprocess_environment() -> dict:
    """This process's environment with the repository first on PYTHONPATH, for the benchmark's
    own subprocesses (each configuration runs in a fresh process)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints): on a shared machine, how busy it
    was while measuring."""
    return [round(x, 2) for x in os.getloadavg()]


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
        "cores_available": cores(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_start": load_average(),
        "argv": sys.argv,
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cores() -> int:
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
