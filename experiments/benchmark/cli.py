"""Training throughput of the algorithms on this machine, and what limits it.

    python -m experiments.benchmark                  # ~25 min on an idle 2-core CPU; keep it idle
    python -m experiments.benchmark --quick --out /tmp/bench.json       # a smoke test, ~2-3 min
    python -m experiments.benchmark --algos spot a2pr --no-torch --out benchmarks/support.json
    python -m experiments.benchmark --algos prdc --dataset local/hopper-medium \
        --option neighbour_search=kdtree --out benchmarks/prdc-kdtree.json

For every algorithm, network width and number of vmapped seeds it measures (updates.py)
  * bare:     the engine's compiled train chunk, run by `experiments.loop.ChunkRunner`, on a dataset
              held on the device: by default 1M synthetic transitions of HalfCheetah's shapes
              (written as a D4RL file), or a real one (`--dataset source/name`, which matters
              where the data's structure sets the cost, as for PRDC's KD-tree);
  * pipeline: `experiments.train.run` itself on the same data (chunks, checks, metrics lines,
              periodic evaluation in the dataset's environment, checkpoints), as a fraction of
              the bare throughput, its timing read from the run's results.json;
  * compile time, XLA's FLOP count and memory analysis of the chunk, peak RSS, and the fraction of
    this machine's measured matmul throughput that the updates reach;
  * at the small width, a Python loop calling the one-step program per step, against the scan;
  * for algorithms with stages (SPOT's VAE), each stage's own updates/s and compile time through
    `experiments.stages.train_stage`; its result then starts the agent, as in a real run;
  * with `--warmup-updates N`, N updates trained before timing, each chunk of 1000 timed and
    printed as it ends: the speed along training, where it changes (PRDC's KD-tree search);
and times the same IQL update in plain PyTorch (torch_iql.py) in a subprocess. Each configuration
runs in a fresh process (`--worker`), killed and retried if it exceeds `--config-timeout`. Results
go to a JSON file and a Markdown table (`--out`, default benchmarks/results.json and .md),
rewritten after every configuration; `definitions` in the JSON says exactly what each number
measures. The online phase against d3rlpy: `python -m experiments.benchmark.online` (online.py).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import tempfile
import time
from pathlib import Path

import algorithms
import envs
from experiments.benchmark.machine import (
    ROOT,
    cores,
    load_average,
    machine_info,
    matmul_peak,
    run_echoing_progress,
    subprocess_environment,
)
from experiments.benchmark.report import DEFINITIONS, comparisons, markdown, run_torch
from experiments.benchmark.updates import (
    ACTION_DIM,
    OBSERVATION_DIM,
    SYNTHETIC_DATASET,
    bench_config,
    write_synthetic_dataset,
)

ENTRY_MARKER = "benchmark-entry: "

FULL = {"dataset_size": 1_000_000, "chunk": 0, "chunk_seconds": 2.0, "repeats": 5,
        "eval_scale": 5, "pipeline_periods": 2,
        "matmul_sizes": [64, 256, 512, 1024, 2048], "matmul_seconds": 0.5,
        "torch_steps": 200, "torch_repeats": 5, "seeds": [1, 4, 8], "widths": [256, 64],
        "config_timeout": 900}
QUICK = {"dataset_size": 20_000, "chunk": 25, "chunk_seconds": 0.2, "repeats": 2,
         "eval_scale": 0, "pipeline_periods": 1,
         "matmul_sizes": [256, 512], "matmul_seconds": 0.05,
         "torch_steps": 10, "torch_repeats": 2, "seeds": [2], "widths": [64],
         "config_timeout": 300}


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
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    parser.add_argument("--python-loop-widths", nargs="*", type=int, default=[64],
                        help="widths at which the per-step Python loop is also timed")
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-seconds", type=float)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    parser.add_argument("--torch-steps", type=int, help="PyTorch updates per timed block")
    parser.add_argument("--torch-repeats", type=int)
    parser.add_argument("--torch-python", default=sys.executable,
                        help="the Python that runs the PyTorch side (one where torch imports, e.g. "
                        ".venv-d3rlpy/bin/python; default: this one)")
    parser.add_argument("--torch-threads", nargs="+", type=int,
                        help="PyTorch thread counts to time (default: cores available, then 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-timeout", type=float,
                        help="seconds before one configuration's process is killed and retried")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: ALGO:WIDTH:SEEDS
    parser.add_argument("--data-file", help=argparse.SUPPRESS)  # internal: the synthetic dataset
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--markdown", type=Path, help="default: --out with the suffix .md")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.torch_threads is None:
        args.torch_threads = [cores()] if args.quick else sorted({cores(), 1}, reverse=True)
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


def build_settings(args: argparse.Namespace):
    """The derived pipeline settings, and the evaluation env's DatasetInfo (of --dataset, else of
    the synthetic data's SYNTHETIC_DATASET)."""
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
        eval_info = envs.lookup(*(args.dataset or SYNTHETIC_DATASET).split("/", 1))
    except KeyError as error:
        raise SystemExit(f"error: {error.args[0]}") from None
    return settings, eval_info


def worker(settings) -> None:
    """Measure the one configuration named by --worker and print it on stdout after a marker."""
    name, width, seeds = settings.worker.split(":")
    # Stacks on stderr shortly before the parent's timeout, so a hang can be diagnosed.
    faulthandler.dump_traceback_later(max(1.0, settings.config_timeout - 30), exit=False)
    entry = bench_config(name, int(width), int(seeds), settings)
    faulthandler.cancel_dump_traceback_later()
    print(ENTRY_MARKER + json.dumps(entry), flush=True)


def run_config(argv: list[str], name: str, width: int, seeds: int, settings) -> dict:
    """One configuration in a fresh process: compile times without warm caches, a peak RSS of its
    own, and a timeout with retries, so a deadlocked program (see "No LAPACK in compiled programs"
    in the README) costs one configuration, not the whole benchmark."""
    command = [sys.executable, "-m", "experiments.benchmark", *argv,
               "--worker", f"{name}:{width}:{seeds}",
               *(["--data-file", str(settings.data_file)] if settings.data_file else [])]
    environment = subprocess_environment()
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
        worker(settings)
        return None
    with tempfile.TemporaryDirectory(prefix="offrl-benchmark-") as folder:
        if not args.dataset:  # written once, read by every configuration's process
            print(f"writing {args.dataset_size:,} synthetic transitions ...", flush=True)
            settings.data_file = write_synthetic_dataset(Path(folder) / "synthetic.hdf5",
                                                         args.dataset_size, args.seed)
        return measure(argv, args, settings, eval_info)


def measure(argv: list[str], args, settings, eval_info) -> dict:
    """Every configuration, the matmul peak before and after, the PyTorch comparison; the report."""
    report = {"meta": {**machine_info(), "argv": argv}, "definitions": DEFINITIONS,
              "complete": False}
    report["settings"] = {**{k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(settings).items() if k != "data_file"},
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
    report["meta"]["load_average_end"] = load_average()
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
