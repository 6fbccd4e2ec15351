"""Tables and plots from finished runs, with the published numbers beside ours.

    python -m experiments.report multirun/2026-12-01_10-00-00          # a sweep folder
    python -m experiments.report runs/ multirun/ --paper iql --format latex
    python -m experiments.report multirun/... --compare iql td3_bc --last 10

Reads every `results.json` under the folders (and `metrics.jsonl` for curves). A row holds the seeds
of one algorithm on one dataset trained with the same settings (the resolved config without the
seed, output, checkpoint and logging fields: NOT_SETTINGS); rows of an algorithm that differ in
settings are labelled by the fields that differ ("iql (expectile=0.9)"), `--group-by` names the
fields that make a row instead. A (settings, seed) pair found twice (a re-launched sweep) counts once
and is listed. Writes into `--out` (default `<first folder>/report/`) and prints the table in `--format`:
- `report.md`, `report.tex`, `scores.csv`: per row the mean ± std over seeds of the final score (the
  last evaluation), of the mean of each seed's last N evaluations (`--last`, TD3+BC's protocol: 10)
  and of the best evaluation; the published number of the closest data
  (`experiments/paper_scores.yaml`), ours minus it, its source and both datasets' versions;
  every published number for the datasets and algorithms; offline-to-online runs get offline ->
  online scores and regret; failed, unfinished and duplicate jobs are listed;
- `aggregate.csv`: per row label IQM and mean over seeds x datasets of the final and last-N scores
  with 95% stratified-bootstrap confidence intervals (rliable); with `--compare A B`, the
  probability that A scores above B (rliable's average probability of improvement) with its CI;
- `curves_<dataset>.png` (mean and 95% CI band over seeds per row) and `profiles.png`
  (performance profiles, rliable), when matplotlib is there.
A results file from another format or a half-written one is skipped with a warning naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from experiments.config import NOT_RESULTS
from experiments.sweep import FAILURE_FILE, RESULTS_FILE

PAPER_SCORES = Path(__file__).with_name("paper_scores.yaml")
# Variants compared with their algorithm's published numbers.
PAPER_ALGO = {"cql_jaxcql": "cql"}
# Per-seed fields of offline-to-online runs, under the names the training loop may write them.
O2O_FIELDS = {"offline": ("offline_score", "offline_final_score"),
              "online_final": ("online_final_score", "final_online_score"),
              "online_best": ("online_best_score", "best_online_score"),
              "regret": ("online_regret", "regret")}


# Config fields that say where a run writes, how it is checkpointed, logged or watched, and which seeds
# it trains: not settings of the experiment, so runs that differ only there are pooled in one row.
# Fields that are not settings of a row: what does not change a run's numbers (config.NOT_RESULTS),
# the seeds a row pools, and where the data and logs went.
NOT_SETTINGS = (*NOT_RESULTS, "seed", "seeds", "log_every", "online.log_every", "eval.mean_of_last",
                "checkpoint", "dataset.path", "grid")
MISSING = "–"  # a setting a run's config does not have (written by another version of this project)


class ReportError(ValueError):
    pass


@dataclass
class Cell:
    """Every seed of one algorithm on one dataset with the same settings, pooled over the runs found
    (`algo` is the row's label: the algorithm and the settings that tell its rows apart). The
    trainings of a hyperparameter grid (experiments/grid.py) are one cell per grid point."""
    dataset: str
    algo: str
    algorithm: str = ""  # the algorithm's name (algo.name), for its published numbers
    runs: list = field(default_factory=list)  # folders; (folder, grid point) for a grid's trainings
    seeds: list = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)  # the mean of each seed's last N evaluations
    last_missing: bool = False  # a seed without its evaluations' scores (an older results.json)
    o2o: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in O2O_FIELDS})


@dataclass
class SeedResult:
    """One seed of one results.json: its scores and the settings it was trained with."""
    folder: Path
    point: dict | None
    dataset: str
    algo: str
    seed: int | None
    settings: dict
    fingerprint: str
    scores: dict


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_results(path: Path) -> tuple[dict, str, str, list[dict]] | None:
    """(config, dataset, algo, per-seed records) of one results.json, or None (with a warning) when
    the file is half-written, of another format, or has no normalized scores."""
    try:
        data = json.loads(path.read_text())
        config, seeds = data["config"], data["seeds"]
        algo = config["algo"]["name"]
        dataset = f"{config['dataset']['source']}/{config['dataset']['name']}"
        finals = [seed["final_score"] for seed in seeds]
        if any(seed["best_score"] is None for seed in seeds if seed["final_score"] is not None):
            raise KeyError("best_score")
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = ("not complete JSON" if isinstance(error, ValueError)
                   else f"no {error} field" if isinstance(error, KeyError) else "unexpected layout")
        warn(f"skipping {path}: {problem} (half-written, or from another version of this project)")
        return None
    if not seeds or any(score is None for score in finals):
        warn(f"skipping {path}: no normalized score (no evaluation, or a dataset without reference "
             "returns)")
        return None
    return config, dataset, algo, seeds


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"algo": {"expectile": 0.7}} -> {"algo.expectile": 0.7}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_setting(key: str) -> bool:
    return not any(key == name or key.startswith(name + ".") for name in NOT_SETTINGS)


def settings_of(config: dict, point: dict | None) -> dict:
    """The resolved config of one training as flat fields, its grid point's values in place of the
    config's, without the fields that are not settings (NOT_SETTINGS)."""
    flat = flatten(config)
    flat.update({f"algo.{name}": value for name, value in (point or {}).items()})
    return {key: value for key, value in flat.items() if is_setting(key)}


def last_mean(seed: dict, count: int) -> float | None:
    """The mean of the seed's last `count` evaluation scores in the phase of its final score (online
    when it ran), from results.json's per-evaluation scores; None when the file has none."""
    scores = seed.get("online_evaluation_scores") or seed.get("evaluation_scores")
    if not scores:
        return None
    ordered = [score for _, score in sorted(scores.items(), key=lambda item: float(item[0]))]
    return float(np.mean(ordered[-count:]))


def seed_scores(seed: dict, last: int) -> dict:
    scores = {"final": float(seed["final_score"]), "best": float(seed["best_score"]),
              "last": last_mean(seed, last)}
    for key, names in O2O_FIELDS.items():
        value = next((seed[n] for n in names if seed.get(n) is not None), None)
        scores[key] = None if value is None else float(value)
    return scores


def read_seeds(folders: list[Path], last: int) -> tuple[list[SeedResult], list[dict], list[Path], list[str]]:
    """Every seed of every results.json under the folders (in path order), failure records, run
    folders that have neither results nor a failure record (still running, interrupted or killed),
    and warnings to print once the options are known to be valid."""
    found, failures, unfinished, notes = [], [], [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass sweep or run folders (e.g. multirun/<date>)")
        for path in sorted(folder.rglob(RESULTS_FILE)):
            read = read_results(path)
            if read is None:
                continue
            config, dataset, algo, seeds = read
            short = [len(s.get("online_evaluation_scores") or s.get("evaluation_scores") or ())
                     for s in seeds]
            if any(0 < count < last for count in short):
                notes.append(f"{path}: {min(c for c in short if c)} evaluations, fewer than --last {last}; "
                             "its mean of the last evaluations averages those")
            for seed in seeds:
                if seed.get("stopped"):  # the algorithm's early stop (e.g. SPOT's Q > 1e4): not counted
                    stop = seed["stopped"]
                    failures.append({"folder": str(path.parent), "algo": algo, "dataset": dataset,
                                     "error": f"seed {seed.get('seed')} stopped at step {stop.get('step')}: "
                                              f"{stop.get('reason')}"})
                    continue
                point = seed.get("grid") or None
                settings = settings_of(config, point)
                found.append(SeedResult(path.parent, point, dataset, algo, seed.get("seed"), settings,
                                        json.dumps(settings, sort_keys=True, default=str),
                                        seed_scores(seed, last)))
        for path in sorted(folder.rglob(FAILURE_FILE)):
            try:
                failures.append({"folder": str(path.parent), **json.loads(path.read_text())})
            except ValueError:
                warn(f"skipping {path}: not complete JSON")
        for metrics in sorted(folder.rglob("metrics.jsonl")):
            if not (metrics.parent / RESULTS_FILE).exists() and not (metrics.parent / FAILURE_FILE).exists():
                unfinished.append(metrics.parent)
    return found, failures, unfinished, notes


def drop_duplicates(found: list[SeedResult]) -> tuple[list[SeedResult], list[dict]]:
    """Count each (settings, seed) pair once, the first found in path order (a re-launched sweep
    trains the same seeds again into new folders); the others are listed as duplicates."""
    first, kept, duplicates = {}, [], []
    for result in found:
        key = (result.fingerprint, result.seed)
        if result.seed is not None and key in first:
            duplicates.append({"folder": str(result.folder), "algo": result.algo, "dataset": result.dataset,
                               "seed": result.seed, "first": str(first[key].folder)})
            continue
        first.setdefault(key, result)
        kept.append(result)
    return kept, duplicates


def short_name(key: str) -> str:
    return key.removeprefix("algo.")


def show(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def label(algo: str, settings: dict, keys: list[str]) -> str:
    if not keys:
        return algo
    return f"{algo} ({', '.join(f'{short_name(k)}={show(settings.get(k, MISSING))}' for k in keys)})"


def differing_settings(groups: dict[tuple, list[SeedResult]]) -> dict[str, list[str]]:
    """Per algorithm, the settings in which two of its rows on one dataset differ: every row of
    that algorithm is labelled by them (on every dataset, so that the aggregate pools alike rows)."""
    by_dataset = defaultdict(list)
    for (dataset, algo, _), results in groups.items():
        by_dataset[(dataset, algo)].append(results[0].settings)
    differing = defaultdict(set)
    for (_, algo), settings in by_dataset.items():
        keys = set().union(*settings)
        differing[algo] |= {k for k in keys if len({show(s.get(k, MISSING)) for s in settings}) > 1}
    algo_first = lambda key: (not key.startswith("algo."), key)
    return {algo: sorted(keys, key=algo_first) for algo, keys in differing.items()}


def group(found: list[SeedResult], group_by: list[str] | None) -> tuple[dict[tuple[str, str], Cell], list]:
    """Cells by (dataset, row label). By default a row holds the seeds of identical settings (the
    resolved config without NOT_SETTINGS), labelled by the settings that tell its algorithm's rows
    apart; with `group_by`, the seeds that agree on those fields, every other setting pooled (and a
    warning naming the fields that differ inside a row)."""
    groups = defaultdict(list)
    for result in found:
        key = (tuple(show(result.settings.get(k, MISSING)) for k in group_by) if group_by
               else result.fingerprint)
        groups[(result.dataset, result.algo, key)].append(result)
    differing = {} if group_by else differing_settings(groups)
    cells, pooled_warnings = {}, []
    for (dataset, algo, _), results in groups.items():
        name = label(algo, results[0].settings, group_by or differing.get(algo, []))
        if group_by:
            pooled = sorted(k for k in set().union(*(r.settings for r in results))
                            if len({show(r.settings.get(k, MISSING)) for r in results}) > 1)
            if pooled:
                pooled_warnings.append(f"{dataset}, {name}: pools runs that differ in {', '.join(pooled)} "
                                       "(--group-by)")
        cell = cells.setdefault((dataset, name), Cell(dataset, name, algo))
        for result in results:
            run = (result.folder, result.point) if result.point else result.folder
            if run not in cell.runs:
                cell.runs.append(run)
            cell.seeds.append(result.seed)
            cell.final.append(result.scores["final"])
            cell.best.append(result.scores["best"])
            if result.scores["last"] is None:
                cell.last_missing = True
            else:
                cell.last.append(result.scores["last"])
        for key in O2O_FIELDS:
            values = [r.scores[key] for r in results]
            if all(value is not None for value in values):
                cell.o2o[key] += values
    for cell in cells.values():
        if cell.last_missing:
            cell.last = []
    return cells, pooled_warnings


def collect(folders: list[Path], group_by: list[str] | None = None, last: int = 10):
    """Cells by (dataset, row label), failure records, unfinished run folders, duplicate seeds, and
    the warnings to print (after every option has been checked: a bad one is one error line)."""
    found, failures, unfinished, notes = read_seeds(folders, last)
    if not found:
        failed = f"; {len(failures)} failed job(s) left failure.json there" if failures else ""
        raise ReportError(f"no results.json with normalized scores under {', '.join(map(str, folders))} "
                          f"(runs write it when training completes){failed}")
    for name in group_by or ():
        if not any(name in result.settings for result in found):
            known = sorted({k for r in found for k in r.settings if k.startswith("algo.")})[:4]
            raise ReportError(f"--group-by {name}: no run has this setting; name a field of the resolved "
                              f"config, e.g. {', '.join(known + ['steps'])}")
    found, duplicates = drop_duplicates(found)
    notes += [f"{d['folder']}: seed {d['seed']} has the settings and seed of {d['first']}; counted once"
              for d in duplicates]
    cells, pooled = group(found, group_by)
    return cells, failures, unfinished, duplicates, notes + pooled


def paper_names(dataset: str) -> list[tuple[str, str]]:
    """The names `dataset` may have in the paper tables, the closest first, each with the dataset
    versions compared ("" when the same data): a D4RL file is compared with its own version, then
    with the other versions of the same task; Minari's re-recordings of D4RL AntMaze with D4RL's
    v2 files, then v0 (IQL's tables)."""
    source, _, name = dataset.partition("/")
    if source == "d4rl":
        task = re.fullmatch(r"(.+)-v(\d+)", name)
        if not task:
            return [(name, "")]
        others = [v for v in ("2", "0", "1") if v != task[2]]
        return [(name, "")] + [(f"{task[1]}-v{v}", f"ours D4RL v{task[2]}, published D4RL v{v}")
                               for v in others]
    maze = re.fullmatch(r"D4RL/antmaze/(.+)-v(\d+)", name) if source == "minari" else None
    if maze:
        return [(f"antmaze-{maze[1]}-v{v}", f"ours Minari v{maze[2]}, published D4RL v{v}")
                for v in ("2", "0")]
    return []


def paper_name(dataset: str) -> tuple[str | None, bool]:
    """The closest name of `dataset` in the paper tables, and whether the comparison is approximate
    (other data: another D4RL version, or Minari's re-recording)."""
    names = paper_names(dataset)
    return (names[0][0], bool(names[0][1])) if names else (None, False)


def load_paper_scores(path: Path = PAPER_SCORES) -> dict:
    return yaml.safe_load(path.read_text())


def published(papers: dict, algo: str, dataset: str, metric: str | None, sources: list[str] | None):
    """Every entry for this algorithm and dataset (and metric, when given) among `sources` (all when
    None), the closest data first, then in the file's order (papers before reproductions): a list of
    (value, source, metric, published dataset name, versions compared: "" when the same data)."""
    found = []
    for rank, (name, versions) in enumerate(paper_names(dataset)):
        for order, entry in enumerate(papers["scores"]):
            if (entry["algo"] == PAPER_ALGO.get(algo, algo) and metric in (None, entry["metric"])
                    and (not sources or entry["source"] in sources) and name in entry["scores"]):
                found.append(((rank, order), (entry["scores"][name], entry["source"], entry["metric"],
                                              name, versions)))
    return [match for _, match in sorted(found, key=lambda item: item[0])]


def paper_score(papers: dict, algo: str, dataset: str, metric: str, sources: list[str] | None):
    """(value, source, versions compared) of the closest entry; (None, None, "") when none."""
    matches = published(papers, algo, dataset, metric, sources)
    return (matches[0][0], matches[0][1], matches[0][4]) if matches else (None, None, "")


def mean_of(value) -> float:
    return float(value[0] if isinstance(value, list) else value)


@contextlib.contextmanager
def seeded_numpy(seed: int):
    """rliable 1.2 draws its bootstrap indices from numpy's global generator (`np.random.choice`),
    whatever `random_state` says: seed it for a reproducible report, and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def stratified_bootstrap(scores: np.ndarray, reps: int, seed: int = 0) -> dict[str, tuple]:
    """IQM and mean of a (runs x tasks) score matrix with rliable's 95% stratified-bootstrap CIs
    (runs resampled within each task)."""
    from rliable import library, metrics

    aggregate = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])
    with seeded_numpy(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arch deprecates the RandomState rliable passes
        points, intervals = library.get_interval_estimates({"_": scores}, aggregate, reps=reps)
    return {name: (points["_"][i], intervals["_"][0, i], intervals["_"][1, i])
            for i, name in enumerate(("iqm", "mean"))}


def average_probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's `metrics.probability_of_improvement` (per task the Mann-Whitney U statistic over all
    pairs of runs, a tie counting one half, divided by the number of pairs; averaged over tasks),
    computed for all pairs at once: scipy's test per task and resample takes ~2 ms, which made a
    bootstrap of 2000 resamples over 9 datasets take 40 s (tests/test_report.py checks the two agree)."""
    difference = x[:, None, :] - y[None, :, :]  # (runs of x, runs of y, tasks)
    return float(np.mean((difference > 0) + 0.5 * (difference == 0), axis=(0, 1)).mean())


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int, seed: int = 0) -> tuple:
    """The average probability of improvement P(X > Y) of two (runs x tasks) score matrices with its
    95% CI from rliable's bootstrap resampling each algorithm's runs within each task independently."""
    from rliable import library

    with seeded_numpy(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        points, intervals = library.get_interval_estimates(
            {"_": (x, y)}, average_probability_of_improvement, reps=reps)
    return float(points["_"]), float(np.ravel(intervals["_"])[0]), float(np.ravel(intervals["_"])[1])


def score_matrix(cells: list[Cell], attribute: str = "final") -> np.ndarray:
    """(runs x datasets) of one algorithm; datasets with more seeds than the others are cut to the
    smallest count (rliable needs a rectangle), with a warning."""
    runs = min(len(getattr(cell, attribute)) for cell in cells)
    if any(len(getattr(cell, attribute)) != runs for cell in cells):
        warn(f"{cells[0].algo}: datasets have different seed counts; the aggregate uses the first "
             f"{runs} of each")
    return np.array([getattr(cell, attribute)[:runs] for cell in cells]).T


def fmt(values, digits: int = 1) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def interval(point: float, low: float, high: float, digits: int = 1) -> str:
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def statistics(last: int) -> dict[str, str]:
    """The per-seed statistics of the report: attribute of Cell -> name in the tables."""
    return {"final": "final", "last": f"mean of last {last}", "best": "best"}


def compared(cells: dict, pair: tuple[str, str], last: int, reps: int) -> list[list[str]]:
    """Rows of P(A > B) with its CI, per statistic, over the datasets both rows have."""
    first, second = pair
    labels = {algo for _, algo in cells}
    for name in pair:
        if name not in labels:
            raise ReportError(f"--compare {name}: no row has this label; rows: {', '.join(sorted(labels))}")
    datasets = sorted({d for d, a in cells if a == first} & {d for d, a in cells if a == second})
    if not datasets:
        raise ReportError(f"--compare {first} {second}: no dataset has both; compare rows run on the "
                          "same datasets")
    rows = []
    for attribute, name in statistics(last).items():
        x, y = ([cells[(d, algo)] for d in datasets] for algo in pair)
        if all(getattr(cell, attribute) for cell in x + y):
            point, low, high = probability_of_improvement(score_matrix(x, attribute),
                                                          score_matrix(y, attribute), reps)
            rows.append([f"{first} > {second}", str(len(datasets)), name, interval(point, low, high, 2)])
    return rows


def build_tables(cells, failures, unfinished, papers, sources, reps, last: int = 10, compare=(),
                 duplicates=()) -> dict[str, list[list]]:
    """Every table as a header row and rows of strings: scores, offline_to_online, published,
    aggregate, probability_of_improvement, duplicates, failures."""
    tables = {"scores": [["dataset", "algorithm", "seeds", "final score", f"mean of last {last}",
                          "best score", "published (final)", "ours − published", "source",
                          "data (ours, published)"]]}
    o2o = [["dataset", "algorithm", "seeds", "offline → online (final)", "online best", "regret",
            "published offline → online", "ours − published (online)", "source", "data (ours, published)"]]
    for (dataset, algo), cell in sorted(cells.items()):
        value, source, versions = paper_score(papers, cell.algorithm or algo, dataset, "final", sources)
        if cell.o2o["online_final"]:  # its final score is after fine-tuning: compared in the next table
            value, source, versions = None, None, ""
        approx = "≈ " if versions and value is not None else ""
        tables["scores"].append([
            dataset, algo, str(len(cell.final)), fmt(cell.final), fmt(cell.last), fmt(cell.best),
            "–" if value is None else f"{approx}{mean_of(value):.1f}",
            "–" if value is None else f"{np.mean(cell.final) - mean_of(value):+.1f}", source or "–",
            versions or ("same" if value is not None else "–")])
        if cell.o2o["offline"] and cell.o2o["online_final"]:
            value, source, versions = paper_score(papers, cell.algorithm or algo, dataset,
                                                  "offline_to_online", sources)
            paper, diff = "–", "–"
            if value is not None:
                offline, online = mean_of(value["offline"]), mean_of(value["online"])
                paper = f"{'≈ ' if versions else ''}{offline:.1f} → {online:.1f}"
                diff = f"{np.mean(cell.o2o['online_final']) - online:+.1f}"
            o2o.append([dataset, algo, str(len(cell.o2o["online_final"])),
                        f"{fmt(cell.o2o['offline'])} → {fmt(cell.o2o['online_final'])}",
                        fmt(cell.o2o["online_best"]), fmt(cell.o2o["regret"], 2), paper, diff, source or "–",
                        versions or ("same" if value is not None else "–")])
    if len(o2o) > 1:
        tables["offline_to_online"] = o2o
    every = [["dataset", "algorithm", "source", "metric", "published", "published dataset",
              "data (ours, published)"]]
    for dataset, algorithm in sorted({(d, c.algorithm or a) for (d, a), c in cells.items()}):
        for value, source, metric, name, versions in published(papers, algorithm, dataset, None, sources):
            shown = (f"{mean_of(value['offline']):.1f} → {mean_of(value['online']):.1f}"
                     if metric == "offline_to_online" else f"{mean_of(value):.1f}")
            every.append([dataset, algorithm, source, metric, shown, name, versions or "same"])
    if len(every) > 1:
        tables["published"] = every
    names = {key: name for key, name in statistics(last).items() if key != "best"}  # what papers report
    aggregate = [["algorithm", "datasets", "runs"] + [f"{kind} {names[a]} [95% CI]" for a in names
                                                       for kind in ("IQM", "mean")]]
    for algo in sorted({algo for _, algo in cells}):
        group = [cell for (_, name), cell in sorted(cells.items()) if name == algo]
        matrix = score_matrix(group)
        row = [algo, str(matrix.shape[1]), str(matrix.size)]
        for attribute in names:
            if all(getattr(cell, attribute) for cell in group):
                stats = stratified_bootstrap(score_matrix(group, attribute), reps)
                row += [interval(*stats[k]) for k in ("iqm", "mean")]
            else:  # results.json files without per-evaluation scores (an older version)
                row += ["–", "–"]
        aggregate.append(row)
    tables["aggregate"] = aggregate
    improvement = [["comparison", "datasets", "statistic", "P(A > B) [95% CI]"]]
    for pair in compare:
        improvement += compared(cells, tuple(pair), last, reps)
    if len(improvement) > 1:
        tables["probability_of_improvement"] = improvement
    if duplicates:
        tables["duplicates"] = [["job folder", "algorithm", "dataset", "seed", "same settings and seed as"],
                                *([d["folder"], d["algo"], d["dataset"], str(d["seed"]), d["first"]]
                                  for d in duplicates)]
    if failures or unfinished:
        rows = [[f["folder"], str(f.get("algo")), str(f.get("dataset")), f.get("error", "")]
                for f in failures]
        rows += [[str(path), "", "", "unfinished: no results.json and no failure record"]
                 for path in unfinished]
        tables["failures"] = [["job folder", "algorithm", "dataset", "error"], *rows]
    return tables


TITLES = {"scores": "Normalized scores (mean ± std over seeds)", "offline_to_online": "Offline → online",
          "published": "Every published number for these datasets and algorithms",
          "aggregate": "Aggregate over seeds × datasets (rliable, stratified bootstrap)",
          "probability_of_improvement": "Probability of improvement (rliable, 95% CI)",
          "duplicates": "Duplicate seeds (same settings and seed; counted once)",
          "failures": "Failed and unfinished jobs"}


def to_markdown(tables, papers) -> str:
    out = []
    for name, (header, *rows) in tables.items():
        out += [f"## {TITLES[name]}", "", "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows), ""]
    used = {row[-2] for name in ("scores", "offline_to_online") for row in tables.get(name, [])[1:]}
    used |= {row[2] for row in tables.get("published", [])[1:]}
    notes = [f"- **{key}**: {' '.join(source['cite'].split())} ({source['datasets']}; "
             f"{' '.join(source['protocol'].split())})"
             for key, source in papers["sources"].items() if key in used]
    if notes:
        out += ["Sources of the published numbers (≈: other data than our run's, named in the data column: "
                "another D4RL version, or Minari's re-recording of a D4RL dataset):", *notes, ""]
    return "\n".join(out)


def to_latex(tables) -> str:
    escape = lambda text: re.sub(r"([_%&#])", r"\\\1", text).replace("±", r"$\pm$").replace(
        "→", r"$\to$").replace("−", "-").replace("≈", r"$\approx$").replace("–", "--")
    out = []
    for name, (header, *rows) in tables.items():
        out += [f"% {TITLES[name]}", r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}",
                r"\toprule", " & ".join(map(escape, header)) + r" \\", r"\midrule",
                *(" & ".join(map(escape, row)) + r" \\" for row in rows), r"\bottomrule",
                r"\end{tabular}", ""]
    return "\n".join(out)


def to_csv(cells, papers, sources) -> str:
    """One row per dataset and algorithm with plain numbers (no formatting)."""
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["dataset", "algorithm", "seeds", "final_mean", "final_std", "last_mean", "last_std",
                     "best_mean", "best_std", "paper_final", "paper_source", "paper_data",
                     *[f"{k}_mean" for k in O2O_FIELDS], "runs"])
    for (dataset, algo), cell in sorted(cells.items()):
        value, source, versions = paper_score(papers, cell.algorithm or algo, dataset, "final", sources)
        writer.writerow([dataset, algo, len(cell.final), np.mean(cell.final), np.std(cell.final),
                         np.mean(cell.last) if cell.last else "", np.std(cell.last) if cell.last else "",
                         np.mean(cell.best), np.std(cell.best), "" if value is None else mean_of(value),
                         source or "", versions or ("same" if value is not None else ""),
                         *[np.mean(cell.o2o[k]) if cell.o2o[k] else "" for k in O2O_FIELDS],
                         " ".join(str(run) for run in cell.runs)])
    return stream.getvalue()


def fields(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="where the files go (default: <first folder>/report)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown",
                        help="what is printed (all three are written)")
    parser.add_argument("--paper", action="append", metavar="SOURCE",
                        help="only these sources of published numbers (experiments/paper_scores.yaml); "
                             "default: the closest data first, each algorithm's paper before CORL")
    parser.add_argument("--group-by", action="append", type=fields, metavar="FIELD[,FIELD]",
                        help="rows per dataset, algorithm and these fields of the resolved config (e.g. "
                             "algo.expectile,steps), every other setting pooled; default: one row per "
                             "distinct settings, labelled by the fields that differ")
    parser.add_argument("--last", type=int, default=10, metavar="N",
                        help="the mean of each seed's last N evaluations (default 10: TD3+BC's protocol)")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="probability that row A scores above row B (rliable), with its 95%% CI")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples (rliable)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    papers = load_paper_scores()
    unknown = set(args.paper or ()) - set(papers["sources"])
    group_by = [name for names in args.group_by or () for name in names] or None
    try:
        if unknown:
            raise ReportError(f"unknown --paper {sorted(unknown)[0]}; known: {', '.join(papers['sources'])}")
        if args.last < 1:
            raise ReportError(f"--last must be a number of evaluations >= 1 (got {args.last})")
        try:
            import rliable  # noqa: F401
        except ImportError:
            raise ReportError('the report needs rliable and matplotlib: pip install -e ".[report]"') from None
        cells, failures, unfinished, duplicates, notes = collect(args.folders, group_by, args.last)
        tables = build_tables(cells, failures, unfinished, papers, args.paper, args.reps, args.last,
                              args.compare, duplicates)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        warn(note)
    if args.paper and "published" not in tables:
        warn(f"--paper {', '.join(args.paper)}: no published number for these datasets and algorithms")
    out = args.out or args.folders[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    texts = {"markdown": to_markdown(tables, papers), "latex": to_latex(tables),
             "csv": to_csv(cells, papers, args.paper)}
    for kind, name in (("markdown", "report.md"), ("latex", "report.tex"), ("csv", "scores.csv")):
        (out / name).write_text(texts[kind])
    with open(out / "aggregate.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(tables["aggregate"])
    if not args.no_plots:
        from experiments import report_plots

        report_plots.write_all(cells, out, args.reps)
    print(texts[args.format])
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
