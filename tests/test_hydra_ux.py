"""The Hydra command line as a user meets it: a fast `--help`, no option silently ignored, the
Optuna sweeper, and progress lines from long work (issue 22, items 11, 13, 16, 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments import config

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


# ---- item 11: --help without JAX --------------------------------------------------------------


@pytest.mark.integration
def test_help_answers_without_importing_jax(tmp_path):
    env = {**os.environ, "OFFRL_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    os.environ["OFFRL_CACHE_DIR"] = str(tmp_path)
    try:
        config.save_schemas(config.algorithm_schemas())  # what any earlier start leaves behind
    finally:
        del os.environ["OFFRL_CACHE_DIR"]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.train", "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "== Configuration groups ==" in done.stdout and "expectile: '${by_family:" in done.stdout
    modules = imported_modules(done.stderr)
    assert "hydra" in modules  # the parser saw the imports
    assert not {"jax", "flax", "algorithms", "orbax.checkpoint"} & modules


def test_help_from_the_schema_cache_shows_what_the_schemas_show(tmp_path, monkeypatch):
    """The cached schemas compose into the same config text as the dataclasses themselves."""
    monkeypatch.setenv("OFFRL_CACHE_DIR", str(tmp_path))
    assert config.cached_schemas() is None
    overrides = ["algo=spot", "dataset=local/hopper-medium"]
    real = OmegaConf.to_yaml(config.compose(overrides))  # setup() writes the cache
    assert config.schema_cache().exists()
    config.register_configs(for_help=True)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base=None):
        cached = OmegaConf.to_yaml(compose("train", overrides=overrides))
    config.register_configs()  # the typed schemas back, for the tests after this one
    assert cached == real
