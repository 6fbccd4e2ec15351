"""The accelerator benchmark's Python part (benchmarks/gpu.sh runs it on a GPU) end to end at tiny
sizes on the CPU: every figure it promises is written, for plain seeds and for seeds x grid."""

import json

import pytest
from helpers import assert_positive

from experiments.benchmark import gpu as gpu_benchmark
from experiments.grid import Grid


def test_trainings_are_seeds_times_grid_points():
    assert gpu_benchmark.trainings_grid("iql", 1) == Grid((0,))
    grid = gpu_benchmark.trainings_grid("td3_bc", 32)
    assert grid.trainings == 32 and len(grid.seeds) == 4 and grid.fields == ("alpha",)
    assert [p["alpha"] for p in grid.points][::7] == [1.0, 10.0]


@pytest.mark.integration
def test_the_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    report = gpu_benchmark.main(["--algos", "iql", "--trainings", "1", "4", "--width", "8",
                                 "--dataset-size", "2000", "--seconds", "0.2", "--chunk", "5",
                                 "--eval-steps", "3", "--workers-eval-trainings", "1",
                                 "--workers-eval-steps", "2", "--torch", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["device"] and report["backend"] == "cpu"
    assert [(e["trainings"], e["seeds"]) for e in report["configs"]] == [(1, 1), (4, 4)]
    for entry in report["configs"]:
        assert_positive(entry, "updates_per_second_total", "updates_per_second_per_training",
                        "seconds_to_1M_updates", "eval_seconds_per_step", "xla_temp_bytes", "compile_seconds")
        assert entry["eval_envs"] == entry["trainings"]
    assert report["configs"][1]["grid"] == {"expectile": [0.6]}
    assert "torch" in report
    rows = report["evaluation_workers"]["rows"]  # 1 training's 10 episodes on 1, 2, ... processes
    assert [row["workers"] for row in rows] == sorted({1, 2, report["cores"]})
    assert all(row["environments"] == 10 and row["same_returns_as_first"] for row in rows)
    table = out.with_suffix(".md").read_text()
    assert "| iql | 4 (4 x 1) |" in table and "1080 Ti" in table and "| 1 | 10 | 2 |" in table
