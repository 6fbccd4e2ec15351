"""What the report's figures show, computed here and drawn by experiments/report_plots.py: learning
curves from the `"type": "eval"` lines of each run's metrics.jsonl (per row the mean normalized
score over seeds with a 95% t-band; lines with a `"phase"`, of offline-to-online runs, apart per
phase, online ones against `env_step` when present), and rliable's performance profiles."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.report_runs import score_matrix
from experiments.stats import mean_and_band, performance_profiles

PROFILE_THRESHOLDS = np.linspace(0.0, 120.0, 121)
PROFILE_REPS = 2000  # at most: the bands of a figure need no more resamples


def eval_curves(run_dir: Path, point: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """phase -> (x, scores[seeds, points]) from one run's metrics.jsonl (empty when absent); with a
    hyperparameter grid point (experiments/grid.py), only the trainings of that point."""
    rows = defaultdict(list)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if row.get("type") == "eval" and row.get("normalized_score"):
            phase = row.get("phase", "offline")
            x = row["env_step"] if phase == "online" and "env_step" in row else row["step"]
            scores = row["normalized_score"]
            if point:  # the columns of this grid point's trainings
                scores = [s for i, s in enumerate(scores)
                          if all(row["grid"][name][i] == value for name, value in point.items())]
            rows[phase].append((x, scores))
    return {phase: (np.array([x for x, _ in points]), np.array([s for _, s in points]).T)
            for phase, points in rows.items()}


def pooled_curves(runs: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Curves of several runs of one algorithm on one dataset, seeds stacked, at the evaluation
    points every run has; a run is a folder, or (folder, grid point) for a grid's trainings."""
    by_phase = defaultdict(list)
    for run in runs:
        folder, point = run if isinstance(run, tuple) else (run, None)
        for phase, curve in eval_curves(folder, point).items():
            by_phase[phase].append(curve)
    pooled = {}
    for phase, curves in by_phase.items():
        common = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
        if common:
            pooled[phase] = (np.array(common), np.concatenate(
                [scores[:, np.searchsorted(x, common)] for x, scores in curves]))
    return pooled


def curve_bands(cells: dict) -> dict[str, dict[str, dict[str, tuple]]]:
    """dataset -> row label -> phase -> (x, mean, low, high, seeds): each row's mean curve over its
    seeds and the 95% t-band of that mean."""
    bands: dict = {}
    for (dataset, algo), cell in sorted(cells.items()):
        for phase, (x, scores) in pooled_curves(cell.runs).items():
            bands.setdefault(dataset, {}).setdefault(algo, {})[phase] = (
                x, *mean_and_band(scores), scores.shape[0])
    return bands


def profiles(cells: dict, reps: int) -> tuple[dict, dict]:
    """Per row label, the fraction of its runs (seeds x datasets) scoring above each of
    PROFILE_THRESHOLDS, and its 95% bootstrap band: (profiles, bands)."""
    scores = {algo: score_matrix([cell for (_, name), cell in sorted(cells.items()) if name == algo])
              for algo in sorted({algo for _, algo in cells})}
    return performance_profiles(scores, PROFILE_THRESHOLDS, min(reps, PROFILE_REPS))
