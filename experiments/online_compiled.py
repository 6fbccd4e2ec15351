"""The online phase compiled (`env.backend=mjx`): environment steps and updates in one program.

    for each chunk (ending where the host logs, evaluates or checkpoints):
        jit(scan over blocks(vmap over seeds(
            scan over `block` environment steps(explore, env.step, same-step autoreset),
            preprocess the rows, learn (OffPolicy: buffer insert + block * updates_per_step updates))))

The environment is the dataset's compiled copy (`envs.mjx.make_jax_env`: MJX for the locomotion
models, jax.numpy for Pendulum). Everything else is the host path's (experiments/online.py, the
reference): the same exploration (the learner's `act` on observations normalized as the dataset's,
each seed's key folded with the environment step; `online.start_steps` uniformly random actions
first), rows with next_observation = the episode's final observation, terminals = true
terminations only, timeouts = truncation without termination, the same preprocessing of rows
(normalizer and reward transform, here in jax.numpy), the same one-seed update (`loop.seed_update`,
drawing as the driver's sampling says) and the same checks (`ChunkRunner.checked`: finiteness, the
early stop, the `after_chunk` seam). The running episodes (the environments' states, returns and
lengths; with online returns-to-go, Cal-QL's `online_calibration=true`, the record of their
preprocessed rewards: experiments/returns_to_go.py) are a checkpointed tree ("environments"), so a
resumed run continues them exactly. The schedule runs in whole blocks (`in_blocks`).
A seed's environments reset from keys of its seed and the environment step alone, so a seed
trains the same alone or beside others. Evaluation runs where `eval.backend` says (auto: compiled
too; experiments/compiled_evaluation.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm
from algorithms.core.algorithm import OffPolicy, OnPolicy
from algorithms.core.components import learner
from algorithms.core.replay import Transitions
from envs import Dataset, Preprocessor
from experiments import loop, online, preemption, returns_to_go, seed_axis
from experiments.compiled_episodes import (
    finished_episodes,
    fresh_episodes,
    record_steps,
    reset_keys,
    step_environments,
    stored,
    unstored,
)
from experiments.config import ConfigError

log = logging.getLogger("train")
ACT_SALT, UNIFORM_SALT = 1, 0x5EED  # the host path's streams (experiments/online.py)


def preprocessing(preprocessor: Preprocessor):
    """`Preprocessor`'s observation and row transforms in jax.numpy (its arrays as constants):
    (normalize(observations), transform(rows)) as training sees them."""
    normalize = preprocessor.normalizer  # (x - mean) / std: numpy arrays as constants in the program
    multiplier, scale, shift = (preprocessor.reward_multiplier, preprocessor.reward_scale,
                                preprocessor.reward_shift)

    def transform(rows: Dataset) -> Dataset:
        return rows._replace(observations=normalize(rows.observations),
                             next_observations=normalize(rows.next_observations),
                             rewards=scale * (rows.rewards * multiplier) + shift)

    return normalize, transform


def replay_learning(algo: Algorithm, driver: OffPolicy, updating: bool):
    """learn(state, buffer, key, rows (block, num_envs, ...) Transitions, values, ctx) -> (state,
    buffer, key, metrics {name: (updates,)}): the rows into the seed's buffer, then
    block * updates_per_step updates (none while `updating` is False: the warm-up), each with its
    key split off as `loop.make_train_chunk` splits it."""
    update = loop.seed_update(algo, "online")

    def learn(state, buffer, key, rows, values, ctx):
        rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), rows)
        buffer = buffer.add(rows)
        count = driver.updates_per_step * rows.rewards.shape[0] if updating else 0

        def one(carry, _):
            state, buffer, key = carry
            key, step_key = jax.random.split(key)
            state, buffer, metrics = update(state, buffer, step_key, values, ctx)
            return (state, buffer, key), metrics

        (state, buffer, key), metrics = jax.lax.scan(one, (state, buffer, key), None, length=count)
        return state, buffer, key, metrics

    return learn


def rollout_learning(algo: Algorithm, driver: OnPolicy, updating: bool):
    """learn(...) as `replay_learning` says, for an on-policy learner (PPO; Uni-O4 online): the
    block's rows are the rollout, (block, num_envs, ...), or (block, ...) with one environment as the
    host fills it (experiments/online.py); they fill the seed's buffer, then one update on it."""
    update = loop.seed_update(algo, "online")

    def learn(state, buffer, key, rows, values, ctx):
        if rows.rewards.shape[1] == 1:
            rows = jax.tree.map(lambda x: x[:, 0], rows)
        buffer = buffer.add(rows)
        key, step_key = jax.random.split(key)
        state, buffer, metrics = update(state, buffer, step_key, values, ctx)
        return state, buffer, key, jax.tree.map(lambda value: value[None], metrics)

    return learn


