"""`python -m experiments.evaluate` and `python -m experiments.export` end to end: a tiny run trained by
the command line, then evaluated with the per-episode returns of the run's own last evaluation (IQL
offline, SAC fine-tuned online, Uni-O4 with its chosen member), exported and reloaded in a process
that imports nothing of this project; one `error:` line and exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, UNIO4_TINY_RUN, cli_env, run_cli

pytestmark = pytest.mark.integration

PENDULUM = ["dataset=local/pendulum-mixed", "seeds=2", "log_every=20", "eval.every=20", "eval.episodes=2"]
RUNS = {
    "iql": ["algo=iql", *PENDULUM, "steps=40", "algo.hidden_dims=[8,8]", "algo.batch_size=16"],
    "sac_online": ["algo=sac", *PENDULUM, "steps=20", "algo.hidden_dims=[8,8]", "algo.batch_size=16",
                   "online.steps=40", "online.eval_every=20", "online.log_every=20", "online.episodes=2"],
    "unio4": [*UNIO4_TINY_RUN, "steps=40"],
}
GRID = ["algo=td3_bc", *PENDULUM, "seeds=1", "steps=40", "algo.hidden_dims=[8,8]", "algo.batch_size=16",
        "grid.algo.alpha=[1.0,5.0]"]


def command(module: str, *arguments, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, arguments)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """name -> (run folder, environment) of each run in RUNS, trained by the command line once."""
    env = cli_env(OFFRL_DATA_DIR=str(data_dir))
    cache = {}

    def get(name: str):
        if name not in cache:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            done = run_cli(RUNS.get(name, GRID), run_dir, env)
            assert done.returncode == 0, done.stderr[-3000:]
            cache[name] = run_dir, env
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(RUNS))
def test_evaluate_gives_the_returns_of_the_runs_last_evaluation(trained, name):
    run_dir, env = trained(name)
    done = command("experiments.evaluate", run_dir, "eval.workers=1", env=env, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "normalized score" in done.stdout and "evaluation.json" in done.stdout
    results = json.loads((run_dir / "results.json").read_text())
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    online = name == "sac_online"
    key = "online_episode_returns" if online else "episode_returns"
    assert evaluation["phase"] == ("online" if online else "offline")
    assert [seed["episode_returns"] for seed in evaluation["seeds"]] == [
        list(seed[key].values())[-1] for seed in results["seeds"]]
    assert [seed["normalized_score"] for seed in evaluation["seeds"]] == pytest.approx(
        [seed["final_score"] for seed in results["seeds"]])


def test_a_grid_point_is_chosen_by_its_value(trained):
    run_dir, env = trained("grid")
    done = command("experiments.evaluate", run_dir, "+point.alpha=5.0", "out=point.json", env=env,
                   cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    evaluation = json.loads((run_dir / "point.json").read_text())
    assert [seed["grid"] for seed in evaluation["seeds"]] == [{"alpha": 5.0}]
    point_seed = results["seeds"][1]  # trainings are point-major: alpha=5.0's seed 0 is the second
    assert evaluation["seeds"][0]["episode_returns"] == list(point_seed["episode_returns"].values())[-1]
    assert evaluation["points"] == [{"values": {"alpha": 5.0}, "mean": pytest.approx(
        results["grid"]["points"][1]["summary"]["final_score_mean"]), "std": 0.0}]


def test_bad_input_is_one_error_line(trained, tmp_path):
    run_dir, env = trained("iql")
    cases = [([tmp_path / "nothing"], "is not a folder"),
             ([tmp_path], "is not a run folder"),
             ([run_dir, "checkpoint=7"], "checkpoint=7 was not kept"),
             ([run_dir, "episodes=0"], "episodes must be an integer >= 1"),
             ([run_dir, "+point.expectile=0.8"], "point.expectile: the run's grid has no fields")]
    for arguments, message in cases:
        done = command("experiments.evaluate", *arguments, env=env, cwd=tmp_path)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (arguments, done.stderr[-2000:])
        assert [line for line in lines if line.startswith("error:")] == lines[-1:], done.stderr
        assert message in lines[-1]
    assert not (tmp_path / "nothing").exists()  # never created for Hydra's log
    done = command("experiments.export", tmp_path, env=env, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error:")
    assert "not a run folder" in done.stderr


RELOAD = """
import sys
import numpy as np
from jax import export
policy = export.deserialize(open(sys.argv[1], "rb").read())
observations = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(policy.call(observations)))
ours = sorted({m.split(".")[0] for m in sys.modules} & {"offrl", "experiments", "algorithms", "envs"})
assert not ours, ours
"""


def test_the_exported_policy_runs_without_the_project(trained, tmp_path):
    pytest.importorskip("flatbuffers", reason="jax.export serializes with flatbuffers: pip install -e .")
    import offrl

    run_dir, env = trained("iql")
    done = command("experiments.export", run_dir, "--out", tmp_path / "policy", "--seed", 1, env=env,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    observations = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    np.save(tmp_path / "observations.npy", observations)
    paths = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and Path(p).resolve() != REPO]
    bare = {**env, "PYTHONPATH": os.pathsep.join(paths)}  # this project not importable
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    reloaded = subprocess.run([sys.executable, script, tmp_path / "policy" / "policy.jaxexport",
                               tmp_path / "observations.npy", tmp_path / "actions.npy"], env=bare,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFFRL_DATA_DIR", env["OFFRL_DATA_DIR"])
        expected = offrl.load_policy(run_dir, seed=1)(observations)
    # the exported program against load_policy's: rounding of O(1) sums, as in test_evaluate.py
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), expected, rtol=1e-6, atol=1e-6)
    assert "policy.call" in (tmp_path / "policy" / "README.md").read_text()


def test_video_writes_one_mp4_per_episode_named_by_its_return(trained, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason='mp4 needs imageio-ffmpeg: pip install -e ".[video]"')
    pytest.importorskip("pygame", reason='Pendulum renders with pygame: pip install -e ".[video]"')
    run_dir, env = trained("iql")
    done = command("experiments.evaluate", run_dir, "video=true", "video.episodes=2", "seeds=[1]",
                   "out=with_video.json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.loads((run_dir / "with_video.json").read_text())
    returns = evaluation["seeds"][0]["episode_returns"]
    assert evaluation["videos"] == [f"videos/checkpoint40_seed1_episode{e}_return{r:.1f}.mp4"
                                    for e, r in enumerate(returns[:2])]
    assert all((run_dir / path).stat().st_size > 0 for path in evaluation["videos"])
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == []
