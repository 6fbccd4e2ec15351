"""Optional mirrors of a run's metrics.jsonl and config: Weights & Biases and TensorBoard.

    python -m experiments.train logger=tensorboard        # pip install -e ".[tensorboard]"
    python -m experiments.train -m logger=wandb logger.project=my-project algo=iql,td3_bc  # ".[wandb]"

The training loop knows nothing of them: `experiments.sweep.SweepCallbacks` starts a `Mirror` when a
job starts, which follows metrics.jsonl from a thread and forwards every new line, and stops it (last
lines included) when the job ends. A line of per-seed values becomes the mean over seeds; evaluation
scores and returns are also logged per seed. The x-axis is the line's `step`, or its `env_step` for
online lines. In a sweep, W&B groups the runs by the sweep folder's name (the callback passes
it). metrics.jsonl stays the record; the loggers are off by default and never required.

A requeued or resumed job mirrors into the same W&B run (its id derived from the run folder,
`resume="allow"`) and does not replay what was sent: the mirror keeps the count of metrics.jsonl
lines it forwarded in `<run folder>/.<logger>_mirror.json`, and skips that many lines of the file
(a resumed run rewrites the lines after its checkpoint exactly as they were).
"""

from __future__ import annotations

import atexit
import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

PER_SEED = ("normalized_score", "return")  # evaluation values also logged seed by seed
NOT_LOGGED = {"type", "step", "env_step", "phase", "stage", "episode_returns"}


def scalars(row: dict) -> tuple[str, int, dict[str, float]]:
    """(prefix, step, {name: value}) of one metrics.jsonl line: `train/q_loss` at `step` for an
    offline line, `online/eval/normalized_score` at `env_step` for an online one."""
    phase = row.get("phase", "offline")
    prefix = row["type"] if phase == "offline" else f"{phase}/{row['type']}"
    step = row["env_step"] if phase == "online" and "env_step" in row else row["step"]
    values = {}
    for key, value in row.items():
        if key in NOT_LOGGED or value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            values[f"{prefix}/{key}"] = float(np.mean(value))
            if key in PER_SEED:
                values.update({f"{prefix}/{key}/seed_{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[f"{prefix}/{key}"] = float(value)
    return prefix, int(step), values


class TensorBoardSink:
    def __init__(self, run_dir: Path, config: dict, settings: DictConfig):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(settings.get("dir") or run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(config) + "```")

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict, settings: DictConfig, group: str | None):
        import wandb

        self.run = wandb.init(project=settings.project, entity=settings.get("entity"),
                              group=settings.get("group") or group, name=run_dir.name,
                              id=wandb_id(run_dir), resume="allow",
                              tags=list(settings.get("tags") or []), mode=settings.get("mode", "online"),
                              dir=str(run_dir), config=config, reinit="finish_previous")
        self.prefixes: set[str] = set()

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        if prefix not in self.prefixes:  # each kind of line has its own x-axis
            self.run.define_metric(f"{prefix}/step")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
            self.prefixes.add(prefix)
        self.run.log({**values, f"{prefix}/step": step})

    def close(self) -> None:
        self.run.finish()


def wandb_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: the same for every attempt of a job (requeue, resume)."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:20]


class Mirror:
    """Follows `path` (a growing JSON-lines file) and hands each complete new line to `sink`.
    `state`: a file keeping the number of lines forwarded, so that a later Mirror of the same run
    (a resumed job) starts after them."""

    def __init__(self, path: Path, sink, interval: float = 2.0, state: Path | None = None):
        self.path, self.sink, self.interval, self.state = path, sink, interval, state
        self.offset = 0
        self.lines = 0  # complete lines of the file read so far
        self.sent = self._read_state()  # leading lines of the file already forwarded
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True, name="metrics-mirror")
        self.lock = threading.Lock()

    def start(self) -> Mirror:
        self.thread.start()
        atexit.register(self.stop)  # a run that exits without Hydra's job-end callback
        return self

    def _follow(self) -> None:
        while not self.done.wait(self.interval):
            self.forward_new_lines()

    def forward_new_lines(self) -> None:
        import json

        with self.lock:
            if not self.path.exists():
                return
            size = self.path.stat().st_size
            if size < self.offset:  # cut back to a checkpoint on resume: count its lines again
                self.offset = self.lines = 0
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read(size - self.offset)
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits
            self.offset += len(complete)
            sent = self.sent
            for line in complete.decode().splitlines():
                self.lines += 1
                if self.lines <= self.sent:  # forwarded before (the resumed run rewrites it as it was)
                    continue
                if line.strip():
                    self.sink.log(*scalars(json.loads(line)))
                self.sent = self.lines
            if self.state is not None and self.sent != sent:
                self.state.write_text(json.dumps({"lines_sent": self.sent}))

    def _read_state(self) -> int:
        import json

        try:
            return int(json.loads(self.state.read_text())["lines_sent"])
        except (AttributeError, OSError, ValueError, KeyError, TypeError):
            return 0

    def stop(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join()
        self.forward_new_lines()
        self.sink.close()


def run_config(config: DictConfig) -> dict[str, Any]:
    """The run's resolved config without Hydra's own node."""
    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in config.items() if key != "hydra"}


def start(config: DictConfig, run_dir: Path, group: str | None = None) -> Mirror:
    """The mirror the job's `logger` config asks for, already following metrics.jsonl. `group`: the
    W&B group of the run (the sweep folder's name in a multirun, named by the sweep's callback)."""
    settings = config.logger
    resolved = run_config(config)
    if settings.name == "tensorboard":
        sink = TensorBoardSink(run_dir, resolved, settings)
    elif settings.name == "wandb":
        sink = WandbSink(run_dir, resolved, settings, group)
    else:
        raise ValueError(f"unknown logger '{settings.name}'; use logger=none, wandb or tensorboard")
    return Mirror(run_dir / "metrics.jsonl", sink, float(settings.get("interval", 2.0)),
                  state=run_dir / f".{settings.name}_mirror.json").start()
