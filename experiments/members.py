"""Several candidate policies per seed (`Algorithm.candidates`: Uni-O4's ensemble): every offline
evaluation scores each candidate of each seed on the seed's episodes (experiments/run_folder.py plays
them, on the host or compiled as `eval.backend` says), and then, as a step of its own, the algorithm
chooses the candidate its seed acts with (and hands over online) from those real scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import Algorithm
from experiments import records
from experiments.seed_axis import seed_axes


def scores_of(returns: np.ndarray, info) -> np.ndarray:
    """Every candidate's score that `choose` reads, (seeds, count), from its episodes' returns
    (seeds, count, episodes): the mean normalized score (the mean return without reference scores)."""
    scores = envs.normalized_score(returns, info)
    return (returns if scores is None else scores).mean(axis=-1)


def choose(algo: Algorithm, states, scores):
    """The algorithm's `candidates().choose` for every seed at once: scores (seeds, count) ->
    (states acting with their chosen candidates, the record as host arrays with a leading seed axis)."""
    axes = seed_axes(states)
    program = jax.jit(jax.vmap(algo.candidates().choose, in_axes=(axes, 0), out_axes=(axes, 0)))
    states, record = program(states, jnp.asarray(scores, jnp.float32))
    return states, jax.device_get(record)


def entry(returns: np.ndarray, seconds: float, record: dict, info, step: int) -> dict:
    """The evaluation entry of the chosen candidates, with every candidate's scores and the
    algorithm's record under "members" (results.json)."""
    scores = envs.normalized_score(returns, info)
    chosen = returns[np.arange(returns.shape[0]), np.asarray(record["chosen"])]
    out = records.evaluation_entry(chosen, info, "offline", step, 0, seconds)
    out["members"] = {"return": returns.mean(axis=-1).tolist(),
                      "normalized_score": None if scores is None else scores.mean(axis=-1).tolist(),
                      **{name: np.asarray(value).tolist() for name, value in record.items()}}
    return out


def evaluate_and_choose(algo: Algorithm, states, returns: np.ndarray, seconds: float, info, step: int):
    """An offline evaluation of every candidate, `returns` (seeds x count, episodes) as its rows
    played them (member m of seed i at row i * count + m; `seconds`: how long they took), then the
    algorithm's choice (`choose`): (the states acting with the chosen candidates, the entry)."""
    returns = returns.reshape(returns.shape[0] // algo.candidates().count, algo.candidates().count, -1)
    states, record = choose(algo, states, scores_of(returns, info))
    return states, entry(returns, seconds, record, info, step)
