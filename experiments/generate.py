"""Datasets made by D4RL's protocol on gymnasium MuJoCo v5, offline and deterministically.

    python -m experiments.generate env=hopper                # every split, from the shipped policies
    python -m experiments.generate env=hopper splits=[medium] size=100000
    python -m experiments.generate env=walker2d retrain=true  # retrain the behaviour policies (resumable)

The command line only: the splits and how they are collected are experiments/splits.py, the
training of the behaviour policies (SAC snapshots in `envs/behaviour/<env>/`) experiments/behaviour.py,
and the files' format envs/behaviour_files.py. Files are written with Minari's API into
`$OFFRL_DATA_DIR` (default ~/.cache/offrl-jax/datasets). Overrides are an OmegaConf dot-list
(`key=value`, `train.total_steps=...`), checked against `GenerateSettings`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from envs.behaviour_files import BEHAVIOUR_DIR
from envs.dataset import DatasetError
from envs.generated import BEHAVIOUR_ENVS, SPLITS
from experiments.splits import check_request, command_line, generate


@dataclasses.dataclass
class TrainSettings:
    hidden_dims: list[int] | None = None  # None: the environment's entry in behaviour.TRAINING
    total_steps: int | None = None
    start_steps: int | None = None
    snapshot_every: int | None = None
    eval_episodes: int = 10
    buffer_size: int | None = None  # None: 1M (a resumed training must keep its first value)


@dataclasses.dataclass
class GenerateSettings:
    env: str = "hopper"
    splits: list[str] = dataclasses.field(default_factory=lambda: list(SPLITS))
    size: int | None = None  # transitions in random, medium and expert; None: the env's default
    seed: int = 0
    data_dir: str | None = None  # default: $OFFRL_DATA_DIR or ~/.cache/offrl-jax/datasets
    policy_dir: str | None = None  # default: the shipped envs/behaviour
    force: bool = False  # rewrite splits that already exist
    retrain: bool = False  # train the behaviour policy first (resumes an interrupted training)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)


def parse(argv: list[str]) -> GenerateSettings:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(GenerateSettings),
                                 OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise DatasetError(f"bad override ({message}); write key=value with keys from "
                           f"{', '.join(f.name for f in dataclasses.fields(GenerateSettings))}.") from None
    settings = OmegaConf.to_object(merged)
    check_request(settings.env, settings.splits)
    if settings.size is None:
        settings.size = BEHAVIOUR_ENVS[settings.env].default_size
    if settings.size <= 0:
        raise DatasetError(f"size must be positive, got {settings.size}.")
    return settings


def retrain(settings: GenerateSettings, policy_root: Path) -> None:
    # Imported only now: importing orbax (its checkpoints) gives the root logger a handler, and
    # basicConfig in `main` would then no longer show the progress lines.
    from experiments.behaviour import TRAINING, train_behaviour

    train = {**TRAINING[settings.env],
             **{k: v for k, v in dataclasses.asdict(settings.train).items() if v is not None}}
    train_behaviour(settings.env, policy_root / settings.env, seed=settings.seed, **train)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the progress lines
    try:
        settings = parse(argv)
        policy_root = Path(settings.policy_dir or BEHAVIOUR_DIR)
        if settings.retrain:
            retrain(settings, policy_root)
        report = generate(settings.env, settings.splits, settings.size, settings.seed,
                          Path(settings.data_dir) if settings.data_dir else None, policy_root,
                          force=settings.force, command=command_line(argv))
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, stats in report.items():
        print(f"local/{settings.env}-{split}: {stats['transitions']:,} transitions, "
              f"{stats['episodes']} episodes, return {stats['return_mean']:.1f} "
              f"(normalized {stats['normalized_return']:.1f}), {stats['seconds']:.0f} s")
    if not report:
        print(f"every requested split of {settings.env} already exists (force=true rewrites).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
