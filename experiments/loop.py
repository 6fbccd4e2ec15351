"""The compiled training loop: every seed in one program, thousands of updates per dispatch.

    states, buffers = jit(scan(vmap_seeds(refresh model data + draw batch + update), length=chunk))(...)

Data lives on the device and batches are drawn inside the compiled scan; nothing runs in Python per
gradient step. `ChunkRunner` is the one place that runs those programs (offline, online and in the
benchmark): it compiles one program per chunk length, guards it with a watchdog, checks that every
seed stayed finite, and applies the algorithm's early stop. Between chunks the host logs,
evaluates all seeds in one vector env with one batched policy call per env step, and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Context, Sampling
from algorithms.core.components import learner
from algorithms.core.replay import ReplayBuffer, Transitions, draw
from experiments import seed_axis
from experiments.seed_axis import context_axes, seed_axes, with_values


class TrainingDiverged(RuntimeError):
    """A loss or Q-value became NaN/inf; the last good checkpoint is kept."""


class TrainingStopped(TrainingDiverged):
    """The algorithm's own early-stop rule fired for every seed (e.g. SPOT's Q > 1e4)."""


def batch_sampling(algo: Algorithm, phase: str) -> Sampling:
    """Where `phase`'s batches come from: offline the dataset (with the model data, if any, at its
    ratio); online as the online learner's driver says."""
    if phase == "online":
        return learner(algo, "online").driver().sampling()
    model = algo.model_data()
    return Sampling("dataset") if model is None else model.sampling()


def init_buffers(algo: Algorithm, spec: Spec, ctx: Context, seeds: int):
    """The per-seed buffers of the offline phase: the algorithm's model data (None for most)."""
    model = algo.model_data()
    if model is None:
        return None
    buffer = model.init(spec, ctx)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (seeds, *x.shape)).copy(), buffer)


def seed_update(algo: Algorithm, phase: str = "offline", sampling: Sampling | None = None):
    """One update of one seed, to be vmapped over the seeds: (state, buffer, key, values, ctx) ->
    (state, buffer, metrics): the model data refreshed (offline, MOPO), a batch drawn as `sampling`
    (default `batch_sampling(algo, phase)`) says, the phase's learner's `update` (`components.learner`)
    with the training's grid `values` in place. The compiled update chunk below and the compiled
    online phase (experiments/online_compiled.py) both run it."""
    sampling = sampling or batch_sampling(algo, phase)
    model_data = phase == "offline" and algo.model_data() is not None
    batch_size = learner(algo, phase).batch_size

    def one_seed(state, buffer, key, values, ctx):
        algo_here = learner(with_values(algo, values), phase)
        fill_key, sample_key, update_key = jax.random.split(key, 3)
        extra = {}
        if model_data:
            buffer, extra = algo_here.model_data().refresh(state, buffer, fill_key, ctx)
        batch = draw(sampling, ctx.data, buffer, sample_key, batch_size)
        updated, metrics = algo_here.update(state, batch, update_key, ctx)
        # The contract of `update` (checked once, when tracing): the state keeps its structure,
        # shapes and dtypes, and every metric is one number per step.
        chex.assert_trees_all_equal_shapes_and_dtypes(updated, state)
        chex.assert_rank(list(metrics.values()), 0)
        return updated, buffer, {**metrics, **extra}

    return one_seed


def make_train_chunk(algo: Algorithm, length: int, phase: str = "offline",
                     sampling: Sampling | None = None):
    """A jitted function running `length` updates for every seed:
    (states, buffers, keys, ctx, rows=None, values=None) -> (states, buffers, keys, metrics),
    metrics of shape (length, seeds). `rows`: new transitions per seed (seeds, n, ...) appended to
    the buffers first (online collection). `values`: per-training grid values (`with_values`).
    Batches are drawn as `sampling` (default `batch_sampling(algo, phase)`) says; online, the
    learner the algorithm hands over to trains (`components.learner`)."""
    one_seed = seed_update(algo, phase, sampling)

    def chunk(states, buffers, keys, ctx, rows=None, values=None):
        if rows is not None:
            buffers = jax.vmap(ReplayBuffer.add)(buffers, rows)
        axes = seed_axes(states)
        step_all = jax.vmap(one_seed, in_axes=(axes, 0, 0, 0, context_axes(ctx)), out_axes=(axes, 0, 0))

        def body(carry, _):
            states, buffers, keys = carry
            keys, step_keys = jnp.split(jax.vmap(jax.random.split)(keys), 2, axis=1)
            states, buffers, metrics = step_all(states, buffers, step_keys[:, 0], values, ctx)
            return (states, buffers, keys[:, 0]), metrics

        (states, buffers, keys), metrics = jax.lax.scan(body, (states, buffers, keys), None,
                                                        length=length)
        return states, buffers, keys, metrics

    return jax.jit(chunk, donate_argnums=(0, 1, 2))


@jax.jit
def append_rows(buffers: ReplayBuffer, rows: Transitions) -> ReplayBuffer:
    return jax.vmap(ReplayBuffer.add)(buffers, rows)


