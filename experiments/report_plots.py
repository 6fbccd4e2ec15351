"""The report's figures, drawn from what they are handed (experiments/report_figures.py computes
it): learning curves per dataset, one panel per phase, with their bands, and performance profiles.
matplotlib only; no file but the figures is read here."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def slug(text: str) -> str:
    return text.replace("/", "-")


def plot_curves(bands: dict, out: Path) -> list[Path]:
    """`bands`: dataset -> row label -> phase -> (x, mean, low, high, seeds); one figure per dataset."""
    import matplotlib.pyplot as plt

    written = []
    for dataset, rows in sorted(bands.items()):
        phases = sorted({phase for by_phase in rows.values() for phase in by_phase},
                        key=lambda phase: phase != "offline")
        figure, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.8), squeeze=False)
        for axis, phase in zip(axes[0], phases, strict=True):
            for algo, by_phase in rows.items():
                if phase in by_phase:
                    x, mean, low, high, seeds = by_phase[phase]
                    (line,) = axis.plot(x, mean, label=f"{algo} ({seeds} seeds)")
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


def plot_profiles(thresholds: np.ndarray, profiles: dict, bands: dict, out: Path) -> Path:
    """Per row label, the fraction of runs (seeds x datasets) scoring above each threshold, with its
    95% band."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for algo in sorted(profiles):
        (line,) = axis.plot(thresholds, profiles[algo], label=algo)
        axis.fill_between(thresholds, bands[algo][0], bands[algo][1], color=line.get_color(), alpha=0.2)
    axis.set_xlabel("normalized score τ")
    axis.set_ylabel("fraction of runs with score > τ")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "profiles.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_all(curve_bands: dict, thresholds: np.ndarray, profiles: dict, profile_bands: dict,
              out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    return [*plot_curves(curve_bands, out), plot_profiles(thresholds, profiles, profile_bands, out)]
