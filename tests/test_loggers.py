"""The optional loggers mirror metrics.jsonl and the config: TensorBoard through tensorboardX (event
files read back here), Weights & Biases through a stand-in `wandb` module that records the calls the
mirror makes (the real client needs an account or writes a binary offline log)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import loggers

REPO = Path(__file__).resolve().parent.parent
TINY = ["dataset=d4rl/hopper-medium-v2", "steps=30", "log_every=10", "eval.every=0",
        "algo.hidden_dims=[8,8]", "algo.batch_size=8"]


class RecordingSink:
    def __init__(self):
        self.logged, self.closed = [], 0

    def log(self, prefix, step, values):
        self.logged.append((prefix, step, values))

    def close(self):
        self.closed += 1


def test_a_metrics_line_becomes_means_over_seeds_and_per_seed_scores():
    assert loggers.scalars({"type": "train", "step": 10, "q_loss": [1.0, 3.0]}) == (
        "train", 10, {"train/q_loss": 2.0})
    prefix, step, values = loggers.scalars({
        "type": "eval", "phase": "online", "step": 500, "env_step": 2000, "normalized_score": [40.0, 60.0],
        "return": [1.0, 2.0], "episode_returns": [[1.0], [2.0]], "seconds": 0.5})
    assert (prefix, step) == ("online/eval", 2000)
    assert values == {"online/eval/normalized_score": 50.0, "online/eval/normalized_score/seed_0": 40.0,
                      "online/eval/normalized_score/seed_1": 60.0, "online/eval/return": 1.5,
                      "online/eval/return/seed_0": 1.0, "online/eval/return/seed_1": 2.0,
                      "online/eval/seconds": 0.5}


def test_the_mirror_forwards_complete_lines_only_and_closes_the_sink(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = RecordingSink()
    mirror = loggers.Mirror(path, sink, interval=3600)  # no thread: lines forwarded by hand
    mirror.forward_new_lines()  # no file yet
    path.write_text('{"type": "train", "step": 1, "loss": [1.0]}\n{"type": "train", "st')
    mirror.forward_new_lines()
    assert [step for _, step, _ in sink.logged] == [1]
    with open(path, "a") as stream:
        stream.write('ep": 2, "loss": [2.0]}\n')
    mirror.forward_new_lines()
    assert [(step, v["train/loss"]) for _, step, v in sink.logged] == [(1, 1.0), (2, 2.0)]
    with open(path, "a") as stream:
        stream.write('{"type": "train", "step": 3, "loss": [3.0]}\n')
    mirror.stop()  # forwards what is left, then closes the sink
    mirror.stop()  # a second stop (atexit after Hydra's job end) does nothing
    assert [step for _, step, _ in sink.logged] == [1, 2, 3] and sink.closed == 1


def tensorboard_events(folder: Path):
    """(tag, step, value) of every scalar and the text summaries in tensorboardX's event files
    (TFRecord: length, its CRC, the serialized Event, its CRC)."""
    from tensorboardX.proto import event_pb2

    scalars, texts = [], []
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.string_val:
                    texts.append(value.tensor.string_val[0].decode())
                elif value.HasField("simple_value") or value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.append((value.tag, event.step, value.simple_value))
    return scalars, texts


@pytest.mark.integration
def test_tensorboard_mirrors_a_run(tmp_path, d4rl_steps, write_hdf5):
    pytest.importorskip("tensorboardX", reason='the tensorboard extra: pip install -e ".[tensorboard]"')
    data = write_hdf5(tmp_path / "good.hdf5", d4rl_steps(n=50))
    run_dir = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", *TINY, "algo=bc", f"dataset.path={data}",
         f"hydra.run.dir={run_dir}", "logger=tensorboard"], cwd=REPO, capture_output=True, text=True,
        timeout=300)
    assert process.returncode == 0, process.stderr
    scalars, texts = tensorboard_events(run_dir / "tensorboard")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [(f"train/{key}", line["step"], float(np.mean(value)))
                for line in lines for key, value in line.items() if isinstance(value, list)]
    assert len(expected) == 3  # BC's one loss at steps 10, 20, 30
    assert sorted((tag, step) for tag, step, _ in scalars) == sorted((tag, step) for tag, step, _ in expected)
    assert {(t, s): v for t, s, v in scalars} == pytest.approx({(t, s): v for t, s, v in expected})
    assert any("name: bc" in text and "hopper-medium-v2" in text for text in texts)


FAKE_WANDB = '''
import json, os

def _record(call, **fields):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as out:
        out.write(json.dumps({"call": call, **fields}, default=str) + "\\n")

class _Run:
    def define_metric(self, name, step_metric=None):
        _record("define_metric", name=name, step_metric=step_metric)
    def log(self, values):
        _record("log", values=values)
    def finish(self):
        _record("finish")

def init(**kwargs):
    _record("init", **kwargs)
    return _Run()
'''


@pytest.mark.integration
def test_wandb_groups_the_runs_of_a_sweep_and_mirrors_each(tmp_path, d4rl_steps, write_hdf5):
    fake = tmp_path / "fake" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_WANDB)
    data = write_hdf5(tmp_path / "good.hdf5", d4rl_steps(n=50))
    sweep_dir, log = tmp_path / "my-sweep", tmp_path / "wandb-calls.jsonl"
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", *TINY, "algo=bc,td3_bc", f"dataset.path={data}",
         f"hydra.sweep.dir={sweep_dir}", "logger=wandb", "logger.project=tests"], cwd=REPO,
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(fake.parent), "FAKE_WANDB_LOG": str(log)})
    assert process.returncode == 0, process.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    inits = [c for c in calls if c["call"] == "init"]
    assert [(c["project"], c["group"], c["name"].rsplit("_", 1)[0]) for c in inits] == [
        ("tests", "my-sweep", "bc_hopper-medium-v2"), ("tests", "my-sweep", "td3_bc_hopper-medium-v2")]
    assert [(c["id"], c["resume"]) for c in inits] == [
        (loggers.wandb_id(sweep_dir / c["name"]), "allow") for c in inits]
    assert [c["config"]["algo"]["name"] for c in inits] == ["bc", "td3_bc"]
    assert "hydra" not in inits[0]["config"] and inits[0]["config"]["steps"] == 30
    first_job = calls[:calls.index(inits[1])]
    steps = [c["values"]["train/step"] for c in first_job if c["call"] == "log"]
    assert steps == [10, 20, 30] and first_job[-1]["call"] == "finish"
    assert {"name": "train/*", "step_metric": "train/step", "call": "define_metric"} in first_job
