"""Online training: gymnasium environments on the host, compiled update chunks on the device.

Every seed has its own environment (all in one vector env), its own replay buffer on the device
and its own agent; all seeds step together with one batched policy call per environment step.
Every `block` environment steps the transitions collected meanwhile are preprocessed as the
dataset was (state normalization, reward transform), appended to the buffers, and
block * updates_per_step updates run in one compiled call (`loop.ChunkRunner`), drawing batches as
the algorithm's `sampling("online")` says (the dataset and the buffer as one pool, or mixed at a
ratio). The only Python per environment step is the environment itself and that policy call.

With `algo.online.replay = "on_policy"` (PPO) the buffer is the rollout: it holds `block`
transitions, and every time it is full (at environment steps that are multiples of `block`) the
whole rollout, in time order, is the batch of one update; no dataset rows are drawn.

Terminals are true terminations only; a time-limit truncation is stored as a timeout and
bootstrapped through. At every checkpoint the episodes in progress are cut (stored as truncated)
and the environments restart from seeds derived from (training seed, environment step): the
simulator state is not saved, and cutting in the uninterrupted run too is what makes a resumed run
give exactly the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Context
from algorithms.core.replay import ReplayBuffer, Transitions
from envs import Dataset, Preprocessor
from experiments import loop, policies
from experiments.config import ConfigError


@dataclass
class OnlineSchedule:
    steps: int  # environment steps per seed
    eval_every: int = 10_000  # environment steps; 0: only at the end
    checkpoint_every: int = 0  # environment steps; 0: only at the end
    log_every: int = 1_000  # environment steps per line of training metrics
    start_steps: int = 0  # uniformly random actions first (SAC from scratch)

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"online.steps must be >= 0 (got {self.steps})")


@dataclass
class OnlineRun:
    """Everything a checkpoint of the online phase holds."""

    states: object
    buffers: ReplayBuffer
    keys: jax.Array
    env_step: int = 0
    history: dict = field(default_factory=lambda: {"evaluations": [], "episodes": []})


def fresh_run(algo: Algorithm, spec, ctx: Context, seeds: list[int], capacity: int) -> OnlineRun:
    """A run that starts online (no offline phase): one new agent and an empty replay buffer per
    seed, keys from the seeds as in train.py."""
    init_keys, keys = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
    return OnlineRun(loop.init_states(algo, spec, ctx, init_keys),
                     loop.replay_buffers(capacity, spec, len(seeds)), keys)


def begin(algo: Algorithm, spec, ctx: Context, states, values: dict | None = None):
    """`algo.begin_online` for every seed, in one compiled call: the states the online phase starts
    from (the shared `step` stays shared). `jax.eval_shape` of it is the online checkpoint's template."""
    def begin_all(states, ctx, values):
        started = jax.vmap(lambda s, v, c: loop.with_values(algo, v).begin_online(s, spec, c),
                           in_axes=(loop.seed_axes(states), 0, loop.context_axes(ctx)))(states, values, ctx)
        return started.replace(step=started.step[0])

    return jax.jit(begin_all)(states, ctx, values)


def environment_spec(make_env: Callable, steps: int):
    env = make_env()
    spec = Spec(env.observation_space.shape[0], env.action_space.shape[0], steps)
    env.close()
    return spec


def environment_seed(seed: int, env_step: int) -> int:
    """The reset seed of a training seed's environment after `env_step` steps: a function of those
    two numbers only, so a seed's episodes do not depend on the seeds trained beside it."""
    return int(np.random.SeedSequence([seed, env_step, 0x0411]).generate_state(1)[0])


def uniform_actions(seeds: list[int], env_step: int, action_dim: int) -> np.ndarray:
    return np.stack([np.random.default_rng([seed, env_step, 0x5eed]).uniform(-1.0, 1.0, action_dim)
                     for seed in seeds])


