"""Hyperparameters as a batch axis beside seeds (experiments/grid.py).

A training of a grid equals the separate run with that value and seed to float rounding, not bit
for bit: as a seed trained beside others differs from it alone by ~1e-7 (XLA rounds a vmapped
program differently per batch size; tests/test_loop.py), and a grid value enters the program as a
float32 number where the separate run folds a Python constant (e.g. 1 - tau) in float64 first."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import cli_env

import algorithms
import envs
from algorithms import Spec
from experiments import loop, run_parts
from experiments.assembly import Assembly
from experiments.config import compose, make_algorithm
from experiments.grid import Grid, GridError, check_host_fields, check_traceable, make_grid
from experiments.train import run

SMALL = ["dataset=local/pendulum-mixed", "algo.hidden_dims=[16,16]", "algo.batch_size=32", "steps=40",
         "log_every=10", "eval.every=20", "eval.episodes=2"]


def trained(algo, prepared, seeds, values=None, steps=30, chunk=None):
    """`steps` updates of one training per seed (and grid value), as the loop runs them."""
    spec = Spec(prepared.data.observations.shape[1], prepared.data.actions.shape[1], steps)
    keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(np.asarray(seeds)))
    ctx = run_parts.make_context(algo, prepared)
    states = run_parts.init_states(algo, spec, ctx, keys[0], values=values)
    chunk = chunk or loop.make_train_chunk(algo, steps)
    states, _, _, metrics = chunk(states, None, keys[1], ctx, None, values)
    return states, metrics


@pytest.mark.parametrize("name, points", [
    ("td3_bc", [{"alpha": 1.0, "actor_lr": 1e-4}, {"alpha": 2.5, "actor_lr": 3e-4},  # a learning
                {"alpha": 5.0, "actor_lr": 1e-3}]),                                  # rate too
    # the same check on another algorithm, a minute of CPU: with `pytest -m slow`
    pytest.param("iql", [{"expectile": 0.5}, {"expectile": 0.7}, {"expectile": 0.9}],
                 marks=pytest.mark.slow)])
def test_a_3_point_grid_of_2_seeds_gives_the_numbers_of_6_separate_runs(name, points, offline_data):
    algo = make_algorithm(compose([f"algo={name}", *SMALL]).algo)
    raw, _ = envs.load("local", "pendulum-mixed")
    prepared = run_parts.prepare(algo, raw)
    grid = Grid((0, 1), tuple(points[0]), tuple(points))
    batched, batched_metrics = trained(algo, prepared, grid.training_seeds, grid.values())
    chunks = {}  # one program per value, called for each seed alone
    for i, seed in enumerate(grid.training_seeds):
        alone_algo = dataclasses.replace(algo, **grid.point_of(i))
        chunk = chunks.setdefault(i // 2, loop.make_train_chunk(alone_algo, 30))
        alone, alone_metrics = trained(alone_algo, prepared, [seed], chunk=chunk)
        for a, b in zip(jax.tree.leaves(batched.replace(step=None)),
                        jax.tree.leaves(alone.replace(step=None)), strict=True):
            np.testing.assert_allclose(a[i], b[0], rtol=2e-5, atol=2e-6)
        for key in batched_metrics:
            np.testing.assert_allclose(batched_metrics[key][:, i], alone_metrics[key][:, 0],
                                       rtol=2e-5, atol=2e-6)
    first = jax.tree.leaves(batched.actor.params)[-1]
    assert not np.allclose(first[0], first[2], rtol=1e-3)  # same seed, another value: differs


@pytest.mark.integration
def test_grid_run_writes_one_entry_per_point_and_seed_equal_to_the_separate_run(offline_data, tmp_path):
    gridded = run(compose(["algo=td3_bc", "seeds=2", "grid.algo.alpha=[1.0,2.5,5.0]", *SMALL]),
                  tmp_path / "grid")
    alone = run(compose(["algo=td3_bc", "seed=1", "seeds=1", "algo.alpha=5.0", *SMALL]),
                tmp_path / "alone")
    assert gridded["summary"] is None and gridded["grid"]["fields"] == ["alpha"]
    assert [(e["seed"], e["grid"]["alpha"]) for e in gridded["seeds"]] == [
        (0, 1.0), (1, 1.0), (0, 2.5), (1, 2.5), (0, 5.0), (1, 5.0)]
    points = gridded["grid"]["points"]
    assert [p["values"] for p in points] == [{"alpha": 1.0}, {"alpha": 2.5}, {"alpha": 5.0}]
    assert points[2]["summary"]["final_score_mean"] == pytest.approx(
        np.mean([e["final_score"] for e in gridded["seeds"][4:]]))
    beside, single = gridded["seeds"][5], alone["seeds"][0]
    for key in ("final_score", "best_score", "final_return"):
        np.testing.assert_allclose(beside[key], single[key], rtol=1e-5, err_msg=key)
    for step, returns in single["episode_returns"].items():
        np.testing.assert_allclose(beside["episode_returns"][step], returns, rtol=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "grid" / "metrics.jsonl").read_text().splitlines()]
    for line in (line for line in lines if line["type"] in ("train", "eval")):
        assert line["seed"] == [0, 1, 0, 1, 0, 1]
        assert line["grid"] == {"alpha": [1.0, 1.0, 2.5, 2.5, 5.0, 5.0]}
    evaluation = next(line for line in lines if line["type"] == "eval")
    assert len(evaluation["normalized_score"]) == 6


@pytest.mark.integration
def test_the_online_phase_explores_with_each_trainings_values(offline_data, tmp_path):
    """Every training has its own environment (seeded by its seed, as alone) and explores with its
    own grid values; its online score is the separate run's."""
    online = ["online.steps=30", "online.eval_every=30", "online.episodes=1", "online.log_every=10"]
    gridded = run(compose(["algo=td3_bc", "seeds=1", "grid.algo.exploration_noise=[0.1,0.5]",
                           *SMALL, *online]), tmp_path / "grid")
    alone = run(compose(["algo=td3_bc", "seeds=1", "algo.exploration_noise=0.5", *SMALL, *online]),
                tmp_path / "alone")
    beside, single = gridded["seeds"][1], alone["seeds"][0]
    assert beside["grid"] == {"exploration_noise": 0.5}
    np.testing.assert_allclose(beside["online_final_score"], single["online_final_score"], rtol=1e-5)
    assert gridded["seeds"][0]["online_final_score"] != pytest.approx(beside["online_final_score"])
    lines = [json.loads(line) for line in (tmp_path / "grid" / "metrics.jsonl").read_text().splitlines()]
    online_lines = [line for line in lines if line.get("phase") == "online"]
    assert {line["type"] for line in online_lines} == {"train", "eval"}
    assert all(line["grid"] == {"exploration_noise": [0.1, 0.5]} for line in online_lines)


