"""Several candidate policies per seed (`Algorithm.candidates`: Uni-O4's ensemble): every offline
evaluation scores each candidate of each seed on the seed's episodes, in one vector env with one
batched policy call per step, and then, as a step of its own, the algorithm chooses the candidate
its seed acts with (and hands over online) from those real scores."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import Algorithm
from experiments import records
from experiments.seed_axis import seed_axes


def score(policy, info, seeds: list[int], cfg, step: int, index: int, observation_dim: int,
          count: int) -> tuple[np.ndarray, dict]:
    """Offline evaluation number `index` of every candidate: (scores (seeds, count) that `choose`
    reads, the evaluation entry's returns by candidate (seeds, count, episodes) with the time)."""
    tic = time.perf_counter()
    returns = records.play(policy, info, seeds, cfg, "offline", index, observation_dim, copies=count)
    returns = returns.reshape(len(seeds), count, -1)
    scores = envs.normalized_score(returns, info)
    return (returns if scores is None else scores).mean(axis=-1), {
        "returns": returns, "seconds": time.perf_counter() - tic}


def choose(algo: Algorithm, states, scores):
    """The algorithm's `candidates().choose` for every seed at once: scores (seeds, count) ->
    (states acting with their chosen candidates, the record as host arrays with a leading seed axis)."""
    axes = seed_axes(states)
    program = jax.jit(jax.vmap(algo.candidates().choose, in_axes=(axes, 0), out_axes=(axes, 0)))
    states, record = program(states, jnp.asarray(scores, jnp.float32))
    return states, jax.device_get(record)


def entry(played: dict, record: dict, info, step: int) -> dict:
    """The evaluation entry of the chosen candidates, with every candidate's scores and the
    algorithm's record under "members" (results.json)."""
    returns = played["returns"]
    scores = envs.normalized_score(returns, info)
    chosen = returns[np.arange(returns.shape[0]), np.asarray(record["chosen"])]
    out = records.evaluation_entry(chosen, info, "offline", step, 0, played["seconds"])
    out["members"] = {"return": returns.mean(axis=-1).tolist(),
                      "normalized_score": None if scores is None else scores.mean(axis=-1).tolist(),
                      **{name: np.asarray(value).tolist() for name, value in record.items()}}
    return out


def evaluate_and_choose(algo: Algorithm, policy, states, info, seeds: list[int], cfg, step: int,
                        index: int, observation_dim: int):
    """Score every candidate (`score`), then let the algorithm choose (`choose`): (the states
    acting with the chosen candidates, the evaluation entry)."""
    scores, played = score(policy, info, seeds, cfg, step, index, observation_dim,
                           algo.candidates().count)
    states, record = choose(algo, states, scores)
    return states, entry(played, record, info, step)