def buffer_capacity(algo: Algorithm, dataset_size: int, steps: int, start_steps: int = 0) -> int:
    """Rows of each seed's online buffer. "prefilled": the buffer holds the dataset (drawn from the
    shared device copy) and then online rows, `online.buffer_size` in all (None: nothing evicted).
    "mixed": the online rows alone. "on_policy": one rollout of `block` rows."""
    size = algo.online.buffer_size
    if algo.online.replay == "on_policy":
        if start_steps:
            raise ConfigError(f"online.start_steps={start_steps}: uniformly random actions cannot be "
                              "trained on by an on-policy algorithm; set online.start_steps=0")
        return algo.online.block
    if algo.online.replay == "prefilled" and dataset_size:
        if size is None:
            return max(steps, 1)
        if size < dataset_size:
            raise ConfigError(
                f"algo.online.buffer_size={size} cannot hold the dataset ({dataset_size} transitions) "
                "that the pre-filled replay starts from; raise it (null: dataset + online.steps) or "
                "use algo.online.replay=mixed.")
        return max(size - dataset_size, 1)
    return max(size or steps, 1)


def _rows(preprocessor: Preprocessor, collected: dict) -> Transitions:
    """Collected host arrays (steps, seeds, ...) -> preprocessed device rows (seeds, steps, ...)."""
    raw = Dataset(*(np.stack(collected[name]) for name in Dataset._fields))
    data = preprocessor(raw)
    rows = Transitions.from_dataset(data)
    return jax.tree.map(lambda x: jnp.asarray(np.swapaxes(np.asarray(x, np.float32), 0, 1)), rows)


