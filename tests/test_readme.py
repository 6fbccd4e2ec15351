"""The README's worked example of adding an algorithm runs as written."""

import re
import shutil
import sys
import types
from pathlib import Path

import jax
import numpy as np

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context
from algorithms.core.replay import Transitions
from envs.dataset import Dataset
from experiments import loop
from experiments.config import CONFIG_DIR, make_algorithm, register_configs

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str, language: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_add_an_algorithm_example_trains(tmp_path):
    module = types.ModuleType("algorithms.gaussian_bc_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(readme_block("## Adding an algorithm", "python"), "README.md", "exec"),
             module.__dict__)
        algo = algorithms.get("gaussian_bc")(hidden_dims=(16,), batch_size=32)
        observations = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
        zeros = np.zeros(100, np.float32)
        data = Dataset(observations, np.tanh(observations[:, :2] - observations[:, 2:]), zeros,
                       observations, zeros, zeros)
        keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(np.arange(2)))
        ctx = Context(Transitions.from_dataset(data))
        states = loop.init_states(algo, Spec(3, 2, 200), ctx, keys[0])
        states, _, _, metrics = loop.make_train_chunk(algo, 200)(states, None, keys[1], ctx)
        assert metrics["nll"].shape == (200, 2)
        assert np.all(metrics["nll"][-20:].mean(0) < metrics["nll"][:20].mean(0))
        # The README's YAML composes into the algorithm's paper defaults, as `algo=gaussian_bc`.
        from hydra import compose, initialize_config_dir

        register_configs()  # now with the gaussian_bc schema
        configs = tmp_path / "configs"
        shutil.copytree(CONFIG_DIR, configs)
        (configs / "algo" / "gaussian_bc.yaml").write_text(readme_block("## Adding an algorithm", "yaml"))
        with initialize_config_dir(str(configs), version_base=None):
            cfg = compose("train", overrides=["algo=gaussian_bc", "algo.batch_size=32"])
        assert make_algorithm(cfg.algo) == algorithms.get("gaussian_bc")(batch_size=32)
    finally:
        algorithms.ALGORITHMS.pop("gaussian_bc", None)
        sys.modules.pop(module.__name__, None)
