"""`python -m experiments.report` on a synthetic sweep folder written in the training loop's format:
known scores give a known table; the IQM and its stratified-bootstrap interval are recomputed here
independently; runs with other settings get rows of their own and repeated seeds count once; the mean
of the last evaluations and the probability of improvement are checked by hand; every experiment
config reaches a published number; bad folders and bad files give one clear line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rliable", reason='the report extra: pip install -e ".[report]"')

from rliable import metrics  # noqa: E402

from experiments import report, report_tables, stats  # noqa: E402
from experiments.papers import PAPER_SCORES, load_paper_scores, mean_of, published  # noqa: E402

# final scores per seed: known numbers, (dataset, algo) -> seeds
FINAL = {
    ("d4rl/hopper-medium-v2", "iql"): [60.0, 70.0, 65.0],
    ("d4rl/walker2d-medium-v2", "iql"): [80.0, 76.0, 90.0],
    ("d4rl/hopper-medium-v2", "bc"): [50.0, 54.0, 52.0],
    ("d4rl/walker2d-medium-v2", "bc"): [70.0, 10.0, 75.0],
}
EVAL_STEPS = (5, 10)


def write_run(folder: Path, dataset: str, algo: str, finals: list[float], extra: dict | None = None,
              config: dict | None = None, first_seed: int = 0):
    """A run folder as experiments.train leaves it: results.json and metrics.jsonl. The score at the
    first evaluation is final - 10 and the best is the final + 1 (an earlier, better evaluation);
    `config` adds fields to the resolved config (e.g. {"algo": {"expectile": 0.9}})."""
    folder.mkdir(parents=True)
    source, name = dataset.split("/", 1)
    seeds = [{"seed": first_seed + i, "final_return": 0.0, "final_score": score, "best_score": score + 1.0,
              "evaluation_scores": {str(step): score - 10.0 * (step == EVAL_STEPS[0]) for step in EVAL_STEPS},
              "episode_returns": {}, **(extra or {})} for i, score in enumerate(finals)]
    config = config or {}
    results = {"config": {**config, "algo": {"name": algo, **config.get("algo", {})},
                          "dataset": {"source": source, "name": name}},
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


def run_report(*args: str, capsys, reps: int = 2000) -> tuple[int, str, str]:
    code = report.main([*map(str, args), "--reps", str(reps)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(markdown: str, title: str) -> list[list[str]]:
    section = markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")][1:]


def test_known_scores_give_the_known_table(sweep, capsys):
    code, out, _ = run_report(sweep, capsys=capsys)
    assert code == 0
    rows = {(r[0], r[1]): r for r in table_rows(out, report_tables.TITLES["scores"])}
    # hopper-medium-v2, iql: 60, 70, 65 -> mean 65.0, population std 4.08; best = final + 1
    # the mean of the last 10 evaluations: of the 2 there are, (final - 10 + final) / 2 = final - 5
    assert rows[("d4rl/hopper-medium-v2", "iql")][2:6] == ["3", "65.0 ± 4.1", "60.0 ± 4.1", "66.0 ± 4.1"]
    # the IQL paper's hopper-medium-v2 (Table 1): 66.3 -> ours - paper = -1.3, on the same data
    assert rows[("d4rl/hopper-medium-v2", "iql")][6:] == ["66.3", "-1.3", "iql", "same"]
    # 70, 10, 75: mean 51.67, std sqrt((18.33² + 41.67² + 23.33²) / 3) = 29.53
    assert rows[("d4rl/walker2d-medium-v2", "bc")][3] == "51.7 ± 29.5"
    # BC has no paper number of its own: CORL's reproduction (final, walker2d-medium-v2: 63.23)
    assert rows[("d4rl/walker2d-medium-v2", "bc")][6:] == ["63.2", "-11.6", "corl", "same"]
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


@pytest.mark.integration
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
    (row,) = table_rows(out, report_tables.TITLES["offline_to_online"])
    # Minari's re-recording is compared, marked approximate, with CORL's antmaze-umaze-v2: 77.00 -> 96.50
    assert row[3:] == ["70.0 ± 0.0 → 95.0 ± 0.0", "97.0 ± 0.0", "0.10 ± 0.00", "≈ 77.0 → 96.5", "-1.5",
                       "corl", "ours Minari v1, published D4RL v2"]
    # the final score is the one after fine-tuning: no offline published number beside it
    assert table_rows(out, report_tables.TITLES["scores"])[0][6:] == ["–", "–", "–", "–"]
    # IQL's own fine-tuning table (D4RL v0) is reachable too, marked as other data
    code, out, _ = run_report(root, "--no-plots", "--paper", "iql_finetune", capsys=capsys)
    (row,) = table_rows(out, report_tables.TITLES["offline_to_online"])
    assert row[6:] == ["≈ 86.7 → 96.0", "-1.0", "iql_finetune", "ours Minari v1, published D4RL v0"]
    published = table_rows(out, report_tables.TITLES["published"])
    assert ["minari/D4RL/antmaze/umaze-v1", "iql", "iql_finetune", "offline_to_online", "86.7 → 96.0",
            "antmaze-umaze-v0", "ours Minari v1, published D4RL v0"] in published


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
    write_run(stopped, "d4rl/hopper-medium-v2", "bc", [99.0, 98.0], first_seed=3)  # seeds 3 and 4
    results = json.loads((stopped / "results.json").read_text())
    results["seeds"][1]["stopped"] = {"step": 4000, "reason": "Q above 1e4"}
    (stopped / "results.json").write_text(json.dumps(results))
    old = sweep / "12_iql_old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"final_score": 50.0}))
    code, out, err = run_report(sweep, "--no-plots", capsys=capsys)
    assert code == 0
    failures = table_rows(out, report_tables.TITLES["failures"])
    assert [str(failed), "bc", "d4rl/hopper-medium-v2", "dataset file 'x' does not exist"] in failures
    assert any(row[0] == str(sweep / "10_iql_killed") and "unfinished" in row[3] for row in failures)
    assert f"warning: skipping {half / 'results.json'}: not complete JSON" in err
    assert f"warning: skipping {old / 'results.json'}: no 'config' field" in err
    iql = {r[0]: r for r in table_rows(out, report_tables.TITLES["scores"]) if r[1] == "iql"}
    assert iql["d4rl/hopper-medium-v2"][2] == "3"  # nothing counted from the broken files
    bc = {r[0]: r for r in table_rows(out, report_tables.TITLES["scores"]) if r[1] == "bc"}
    assert bc["d4rl/hopper-medium-v2"][2] == "4"  # 3 seeds + the one of 13_bc_stopped not stopped
    assert [str(stopped), "bc", "d4rl/hopper-medium-v2",
            "seed 4 stopped at step 4000: Q above 1e4"] in failures


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
    papers = yaml.safe_load(PAPER_SCORES.read_text())
    for entry in papers["scores"]:
        assert entry["source"] in papers["sources"]
        assert entry["metric"] in ("final", "best", "offline_to_online")
        for name, value in entry["scores"].items():
            assert name.endswith(("-v0", "-v2")), name
            values = [value] if entry["metric"] != "offline_to_online" else list(value.values())
            assert all(0 <= mean_of(v) <= 130 for v in values), (name, value)


def two_expectiles(root: Path) -> None:
    """IQL on hopper-medium-v2 with expectile 0.7 (seeds 0-4 in two jobs that differ only in where
    and how they checkpoint and evaluate) and 0.9 (seeds 0-2), and a re-launch of the 0.9 job."""
    outputs = {"eval": {"workers": 1}, "checkpoint": {"every": 5}, "steps": 1000}
    write_run(root / "0_iql", "d4rl/hopper-medium-v2", "iql", [60.0, 61.0, 62.0],
              config={**outputs, "algo": {"expectile": 0.7}})
    write_run(root / "1_iql", "d4rl/hopper-medium-v2", "iql", [20.0, 21.0, 22.0],
              config={**outputs, "algo": {"expectile": 0.9}})
    write_run(root / "2_iql", "d4rl/hopper-medium-v2", "iql", [63.0, 64.0], first_seed=3,
              config={"eval": {"workers": 4}, "checkpoint": {"every": 100}, "steps": 1000,
                      "algo": {"expectile": 0.7}})
    write_run(root / "3_iql_again", "d4rl/hopper-medium-v2", "iql", [99.0, 99.0, 99.0],
              config={**outputs, "algo": {"expectile": 0.9}})


def test_a_sweep_over_two_expectiles_gives_two_rows_and_counts_a_relaunch_once(tmp_path, capsys):
    two_expectiles(tmp_path)
    code, out, err = run_report(tmp_path, "--no-plots", capsys=capsys, reps=200)
    assert code == 0
    rows = {r[1]: r for r in table_rows(out, report_tables.TITLES["scores"])}
    assert set(rows) == {"iql (expectile=0.7)", "iql (expectile=0.9)"}
    # 60..64 -> 62.0 ± sqrt(2); the re-launched job's 99s are the same settings and seeds: not counted
    assert rows["iql (expectile=0.7)"][2:4] == ["5", "62.0 ± 1.4"]
    assert rows["iql (expectile=0.9)"][2:4] == ["3", "21.0 ± 0.8"]
    duplicates = table_rows(out, report_tables.TITLES["duplicates"])
    assert [[r[0], r[3], r[4]] for r in duplicates] == [
        [str(tmp_path / "3_iql_again"), str(seed), str(tmp_path / "1_iql")] for seed in range(3)]
    assert (f"warning: {tmp_path / '3_iql_again'}: seed 0 has the settings and seed of "
            f"{tmp_path / '1_iql'}; counted once") in err
    aggregate = {r[0] for r in table_rows(out, report_tables.TITLES["aggregate"])}
    assert aggregate == {"iql (expectile=0.7)", "iql (expectile=0.9)"}



def test_runs_written_before_a_setting_existed_pool_with_its_old_value(tmp_path, capsys):
    """A results.json of an older version has no env.backend, env.num_envs or eval.backend
    (settings.ADDED_SETTINGS): its seeds pool with new runs at those settings' old values, and stay
    apart from runs at other values."""
    write_run(tmp_path / "0_older", "d4rl/hopper-medium-v2", "iql", [60.0, 61.0, 62.0])
    write_run(tmp_path / "1_newer", "d4rl/hopper-medium-v2", "iql", [63.0, 64.0], first_seed=3,
              config={"env": {"backend": "host", "num_envs": 1}, "eval": {"backend": "auto"}})
    write_run(tmp_path / "2_mjx", "d4rl/hopper-medium-v2", "iql", [20.0], first_seed=0,
              config={"env": {"backend": "mjx", "num_envs": 1}, "eval": {"backend": "auto"}})
    code, out, _ = run_report(tmp_path, "--no-plots", capsys=capsys, reps=200)
    assert code == 0
    rows = {r[1]: r[2:4] for r in table_rows(out, report_tables.TITLES["scores"])}
    assert rows == {"iql (env.backend=host)": ["5", "62.0 ± 1.4"],
                    "iql (env.backend=mjx)": ["1", "20.0 ± 0.0"]}


def test_group_by_chooses_the_columns_and_names_what_it_pools(tmp_path, capsys):
    two_expectiles(tmp_path)
    code, out, err = run_report(tmp_path, "--no-plots", "--group-by", "steps", capsys=capsys, reps=200)
    assert code == 0
    (row,) = table_rows(out, report_tables.TITLES["scores"])
    # the eight distinct (settings, seed) pairs pooled: mean 46.6, population std 19.9
    pooled = [60, 61, 62, 63, 64, 20, 21, 22]
    assert row[1:4] == ["iql (steps=1000)", "8", f"{np.mean(pooled):.1f} ± {np.std(pooled):.1f}"] == [
        "iql (steps=1000)", "8", "46.6 ± 19.9"]
    assert "iql (steps=1000): pools runs that differ in algo.expectile (--group-by)" in err
    code, out, _ = run_report(tmp_path, "--no-plots", "--group-by", "algo.expectile", capsys=capsys, reps=200)
    assert {r[1] for r in table_rows(out, report_tables.TITLES["scores"])} == {"iql (expectile=0.7)",
                                                                       "iql (expectile=0.9)"}
    code, out, err = run_report(tmp_path, "--group-by", "algo.expectle", capsys=capsys, reps=200)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --group-by algo.expectle: no run has this setting; name a field")


def test_results_json_holds_the_mean_of_the_last_evaluations():
    from omegaconf import OmegaConf

    from experiments import records

    def evaluation(phase, k, scores):
        return {"phase": phase, "step": 10 * k, "env_step": 100 * k if phase == "online" else 0,
                "return": scores, "normalized_score": scores, "episode_returns": [[s] for s in scores]}

    offline = [evaluation("offline", k, [float(k), 10.0 * k]) for k in range(1, 13)]
    history = {"evaluations": offline, "episodes": []}
    cfg = OmegaConf.create({"eval": {"mean_of_last": 3}})
    out = records.results(cfg, [0, 1], history, None, 1.0, 0.0, {})
    first, second = out["seeds"]
    # scores 1..12 (and 10..120): the last 3 are 10, 11, 12
    assert (first["last_mean_score"], second["last_mean_score"]) == (11.0, 110.0)
    assert first["last_mean_evaluations"] == 3 and first["final_score"] == 12.0
    assert first["evaluation_scores"] == {10 * k: float(k) for k in range(1, 13)}
    assert out["summary"]["last_mean_score_mean"] == 60.5
    # without the setting, TD3+BC's 10: the mean of 3..12
    assert records.results(OmegaConf.create({}), [0, 1], history, None, 1.0, 0.0, {})["seeds"][0][
        "last_mean_score"] == 7.5
    # after fine-tuning, the last online evaluations (the offline ones beside them)
    online = [evaluation("online", k, [s, s]) for k, s in enumerate((50.0, 70.0, 90.0, 80.0), 1)]
    entry = records.results(cfg, [0, 1], {"evaluations": offline + online, "episodes": []}, None, 1.0, 0.0,
                            {})["seeds"][0]
    assert entry["last_mean_score"] == 80.0 and entry["offline_last_mean_score"] == 11.0
    assert entry["online_evaluation_scores"] == {100: 50.0, 200: 70.0, 300: 90.0, 400: 80.0}


def test_the_report_shows_the_mean_of_the_last_evaluations_with_intervals(sweep, capsys):
    code, out, _ = run_report(sweep, "--no-plots", "--last", "1", capsys=capsys, reps=200)
    assert code == 0
    rows = {(r[0], r[1]): r for r in table_rows(out, report_tables.TITLES["scores"])}
    assert rows[("d4rl/hopper-medium-v2", "iql")][4] == "65.0 ± 4.1"  # the last 1: the final score
    code, out, _ = run_report(sweep, "--no-plots", "--last", "2", capsys=capsys, reps=200)
    aggregate = list(csv.reader(open(sweep / "report" / "aggregate.csv")))
    column = aggregate[0].index("mean mean of last 2 [95% CI]")
    iql = next(row for row in aggregate if row[0] == "iql")
    # iql's finals 60 70 65 80 76 90; the mean of each seed's last 2 evaluations is final - 5
    point, low, high = map(float, re.findall(r"[\d.]+", iql[column]))
    assert point == pytest.approx(np.mean([60, 70, 65, 80, 76, 90]) - 5, abs=0.05) and low < point < high
    code, _, err = run_report(sweep, "--last", "0", capsys=capsys, reps=200)
    assert code == 2 and err.startswith("error: --last must be a number of evaluations >= 1 (got 0)")


def test_probability_of_improvement_by_hand(tmp_path, capsys):
    # hopper: 3 > 2, 5 > 2, 5 > 4, 6 > 2, 6 > 4 but 3 < 4: 5 of 6 pairs; walker: every pair, 1
    write_run(tmp_path / "a-hopper", "d4rl/hopper-medium-v2", "iql", [3.0, 5.0, 6.0])
    write_run(tmp_path / "b-hopper", "d4rl/hopper-medium-v2", "bc", [2.0, 4.0])
    write_run(tmp_path / "a-walker", "d4rl/walker2d-medium-v2", "iql", [50.0, 60.0, 70.0])
    write_run(tmp_path / "b-walker", "d4rl/walker2d-medium-v2", "bc", [10.0, 20.0])
    code, out, _ = run_report(tmp_path, "--no-plots", "--compare", "iql", "bc", "--compare", "bc", "iql",
                              capsys=capsys, reps=200)
    assert code == 0
    rows = table_rows(out, report_tables.TITLES["probability_of_improvement"])
    # the best and the mean of the last evaluations are the final shifted alike: the same probability
    assert [r[:3] for r in rows[:3]] == [["iql > bc", "2", "final"], ["iql > bc", "2", "mean of last 10"],
                                         ["iql > bc", "2", "best"]]
    for row, expected in ((rows[0], (5 / 6 + 1) / 2), (rows[3], 1 - (5 / 6 + 1) / 2)):
        point, low, high = map(float, re.findall(r"[\d.]+", row[3]))
        assert point == pytest.approx(expected, abs=0.005) and low <= point <= high
    # walker alone: iql above bc in every resample
    scores = np.random.default_rng(0).integers(0, 5, size=(2, 6, 3)).astype(float)  # with ties
    assert stats.average_probability_of_improvement(*scores) == pytest.approx(
        metrics.probability_of_improvement(*scores))
    assert stats.probability_of_improvement(np.array([[50.0], [60.0], [70.0]]), np.array([[10.0], [20.0]]),
                                             reps=200) == (1.0, 1.0, 1.0)
    code, _, err = run_report(tmp_path, "--compare", "iql", "cql", capsys=capsys, reps=200)
    assert code == 2 and err.startswith("error: --compare cql: no row has this label; rows: bc, iql")


def experiment_pairs():
    """(experiment, algorithm, metric, dataset) of every config in configs/experiment/: its own or
    its parent's datasets, the algorithm it selects (train.yaml's iql otherwise)."""
    folder = Path(report.__file__).parents[1] / "configs" / "experiment"
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in folder.glob("*.yaml")}

    def chosen(name, key):
        for item in configs[name].get("defaults", []):
            if isinstance(item, dict) and f"override /{key}" in item:
                return item[f"override /{key}"]
            if isinstance(item, str) and item in configs:
                found = chosen(item, key)
                if found:
                    return found
        params = configs[name].get("hydra", {}).get("sweeper", {}).get("params", {})
        return params.get(key) if key == "dataset" else None

    for name in sorted(configs):
        online = chosen(name, "online")
        metric = "offline_to_online" if online and online != "none" else "final"
        for dataset in chosen(name, "dataset").replace("\n", "").split(","):
            yield name, chosen(name, "algo") or "iql", metric, dataset.strip()


def test_every_experiment_config_reaches_a_published_number_or_says_why_not():
    papers = load_paper_scores()
    pairs = list(experiment_pairs())
    assert len(pairs) > 100 and {name for name, *_ in pairs} >= {"iql_antmaze", "o2o_antmaze"}
    for name, algo, metric, dataset in pairs:
        absent = papers["absent"].get(name, {})
        documented = absent.get("datasets") == "all" or dataset.split("/")[-1] in absent.get("datasets", ())
        reachable = published(papers, algo, dataset, metric, None)
        assert bool(reachable) != documented, (name, algo, metric, dataset, reachable, absent)
    # the AntMaze tables of IQL's paper (D4RL v0) are reachable from Minari's re-recordings
    sources = {match[1] for match in published(papers, "iql", "minari/D4RL/antmaze/large-play-v1",
                                                      None, None)}
    assert sources == {"corl", "iql_antmaze", "iql_finetune"}
    for source in papers["sources"].values():
        assert {"cite", "datasets", "protocol", "checked"} <= set(source)


def test_a_bad_count_of_last_evaluations_is_named():
    from experiments import config, settings

    with pytest.raises(config.ConfigError, match=r"eval.mean_of_last must be an integer >= 1 \(got 0\)"):
        settings.check_run_settings(config.compose(["eval.mean_of_last=0"]))
    assert config.compose([]).eval.mean_of_last == 10
