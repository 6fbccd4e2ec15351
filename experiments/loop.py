"""The compiled training loop: every seed in one program, thousands of updates per dispatch.

    states = jit(scan(vmap_seeds(sample + update), length=chunk))(states, data, keys)

Data lives on the device and batches are sampled inside the compiled scan; nothing runs in Python
per gradient step. Between chunks the host logs, evaluates all seeds in one vector env with one
batched policy call per env step, and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import Algorithm, Spec
from algorithms.core.algorithm import PretrainStage
from algorithms.core.replay import sample_batch


class TrainingDiverged(RuntimeError):
    """A loss or Q-value became NaN/inf; the last good checkpoint is kept."""


class TrainingStopped(TrainingDiverged):
    """The algorithm's own early-stop rule fired (`Algorithm.stop_reason`, e.g. SPOT's Q > 1e4)."""


@dataclass
class PreparedData:
    data: envs.Dataset  # on the device, preprocessed as the algorithm asks
    normalizer: envs.Normalizer


def prepare(algo: Algorithm, data: envs.Dataset) -> PreparedData:
    """Apply the algorithm's reward convention and state normalization; move data to the device."""
    reward = algo.reward
    data = envs.transform_rewards(data, reward.returns_span, reward.scale, reward.shift)
    normalizer = (envs.Normalizer.from_dataset(data) if algo.normalize_states
                  else envs.Normalizer.identity(data.observation_dim))
    data = envs.normalize_states(data, normalizer)
    return PreparedData(jax.device_put(data), normalizer)


def seed_axes(states):
    """vmap axes for a batch of algorithm states: every leaf along axis 0, except the shared `step`."""
    return jax.tree.map(lambda _: 0, states).replace(step=None)


def init_states(algo: Algorithm, spec: Spec, data, keys: jax.Array, pretrained=None):
    """Initialise one state per key (the leading axis of `keys`), all in one compiled call.
    `pretrained`: the final state of the algorithm's pretraining stage, shared by all seeds."""
    if algo.pretraining() is None:
        init = jax.vmap(algo.init, in_axes=(0, None, None))
        states = jax.jit(init, static_argnums=1)(keys, spec, data)
    else:
        if pretrained is None:
            raise ValueError(f"{algo.name} starts from its pretraining stage "
                             f"'{algo.pretraining().name}': run loop.pretrain first")
        init = jax.vmap(lambda k, s, d, p: algo.init(k, s, d, pretrained=p), in_axes=(0, None, None, None))
        states = jax.jit(init, static_argnums=1)(keys, spec, data, pretrained)
    return states.replace(step=states.step[0])


def shard_seeds(states, keys):
    """Spread the seed axis over all devices (GPUs, TPU cores, or forced host devices) when it
    divides evenly; the dataset stays replicated. On one device this changes nothing."""
    devices = jax.devices()
    if len(devices) == 1 or keys.shape[0] % len(devices):
        return states, keys
    mesh = jax.sharding.Mesh(np.asarray(devices), ("seeds",))
    by_seed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree.map(lambda _: by_seed, states).replace(step=replicated)
    return jax.device_put(states, shardings), jax.device_put(keys, by_seed)


def make_train_chunk(algo: Algorithm, length: int, replay: bool = False):
    """A jitted function running `length` updates for every seed: (states, data, keys) ->
    (states, keys, metrics) with metrics of shape (length, num_seeds). `data` is the device dataset
    all seeds share or, with `replay=True` (online training), one ReplayBuffer per seed."""

    def one_seed(state, data, key):
        sample_key, update_key = jax.random.split(key)
        if replay:
            return algo.update(state, data.sample(sample_key, algo.batch_size), update_key)
        batch = sample_batch(data, sample_key, algo.batch_size)
        return algo.update_with_data(state, batch, update_key, data)

    def chunk(states, data, keys):
        axes = seed_axes(states)
        step_all = jax.vmap(one_seed, in_axes=(axes, 0 if replay else None, 0), out_axes=(axes, 0))

        def body(carry, _):
            states, keys = carry
            keys, step_keys = jnp.split(jax.vmap(jax.random.split)(keys), 2, axis=1)
            states, metrics = step_all(states, data, step_keys[:, 0])
            return (states, keys[:, 0]), metrics

        (states, keys), metrics = jax.lax.scan(body, (states, keys), None, length=length)
        return states, keys, metrics

    return jax.jit(chunk, donate_argnums=(0, 2))


def make_pretrain_chunk(stage: PretrainStage, length: int):
    """A jitted function running `length` steps of a pretraining stage (one model, not vmapped):
    (state, data, key) -> (state, key, metrics) with metrics of shape (length,)."""

    def chunk(state, data, key):
        def body(carry, _):
            state, key = carry
            key, sample_key, update_key = jax.random.split(key, 3)
            batch = sample_batch(data, sample_key, stage.batch_size)
            state, metrics = stage.update(state, batch, update_key)
            return (state, key), metrics

        (state, key), metrics = jax.lax.scan(body, (state, key), None, length=length)
        return state, key, metrics

    return jax.jit(chunk, donate_argnums=(0,))


