"""The documented worked example of adding an algorithm (docs/adding-an-algorithm.md, linked from
the README) runs as written."""

import re
import sys
import types
from pathlib import Path

import jax
import numpy as np

import algorithms
from algorithms import Spec
from algorithms.core.algorithm import Context
from envs.dataset import Dataset
from experiments import loop

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "adding-an-algorithm.md"


def guide_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S).group(1)


def test_add_an_algorithm_example_trains():
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
        ctx = Context(data)  # the shared read-only context: here just the dataset
        states = loop.init_states(algo, Spec(3, 2, 200), ctx, keys[0])
        states, _, _, metrics = loop.make_train_chunk(algo, 200)(states, None, keys[1], ctx)
        assert metrics["nll"].shape == (200, 2)
        assert np.all(metrics["nll"][-20:].mean(0) < metrics["nll"][:20].mean(0))
        assert "gaussian_bc_base" in guide_block("yaml")
    finally:
        algorithms.ALGORITHMS.pop("gaussian_bc", None)
        sys.modules.pop(module.__name__, None)


def test_the_readme_links_the_guide_and_every_doc_it_names():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|algorithms)/[^)#]*)", readme)
    assert "docs/adding-an-algorithm.md" in links
    assert [link for link in links if not (REPO / link).exists()] == []