# The learning of each online driver inside the compiled block: (algo, driver, updating) -> learn.
LEARNING: dict[type, Callable] = {OffPolicy: replay_learning, OnPolicy: rollout_learning}


def make_online_chunk(algo: Algorithm, env, preprocessor: Preprocessor, blocks: int, num_envs: int,
                      start_steps: int, updating: bool):
    """A jitted function running `blocks` blocks of the online phase for every seed:
    (states, buffers, keys, episodes, seeds, env_step, ctx, values) -> (states, buffers, keys,
    episodes, metrics {name: (blocks, seeds, updates)}, ended (done, return, length) each
    (blocks, seeds, block, num_envs))."""
    driver = learner(algo, "online").driver()
    block = driver.block
    learn = LEARNING[type(driver)](algo, driver, updating)
    normalize, transform = preprocessing(preprocessor)
    rule = returns_to_go.compiled_rule(algo) if driver.returns_to_go else None

    def one_seed(state, buffer, key, episodes, seed, env_step, values, ctx):
        actor = learner(seed_axis.with_values(algo, values), "online")
        seed_key = jax.random.key(seed)
        act_key = jax.random.fold_in(seed_key, ACT_SALT)

        def env_step_body(episodes, step):
            observations = normalize(episodes.states.observation.astype(jnp.float32))
            explored = actor.act(state, observations, jax.random.fold_in(act_key, step), False)
            uniform_key = jax.random.fold_in(jax.random.fold_in(seed_key, UNIFORM_SALT), step)
            uniform = jax.random.uniform(uniform_key, explored.shape, jnp.float32, -1.0, 1.0)
            actions = jnp.where(step < start_steps, uniform, explored)
            reset_key = reset_keys(seed_key, step + 1, 1)[0]
            going_on, rows, ended = step_environments(env, episodes, actions, reset_key)
            return going_on, (rows, ended)

        started = episodes
        episodes, (rows, ended) = jax.lax.scan(env_step_body, episodes, env_step + jnp.arange(block))
        rows = transform(rows)
        returns = jnp.zeros_like(rows.rewards)
        if rule is not None:  # one environment per seed (`check`): its rows' returns-to-go
            record, _, block_returns, column = returns_to_go.record_block(
                rule, started.record[0], started.lengths[0], rows.rewards[:, 0], ended[0][:, 0],
                buffer.transitions.returns_to_go, buffer.position)
            episodes = episodes._replace(record=record[None])
            buffer = buffer.replace(transitions=buffer.transitions._replace(returns_to_go=column))
            returns = block_returns[:, None]
        transitions = Transitions(*rows, returns)
        state, buffer, key, metrics = learn(state, buffer, key, transitions, values, ctx)
        return state, buffer, key, episodes, metrics, ended

    def chunk(states, buffers, keys, episodes, seeds, env_step, ctx, values):
        axes = seed_axis.seed_axes(states)
        all_seeds = jax.vmap(one_seed, in_axes=(axes, 0, 0, 0, 0, None, 0, seed_axis.context_axes(ctx)),
                             out_axes=(axes, 0, 0, 0, 0, 0))

        def body(carry, index):
            states, buffers, keys, episodes = carry
            states, buffers, keys, episodes, metrics, ended = all_seeds(
                states, buffers, keys, episodes, seeds, env_step + index * block, values, ctx)
            return (states, buffers, keys, episodes), (metrics, ended)

        carry, (metrics, ended) = jax.lax.scan(body, (states, buffers, keys, episodes), jnp.arange(blocks))
        return (*carry, metrics, ended)

    return jax.jit(chunk, donate_argnums=(0, 1, 2, 3))