def train_online(algo: Algorithm, ctx: Context, preprocessor: Preprocessor, make_env: Callable,
                 schedule: OnlineSchedule, seeds: list[int], run: OnlineRun, runner: loop.ChunkRunner,
                 *, evaluate: Callable | None = None, checkpoint: Callable | None = None,
                 log: Callable | None = None, on_collect: Callable | None = None,
                 timings: dict | None = None) -> OnlineRun:
    """Run the online phase from `run` (fresh or restored) to `schedule.steps` environment steps.

    evaluate(run): at every `eval_every` environment steps and at the end;
    checkpoint(run): at every `checkpoint_every` steps and at the end (episodes are cut after it);
    log(env_step, record): every `log_every` steps, the losses of the last updates, the returns of
        recent training episodes and the throughput;
    on_collect(raw transitions (steps, seeds, ...), env_step): what the environments gave, before
        preprocessing (the behaviour-data log of experiments.generate);
    timings: if given, filled with where the wall-clock time went after the first block (which
        compiles the policy and the update chunk): seconds in "policy" calls, "environment" steps,
        "updates" (compiled calls with their checks, compilation excluded), "evaluation" and
        "checkpoints", their sum with the host's bookkeeping as "seconds", and the "env_steps"
        they cover. Three clock reads per environment step: nothing measurable."""
    num_seeds = len(seeds)
    explore = policies.make_policy(algo, preprocessor, deterministic=False, values=runner.values)
    act_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(jnp.asarray(seeds))
    block, utd = algo.online.block, algo.online.updates_per_step
    envs = gym.vector.SyncVectorEnv([make_env for _ in seeds],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    action_dim = envs.single_action_space.shape[0]
    update_step = lambda: int(run.states.step)
    host_steps = [s for s in (schedule.eval_every, schedule.checkpoint_every, schedule.log_every) if s]

    def restart():
        observations, _ = envs.reset(seed=[environment_seed(s, run.env_step) for s in seeds])
        return observations, np.zeros(num_seeds), np.zeros(num_seeds, int)

    observations, returns, lengths = restart()
    started, started_step, metrics = time.perf_counter(), run.env_step, {}
    spent = dict.fromkeys(("policy", "environment", "updates", "evaluation", "checkpoints"), 0.0)
    timed_from = None  # (clock, env step) at the end of the first block
    while run.env_step < schedule.steps:
        # Collect up to the next block end or host event, whichever comes first.
        stop = min(schedule.steps, (run.env_step // block + 1) * block,
                   *((run.env_step // every + 1) * every for every in host_steps))
        collected = {name: [] for name in Dataset._fields}
        policy = explore(run.states, act_keys)
        for env_step in range(run.env_step, stop):
            tic = time.perf_counter()
            if env_step < schedule.start_steps:
                actions = uniform_actions(seeds, env_step, action_dim)
            else:
                actions = policy(observations[:, None].astype(np.float32), env_step)[:, 0]
            acted = time.perf_counter()
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            spent["policy"] += acted - tic
            spent["environment"] += time.perf_counter() - acted
            done = terminated | truncated
            final = next_obs.copy()
            if done.any():  # SAME_STEP autoreset: next_obs already starts the next episode
                final[done] = np.stack(info["final_obs"][done])
            for name, value in zip(Dataset._fields, (observations, actions, rewards, final, terminated,
                                                     truncated & ~terminated), strict=True):
                collected[name].append(np.asarray(value, np.float32))
            returns += rewards
            lengths += 1
            for i in np.flatnonzero(done):
                success = _success(info, i)
                run.history["episodes"].append([env_step + 1, int(i), float(returns[i]),
                                                int(lengths[i]), success])
                returns[i], lengths[i] = 0.0, 0
            observations = next_obs
        run.env_step = stop
        cut = checkpoint is not None and (stop == schedule.steps or (
            schedule.checkpoint_every and stop % schedule.checkpoint_every == 0))
        if cut:  # the episodes in progress end here (see the module docstring)
            collected["timeouts"][-1] = np.maximum(collected["timeouts"][-1], lengths > 0)
        if on_collect is not None:
            on_collect({name: np.stack(values) for name, values in collected.items()}, stop)
        if algo.online.replay == "on_policy":  # one update per complete rollout
            updates = int(stop % block == 0)
        else:
            updates = utd * len(collected["rewards"]) if stop >= schedule.start_steps else 0
        rows = _rows(preprocessor, collected)
        if algo.online.replay == "on_policy" and updates:  # rows of any length, one update program
            run.buffers, rows = loop.append_rows(run.buffers, rows), None
        tic, compiling = time.perf_counter(), runner.compile_seconds
        run.states, run.buffers, run.keys, chunk_metrics = runner(
            run.states, run.buffers, run.keys, ctx, updates, update_step() + updates, rows=rows)
        spent["updates"] += time.perf_counter() - tic - (runner.compile_seconds - compiling)
        metrics = chunk_metrics if updates else metrics
        if log is not None and schedule.log_every and stop % schedule.log_every == 0:
            log(stop, _log_record(metrics, run, num_seeds, stop - started_step,
                                  time.perf_counter() - started))
        if evaluate is not None and (stop == schedule.steps or (
                schedule.eval_every and stop % schedule.eval_every == 0)):
            tic = time.perf_counter()
            evaluate(run)
            spent["evaluation"] += time.perf_counter() - tic
        if cut:
            tic = time.perf_counter()
            checkpoint(run)
            spent["checkpoints"] += time.perf_counter() - tic
            observations, returns, lengths = restart()
        if timed_from is None:  # the first block compiled the policy and the chunk: not counted
            timed_from = (time.perf_counter(), run.env_step)
            spent = dict.fromkeys(spent, 0.0)
    envs.close()
    if timings is not None and timed_from is not None:
        timings.update(spent, seconds=time.perf_counter() - timed_from[0],
                       env_steps=run.env_step - timed_from[1])
    return run


def _success(info: dict, index: int):
    """The goal-reaching flag of an episode that just ended, if the environment reports one
    (gymnasium-robotics' `success`); else None. With same-step autoreset the last step's info is
    under `final_info`."""
    final = info.get("final_info", info)
    for name in ("success", "is_success"):
        if name in final and final.get(f"_{name}", np.ones(index + 1, bool))[index]:
            return bool(final[name][index])
    return None


def _log_record(metrics: dict, run: OnlineRun, num_seeds: int, steps: int, seconds: float) -> dict:
    # the losses of the last compiled call, averaged over its updates (NaN of skipped updates aside)
    record = loop.summarize_metrics(metrics, len(next(iter(metrics.values()))))[0] if metrics else {}
    recent = run.history["episodes"][-10 * num_seeds:]
    record["episode_return"] = float(np.mean([e[2] for e in recent])) if recent else None
    record["env_steps_per_second"] = steps / max(seconds, 1e-9)
    return record

