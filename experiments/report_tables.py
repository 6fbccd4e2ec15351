"""The report's tables, as a header row and rows of strings each, and their text formats (Markdown,
LaTeX, CSV): per row the scores over seeds beside the closest published number, offline -> online
scores, every published number, the rliable aggregate and probability of improvement, duplicate
seeds, failed and unfinished jobs."""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from experiments.papers import mean_of, paper_score, published
from experiments.report_runs import O2O_FIELDS, ReportError, score_matrix
from experiments.stats import probability_of_improvement, stratified_bootstrap


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
