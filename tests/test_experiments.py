"""Every experiment config (configs/experiment/*.yaml, the paper tables) composes for every job of its
sweep: the datasets it names exist, the algorithm's per-dataset values resolve, seeds are vmapped."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments.config import CONFIG_DIR, make_algorithm, setup
from experiments.settings import check_run_settings

EXPERIMENTS = sorted(path.stem for path in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_initialized():
    setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        yield
    GlobalHydra.instance().clear()


def compose_with_hydra(overrides: list[str]):
    return compose("train", overrides=overrides, return_hydra_config=True)


def sweep_jobs(experiment: str) -> list[list[str]]:
    """The overrides of every job the experiment's sweep launches (its hydra.sweeper.params)."""
    params = compose_with_hydra([f"+experiment={experiment}"]).hydra.sweeper.params or {}
    parser = OverridesParser.create()
    choices = [[f"{key}={value}" for value in parser.parse_override(f"{key}={values}")
                .sweep_string_iterator()] for key, values in params.items()]
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_for_every_dataset_it_names(experiment):
    jobs = sweep_jobs(experiment)
    datasets = {override for job in jobs for override in job if override.startswith("dataset=")}
    # AntMaze, locomotion, MOPO's table (with random), or with random and expert
    assert len(datasets) in (6, 9, 12, 15), datasets
    for job in jobs:
        cfg = compose_with_hydra([f"+experiment={experiment}", *job])
        assert cfg.seeds == 5  # seeds vmapped inside each job
        assert experiment.split("_")[0] in ("offline", "o2o") or cfg.algo.name == experiment.rsplit("_", 1)[0]
        assert cfg.hydra.sweep.dir.startswith("multirun/")
        check_run_settings(cfg)
        assert (cfg.online.steps > 0) == experiment.startswith(("o2o_", "famo2o_"))
        make_algorithm(cfg.algo)  # per-dataset hyperparameters resolve and fit the dataclass
        for key, value in cfg.items():  # every value resolves (hydra's own node needs a running job)
            if key != "hydra" and OmegaConf.is_config(value):
                OmegaConf.to_container(value, resolve=True)


def test_an_algorithm_list_on_the_command_line_sweeps_with_the_experiment_datasets():
    params = compose_with_hydra(["+experiment=offline_locomotion"]).hydra.sweeper.params
    assert params.dataset.count(",") == 8
    cfg = compose_with_hydra(["+experiment=offline_locomotion", "algo=td3_bc",
                              "dataset=d4rl/hopper-medium-replay-v2"])
    assert (cfg.algo.name, cfg.dataset.name, cfg.dataset.steps) == ("td3_bc", "hopper-medium-replay-v2",
                                                                    1_000_000)
