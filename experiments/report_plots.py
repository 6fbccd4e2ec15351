"""The report's figures: learning curves per dataset and performance profiles (matplotlib, rliable).

Curves come from the `"type": "eval"` lines of each run's metrics.jsonl: per algorithm the mean
normalized score over seeds and a 95% confidence band for that mean (Student's t over seeds). Lines
with a `"phase"` (offline-to-online runs) are drawn in one panel per phase, online ones against
`env_step` when present.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

PROFILE_THRESHOLDS = np.linspace(0.0, 120.0, 121)


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


def mean_and_band(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and the 95% t-interval of that mean (zero width for one seed)."""
    from scipy import stats

    mean = scores.mean(axis=0)
    n = scores.shape[0]
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, n - 1) * scores.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def slug(text: str) -> str:
    return text.replace("/", "-")


def plot_curves(cells: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for dataset in sorted({dataset for dataset, _ in cells}):
        curves = {algo: pooled_curves(cell.runs) for (name, algo), cell in sorted(cells.items())
                  if name == dataset}
        phases = sorted({phase for by_phase in curves.values() for phase in by_phase},
                        key=lambda phase: phase != "offline")
        if not phases:
            continue
        figure, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.8), squeeze=False)
        for axis, phase in zip(axes[0], phases, strict=True):
            for algo, by_phase in curves.items():
                if phase in by_phase:
                    x, scores = by_phase[phase]
                    mean, low, high = mean_and_band(scores)
                    (line,) = axis.plot(x, mean, label=f"{algo} ({scores.shape[0]} seeds)")
                    axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
            axis.set_xlabel("environment steps" if phase == "online" else "gradient steps")
            axis.set_ylabel("normalized score")
            axis.set_title(dataset if len(phases) == 1 else f"{dataset}, {phase}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        path = out / f"curves_{slug(dataset)}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def plot_profiles(cells: dict, out: Path, reps: int) -> Path | None:
    """Fraction of runs (seeds x datasets) scoring above each threshold, with 95% bootstrap bands."""
    import matplotlib.pyplot as plt
    from rliable import library

    from experiments.report import score_matrix, seeded_numpy

    algos = sorted({algo for _, algo in cells})
    scores = {algo: score_matrix([cell for (_, name), cell in sorted(cells.items()) if name == algo])
              for algo in algos}
    with seeded_numpy(0):
        profiles, bands = library.create_performance_profile(scores, PROFILE_THRESHOLDS,
                                                             reps=min(reps, 2000))
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for algo in algos:
        (line,) = axis.plot(PROFILE_THRESHOLDS, profiles[algo], label=algo)
        axis.fill_between(PROFILE_THRESHOLDS, bands[algo][0], bands[algo][1], color=line.get_color(),
                          alpha=0.2)
    axis.set_xlabel("normalized score τ")
    axis.set_ylabel("fraction of runs with score > τ")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "profiles.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_all(cells: dict, out: Path, reps: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    return [*plot_curves(cells, out), plot_profiles(cells, out, reps)]