def test_the_early_stop_runs_per_grid_point_with_its_values():
    @dataclasses.dataclass
    class StopAbove(algorithms.get("td3_bc")):
        limit: float = 1.0

        def early_stop(self, metrics):
            return np.asarray(metrics["q"]).max(axis=0) > self.limit, f"q above {self.limit:g}"

    grid = Grid((0, 1), ("limit",), ({"limit": 0.5}, {"limit": 5.0}))
    q = np.array([[1.0, 0.2, 1.0, 7.0]])  # (steps, trainings): points x seeds
    flags, reason = grid.early_stop(StopAbove())({"q": q})
    np.testing.assert_array_equal(flags, [True, False, False, True])
    assert "limit=0.5: q above 0.5" in reason and "limit=5: q above 5" in reason


@pytest.mark.parametrize("name, override, words", [
    ("td3_bc", "grid.algo.policy_freq=[1,2]", "policy_freq cannot be a grid axis: it is an integer"),
    ("td3_bc", "grid.algo.hidden_dims=[64]", "hidden_dims cannot be a grid axis: it is a list"),
    ("iql", "grid.algo.cosine_actor_lr=[0.0,1.0]", "cosine_actor_lr cannot be a grid axis: it is a boolean"),
    ("td3_bc", "grid.algo.expectile=[0.5]", "td3_bc has no hyperparameter 'expectile'"),
    ("td3_bc", "grid.algo.alpha=2.5", "must be a non-empty list of numbers"),
    ("iql", "grid.algo.expectile=[0.7,1.5]", "grid point expectile=1.5: algo.expectile must be in (0, 1)"),
])
def test_a_field_that_cannot_be_a_grid_axis_is_refused_by_its_kind(name, override, words):
    cfg = compose([f"algo={name}", override, *SMALL])
    with pytest.raises(GridError, match=None) as error:
        make_grid(cfg, make_algorithm(cfg.algo), [0])
    assert words in error.value.args[0], error.value.args[0]


