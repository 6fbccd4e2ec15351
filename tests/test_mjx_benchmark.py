"""benchmarks/mjx.py's report (the quick preset: two environments, three steps, both backends)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco.mjx", reason="the mjx extra is not installed (pip install -e '.[mjx]')")


@pytest.mark.integration
def test_mjx_benchmark_report(tmp_path):
    from benchmarks import harness

    out = tmp_path / "mjx.json"
    harness.main(["mjx", "--preset", "quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] and report["environment"] == "Hopper-v4"
    assert [(row["backend"], row["environments"]) for row in report["rows"]] == [("host", 2), ("mjx", 2)]
    assert all(row["env_steps_per_second"] > 0 for row in report["rows"])
    table = out.with_suffix(".md").read_text()
    assert "| 2 |" in table and "MJX steps/s" in table


def test_bad_option_is_one_error_line(capsys):
    from benchmarks import harness

    with pytest.raises(SystemExit) as exit_info:
        harness.main(["mjx", "--environments", "0"])
    assert exit_info.value.code == 2
    assert "error: --environments" in capsys.readouterr().err


def test_welch_comparison_of_two_score_samples():
    """benchmarks/mjx_scores.py's margin: Welch's confidence interval holds 0 for two samples of one
    distribution and not for samples 3 standard deviations apart."""
    import numpy as np

    from benchmarks.mjx_scores import welch

    rng = np.random.default_rng(0)
    host = rng.normal(50.0, 5.0, 20)
    same = welch(host, rng.normal(50.0, 5.0, 20))
    assert same["welch_ci95"][0] < 0.0 < same["welch_ci95"][1] and same["welch_p"] > 0.05
    shifted = welch(host, host + 15.0)
    assert shifted["difference"] == pytest.approx(15.0) and shifted["welch_ci95"][0] > 0.0
    assert shifted["welch_p"] < 1e-6


def test_scores_bad_option_is_one_error_line(capsys):
    from benchmarks import harness

    with pytest.raises(SystemExit) as exit_info:
        harness.main(["mjx_scores", "--episodes", "1"])
    assert exit_info.value.code == 2
    assert "error: --episodes" in capsys.readouterr().err


@pytest.mark.integration
def test_learning_parity_report(tmp_path):
    """benchmarks/mjx_hopper_parity.py's quick preset (IQL on the compiled Pendulum, 2 seeds, a few
    hundred steps): both backends train from the same offline phase and the report compares them."""
    from benchmarks import harness

    out = tmp_path / "parity.json"
    harness.main(["mjx_hopper_parity", "--preset", "quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] and [row["backend"] for row in report["rows"]] == ["host", "mjx"]
    host, mjx = report["rows"]
    assert "env.backend=mjx" in mjx["command"] and "env.backend=host" in host["command"]
    assert report["same_offline_scores"] and host["offline_score"] == mjx["offline_score"]
    assert all(len(row["online_final_score"]) == 2 and len(row["online_evaluation_scores"][0]) == 2
               for row in report["rows"])
    assert 0.0 <= report["welch"]["online_final_score"]["welch_p"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert "| mjx |" in table and "Welch's p" in table


def test_parity_bad_option_is_one_error_line(capsys):
    from benchmarks import harness

    with pytest.raises(SystemExit) as exit_info:
        harness.main(["mjx_hopper_parity", "--online-steps", "1000", "--eval-every", "300"])
    assert exit_info.value.code == 2
    assert "error: --online-steps (1000) must be a multiple of --eval-every" in capsys.readouterr().err