def in_blocks(algo: Algorithm, schedule: online.OnlineSchedule, num_envs: int) -> online.OnlineSchedule:
    """The schedule (already in whole steps of the `num_envs` environments) in whole blocks of
    `algo.online.block x num_envs` environment steps, where the compiled chunks end: online.steps
    rounded down, the host events' intervals up (`OnlineSchedule.in_steps_of`'s rule)."""
    return schedule.in_steps_of(learner(algo, "online").driver().block * num_envs)


def check(algo: Algorithm, schedule: online.OnlineSchedule, num_envs: int) -> None:
    """Refuse (ConfigError, with the fix) what the compiled online phase does not run; log (one info
    line) how the schedule is rounded to whole blocks (`in_blocks`)."""
    driver = learner(algo, "online").driver()
    if type(driver) not in LEARNING:
        raise ConfigError(f"algo={algo.name} has no compiled online phase yet ({type(driver).__name__} "
                          "driver); use env.backend=host")
    if driver.returns_to_go:
        returns_to_go.compiled_rule(algo)  # its derive() is the rule the program computes
    if isinstance(driver, OffPolicy) and num_envs != 1:
        raise ConfigError(f"env.num_envs={num_envs}: off-policy algorithms step one environment per "
                          "seed (as on the host); set env.num_envs=1 or train more seeds")
    block = driver.block * num_envs  # a seed's environment steps per block
    of_block = f"algo.online.block={driver.block}" + (f" x env.num_envs={num_envs}" if num_envs > 1 else "")
    if schedule.steps < block:
        raise ConfigError(f"online.steps={schedule.steps} is fewer than one block of {of_block} "
                          "environment steps, where env.backend=mjx updates; raise online.steps or "
                          "lower algo.online.block")
    rounded = in_blocks(algo, schedule, num_envs)
    changed = [f"online.{field} {'down' if field == 'steps' else 'up'} to {getattr(rounded, field)}"
               for field in ("steps", "log_every", "eval_every", "checkpoint_every")
               if getattr(rounded, field) != getattr(schedule, field)]
    if changed:
        log.info("env.backend=mjx runs whole blocks of %s = %d environment steps: %s", of_block, block,
                 ", ".join(changed))


def schedule_stops(start: int, schedule, block: int) -> list[int]:
    """Where the chunks end: the host's events (`loop.chunk_schedule`), and the last block of the
    warm-up (`online.start_steps`), so that a chunk either updates in every block or in none."""
    stops = set(loop.chunk_schedule(start, schedule.steps, schedule.log_every, schedule.eval_every,
                                    schedule.checkpoint_every))
    if schedule.start_steps:
        warm_up_end = (schedule.start_steps - 1) // block * block
        if start < warm_up_end < schedule.steps:
            stops.add(warm_up_end)
    return sorted(stops)


