"""Train an algorithm on a dataset, several seeds in one compiled program, and optionally fine-tune
it online afterwards.

    python -m experiments.train algo=td3_bc dataset=d4rl/hopper-medium-v2 seeds=5
    python -m experiments.train algo=iql dataset=local/hopper-medium online.steps=250000 seeds=4

Writes into the Hydra run directory: metrics.jsonl, results.json (only when training completes)
and orbax checkpoints (checkpoints/), from which a run in the same folder continues, offline or
online (`resume=auto`, the default: only a run of the same settings; `resume_point`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments import sweep
from experiments.config import CONFIG_DIR, ConfigError, asks_for_help, setup
from experiments.settings import result_settings, settings_differences, settings_fingerprint

log = logging.getLogger("train")


def run(cfg: DictConfig, run_dir: Path, after_chunk: Callable[[int], None] | None = None) -> dict:
    """Train as configured, writing into `run_dir`; returns the results dict. SIGTERM (or submitit's
    time-limit signal) stops it at the next chunk boundary with a checkpoint (experiments/preemption.py).
    `after_chunk`: given to every phase's loop.ChunkRunner (called with the step after each compiled
    chunk; the tests' fault seam)."""
    # JAX, orbax and the algorithms are imported on the first run, not at start-up: `--help`
    # answers without them (experiments/config.py).
    from experiments import phases, preemption
    from experiments.assembly import Assembly
    from experiments.run_folder import RunFolder

    with preemption.watching():
        folder = RunFolder(cfg, run_dir)
        asm = Assembly.build(cfg, progress=folder.stage_line)
        checkpointer = folder.checkpoints()
        restored = resume_point(cfg, checkpointer, asm.templates() if checkpointer.latest() is not None
                                else {})
        position, trees = folder.start(asm, restored)
        hooks = folder.hooks()
        offline_runner = asm.runner("offline", position.stopped, after_chunk)
        started = time.perf_counter()
        trees = phases.run_offline(asm, trees, position, hooks, offline_runner, saved=restored is not None)
        timings = {"offline": {"seconds": time.perf_counter() - started}, "online": {}}
        online_runner = None
        if asm.online_steps:
            online_runner = asm.runner("online", offline_runner.stopped, after_chunk)
            if position.phase == "offline":  # starting it: the learner's states, fresh replay buffers
                trees = asm.begin_online(trees)
            phases.run_online(asm, trees, position, hooks, online_runner, timings["online"])
        return folder.finish(offline_runner, online_runner, timings)


def resume_point(cfg: DictConfig, checkpointer, templates: dict):
    """(index, record, trees) of the checkpoint the run continues from, or None to start fresh.

    resume=auto (the default): continue when the folder holds a readable checkpoint written with the
    same settings (`settings_fingerprint`), start fresh when it holds none, refuse (ConfigError) when
    its checkpoints were written with other settings. resume=true: continue from the last checkpoint
    whatever settings wrote it (a longer `steps`, say). resume=false: start over, deleting the
    folder's checkpoints."""
    if checkpointer.latest() is None:
        if cfg.resume is True:
            log.info("resume=true but no checkpoint in %s: starting from scratch",
                     checkpointer.settings_path.parent)
        return None
    if cfg.resume is False:
        log.info("resume=false: deleting the checkpoints in %s and starting over",
                 checkpointer.settings_path.parent)
        checkpointer.clear()
        return None
    saved = checkpointer.read_settings()
    # a fingerprint differs too when the folder predates a setting (settings.ADDED_SETTINGS)
    differences = None if saved is None or saved["fingerprint"] == settings_fingerprint(cfg) else (
        settings_differences(result_settings(saved["settings"]), result_settings(cfg)))
    if saved is None or differences:
        changed = ("(its settings.json is missing)" if saved is None else "written with other settings: "
                   + ", ".join(differences[:6]))
        if cfg.resume == "auto":
            raise ConfigError(
                f"{checkpointer.settings_path.parent} holds checkpoints {changed}; resume=true continues "
                "from them with these settings, resume=false starts over (deleting them), or choose "
                "another hydra.run.dir")
        log.warning("resume=true: continuing from checkpoints %s", changed)
    return checkpointer.restore_latest(lambda record: templates[record["phase"]])


setup(for_help=__name__ == "__main__" and asks_for_help(sys.argv[1:]))


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> dict | None:
    from experiments.grid import describe  # with JAX, as `run` (above)
    from experiments.run_folder import FAILURES

    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    sweep.check_multirun()
    if cfg.skip_done and (done := sweep.completed_results(run_dir)) is not None:
        changed = settings_differences(result_settings(done.get("config") or {}), result_settings(cfg))
        if not changed:
            log.info("skip_done=true: %s already has results.json; not training again", run_dir)
            return done["summary"] and done["summary"]["final_score_mean"]
        log.warning("skip_done=true: %s has results.json of other settings (%s); training again from "
                    "scratch", run_dir, ", ".join(changed[:6]))
        cfg.resume = False  # its checkpoints are those of the other settings
    try:
        out = run(cfg, run_dir)
    except FAILURES as error:
        sweep.fail(error.args[0] if error.args else str(error))  # exit 2; in a sweep: this job fails
    summary = out["summary"]
    for point in out.get("grid", {}).get("points", []):
        if point["summary"]:
            print(f"{describe(point['values'])}: ", end="")
            print_summary(point["summary"], cfg.seeds, run_dir)
    if summary:
        print_summary(summary, cfg.seeds, run_dir)
    return summary and summary["final_score_mean"]


def print_summary(summary: dict, seeds: int, run_dir: Path) -> None:
    print(f"final normalized score {summary['final_score_mean']:.1f} ± {summary['final_score_std']:.1f} "
          f"(IQM {summary['final_score_iqm']:.1f}) over {seeds} seed(s); results in {run_dir}")


if __name__ == "__main__":
    sweep.check_plugins(sys.argv[1:])
    main()