@jax.jit
def _keep_stopped(states, frozen, stopped):
    """Every seed flagged in `stopped` gets its `frozen` parameters back (the shared step aside)."""
    def pick(new, old):
        return jnp.where(stopped.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
    return jax.tree.map(pick, states.replace(step=None), frozen.replace(step=None)).replace(
        step=states.step)


class ChunkRunner:
    """Runs compiled training chunks for one algorithm and phase: one program per chunk length
    (compiled ahead of time, timed apart), a watchdog around each call, the finiteness check and
    the algorithm's early stop after it. Seeds the early stop flags keep the parameters they had
    then (`stopped`: seed index -> (step, reason)); when every seed has stopped, TrainingStopped.
    `values`: per-training grid values, with `early_stop` their per-training rule (experiments/grid.py).
    `after_chunk(end_step)`: called after each chunk has been checked, before the host logs or
    checkpoints it; an exception it raises stops the run there, as a killed job would (the resume
    tests' fault seam)."""

    def __init__(self, algo: Algorithm, phase: str = "offline", watchdog_seconds: float = 0.0,
                 stopped: dict | None = None, sampling: Sampling | None = None,
                 values: dict | None = None, early_stop=None,
                 after_chunk: Callable[[int], None] | None = None):
        self.algo, self.phase, self.watchdog_seconds = algo, phase, watchdog_seconds
        self.sampling, self.values, self.after_chunk = sampling, values, after_chunk
        self.early_stop = early_stop or algo.early_stop
        self.programs: dict = {}
        self.stopped = dict(stopped or {})
        self.frozen = None
        self.compile_seconds = self.update_seconds = 0.0
        self.updates = 0

    def compile(self, length: int, *args):
        key = (length, args[4] is not None)
        if key not in self.programs:
            tic = time.perf_counter()
            program = make_train_chunk(self.algo, length, self.phase, self.sampling)
            self.programs[key] = program.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - tic
        return self.programs[key]

    def __call__(self, states, buffers, keys, ctx: Context, length: int, end_step: int, rows=None):
        """`length` updates ending at step `end_step` (for messages); returns (states, buffers,
        keys, metrics as host arrays of shape (length, seeds))."""
        if length == 0:  # collecting only (e.g. before an online warm-up ends)
            return states, append_rows(buffers, rows), keys, {}
        self.hold_stopped(states)
        seeds = jax.tree.leaves(keys)[0].shape[0]
        padding = seed_axis.seed_padding(seeds)
        values = self.values
        if padding:  # a seed count that does not divide over the devices: pad, shard, run, unpad
            states, buffers, rows, values, keys = seed_axis.shard_seeds(
                *(seed_axis.pad_seeds(tree, padding) for tree in (states, buffers, rows, values, keys)))
            ctx = seed_axis.pad_context(ctx, padding)
        program = self.compile(length, states, buffers, keys, ctx, rows, values)
        tic = time.perf_counter()
        with watchdog(self.watchdog_seconds, end_step):
            states, buffers, keys, metrics = program(states, buffers, keys, ctx, rows, values)
            metrics = jax.device_get(metrics)
        if padding:
            states, buffers, keys = (seed_axis.unpad_seeds(tree, seeds) for tree in (states, buffers, keys))
            metrics = {name: value[:, :seeds] for name, value in metrics.items()}
        self.update_seconds += time.perf_counter() - tic
        self.updates += length
        return self.checked(states, metrics, end_step), buffers, keys, metrics

    def hold_stopped(self, states) -> None:
        """Before a chunk: a resumed run's stopped seeds keep the parameters its states hold."""
        if self.stopped and self.frozen is None:
            self.frozen = jax.tree.map(jnp.copy, states)

    def checked(self, states, metrics: dict, end_step: int):
        """After a chunk (this runner's, or the compiled online phase's): every seed finite, the
        early stop applied (returns the states), then `after_chunk`."""
        check_finite(states, metrics, end_step, ignore=list(self.stopped))
        states = self._early_stop(states, metrics, end_step)
        if self.after_chunk is not None:
            self.after_chunk(end_step)
        return states

    def _early_stop(self, states, metrics: dict, end_step: int):
        flags, reason = self.early_stop(metrics)
        seeds = len(flags)
        before = np.zeros(seeds, bool)
        before[list(self.stopped)] = True
        new = np.asarray(flags, bool) & ~before
        for seed in np.flatnonzero(new):
            self.stopped[int(seed)] = (end_step, reason)
        if not self.stopped:
            return states
        if len(self.stopped) == seeds:
            raise TrainingStopped(
                f"{self.algo.name} stopped training before step {end_step}: {reason} (every seed); "
                "the last checkpoint is kept and no results.json is written.")
        if new.any():  # their parameters as they are now, kept from here on
            self.frozen = (jax.tree.map(jnp.copy, states) if self.frozen is None
                           else _keep_stopped(self.frozen, states, jnp.asarray(new)))
        return _keep_stopped(states, self.frozen, jnp.asarray(before | new))

    @property
    def updates_per_second(self) -> float:
        return self.updates / max(self.update_seconds, 1e-9)


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


def check_finite(states, metrics: dict, step: int, ignore=()) -> None:
    """Raise TrainingDiverged if any seed (except those in `ignore`, already stopped) has NaN/inf
    parameters, or a metric reached inf."""
    bad = ~np.asarray(finite_per_seed(states))
    for values in metrics.values():
        bad |= np.isinf(np.asarray(values, dtype=np.float64)).any(axis=0)
    bad[list(ignore)] = False
    if bad.any():
        names = [name for name, v in metrics.items() if not np.isfinite(np.nan_to_num(
            np.asarray(v, dtype=np.float64), nan=0.0)).all()]
        raise TrainingDiverged(
            f"training diverged before step {step}: seed index(es) {np.flatnonzero(bad).tolist()} "
            f"have NaN/inf parameters{' or ' + ', '.join(names) if names else ''}. Lower the "
            "learning rate or check the reward scale; the last good checkpoint is kept."
        )


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