def test_fields_used_once_for_every_training_are_refused(offline_data):
    raw, _ = envs.load("local", "pendulum-mixed")
    spec = Spec(raw.observation_dim, raw.action_dim, 40)
    for name, field, hook in (("cal_ql", "discount", "returns_to_go"), ("spot", "vae_lr", "stages"),
                              ("mopo", "real_ratio", "sampling")):
        cfg = compose([f"algo={name}", f"grid.algo.{field}=[0.1,0.2]", *SMALL, "algo.termination=pendulum"]
                      if name == "mopo" else [f"algo={name}", f"grid.algo.{field}=[0.1,0.2]", *SMALL])
        algo = make_algorithm(cfg.algo)
        with pytest.raises(GridError, match=f"reads it in {hook}\\(\\), once for every training"):
            check_host_fields(make_grid(cfg, algo, [0]), algo, spec, raw)
    cfg = compose(["algo=cal_ql", "grid.algo.min_q_weight=[1.0,5.0]", *SMALL])  # used in the update only
    algo = make_algorithm(cfg.algo)
    check_host_fields(make_grid(cfg, algo, [0]), algo, spec, raw)


def test_a_field_that_does_not_trace_is_refused_and_a_constant_learning_rate_traces(offline_data):
    for cosine, refused in ((True, True), (False, False)):  # the cosine schedule holds its peak
        cfg = compose(["algo=iql", "grid.algo.actor_lr=[1e-4,3e-4]", f"algo.cosine_actor_lr={cosine}",
                       *SMALL])
        asm = Assembly.build(cfg, stages="abstract")  # (builds without the probe)
        if refused:
            with pytest.raises(GridError, match="actor_lr cannot be a grid axis: iql uses it where the "
                                                "compiled program needs a fixed number"):
                check_traceable(asm)
        else:
            check_traceable(asm)


@pytest.mark.integration
def test_a_structural_field_in_the_grid_stops_the_command_with_one_error_line(data_dir, tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "experiments.train", "algo=td3_bc", "grid.algo.policy_freq=[1,2]", *SMALL,
         f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=cli_env(OFFRL_DATA_DIR=str(data_dir)),
        capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-2000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: grid.algo.policy_freq cannot be a grid axis")
    assert "-m algo.policy_freq=" in lines[0]
    assert not (tmp_path / "results.json").exists()


SHARDED = textwrap.dedent("""
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
        sharded.append(len(trees[2]["alpha"].sharding.device_set))  # the grid values
        return trees
    seed_axis.shard_seeds = spy
    run(compose(json.loads(sys.argv[1])), Path(sys.argv[2]))
    assert sharded == [4], sharded
""")


@pytest.mark.integration
def test_the_training_axis_of_a_grid_is_sharded_over_devices(offline_data, tmp_path):
    overrides = ["algo=td3_bc", "seeds=2", "grid.algo.alpha=[1.0,5.0]", *SMALL[:-3], "eval.every=0"]
    one = run(compose(overrides), tmp_path / "one")
    env = cli_env(OFFRL_DATA_DIR=str(offline_data), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, "-c", SHARDED, json.dumps(overrides), str(tmp_path / "four")],
                   check=True, env=env, cwd=tmp_path)
    losses = [[json.loads(line)["critic_loss"] for line in (tmp_path / name / "metrics.jsonl")
               .read_text().splitlines()] for name in ("one", "four")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert len(one["seeds"]) == 4


def test_the_report_gives_one_row_per_grid_point(tmp_path, capsys):
    from experiments import report

    folder = tmp_path / "run"
    folder.mkdir()
    finals = {1.0: [40.0, 50.0], 5.0: [70.0, 80.0]}
    seeds = [{"seed": seed, "grid": {"alpha": alpha}, "final_return": 0.0, "final_score": score,
              "best_score": score, "episode_returns": {}}
             for alpha, scores in finals.items() for seed, score in enumerate(scores)]
    (folder / "results.json").write_text(json.dumps({
        "config": {"algo": {"name": "td3_bc"}, "dataset": {"source": "d4rl", "name": "hopper-medium-v2"}},
        "summary": None, "seeds": seeds}))
    columns = {"seed": [0, 1, 0, 1], "grid": {"alpha": [1.0, 1.0, 5.0, 5.0]}}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(
        {"type": "eval", "step": step, "normalized_score": [40.0, 50.0, 70.0, 80.0], **columns}) + "\n"
        for step in (5, 10)))
    assert report.main([str(tmp_path), "--reps", "200"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| d4rl/hopper-medium-v2")]
    assert any("td3_bc (alpha=1)" in row and "45.0" in row for row in rows), rows
    assert any("td3_bc (alpha=5)" in row and "75.0" in row for row in rows), rows
    from experiments.report_figures import pooled_curves
    curves = pooled_curves([(folder, {"alpha": 5.0})])
    np.testing.assert_array_equal(curves["offline"][1], [[70.0, 70.0], [80.0, 80.0]])
