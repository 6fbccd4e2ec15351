"""The statistics of results: the interquartile mean of a run's seeds (records.py); the report's
rliable aggregates with stratified-bootstrap confidence intervals, probability of improvement and
performance profiles; the t-interval of a learning curve's mean. Pure functions of score arrays;
experiments/report_tables.py and experiments/report_plots.py show what they return."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np


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


def iqm(values) -> float:
    """Interquartile mean (mean of the middle 50%), as rliable defines it."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=np.float64), 0.25))


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


def performance_profiles(scores: dict[str, np.ndarray], thresholds: np.ndarray, reps: int,
                         seed: int = 0) -> tuple[dict, dict]:
    """Per algorithm, the fraction of its runs (a runs x tasks matrix) scoring above each threshold,
    and its 95% bootstrap band (rliable): (profiles, bands)."""
    from rliable import library

    with seeded_numpy(seed):
        return library.create_performance_profile(scores, thresholds, reps=reps)


def mean_and_band(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and the 95% t-interval of that mean (zero width for one seed)."""
    from scipy import stats

    mean = scores.mean(axis=0)
    n = scores.shape[0]
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, n - 1) * scores.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half
