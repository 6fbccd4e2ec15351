"""The benchmarks' one harness: the command line and its presets, the machine's facts and load, the
JSON + Markdown report, and configurations measured in fresh processes with retries.

    python -m benchmarks <measurement> [--preset quick|full] [--out FILE.json] [its own options]

A measurement is a module of this folder with a docstring (its help), `PRESETS` ({"full": {...},
"quick": {...}}: the values of its options left unset), `DEFINITIONS` (what each number means,
written into the JSON), `add_arguments(parser)`, `measure(args, report)` (fills the report and calls
`report.write()` after every configuration, so an interrupted run keeps what it measured) and
`markdown(report) -> str`. `check(args, parser)`, where a module has one, refuses bad combinations
with argparse's one `error:` line (exit code 2), as every bad option does.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("updates", "online", "mopo", "unio4", "gpu", "evaluation", "mjx", "mjx_scores",
                "mjx_hopper_parity")
WORKER_MARKER = "benchmark-entry: "  # the line a worker process prints its measurement on


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints): on a shared machine, how busy it
    was while measuring."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    import flax
    import jax
    import numpy as np
    import optax

    cpu_model = None
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in
                          Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                         None)
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(),
        "jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": flax.__version__,
        "optax": optax.__version__, "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cores_available": cores(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_start": load_average(),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class Report(dict):
    """The report of one measurement: `meta` (machine, command, load before and after), `settings`
    (the options after the preset), `definitions`, `complete`, and what the measurement adds; written
    as JSON to `path` and as Markdown beside it."""

    def __init__(self, path: Path, markdown, definitions: dict, settings: dict, argv: list[str]):
        super().__init__(meta={**machine_info(), "argv": argv}, definitions=definitions,
                         settings={key: str(value) if isinstance(value, Path) else value
                                   for key, value in settings.items()}, complete=False)
        self.path, self.markdown = Path(path), markdown

    def write(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, indent=1) + "\n")
        table = self.markdown(self)
        self.path.with_suffix(".md").write_text(table)
        return table

    def finish(self) -> str:
        self["meta"]["load_average_end"] = load_average()
        self["complete"] = True
        return self.write()


def command_line(report: dict) -> str:
    """The command that wrote `report`, for its Markdown."""
    return " ".join(["python -m benchmarks", *report["meta"]["argv"]])


def table(columns: list[str], align: str, rows: list[list]) -> list[str]:
    """A Markdown table: a header of `columns`, `align` one of l, r or c per column, one line per row."""
    rule = {"l": "---", "r": "---:", "c": ":-:"}
    line = lambda cells: "| " + " | ".join(str(cell) for cell in cells) + " |"
    return [line(columns), "|" + "|".join(rule[a] for a in align) + "|", *(line(row) for row in rows)]


def key_value_options(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """`--option KEY=VALUE` items as {key: YAML value}; a malformed one is a usage error."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--option takes key=value, not '{item}'")
        options[key] = yaml.safe_load(value)
    return options


def subprocess_environment() -> dict:
    """This environment with the repository first on PYTHONPATH, for the benchmarks' own processes."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_echoing_progress(command: list[str], environment: dict, timeout: float, cwd=ROOT):
    """Run `command`; (exit code or None on timeout, stdout, stderr). Its stderr lines that start
    with four spaces (a worker's progress) are echoed as they come."""
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
            command, cwd=cwd, env=environment, text=True, stdout=out, stderr=subprocess.PIPE) as process:
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


def in_fresh_process(command: list[str], timeout: float, retries: int) -> dict:
    """A worker's measurement (the JSON it prints after WORKER_MARKER), in a fresh process killed
    and retried after `timeout` seconds, so a deadlocked program costs one configuration, not the
    benchmark; {"error": [why each attempt failed]} when none succeeded."""
    failures = []
    for _ in range(1 + retries):
        code, stdout, stderr = run_echoing_progress(command, subprocess_environment(), timeout)
        if code == 0:
            # MuJoCo's C-level warnings share stdout and may be flushed after the entry.
            lines = [line for line in stdout.splitlines() if line.startswith(WORKER_MARKER)]
            return {**json.loads(lines[-1][len(WORKER_MARKER):]), "attempts": len(failures) + 1,
                    "failed_attempts": failures}
        why = f"timed out after {timeout:.0f} s" if code is None else f"exit code {code}"
        failures.append(f"{why}; stderr tail: {stderr[-3000:]}")
    return {"error": failures}


def parse(name: str, argv: list[str]):
    """The measurement module and its options, the preset's values filled in where unset."""
    module = importlib.import_module(f"benchmarks.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(module.PRESETS), default="full",
                        help="sizes and repeats of the options left unset (quick: seconds, a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / f"{name}.json",
                        help="the JSON report; the Markdown table is written beside it (.md)")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    for key, value in module.PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if hasattr(module, "check"):
        module.check(args, parser)
    return module, args


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MEASUREMENTS:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__ + "\nmeasurements: " + ", ".join(MEASUREMENTS))
            return None
        got = f"'{argv[0]}'" if argv else "nothing"
        print(f"error: python -m benchmarks takes a measurement first, one of {', '.join(MEASUREMENTS)} "
              f"(got {got}); e.g. python -m benchmarks updates --preset quick", file=sys.stderr)
        raise SystemExit(2)
    module, args = parse(argv[0], argv[1:])
    if getattr(args, "worker", None):  # one configuration, in the process the parent started
        print(WORKER_MARKER + json.dumps(module.measure_worker(args)), flush=True)
        return None
    report = Report(args.out, module.markdown, module.DEFINITIONS, vars(args), argv)
    module.measure(args, report)
    print("\n" + report.finish() + f"\nwrote {report.path} and {report.path.with_suffix('.md')}")
    return report
