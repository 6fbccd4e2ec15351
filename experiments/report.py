"""Tables and plots from finished runs, with the published numbers beside ours.

    python -m experiments.report multirun/2026-12-01_10-00-00          # a sweep folder
    python -m experiments.report runs/ multirun/ --paper iql --format latex

Reads every `results.json` under the folders (and `metrics.jsonl` for curves); runs of the same
algorithm on the same dataset are pooled (their seeds together). Writes into `--out` (default
`<first folder>/report/`) and prints the table in `--format`:
- `report.md`, `report.tex`, `scores.csv`: per dataset and algorithm the mean ± std over seeds of the
  final score and of the best score, the paper's number (`experiments/paper_scores.yaml`) and ours
  minus it; offline-to-online runs get offline -> online scores and regret; failed and unfinished
  jobs are listed;
- `aggregate.csv`: per algorithm IQM and mean of the final scores over seeds x datasets with 95%
  stratified-bootstrap confidence intervals (rliable);
- `curves_<dataset>.png` (mean and 95% CI band over seeds per algorithm) and `profiles.png`
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from experiments.sweep import FAILURE_FILE, RESULTS_FILE

PAPER_SCORES = Path(__file__).with_name("paper_scores.yaml")
# Variants compared with their algorithm's published numbers.
PAPER_ALGO = {"cql_jaxcql": "cql"}
# Per-seed fields of offline-to-online runs, under the names the training loop may write them.
O2O_FIELDS = {"offline": ("offline_score", "offline_final_score"),
              "online_final": ("online_final_score", "final_online_score"),
              "online_best": ("online_best_score", "best_online_score"),
              "regret": ("online_regret", "regret")}


class ReportError(ValueError):
    pass


@dataclass
class Cell:
    """Every seed of one algorithm on one dataset, pooled over the runs found. The trainings of a
    hyperparameter grid (experiments/grid.py) are one cell per grid point, its values in `algo`."""
    dataset: str
    algo: str
    runs: list = field(default_factory=list)  # folders; (folder, grid point) for a grid's trainings
    final: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    o2o: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in O2O_FIELDS})


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_results(path: Path) -> tuple[str, str, list[dict]] | None:
    """(dataset, algo, per-seed records) of one results.json, or None (with a warning) when the file
    is half-written, of another format, or has no normalized scores."""
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
    return dataset, algo, seeds


def add_to_cell(cells: dict, dataset: str, algo: str, folder: Path, point: dict | None,
                seeds: list[dict]) -> None:
    """Pool `seeds` of one run into the cell of (dataset, algo and grid point)."""
    label = algo if not point else f"{algo} ({', '.join(f'{k}={v:g}' for k, v in point.items())})"
    cell = cells.setdefault((dataset, label), Cell(dataset, label))
    cell.runs.append((folder, point) if point else folder)
    cell.final += [float(seed["final_score"]) for seed in seeds]
    cell.best += [float(seed["best_score"]) for seed in seeds]
    for key, names in O2O_FIELDS.items():
        values = [next((seed[n] for n in names if seed.get(n) is not None), None) for seed in seeds]
        if all(value is not None for value in values):
            cell.o2o[key] += [float(value) for value in values]


def collect(folders: list[Path]) -> tuple[dict[tuple[str, str], Cell], list[dict], list[Path]]:
    """Cells by (dataset, algo), failure records, and run folders that have neither results nor a
    failure record (still running, interrupted or killed)."""
    cells, failures, unfinished = {}, [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass sweep or run folders (e.g. multirun/<date>)")
        for path in sorted(folder.rglob(RESULTS_FILE)):
            found = read_results(path)
            if found is None:
                continue
            dataset, algo, seeds = found
            for seed in seeds:
                if seed.get("stopped"):  # the algorithm's early stop (e.g. SPOT's Q > 1e4): not counted
                    stop = seed["stopped"]
                    failures.append({"folder": str(path.parent), "algo": algo, "dataset": dataset,
                                     "error": f"seed {seed.get('seed')} stopped at step {stop.get('step')}: "
                                              f"{stop.get('reason')}"})
            by_point: dict[str, list[dict]] = {}
            for seed in seeds:
                if not seed.get("stopped"):
                    by_point.setdefault(json.dumps(seed.get("grid"), sort_keys=True), []).append(seed)
            for point, seeds in by_point.items():
                add_to_cell(cells, dataset, algo, path.parent, json.loads(point), seeds)
        for path in sorted(folder.rglob(FAILURE_FILE)):
            try:
                failures.append({"folder": str(path.parent), **json.loads(path.read_text())})
            except ValueError:
                warn(f"skipping {path}: not complete JSON")
        for metrics in sorted(folder.rglob("metrics.jsonl")):
            if not (metrics.parent / RESULTS_FILE).exists() and not (metrics.parent / FAILURE_FILE).exists():
                unfinished.append(metrics.parent)
    if not cells:
        failed = f"; {len(failures)} failed job(s) left failure.json there" if failures else ""
        raise ReportError(f"no results.json with normalized scores under {', '.join(map(str, folders))} "
                          f"(runs write it when training completes){failed}")
    return cells, failures, unfinished


def paper_name(dataset: str) -> tuple[str | None, bool]:
    """The name of `dataset` in the paper tables, and whether the comparison is approximate (Minari's
    re-recordings of D4RL AntMaze are compared with D4RL's v2 files)."""
    source, _, name = dataset.partition("/")
    if source == "d4rl":
        return name, False
    maze = re.fullmatch(r"D4RL/antmaze/(.+)-v\d+", name) if source == "minari" else None
    return (f"antmaze-{maze[1]}-v2", True) if maze else (None, False)


def load_paper_scores(path: Path = PAPER_SCORES) -> dict:
    return yaml.safe_load(path.read_text())


def paper_score(papers: dict, algo: str, dataset: str, metric: str, sources: list[str] | None):
    """(value, source) of the first entry for this algorithm, dataset and metric, in the file's order
    (papers before reproductions), among `sources` when given; (None, None) when there is none."""
    name, _ = paper_name(dataset)
    for entry in papers["scores"]:
        if (entry["algo"] == PAPER_ALGO.get(algo, algo) and entry["metric"] == metric
                and (not sources or entry["source"] in sources) and name in entry["scores"]):
            return entry["scores"][name], entry["source"]
    return None, None


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


def build_tables(cells, failures, unfinished, papers, sources, reps) -> dict[str, list[list]]:
    """Every table as a header row and rows of strings: scores, offline_to_online, aggregate,
    failures."""
    tables = {"scores": [["dataset", "algorithm", "seeds", "final score", "best score",
                          "published (final)", "ours − published", "source"]]}
    o2o = [["dataset", "algorithm", "seeds", "offline → online (final)", "online best", "regret",
            "published offline → online", "ours − published (online)", "source"]]
    for (dataset, algo), cell in sorted(cells.items()):
        value, source = paper_score(papers, algo, dataset, "final", sources)
        if cell.o2o["online_final"]:  # its final score is after fine-tuning: compared in the next table
            value, source = None, None
        approx = "≈ " if paper_name(dataset)[1] and value is not None else ""
        tables["scores"].append([
            dataset, algo, str(len(cell.final)), fmt(cell.final), fmt(cell.best),
            "–" if value is None else f"{approx}{mean_of(value):.1f}",
            "–" if value is None else f"{np.mean(cell.final) - mean_of(value):+.1f}", source or "–"])
        if cell.o2o["offline"] and cell.o2o["online_final"]:
            value, source = paper_score(papers, algo, dataset, "offline_to_online", sources)
            paper, diff = "–", "–"
            if value is not None:
                offline, online = mean_of(value["offline"]), mean_of(value["online"])
                paper = f"{'≈ ' if paper_name(dataset)[1] else ''}{offline:.1f} → {online:.1f}"
                diff = f"{np.mean(cell.o2o['online_final']) - online:+.1f}"
            o2o.append([dataset, algo, str(len(cell.o2o["online_final"])),
                        f"{fmt(cell.o2o['offline'])} → {fmt(cell.o2o['online_final'])}",
                        fmt(cell.o2o["online_best"]), fmt(cell.o2o["regret"], 2), paper, diff, source or "–"])
    if len(o2o) > 1:
        tables["offline_to_online"] = o2o
    aggregate = [["algorithm", "datasets", "runs", "IQM final [95% CI]", "mean final [95% CI]"]]
    for algo in sorted({algo for _, algo in cells}):
        group = [cell for (_, name), cell in sorted(cells.items()) if name == algo]
        matrix = score_matrix(group)
        stats = stratified_bootstrap(matrix, reps)
        aggregate.append([algo, str(matrix.shape[1]), str(matrix.size)] + [
            f"{stats[k][0]:.1f} [{stats[k][1]:.1f}, {stats[k][2]:.1f}]" for k in ("iqm", "mean")])
    tables["aggregate"] = aggregate
    if failures or unfinished:
        rows = [[f["folder"], str(f.get("algo")), str(f.get("dataset")), f.get("error", "")]
                for f in failures]
        rows += [[str(path), "", "", "unfinished: no results.json and no failure record"]
                 for path in unfinished]
        tables["failures"] = [["job folder", "algorithm", "dataset", "error"], *rows]
    return tables


TITLES = {"scores": "Normalized scores (mean ± std over seeds)", "offline_to_online": "Offline → online",
          "aggregate": "Aggregate over seeds × datasets (rliable, stratified bootstrap)",
          "failures": "Failed and unfinished jobs"}


def to_markdown(tables, papers) -> str:
    out = []
    for name, (header, *rows) in tables.items():
        out += [f"## {TITLES[name]}", "", "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows), ""]
    used = {row[-1] for name in ("scores", "offline_to_online") for row in tables.get(name, [])[1:]}
    notes = [f"- **{key}**: {' '.join(source['cite'].split())} ({source['datasets']}; {source['protocol']})"
             for key, source in papers["sources"].items() if key in used]
    if notes:
        out += ["Sources of the paper numbers (≈: our run used Minari's re-recording of the dataset):",
                *notes, ""]
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
    writer.writerow(["dataset", "algorithm", "seeds", "final_mean", "final_std", "best_mean", "best_std",
                     "paper_final", "paper_source", *[f"{k}_mean" for k in O2O_FIELDS], "runs"])
    for (dataset, algo), cell in sorted(cells.items()):
        value, source = paper_score(papers, algo, dataset, "final", sources)
        writer.writerow([dataset, algo, len(cell.final), np.mean(cell.final), np.std(cell.final),
                         np.mean(cell.best), np.std(cell.best), "" if value is None else mean_of(value),
                         source or "", *[np.mean(cell.o2o[k]) if cell.o2o[k] else "" for k in O2O_FIELDS],
                         " ".join(str(run) for run in cell.runs)])
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="where the files go (default: <first folder>/report)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown",
                        help="what is printed (all three are written)")
    parser.add_argument("--paper", action="append", metavar="SOURCE",
                        help="only these sources of paper numbers (experiments/paper_scores.yaml: iql, "
                             "iql_finetune, corl); default: each algorithm's paper first, then CORL")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples (rliable)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    papers = load_paper_scores()
    unknown = set(args.paper or ()) - set(papers["sources"])
    try:
        if unknown:
            raise ReportError(f"unknown --paper {sorted(unknown)[0]}; known: {', '.join(papers['sources'])}")
        try:
            import rliable  # noqa: F401
        except ImportError:
            raise ReportError('the report needs rliable and matplotlib: pip install -e ".[report]"') from None
        cells, failures, unfinished = collect(args.folders)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tables = build_tables(cells, failures, unfinished, papers, args.paper, args.reps)
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
