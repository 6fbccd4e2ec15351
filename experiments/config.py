"""Hydra configuration: algorithm schemas from their dataclasses, datasets from the registry.

Algorithm hyperparameters are defined once, as the fields of each algorithm's dataclass (the
paper's defaults); they are stored in Hydra's ConfigStore as `/<name>_base`, outside the `algo`
group so that only the YAML files are offered as `algo=` choices (in `--help` and in the error for
an unknown name), and `configs/algo/<name>.yaml` takes `- /<name>_base` as its default and adds
per-family and per-dataset choices on top (`${by_family:...}`, `${by_dataset:...}`). Every
registered dataset becomes a choice `dataset=<source>/<name>`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import algorithms
import envs


class ConfigError(ValueError):
    """A setting out of range or inconsistent with the data; the message names the fix."""


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")

# The evaluation protocol of each dataset family (IQL's, the common one): steps, eval every, episodes.
PROTOCOL = {
    "locomotion": {"steps": 1_000_000, "eval_every": 5_000, "eval_episodes": 10},
    "antmaze": {"steps": 1_000_000, "eval_every": 100_000, "eval_episodes": 100},
    "adroit": {"steps": 1_000_000, "eval_every": 5_000, "eval_episodes": 10},
    "kitchen": {"steps": 1_000_000, "eval_every": 5_000, "eval_episodes": 10},
    "toy": {"steps": 20_000, "eval_every": 2_000, "eval_episodes": 10},
}


# Top-level run settings: integers with their smallest allowed value, and booleans.
RUN_INTEGERS = {"seed": 0, "seeds": 1, "steps": 0, "log_every": 1, "eval.every": 0, "eval.episodes": 0,
                "checkpoint.every": 0, "checkpoint.keep": 1, "online.steps": 0, "online.eval_every": 0,
                "online.episodes": 0, "online.log_every": 0, "online.checkpoint_every": 0,
                "online.start_steps": 0}
RUN_BOOLEANS = ("resume", "skip_done", "dataset.download")


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
    try:
        envs.worker_count(OmegaConf.select(cfg, "eval.workers", default="auto"), 1)  # 'auto' or >= 1
    except envs.DatasetError as error:
        raise ConfigError(str(error)) from None
    if cfg.steps == 0 and cfg.online.steps == 0:
        raise ConfigError("steps=0 and online.steps=0: nothing to train; set steps=N (offline "
                          "gradient steps) and/or online.steps=N (environment steps)")


def family_of(cfg_root) -> str:
    dataset = cfg_root.dataset
    return envs.lookup(dataset.source, dataset.name).family


def select_for_dataset(table, name: str, family: str):
    """The entry of `table` for dataset `name` of family `family`. A key matches when it is the
    family or a prefix of the name (fnmatch wildcards allowed); the longest matching key wins, so
    `hopper-medium-expert` beats `hopper` beats a family; `default` is the fallback."""
    matches = [key for key in table if key != "default"
               and (key == family or fnmatch.fnmatchcase(name, f"{key}*"))]
    if matches:
        return table[max(matches, key=len)]  # max keeps the first of equally long keys
    if "default" not in table:
        raise KeyError(f"table {dict(table)} has no entry for dataset '{name}' (family '{family}') "
                       "and no 'default'")
    return table["default"]


def by_dataset(table, *, _root_):
    """`${by_dataset:{default: 2.5, halfcheetah: 40, antmaze: 7.5}}`: the value for the chosen
    dataset (keys: dataset-name prefixes or families; see `select_for_dataset`)."""
    return select_for_dataset(table, _root_.dataset.name, family_of(_root_))


by_family = by_dataset  # `${by_family:{...}}` tables are the family-only case of the same lookup


def run_steps(*, _root_):
    """The offline gradient steps of a run that does not set `steps`: the algorithm's
    `default_steps` when its protocol fixes them (Uni-O4's 10 000 BPPO updates, FamO2O-CQL's 2M, PPO's
    none), else the dataset family's protocol (`dataset.steps`)."""
    own = _root_.algo.get("default_steps")
    return _root_.dataset.steps if own is None else own


def register_resolvers() -> None:
    for name, resolver in (("by_family", by_family), ("by_dataset", by_dataset)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    if not OmegaConf.has_resolver("offline_only"):  # true unless the run fine-tunes online
        OmegaConf.register_new_resolver("offline_only",
                                        lambda *, _root_: not _root_.get("online", {}).get("steps", 0))
    if not OmegaConf.has_resolver("run_steps"):  # `steps`: the algorithm's own count, else the dataset's
        OmegaConf.register_new_resolver("run_steps", run_steps)
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", lambda text: str(text).replace("/", "-"))


def register_configs() -> None:
    store = ConfigStore.instance()
    for name in algorithms.available():
        schema = OmegaConf.structured(algorithms.get(name))
        OmegaConf.set_struct(schema, False)
        schema.name = name
        OmegaConf.set_struct(schema, True)
        store.store(name=f"{name}_base", node=schema)
    for info in envs.REGISTRY.values():
        group, _, leaf = f"dataset/{info.key}".rpartition("/")
        node = {"source": info.source, "name": info.name, "path": None, "download": True,
                "last_rows": None, **PROTOCOL[info.family], **info.protocol}
        store.store(group=group, name=leaf, node=node, package="dataset")
    # grid.algo.<field>=[...] (experiments/grid.py): every algorithm's field may be named, unset.
    fields = {item.name for name in algorithms.available()
              for item in dataclasses.fields(algorithms.get(name))}
    store.store(name="grid_base", node={"grid": {"algo": dict.fromkeys(sorted(fields))}})
    store.store(group="dataset/minari", name="custom", package="dataset", node={
        "source": "minari", "name": "???", "path": None, "download": True, "last_rows": None,
        **PROTOCOL["locomotion"]})


def setup() -> None:
    register_resolvers()
    register_configs()


def make_algorithm(cfg: DictConfig) -> algorithms.Algorithm:
    """Instantiate the algorithm dataclass from the resolved `algo` config."""
    values = OmegaConf.to_container(cfg, resolve=True)
    cls = algorithms.get(values.pop("name"))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in fields:  # a nested settings dataclass (reward, online)
            try:
                value = type(fields[key].default_factory())(**value)
            except ValueError as error:
                raise ConfigError(f"{error}; fix the algo.{key}.* override") from None
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    unknown = set(kwargs) - set(fields)
    if unknown:
        raise KeyError(f"algo.{sorted(unknown)[0]} is not a hyperparameter of {cls.__name__}")
    return cls(**kwargs)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The same configuration `python -m experiments.train <overrides>` would use (for tests and
    notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose("train", overrides=overrides or [], return_hydra_config=False)