def run_online(asm, trees: dict, position, hooks, runner: loop.ChunkRunner,
               timings: dict | None = None) -> dict:
    """The online phase from `position.env_step` to `online.steps`, compiled (`phases.run_online`
    with env.backend=mjx: its Assembly, phases.Position and phases.Hooks; the same hooks, metrics
    lines, history and checkpoints as the host path).
    `trees` are the online phase's, with "environments" (the running episodes) once checkpointed.
    Environment steps count those of all a seed's `env.num_envs` environments, as on the host; the
    compiled chunk counts steps of each (`vector steps`: env_step // num_envs). Returns the trees."""
    algo, cfg = asm.algo, asm.cfg
    env, num_envs = asm.jax_env, int(cfg.env.num_envs)
    schedule = in_blocks(algo, asm.online_schedule(), num_envs)
    driver = learner(algo, "online").driver()
    block = driver.block * num_envs  # a seed's environment steps per block
    states, buffers, keys = trees["states"], trees["buffers"], trees["keys"]
    recorded = record_steps(algo, env)
    if trees.get("environments") is None:
        episodes = fresh_episodes(env, asm.seeds, num_envs, position.env_step // num_envs, recorded)
    else:  # a checkpoint's
        episodes = unstored(trees["environments"], jax.eval_shape(
            lambda: fresh_episodes(env, asm.seeds, num_envs, record_steps=recorded)))
    episodes, _ = seed_axis.shard_seeds(episodes, keys)  # placed as the seeds' other trees
    seeds, columns, ctx = jnp.asarray(asm.seeds), asm.grid.columns(), asm.contexts["online"]
    position.phase, position.step = "online", int(cfg.steps)
    history, programs = position.history, {}
    saved = position.env_step > 0  # a resumed run's trees are its checkpoint
    started, started_at, timed_from = time.perf_counter(), position.env_step, None

    def current():
        return {"states": states, "buffers": buffers, "keys": keys, "environments": episodes}

    def checkpoint():
        position.stopped = runner.stopped
        hooks.checkpoint(position, {**current(), "environments": stored(episodes)})

    for stop in schedule_stops(position.env_step, schedule, block):
        if preemption.requested():  # SIGTERM: a checkpoint here (if not there already), then leave
            if not saved:
                checkpoint()
            hooks.leave(f"environment step {position.env_step}")
        start = position.env_step
        blocks, updating = (stop - start) // block, start + block >= schedule.start_steps
        arguments = (states, buffers, keys, episodes, seeds, jnp.asarray(start // num_envs), ctx, asm.values)
        if (blocks, updating) not in programs:
            tic = time.perf_counter()
            programs[blocks, updating] = make_online_chunk(
                algo, env, asm.prepared.preprocessor, blocks, num_envs, schedule.start_steps,
                updating).lower(*arguments).compile()
            runner.compile_seconds += time.perf_counter() - tic
        runner.hold_stopped(states)
        tic = time.perf_counter()
        with loop.watchdog(runner.watchdog_seconds, stop):
            states, buffers, keys, episodes, metrics, ended = programs[blocks, updating](*arguments)
            metrics, ended = jax.device_get((metrics, ended))
        # the program's time with its environment steps (ChunkRunner's figures, results.json)
        runner.update_seconds += time.perf_counter() - tic
        runner.updates += blocks * next(iter(metrics.values())).shape[-1] if updating and metrics else 0
        # (blocks, seeds, updates) -> (blocks * updates, seeds), in update order
        metrics = {name: np.moveaxis(value, 1, 2).reshape(-1, len(asm.seeds))
                   for name, value in metrics.items()}
        if updating:  # end_step as the host path gives it: the update step
            states = runner.checked(states, metrics, int(states.step))
            online.remember_losses(history, {name: value[-(len(value) // blocks):]  # the last block's
                                             for name, value in metrics.items()})
        history["episodes"] += finished_episodes(ended, start, block, num_envs)
        position.env_step, position.stopped, saved = stop, runner.stopped, False
        if timed_from is None:  # the first chunk compiled the program: not in `timings`
            timed_from = (time.perf_counter(), stop)
        if schedule.log_every and stop % schedule.log_every == 0:
            record = online.log_record(history, stop, len(asm.seeds) * num_envs,
                                       stop - started_at, time.perf_counter() - started, schedule.log_every)
            hooks.log({"type": "train", "phase": "online", "step": int(states.step), "env_step": stop,
                       **record, **columns})
        if stop == schedule.steps or (schedule.eval_every and stop % schedule.eval_every == 0):
            hooks.evaluate("online", states, int(states.step), stop)
        if stop == schedule.steps or (schedule.checkpoint_every and stop % schedule.checkpoint_every == 0):
            checkpoint()
            saved = True
    if timings is not None and timed_from is not None:
        timings.update(seconds=time.perf_counter() - timed_from[0],
                       env_steps=position.env_step - timed_from[1])
    return current()
