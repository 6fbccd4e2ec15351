"""Seeds are sharded across devices when there are several; the numbers do not change.

Runs in a subprocess with 4 forced host devices (XLA_FLAGS), the way multi-GPU/TPU code is tested
on a CPU."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments.config import compose
from experiments.train import run

pytestmark = [pytest.mark.integration]

OVERRIDES = ["dataset=local/pendulum-mixed",
             "algo=td3_bc", "seeds=4", "algo.hidden_dims=[16,16]", "algo.batch_size=32",
             "steps=40", "log_every=20", "eval.every=0"]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax
    from experiments import seed_axis
    from experiments.config import compose
    from experiments.train import run

    assert len(jax.devices()) == 4, jax.devices()
    sharded = []
    real_shard = seed_axis.shard_seeds
    def spy(*trees):
        trees = real_shard(*trees)
        sharded.append(len(jax.tree.leaves(trees[0].actor.params)[0].sharding.device_set))
        return trees
    seed_axis.shard_seeds = spy
    run(compose(json.loads(sys.argv[1])), Path(sys.argv[2]))
    assert sharded == [4], sharded
""")


def train_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([line["critic_loss"] for line in lines])


def test_seed_axis_sharded_over_four_devices(tmp_path, monkeypatch):
    data = tmp_path / "datasets"
    monkeypatch.setenv("OFFRL_DATA_DIR", str(data))
    run(compose(OVERRIDES), tmp_path / "one_device")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(OVERRIDES), str(tmp_path / "four")],
                   check=True, env=env, cwd=tmp_path)
    np.testing.assert_allclose(train_losses(tmp_path / "four"), train_losses(tmp_path / "one_device"),
                               rtol=1e-4)
