"""The runs a report reads, pooled into its rows: every seed of every `results.json` under the
folders, failure records and unfinished run folders; seeds grouped by algorithm, dataset and
settings into `Cell`s (a (settings, seed) pair found twice counts once), and a row's score matrix."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiments.settings import NOT_RESULTS, with_added_settings
from experiments.sweep import FAILURE_FILE, RESULTS_FILE

# Per-seed fields of offline-to-online runs, under the names the training loop may write them.
O2O_FIELDS = {"offline": ("offline_score", "offline_final_score"),
              "online_final": ("online_final_score", "final_online_score"),
              "online_best": ("online_best_score", "best_online_score"),
              "regret": ("online_regret", "regret")}

# Config fields that say where a run writes, how it is checkpointed, logged or watched, and which seeds
# it trains: not settings of the experiment, so runs that differ only there are pooled in one row.
# Fields that are not settings of a row: what does not change a run's numbers (settings.NOT_RESULTS),
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
    flat = flatten(with_added_settings(json.loads(json.dumps(config))))  # older runs: settings added since
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


def score_matrix(cells: list[Cell], attribute: str = "final") -> np.ndarray:
    """(runs x datasets) of one algorithm; datasets with more seeds than the others are cut to the
    smallest count (rliable needs a rectangle), with a warning."""
    runs = min(len(getattr(cell, attribute)) for cell in cells)
    if any(len(getattr(cell, attribute)) != runs for cell in cells):
        warn(f"{cells[0].algo}: datasets have different seed counts; the aggregate uses the first "
             f"{runs} of each")
    return np.array([getattr(cell, attribute)[:runs] for cell in cells]).T
