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
Its parts: reading and grouping the runs (report_runs), the published numbers (papers), the
statistics (stats), the tables (report_tables), the figures' numbers (report_figures) and drawing
them (report_plots); this module is the command line.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from experiments import report_figures, report_plots
from experiments.papers import load_paper_scores
from experiments.report_runs import ReportError, collect, warn
from experiments.report_tables import build_tables, to_csv, to_latex, to_markdown


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
        report_plots.write_all(report_figures.curve_bands(cells), report_figures.PROFILE_THRESHOLDS,
                               *report_figures.profiles(cells, args.reps), out)
    print(texts[args.format])
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
