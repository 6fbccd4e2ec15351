"""The documented worked example of adding an algorithm (docs/adding-an-algorithm.md, linked from
the README) runs as written, and the README's links lead somewhere."""

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
from experiments import loop, run_parts
from experiments.config import CONFIG_DIR, make_algorithm, register_configs

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "adding-an-algorithm.md"


def guide_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S).group(1)


def test_add_an_algorithm_example_trains(tmp_path):
    module = types.ModuleType("algorithms.gaussian_bc_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(guide_block("python"), str(GUIDE), "exec"), module.__dict__)
        algo = algorithms.get("gaussian_bc")(hidden_dims=(16,), batch_size=32)
        observations = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
        zeros = np.zeros(100, np.float32)
        data = Dataset(observations, np.tanh(observations[:, :2] - observations[:, 2:]), zeros,
                       observations, zeros, zeros)
        keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(np.arange(2)))
        ctx = Context(Transitions.from_dataset(data))
        states = run_parts.init_states(algo, Spec(3, 2, 200), ctx, keys[0])
        states, _, _, metrics = loop.make_train_chunk(algo, 200)(states, None, keys[1], ctx)
        assert metrics["nll"].shape == (200, 2)
        assert np.all(metrics["nll"][-20:].mean(0) < metrics["nll"][:20].mean(0))
        # The guide's YAML composes into the algorithm's paper defaults, as `algo=gaussian_bc`.
        from hydra import compose, initialize_config_dir

        register_configs()  # now with the gaussian_bc schema
        configs = tmp_path / "configs"
        shutil.copytree(CONFIG_DIR, configs)
        (configs / "algo" / "gaussian_bc.yaml").write_text(guide_block("yaml"))
        with initialize_config_dir(str(configs), version_base=None):
            cfg = compose("train", overrides=["algo=gaussian_bc", "algo.batch_size=32"])
        assert make_algorithm(cfg.algo) == algorithms.get("gaussian_bc")(batch_size=32)
    finally:
        algorithms.ALGORITHMS.pop("gaussian_bc", None)
        sys.modules.pop(module.__name__, None)


def test_the_readme_links_the_guide_and_every_page_it_names():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|algorithms)/[^)#]*)", readme)
    assert "docs/adding-an-algorithm.md" in links
    assert [link for link in links if not (REPO / link).exists()] == []