def pretrain(stage: PretrainStage, spec: Spec, data, chunk_length: int, progress=None):
    """Run a pretraining stage from its seed (`stage.settings["seed"]`, default 0) in compiled
    chunks of `chunk_length` steps. `progress(step, metrics)` is called after each chunk with the
    chunk's mean metrics. Returns the final state."""
    key = jax.random.key(int(stage.settings.get("seed", 0)))
    init_key, key = jax.random.split(key)
    state = jax.jit(stage.init, static_argnums=1)(init_key, spec, data)
    chunks, step = {}, 0
    while step < stage.steps:
        length = min(chunk_length, stage.steps - step)
        if length not in chunks:
            chunks[length] = make_pretrain_chunk(stage, length)
        state, key, metrics = chunks[length](state, data, key)
        step += length
        means = {name: float(np.mean(np.asarray(values, np.float64)))
                 for name, values in jax.device_get(metrics).items()}
        if not all(np.isfinite(list(means.values()))):
            raise TrainingDiverged(f"pretraining stage '{stage.name}' diverged before step {step}: "
                                   f"{means}. Lower its learning rate or check the data.")
        if progress is not None:
            progress(step, means)
    return state


def make_policy(algo: Algorithm, normalizer: envs.Normalizer):
    """Batched deterministic policy for evaluation: raw observations (seeds, envs, obs_dim) ->
    actions (seeds, envs, act_dim), normalized exactly as the training data was."""
    mean, std = jnp.asarray(normalizer.mean), jnp.asarray(normalizer.std)

    @jax.jit
    def act(states, observations):
        axes = seed_axes(states)
        observations = (observations - mean) / std
        return jax.vmap(lambda s, o: algo.act(s, o, jax.random.key(0), True),
                        in_axes=(axes, 0))(states, observations)

    return lambda states: (lambda obs: np.asarray(act(states, jnp.asarray(obs, jnp.float32))))


def summarize_metrics(metrics: dict, log_every: int) -> list[dict]:
    """Average per-step metrics (length, seeds) over each logging interval. Metrics of delayed
    updates are NaN on the steps where the update did not run and are averaged over the others."""
    length = next(iter(metrics.values())).shape[0]
    rows = []
    for start in range(0, length, log_every):
        row = {}
        for name, values in metrics.items():
            window = np.asarray(values[start:start + log_every], dtype=np.float64)
            counted = np.isfinite(window) | np.isinf(window)
            total = np.where(counted, window, 0.0).sum(axis=0)
            row[name] = (total / np.maximum(counted.sum(axis=0), 1)).tolist()
        rows.append(row)
    return rows


@jax.jit
def finite_per_seed(states) -> jax.Array:
    """True for each seed whose parameters and optimiser state are all finite."""
    leaves = [leaf for leaf in jax.tree.leaves(states.replace(step=None))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.stack([jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1)
                      for leaf in leaves]).all(axis=0)


def check_finite(states, metrics: dict, step: int) -> None:
    """Raise TrainingDiverged if any seed's parameters became NaN/inf, or a metric reached inf."""
    bad = ~np.asarray(finite_per_seed(states))
    for values in metrics.values():
        bad |= np.isinf(np.asarray(values, dtype=np.float64)).any(axis=0)
    if bad.any():
        names = [name for name, v in metrics.items() if not np.isfinite(np.nan_to_num(
            np.asarray(v, dtype=np.float64), nan=0.0)).all()]
        raise TrainingDiverged(
            f"training diverged before step {step}: seed index(es) {np.flatnonzero(bad).tolist()} "
            f"have NaN/inf parameters{' or ' + ', '.join(names) if names else ''}. Lower the "
            "learning rate or check the reward scale; the last good checkpoint is kept."
        )


def iqm(values) -> float:
    """Interquartile mean (mean of the middle 50%), as rliable defines it."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=np.float64), 0.25))


@contextlib.contextmanager
def watchdog(seconds: float, step: int):
    """Stop the process with a clear message if the block takes longer than `seconds` (0: off).

    A compiled program can deadlock and never return (every thread idle): we saw it with batched
    LAPACK kernels on XLA's CPU thread pool, which our programs no longer contain, and a custom
    kernel added later could bring it back. A run that hangs forever on a cluster is worse than one
    that stops: this exits with code 3, and the last checkpoint lets `resume=true` continue."""
    if seconds <= 0:
        yield
        return

    def fire():
        print(f"error: the compiled training chunk ending at step {step} did not finish within "
              f"{seconds:g} s (a deadlocked program, or watchdog_seconds too small for this model). "
              "Restart with resume=true to continue from the last checkpoint.", file=sys.stderr,
              flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def chunk_schedule(start: int, steps: int, *intervals: int) -> list[int]:
    """The steps at which the host takes control (logging, evaluation, checkpoints): every
    multiple of the greatest common divisor of the non-zero `intervals`, and the last step."""
    chunk = math.gcd(*(interval for interval in intervals if interval > 0))
    points = list(range(start - start % chunk + chunk, steps, chunk)) + [steps]
    return [p for p in points if p > start]
