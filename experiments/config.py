"""Hydra configuration: algorithm schemas from their dataclasses, datasets from the registry.

Algorithm hyperparameters are defined once, as the fields of each algorithm's dataclass (the
paper's defaults); they are stored in Hydra's ConfigStore as `/<name>_base`, outside the `algo`
group so that only the YAML files are offered as `algo=` choices (in `--help` and in the error for
an unknown name), and `configs/algo/<name>.yaml` takes `- /<name>_base` as its default and adds
per-family and per-dataset choices on top (`${by_family:...}`, `${by_dataset:...}`). Every
registered dataset becomes a choice `dataset=<source>/<name>`.

`python -m experiments.train --help` only prints the composed config, so it is answered without
importing JAX (`setup(for_help=True)`): the schemas come from a cache file written by every other
start (`schema_cache`), keyed by a hash of the sources that define them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import envs  # the dataset registry; light (numpy only). `algorithms` (JAX) is imported where used


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
    if not OmegaConf.has_resolver("short_hash"):  # job folders named by their overrides (train.yaml)
        OmegaConf.register_new_resolver(
            "short_hash", lambda text: hashlib.sha256(str(text).encode()).hexdigest()[:8])


def share_config_store() -> None:
    """Let copies of Hydra's ConfigStore share it instead of copying it. Hydra 1.3 deep-copies its
    config repository, the ConfigStore included, each time it lists a config group
    (`CachingConfigRepository.__init__`): with this project's ~200 stored schemas and datasets,
    `--help` (which lists every group twice) spent 25 of its 29 s copying. The store is the
    process's registry, filled once by `register_configs` and only read afterwards (Hydra copies
    each node it loads, `ConfigStore.load`), so sharing it changes nothing else; Hydra's main branch
    stopped copying it the same way (facebookresearch/hydra #2928)."""
    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self


SCHEMA_SOURCES = ("algorithms", "envs")  # the packages whose code defines the schemas


def schema_cache() -> Path:
    """`<cache>/config-schemas/<hash>.json`: the algorithm schemas as plain data, named by a hash of
    the sources that define them (and OmegaConf's version), so an edit makes a new file."""
    import omegaconf

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(omegaconf.__version__.encode())
    for package in SCHEMA_SOURCES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    cache = Path(os.environ.get("OFFRL_CACHE_DIR", "~/.cache/offrl-jax")).expanduser()
    return cache / "config-schemas" / f"{digest.hexdigest()[:20]}.json"


def algorithm_schemas() -> dict:
    """{name: the algorithm's dataclass as a structured config}; imports every algorithm (JAX)."""
    import algorithms

    schemas = {}
    for name in algorithms.available():
        schema = OmegaConf.structured(algorithms.get(name))
        OmegaConf.set_struct(schema, False)
        schema.name = name
        OmegaConf.set_struct(schema, True)
        schemas[name] = schema
    return schemas


def cached_schemas() -> dict | None:
    """The schemas of `schema_cache()` as plain configs (no types: enough to print them), or None."""
    try:
        saved = json.loads(schema_cache().read_text())
    except (OSError, ValueError):
        return None
    return {name: OmegaConf.create(schema) for name, schema in saved.items()}


def save_schemas(schemas: dict) -> None:
    """Write `schema_cache()` when missing; a cache that cannot be written only costs speed."""
    path = schema_cache()
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps({name: OmegaConf.to_container(schema)
                                       for name, schema in schemas.items()}))
        staging.replace(path)
    except OSError:
        pass


def register_configs(for_help: bool = False) -> None:
    """Store the algorithm schemas and the datasets in Hydra's ConfigStore. `for_help`: take the
    schemas from the cache when it is current (no JAX import; see the module docstring)."""
    store = ConfigStore.instance()
    schemas = cached_schemas() if for_help else None
    if schemas is None:
        schemas = algorithm_schemas()
        save_schemas(schemas)
    for name, schema in schemas.items():
        store.store(name=f"{name}_base", node=schema)
    for info in envs.REGISTRY.values():
        group, _, leaf = f"dataset/{info.key}".rpartition("/")
        node = {"source": info.source, "name": info.name, "path": None, "download": True,
                "last_rows": None, **PROTOCOL[info.family], **info.protocol}
        store.store(group=group, name=leaf, node=node, package="dataset")
    # grid.algo.<field>=[...] (experiments/grid.py): every algorithm's field may be named, unset.
    fields = {field for schema in schemas.values() for field in schema if field != "name"}
    store.store(name="grid_base", node={"grid": {"algo": dict.fromkeys(sorted(fields))}})
    store.store(group="dataset/minari", name="custom", package="dataset", node={
        "source": "minari", "name": "???", "path": None, "download": True, "last_rows": None,
        **PROTOCOL["locomotion"]})


def setup(for_help: bool = False) -> None:
    share_config_store()
    register_resolvers()
    register_configs(for_help)


def asks_for_help(argv: list[str]) -> bool:
    """True when the command line only asks Hydra for its help text."""
    return any(arg in ("--help", "-h", "--hydra-help") for arg in argv)


def make_algorithm(cfg: DictConfig):
    """Instantiate the algorithm dataclass from the resolved `algo` config."""
    import algorithms

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
