"""A run's settings: which values are valid (every check of the top-level settings and of the
command line's options, before anything is loaded), and which of them decide the numbers a run
computes (`result_settings`, its fingerprint, the differences between two runs: resume, skip_done
and the report compare runs by them). experiments/config.py registers and composes the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import envs
from experiments.config import ConfigError

# Top-level run settings: integers with their smallest allowed value, and booleans.
RUN_INTEGERS = {"seed": 0, "seeds": 1, "steps": 0, "log_every": 1, "eval.every": 0, "eval.episodes": 0,
                "eval.mean_of_last": 1, "checkpoint.every": 0, "checkpoint.keep": 1, "online.steps": 0,
                "online.eval_every": 0, "online.episodes": 0, "online.log_every": 0,
                "online.checkpoint_every": 0, "online.start_steps": 0, "env.num_envs": 1}
RUN_BOOLEANS = ("skip_done", "dataset.download")
RESUME_CHOICES = ("auto", True, False)
BACKENDS = ("host", "mjx")  # env.backend: where the online phase's environments run
EVAL_BACKENDS = ("auto", *BACKENDS)  # eval.backend: where evaluations run (auto: env.backend's)

# Settings that do not change what a run computes: where and how it is watched, kept and resumed.
# Two configs that differ only in these have the same fingerprint (`settings_fingerprint`).
NOT_RESULTS = ("resume", "skip_done", "logger", "eval.workers", "eval.mean_of_last", "watchdog_seconds",
               "checkpoint.keep",
               "pretrain", "dataset.download", "hydra")


def check_run_settings(cfg: DictConfig) -> None:
    """Every top-level run setting must have its type and be in range; name the first that is not."""
    for key, minimum in RUN_INTEGERS.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum} (got {value!r}); fix the "
                              f"override {key}=...")
    watchdog = OmegaConf.select(cfg, "watchdog_seconds")
    if isinstance(watchdog, bool) or not isinstance(watchdog, int | float) or watchdog < 0:
        raise ConfigError(f"watchdog_seconds must be a number of seconds >= 0, 0 to turn it off (got "
                          f"{watchdog!r}); fix the override watchdog_seconds=...")
    for key in RUN_BOOLEANS:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false (got {value!r}); fix the override {key}=...")
    if OmegaConf.select(cfg, "resume") not in RESUME_CHOICES:
        raise ConfigError(f"resume must be auto, true or false (got {OmegaConf.select(cfg, 'resume')!r}); "
                          "fix the override resume=...")
    if OmegaConf.select(cfg, "env.backend") not in BACKENDS:
        raise ConfigError(f"env.backend must be host or mjx (got {OmegaConf.select(cfg, 'env.backend')!r}); "
                          "fix the override env.backend=...")
    if OmegaConf.select(cfg, "eval.backend", default="auto") not in EVAL_BACKENDS:
        raise ConfigError(f"eval.backend must be auto, host or mjx (got "
                          f"{OmegaConf.select(cfg, 'eval.backend')!r}); fix the override eval.backend=...")
    try:
        envs.worker_count(OmegaConf.select(cfg, "eval.workers", default="auto"), 1)  # 'auto' or >= 1
    except envs.DatasetError as error:
        raise ConfigError(str(error)) from None
    if cfg.steps == 0 and cfg.online.steps == 0:
        raise ConfigError("steps=0 and online.steps=0: nothing to train; set steps=N (offline "
                          "gradient steps) and/or online.steps=N (environment steps)")
    if HydraConfig.initialized():  # the command line: its overrides are what the user set
        from experiments.sweep import in_multirun

        check_sweeper(cfg, HydraConfig.get().sweeper)
        overrides = list(HydraConfig.get().overrides.task)
        for problem in check_options_apply(cfg, overrides, in_sweep=in_multirun()):
            logging.getLogger("train").warning("%s", problem)
    else:
        check_options_apply(cfg, [])


def check_sweeper(cfg: DictConfig, sweeper: DictConfig) -> None:
    """A sweeper that optimises what the run returns (Optuna) must maximise it, and the run must
    have a score to return (an evaluation, offline or online)."""
    if "optuna" not in str(sweeper.get("_target_", "")):
        return
    directions = sweeper.get("direction")
    directions = list(directions) if OmegaConf.is_list(directions) else [directions]
    if any(str(direction).endswith("minimize") for direction in directions):
        raise ConfigError("hydra.sweeper.direction=minimize would search for the settings with the "
                          "lowest score; use hydra/sweeper=optuna_maximize or set "
                          "hydra.sweeper.direction=maximize")
    if not (cfg.eval.every > 0 and cfg.eval.episodes > 0) and not (
            cfg.online.steps > 0 and cfg.online.episodes > 0):
        raise ConfigError("the Optuna sweeper tunes for the score a run returns, and evaluation is off "
                          f"(eval.every={cfg.eval.every}, eval.episodes={cfg.eval.episodes}); set "
                          "eval.every=N eval.episodes=N")


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """{key: value} of Hydra command-line overrides (`+a.b=1` -> `a.b`, `online=locomotion` ->
    `online`)."""
    pairs = (item.split("=", 1) for item in overrides)
    return {pair[0].lstrip("+~"): pair[-1] for pair in pairs}


def unused_options(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """One message for each option that would do nothing in this run: a dataset option its source
    ignores, and any of `overrides` (the command line's) that the run never reads, because the
    phase it configures does not run (online.* with online.steps=0, eval.* with evaluation off) or
    because something else replaces it (algo.<field> beside grid.algo.<field>)."""
    problems = []
    dataset = cfg.dataset
    label = f"{dataset.source}/{dataset.name}"
    if dataset.source == "local":
        if dataset.download is False:
            problems.append(f"dataset.download=false does not apply to {label}: local datasets are "
                            "generated on this machine, never downloaded; drop the override")
        if dataset.path and not Path(str(dataset.path)).expanduser().is_dir():
            problems.append(
                f"dataset.path '{dataset.path}' is not a folder: for {label} it is the folder local "
                "datasets are generated into and read from (default $OFFRL_DATA_DIR); create it or drop "
                "the override. To train on a D4RL HDF5 file use dataset=d4rl/<name> dataset.path=FILE")
    offline_eval = cfg.eval.every > 0 and cfg.eval.episodes > 0
    grid = OmegaConf.select(cfg, "grid.algo") or {}
    for key, value in parse_overrides(overrides).items():
        if cfg.online.steps == 0 and ((key.startswith("online.") and key != "online.steps")
                                      or key.startswith(("algo.online.", "env."))
                                      or (key == "online" and value != "none")):
            problems.append(f"{key}={value} does nothing with online.steps=0 (no online phase): set "
                            "online.steps=N to fine-tune online, or drop the override")
        elif (key in ("eval.episodes", "eval.workers", "eval.backend") and cfg.eval.every == 0
              and cfg.online.steps == 0):
            problems.append(f"{key}={value} does nothing with eval.every=0 (evaluation off): set "
                            "eval.every=N or drop the override")
        elif key == "eval.every" and cfg.eval.every > 0 and not offline_eval:
            problems.append(f"eval.every={value} does nothing with eval.episodes=0 (evaluation off): set "
                            "eval.episodes=N or drop the override")
        elif key.startswith("algo.") and grid.get(key.split(".")[1]) is not None:
            field = key.split(".")[1]
            problems.append(f"{key}={value} does nothing: grid.algo.{field} gives {field} its values; drop "
                            "one of the two")
    return problems


def check_options_apply(cfg: DictConfig, overrides: list[str], in_sweep: bool = False) -> list[str]:
    """Refuse (ConfigError naming the first) an option that would be silently ignored
    (`unused_options`). In a multirun the command line's options are shared by every job, so one
    that does nothing in this job (online.* in the online.steps=0 job of a sweep over it) is
    returned, as warnings, instead; a dataset option its source ignores is refused either way."""
    problems = unused_options(cfg, overrides)
    dataset_problems = [p for p in problems if p.startswith("dataset.")]
    if problems and (dataset_problems or not in_sweep):
        raise ConfigError((dataset_problems or problems)[0])
    return problems


# Settings added after runs were written, with the value that computes what a run written before
# the key computed: a run folder (settings.json, results.json) that lacks one reads as having this
# value, so a requeued job resumes its checkpoints after an upgrade and the report pools its seeds
# with the new runs of the same settings.
ADDED_SETTINGS = {"env.backend": "host", "env.num_envs": 1, "eval.backend": "auto"}


def with_added_settings(settings: dict) -> dict:
    """`settings` (a plain nested dict, changed in place and returned) with every `ADDED_SETTINGS`
    key it lacks at its old-run value."""
    for key, value in ADDED_SETTINGS.items():
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.setdefault(parent, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(leaf, value)
    return settings


def result_settings(config) -> dict:
    """The resolved settings that decide what a run computes: `config` (a DictConfig or the plain
    dict results.json keeps; keys added since it was written at `ADDED_SETTINGS`) without the
    `NOT_RESULTS` fields."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=True)
    settings = json.loads(json.dumps(config))  # a deep copy
    if settings:
        with_added_settings(settings)
    for key in NOT_RESULTS:
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return settings


def settings_fingerprint(config) -> str:
    """A short hash of `result_settings(config)`: equal for two runs that compute the same numbers."""
    text = json.dumps(result_settings(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two `result_settings` dicts, sorted."""
    keys = sorted(set(old) | set(new))
    differences = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += settings_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}")
    return differences
