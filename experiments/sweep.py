"""What keeps a Hydra sweep whole: failures recorded per job, finished jobs skipped, loggers mirrored.

Hydra's launchers run every job through `hydra.core.utils.run_job`, which catches an `Exception`
from the task function and marks that job FAILED while the other jobs go on; the sweeper re-raises
the first failure only after its batch has run (the whole sweep, with the default `basic` sweeper).
`SystemExit` is not an `Exception`: it escapes `run_job` and ends the sweep (basic launcher) or kills
the worker (joblib), losing the jobs after it. So inside a multirun a bad input raises `JobFailed`
(`fail`), and a single run still ends with one `error:` line and exit code 2.

`SweepCallbacks` (listed in `configs/train.yaml` under `hydra.callbacks`) runs in the process of each
job, whatever the launcher (basic, joblib, submitit, Ray):
- on a FAILED job it writes `failure.json` into the job's folder (overrides, error line, exception
  type), which `experiments.report` lists; a successful re-run removes it;
- it mirrors `metrics.jsonl` and the run's config to Weights & Biases or TensorBoard when
  `logger=wandb|tensorboard` (`experiments/loggers.py`).

Job folders are named by the job's overrides (`hydra.sweep.subdir` in configs/train.yaml), so a
re-launched sweep (same `hydra.sweep.dir`) finds each job's folder whatever the order of its
options. With `skip_done=true` a job whose `results.json` is complete and was written with the same
settings is skipped (`completed_results`; other settings: trained again, one line says so), and the
interrupted jobs continue from their checkpoints (`resume=auto`, the default).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import loggers  # wandb / tensorboardX are imported only when a sink starts

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"
RESULTS_FILE = "results.json"


class JobFailed(RuntimeError):
    """Bad input or a diverged run inside a multirun: this job fails, the sweep goes on."""


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def fail(message: str) -> NoReturn:
    """Print `error: <message>` and stop this run: exit code 2 for a single run; in a multirun, raise
    `JobFailed` so that Hydra records the failure and runs the other jobs."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if in_multirun():
        raise JobFailed(message) from None
    sys.exit(2)


# Launchers and sweepers of Hydra's plugins, by their config names (the project's presets in
# configs/hydra/launcher included): the module that provides them and how to install it.
PLUGINS = {
    "launcher": {
        **dict.fromkeys(("slurm", "slurm_local", "submitit_slurm", "submitit_local"),
                        ("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[submitit]"')),
        **dict.fromkeys(("ray", "ray_cluster", "ray_aws"), (
            "hydra_plugins.hydra_ray_launcher", 'pip install -e ".[ray]" (in its own environment)')),
        **dict.fromkeys(("joblib", "parallel"),
                        ("hydra_plugins.hydra_joblib_launcher", 'pip install -e "."')),
    },
    "sweeper": {
        "optuna": ("hydra_plugins.hydra_optuna_sweeper", "pip install hydra-optuna-sweeper"),
        "nevergrad": ("hydra_plugins.hydra_nevergrad_sweeper", "pip install hydra-nevergrad-sweeper"),
        "ax": ("hydra_plugins.hydra_ax_sweeper", "pip install hydra-ax-sweeper"),
    },
}


def missing_plugin(arguments: list[str]) -> str | None:
    """The error line for a `hydra/launcher=...` or `hydra/sweeper=...` argument whose plugin is not
    installed (Hydra would only say it "could not load" the config), else None."""
    import importlib.util

    for argument in arguments:
        match = re.fullmatch(r"[+~]*hydra/(launcher|sweeper)=(\S+)", argument)
        if not match or match[2] not in PLUGINS[match[1]]:
            continue
        module, install = PLUGINS[match[1]][match[2]]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return (f"hydra/{match[1]}={match[2]} needs a Hydra plugin that is not installed "
                    f"({module}); install it: {install}")
    return None


def check_plugins(arguments: list[str]) -> None:
    """Exit 2 with one `error:` line when the command names a launcher or sweeper not installed."""
    message = missing_plugin(arguments)
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_multirun() -> None:
    """A config that sweeps (`hydra.sweeper.params`, as every `+experiment=` does) run without `-m`
    would train only the defaults (the toy dataset): one `error:` line with the `-m` command."""
    hydra_cfg = HydraConfig.get()
    params = OmegaConf.select(hydra_cfg, "sweeper.params")
    if hydra_cfg.mode == RunMode.MULTIRUN or not params:
        return
    command = " ".join(["python -m experiments.train -m", *hydra_cfg.overrides.task])
    fail(f"this config sweeps {', '.join(params)} (hydra.sweeper.params), which only a multirun "
         f"does; add -m: {command}")


def completed_results(run_dir: Path) -> dict | None:
    """The results of a finished run in `run_dir`, or None when there are none (or they are
    unreadable: a half-written file is not a finished run)."""
    try:
        results = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and "seeds" in results else None


def error_line(error: BaseException) -> str:
    text = str(error.args[0]) if error.args else str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def failure_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    error = job_return._return_value  # the exception run_job caught (return_value would re-raise)
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    return {
        "overrides": list(job_return.overrides or []),
        "algo": choices.get("algo"),
        "dataset": choices.get("dataset"),
        "error": error_line(error) if isinstance(error, BaseException) else str(error),
        "exception": type(error).__name__,
        "job_num": OmegaConf.select(config, "hydra.job.num"),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class SweepCallbacks(Callback):
    """Hydra callbacks of every train job: failure records and the optional metric loggers."""

    def __init__(self) -> None:
        self._mirror = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        output = Path(config.hydra.runtime.output_dir)
        (output / FAILURE_FILE).unlink(missing_ok=True)  # a stale record from an earlier attempt
        logger = OmegaConf.select(config, "logger.name", default="none")
        if logger and logger != "none":
            # W&B groups a sweep's runs by the sweep folder's name.
            group = Path(config.hydra.sweep.dir).name if in_multirun() else None
            self._mirror = loggers.start(config, output, group)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
        if job_return.status != JobStatus.FAILED or isinstance(job_return._return_value, SystemExit):
            return  # a single run's exit(2) has already printed its one `error:` line
        output = Path(config.hydra.runtime.output_dir)
        record = failure_record(config, job_return)
        output.mkdir(parents=True, exist_ok=True)
        (output / FAILURE_FILE).write_text(json.dumps(record, indent=1))
        log.error("job %s failed (%s); recorded in %s", record["job_num"], record["error"],
                  output / FAILURE_FILE)
