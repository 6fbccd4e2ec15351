"""`python -m experiments.report` on a synthetic sweep folder written in the training loop's format:
known scores give a known table; the IQM and its stratified-bootstrap interval are recomputed here
independently; bad folders and bad files give one clear line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rliable", reason='the report extra: pip install -e ".[report]"')

from experiments import report  # noqa: E402

# final scores per seed: known numbers, (dataset, algo) -> seeds
FINAL = {
    ("d4rl/hopper-medium-v2", "iql"): [60.0, 70.0, 65.0],
    ("d4rl/walker2d-medium-v2", "iql"): [80.0, 76.0, 90.0],
    ("d4rl/hopper-medium-v2", "bc"): [50.0, 54.0, 52.0],
    ("d4rl/walker2d-medium-v2", "bc"): [70.0, 10.0, 75.0],
}
EVAL_STEPS = (5, 10)


def write_run(folder: Path, dataset: str, algo: str, finals: list[float], extra: dict | None = None):
    """A run folder as experiments.train leaves it: results.json and metrics.jsonl. The score at the
    first evaluation is final - 10 and the best is the final + 1 (an earlier, better evaluation)."""
    folder.mkdir(parents=True)
    source, name = dataset.split("/", 1)
    seeds = [{"seed": i, "final_return": 0.0, "final_score": score, "best_score": score + 1.0,
              "episode_returns": {}, **(extra or {})} for i, score in enumerate(finals)]
    results = {"config": {"algo": {"name": algo}, "dataset": {"source": source, "name": name}},
               "summary": None, "seeds": seeds}
    (folder / "results.json").write_text(json.dumps(results))
    rows = [{"type": "train", "step": 5, "loss": [0.1] * len(finals)}]
    rows += [{"type": "eval", "step": step, "return": [0.0] * len(finals),
              "normalized_score": [s - 10.0 * (step == EVAL_STEPS[0]) for s in finals]}
             for step in EVAL_STEPS]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "2026-12-01_10-00-00"
    for i, ((dataset, algo), finals) in enumerate(FINAL.items()):
        write_run(root / f"{i}_{algo}_{dataset.replace('/', '-')}", dataset, algo, finals)
    return root


def run_report(*args: str, capsys) -> tuple[int, str, str]:
    code = report.main([*map(str, args), "--reps", "2000"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(markdown: str, title: str) -> list[list[str]]:
    section = markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")][1:]


def test_known_scores_give_the_known_table(sweep, capsys):
    code, out, _ = run_report(sweep, capsys=capsys)
    assert code == 0
    rows = {(r[0], r[1]): r for r in table_rows(out, report.TITLES["scores"])}
    # hopper-medium-v2, iql: 60, 70, 65 -> mean 65.0, population std 4.08; best = final + 1
    assert rows[("d4rl/hopper-medium-v2", "iql")][2:5] == ["3", "65.0 ± 4.1", "66.0 ± 4.1"]
    # the IQL paper's hopper-medium-v2 (Table 1): 66.3 -> ours - paper = -1.3
    assert rows[("d4rl/hopper-medium-v2", "iql")][5:] == ["66.3", "-1.3", "iql"]
    # 70, 10, 75: mean 51.67, std sqrt((18.33² + 41.67² + 23.33²) / 3) = 29.53
    assert rows[("d4rl/walker2d-medium-v2", "bc")][3] == "51.7 ± 29.5"
    # BC has no paper number of its own: CORL's reproduction (final, walker2d-medium-v2: 63.23)
    assert rows[("d4rl/walker2d-medium-v2", "bc")][5:] == ["63.2", "-11.6", "corl"]
    assert "Kostrikov, Nair, Levine" in out and "Tarasov et al." in out
    files = {p.name for p in (sweep / "report").iterdir()}
    assert {"report.md", "report.tex", "scores.csv", "aggregate.csv", "profiles.png",
            "curves_d4rl-hopper-medium-v2.png", "curves_d4rl-walker2d-medium-v2.png"} <= files


def independent_stratified_bootstrap_iqm(scores: np.ndarray, reps: int, seed: int) -> tuple:
    """IQM of all runs x tasks (25% trimmed from each end), and the 2.5/97.5 percentiles of the IQM
    over resamples that draw runs with replacement within each task."""
    def iqm(x):  # over the last two axes
        flat = np.sort(x.reshape(*x.shape[:-2], -1), axis=-1)
        cut = int(np.floor(0.25 * flat.shape[-1]))
        return flat[..., cut:flat.shape[-1] - cut].mean(axis=-1)

    runs, tasks = scores.shape
    picks = np.random.default_rng(seed).integers(0, runs, size=(reps, runs, tasks))
    samples = iqm(scores[picks, np.arange(tasks)])
    return iqm(scores), np.percentile(samples, 2.5), np.percentile(samples, 97.5)


def test_iqm_and_its_confidence_interval_match_an_independent_computation(tmp_path, capsys):
    # 10 seeds x 3 datasets per algorithm, so that the bootstrap distribution is nearly continuous
    rng = np.random.default_rng(0)
    scores = {algo: rng.normal(center, 15.0, size=(10, 3)) for algo, center in (("iql", 70), ("bc", 45))}
    for algo, matrix in scores.items():
        for task, env in enumerate(("hopper", "walker2d", "halfcheetah")):
            write_run(tmp_path / f"{algo}-{env}", f"d4rl/{env}-medium-v2", algo, matrix[:, task].tolist())
    code = report.main([str(tmp_path), "--no-plots", "--reps", "20000"])
    assert code == 0
    aggregate = {row[0]: row for row in csv.reader(open(tmp_path / "report" / "aggregate.csv"))}
    for algo, matrix in scores.items():
        # with 20 000 resamples on each side the percentiles differ by ~0.1 (standard error)
        point, low, high = independent_stratified_bootstrap_iqm(matrix, reps=20_000, seed=1)
        ours = [float(v) for v in re.findall(r"[\d.]+", aggregate[algo][3])]  # "72.8 [69.2, 77.5]"
        assert ours[0] == pytest.approx(point, abs=0.05)
        assert ours[1] == pytest.approx(low, abs=0.5) and ours[2] == pytest.approx(high, abs=0.5)
        assert aggregate[algo][1:3] == ["3", "30"]


def test_iqm_by_hand(sweep, capsys):
    code, _, _ = run_report(sweep, "--no-plots", capsys=capsys)
    assert code == 0
    aggregate = {row[0]: row for row in csv.reader(open(sweep / "report" / "aggregate.csv"))}
    # iql: 6 runs sorted 60 65 70 76 80 90, a quarter (1 run) trimmed from each end
    assert float(aggregate["iql"][3].split()[0]) == pytest.approx(np.mean([65, 70, 76, 80]), abs=0.05)
    assert float(aggregate["iql"][4].split()[0]) == pytest.approx(np.mean([60, 70, 65, 80, 76, 90]), abs=0.05)
    first = (sweep / "report" / "aggregate.csv").read_text()
    run_report(sweep, "--no-plots", capsys=capsys)
    assert (sweep / "report" / "aggregate.csv").read_text() == first  # the same folder, the same CIs


def test_offline_to_online_fields_get_their_columns(tmp_path, capsys):
    root = tmp_path / "o2o"
    write_run(root / "0", "minari/D4RL/antmaze/umaze-v1", "iql", [70.0, 80.0],
              extra={"offline_score": 70.0, "online_final_score": 95.0, "online_best_score": 97.0,
                     "online_regret": 0.1})
    code, out, _ = run_report(root, "--no-plots", capsys=capsys)
    assert code == 0
    (row,) = table_rows(out, report.TITLES["offline_to_online"])
    # Minari's re-recording is compared, marked approximate, with CORL's antmaze-umaze-v2: 77.00 -> 96.50
    assert row[3:] == ["70.0 ± 0.0 → 95.0 ± 0.0", "97.0 ± 0.0", "0.10 ± 0.00", "≈ 77.0 → 96.5", "-1.5",
                       "corl"]
    # the final score is the one after fine-tuning: no offline published number beside it
    assert table_rows(out, report.TITLES["scores"])[0][5:] == ["–", "–", "–"]


def test_failed_unfinished_and_broken_runs_are_listed_or_skipped_with_a_warning(sweep, capsys):
    failed = sweep / "9_bc_bad"
    failed.mkdir()
    (failed / "failure.json").write_text(json.dumps(
        {"algo": "bc", "dataset": "d4rl/hopper-medium-v2", "error": "dataset file 'x' does not exist"}))
    (sweep / "10_iql_killed").mkdir()
    (sweep / "10_iql_killed" / "metrics.jsonl").write_text('{"type": "train", "step": 5}\n')
    half = sweep / "11_iql_half"
    half.mkdir()
    (half / "results.json").write_text('{"config": {"algo": {"name": "iql"}')
    stopped = sweep / "13_bc_stopped"
    write_run(stopped, "d4rl/hopper-medium-v2", "bc", [99.0, 98.0])
    results = json.loads((stopped / "results.json").read_text())
    results["seeds"][1]["stopped"] = {"step": 4000, "reason": "Q above 1e4"}
    (stopped / "results.json").write_text(json.dumps(results))
    old = sweep / "12_iql_old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"final_score": 50.0}))
    code, out, err = run_report(sweep, "--no-plots", capsys=capsys)
    assert code == 0
    failures = table_rows(out, report.TITLES["failures"])
    assert [str(failed), "bc", "d4rl/hopper-medium-v2", "dataset file 'x' does not exist"] in failures
    assert any(row[0] == str(sweep / "10_iql_killed") and "unfinished" in row[3] for row in failures)
    assert f"warning: skipping {half / 'results.json'}: not complete JSON" in err
    assert f"warning: skipping {old / 'results.json'}: no 'config' field" in err
    iql = {r[0]: r for r in table_rows(out, report.TITLES["scores"]) if r[1] == "iql"}
    assert iql["d4rl/hopper-medium-v2"][2] == "3"  # nothing counted from the broken files
    bc = {r[0]: r for r in table_rows(out, report.TITLES["scores"]) if r[1] == "bc"}
    assert bc["d4rl/hopper-medium-v2"][2] == "4"  # 3 seeds + the one of 13_bc_stopped not stopped
    assert [str(stopped), "bc", "d4rl/hopper-medium-v2",
            "seed 1 stopped at step 4000: Q above 1e4"] in failures


def test_latex_and_csv_formats(sweep, capsys):
    code, out, _ = run_report(sweep, "--format", "latex", "--paper", "corl", "--no-plots", capsys=capsys)
    assert code == 0
    assert r"\begin{tabular}" in out and r"65.0 $\pm$ 4.1" in out
    assert "67.5" in out  # --paper corl: CORL's IQL hopper-medium-v2 (67.53), not the IQL paper's
    rows = list(csv.DictReader(open(sweep / "report" / "scores.csv")))
    row = next(r for r in rows if (r["dataset"], r["algorithm"]) == ("d4rl/hopper-medium-v2", "iql"))
    assert float(row["final_mean"]) == pytest.approx(65.0) and float(row["paper_final"]) == 67.53


def test_a_folder_without_results_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_report(tmp_path / "empty", capsys=capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: no results.json with normalized scores under {tmp_path / 'empty'} (runs write it when "
        "training completes)"]
    code, _, err = run_report(tmp_path / "nowhere", capsys=capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nowhere'} is not a folder")


def test_every_paper_entry_cites_a_known_source_and_holds_scores():
    papers = yaml.safe_load(report.PAPER_SCORES.read_text())
    for entry in papers["scores"]:
        assert entry["source"] in papers["sources"]
        assert entry["metric"] in ("final", "best", "offline_to_online")
        for name, value in entry["scores"].items():
            assert name.endswith(("-v0", "-v2")), name
            values = [value] if entry["metric"] != "offline_to_online" else list(value.values())
            assert all(0 <= report.mean_of(v) <= 130 for v in values), (name, value)
