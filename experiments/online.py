"""Online training: gymnasium environments on the host, compiled update chunks on the device.

Every seed has its own environment (all in one vector env), its own replay buffer on the device
and its own agent; all seeds step together with one batched policy call per environment step.
Every `block` environment steps the transitions collected meanwhile are preprocessed as the
dataset was (state normalization, reward transform), appended to the buffers, and
block * updates_per_step updates run in one compiled call (`loop.ChunkRunner`), drawing batches as
the learner's driver says (`OffPolicy`: the dataset and the buffer as one pool, or mixed at a
ratio). The only Python per environment step is the environment itself and that policy call.

With the on-policy driver (`OnPolicy`: PPO) the buffer is the rollout: it holds `block`
transitions, and every time it is full (at environment steps that are multiples of `block`) the
whole rollout, in time order, is the batch of one update; no dataset rows are drawn. With
`env.num_envs` = N > 1 every seed steps N environments (seed i's at i N, ..., i N + N - 1 of the
vector env), a buffer row is one step of all N (the rollout is (block, N, ...)), and environment
steps count those of all N: the update comes every block N of them. An algorithm that hands over
to another learner online (`Algorithm.hand_over`: Uni-O4 to PPO) collects, trains and acts here
with that learner (`components.learner`).

Terminals are true terminations only; a time-limit truncation is stored as a timeout and
bootstrapped through. Episodes end only where the environment ends them: a checkpoint saves where
every environment stands (`envs.snapshot`: the simulator, the time-limit counter, the random
generator) with the last observations and the running episodes' returns and lengths, and a resumed
run continues those episodes, so it gives exactly the numbers of the uninterrupted run. An
environment `envs.snapshot` cannot save is refused before training when intermediate online
checkpoints are asked for (`check_environments`).

Algorithms whose batches carry a Monte-Carlo return-to-go online (`OffPolicy.returns_to_go`:
Cal-QL with `online_calibration=true`) get it for every online row when its episode ends, computed
by the algorithm's own `derive` on the episode's preprocessed rewards, as for the dataset
(experiments/returns_to_go.py, the rule both backends follow). The rows enter the buffer as they
arrive (so the update order stays the references' step, store, sample, update), with -inf until then.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Context, OnPolicy
from algorithms.core.components import learner
from algorithms.core.replay import ReplayBuffer, Transitions
from envs import Dataset, Preprocessor, snapshot
from experiments import loop, policies, preemption
from experiments.config import ConfigError
from experiments.returns_to_go import EpisodeReturns, fill_returns


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

    def in_steps_of(self, num_envs: int) -> OnlineSchedule:
        """The schedule with `num_envs` environments per seed, which all step at once: the phase's
        environment steps rounded down to a multiple of `num_envs` (as CleanRL's and PureJaxRL's
        total_timesteps), each host event's interval up to one. 1: unchanged."""
        if num_envs == 1:
            return self
        up = lambda every: -(-every // num_envs) * num_envs  # noqa: E731
        return dataclasses.replace(self, steps=self.steps - self.steps % num_envs,
                                   eval_every=up(self.eval_every), log_every=up(self.log_every),
                                   checkpoint_every=up(self.checkpoint_every))


@dataclass
class OnlineRun:
    """Everything a checkpoint of the online phase holds."""

    states: object
    buffers: ReplayBuffer
    keys: jax.Array
    env_step: int = 0
    history: dict = field(default_factory=lambda: {"evaluations": [], "episodes": []})
    # Where the environments stand at `env_step`, as JSON (set before every checkpoint but the last):
    # each one's `envs.snapshot`, the last observations, the running episodes' returns, lengths and
    # (when the algorithm asks for online returns-to-go) preprocessed rewards. None: fresh episodes.
    environments: dict | None = None


def environment_spec(make_env: Callable, steps: int):
    env = make_env()
    spec = Spec(env.observation_space.shape[0], env.action_space.shape[0], steps)
    env.close()
    return spec


def environment_seed(seed: int, env_step: int, index: int = 0) -> int:
    """The reset seed of a training seed's environment number `index` (of its `env.num_envs`) after
    `env_step` steps: a function of those three numbers only, so a seed's episodes do not depend on
    the seeds trained beside it, and its environments all differ."""
    return int(np.random.SeedSequence([seed, env_step, 0x0411, *([index] if index else [])])
               .generate_state(1)[0])


def check_num_envs(num_envs: int, driver, steps: int) -> None:
    """`env.num_envs` (>= 1: experiments/config.py) parallel environments per seed: for an on-policy
    learner (the rollout is (block, num_envs): its block x num_envs rows split into whole
    minibatches), and no more than the online phase's steps."""
    if not steps:
        return
    if isinstance(driver, OnPolicy) and (driver.block * num_envs) % driver.minibatch_size:
        rollout = f"algo.online.block={driver.block}" + (
            f" x env.num_envs={num_envs} = {driver.block * num_envs} rows" if num_envs > 1 else "")
        raise ConfigError(f"{rollout} (the rollout) must be a multiple of algo.ppo.minibatch_size="
                          f"{driver.minibatch_size}; fix one of them")
    if num_envs == 1:
        return
    if not isinstance(driver, OnPolicy):
        raise ConfigError(f"env.num_envs={num_envs}: off-policy algorithms step one environment per seed "
                          "(parallel environments widen the rollouts of the on-policy learners, algo=ppo "
                          "and algo=unio4); set env.num_envs=1 or train more seeds (seeds=N)")
    if steps < num_envs:
        raise ConfigError(f"online.steps={steps} is fewer than one step of each of the "
                          f"env.num_envs={num_envs} environments; raise online.steps or lower env.num_envs")


def uniform_actions(seeds: list[int], env_step: int, action_dim: int) -> np.ndarray:
    return np.stack([np.random.default_rng([seed, env_step, 0x5eed]).uniform(-1.0, 1.0, action_dim)
                     for seed in seeds])


def check_environments(make_env: Callable, schedule: OnlineSchedule) -> None:
    """Refuse now, with the fix, an environment whose running episodes a checkpoint within the
    online phase could not save (`envs.snapshot`)."""
    if not schedule.checkpoint_every or schedule.checkpoint_every >= schedule.steps:
        return  # the only checkpoint is at the end, where nothing continues
    env = make_env()
    try:
        env.reset(seed=0)
        snapshot.check(env)
    except snapshot.SnapshotError as error:
        raise ConfigError(
            f"{error}. Online checkpoints continue the episodes in progress from a snapshot of the "
            "environments; set online.checkpoint_every=0 (one checkpoint, at the end: a killed run "
            "restarts its online phase), or teach envs/snapshot.py this environment.") from None
    finally:
        env.close()


def _rows(preprocessor: Preprocessor, collected: dict, returns=None, num_envs: int = 1) -> Transitions:
    """Collected host arrays (steps, seeds x num_envs, ...) -> preprocessed device rows (seeds, steps,
    ...), or (seeds, steps, num_envs, ...) with several environments per seed; `returns`: their
    returns-to-go (steps, seeds), if the algorithm asks for them."""
    data = _preprocessed(preprocessor, collected)
    rows = Transitions.from_dataset(data, returns)

    def per_seed(x):
        x = np.asarray(x, np.float32)
        if num_envs > 1:
            x = x.reshape(x.shape[0], -1, num_envs, *x.shape[2:])
        return jnp.asarray(np.swapaxes(x, 0, 1))

    return jax.tree.map(per_seed, rows)


def _preprocessed(preprocessor: Preprocessor, collected: dict) -> Dataset:
    return preprocessor(Dataset(*(np.stack(collected[name]) for name in Dataset._fields)))


def train_online(algo: Algorithm, ctx: Context, preprocessor: Preprocessor, make_env: Callable,
                 schedule: OnlineSchedule, seeds: list[int], run: OnlineRun, runner: loop.ChunkRunner,
                 *, evaluate: Callable | None = None, checkpoint: Callable | None = None,
                 log: Callable | None = None, on_collect: Callable | None = None,
                 timings: dict | None = None, num_envs: int = 1) -> OnlineRun:
    """Run the online phase from `run` (fresh or restored) to `schedule.steps` environment steps.

    num_envs: environments per seed (on-policy learners), all stepped at once: every `block`
        steps of each the rollout (block, num_envs) is one update; environment steps count those of
        all a seed's environments (`schedule` in multiples of `num_envs`: `in_steps_of`);

    evaluate(run): at every `eval_every` environment steps and at the end;
    checkpoint(run): at every `checkpoint_every` steps and at the end, with `run.environments` set
        (None at the end); episodes continue through it;
        also at the first block end after SIGTERM, and then it returns early (env_step < steps);
    log(env_step, record): every `log_every` steps, the losses of the last updates, the returns of
        recent training episodes and the throughput;
    on_collect(raw transitions (steps, seeds x num_envs, ...), env_step): what the environments gave, before
        preprocessing (the behaviour-data log of experiments.generate);
    timings: if given, filled with where the wall-clock time went after the first block (which
        compiles the policy and the update chunk): seconds in "policy" calls, "environment" steps,
        "updates" (compiled calls with their checks, compilation excluded), "evaluation" and
        "checkpoints", their sum with the host's bookkeeping as "seconds", and the "env_steps"
        they cover. Three clock reads per environment step: nothing measurable."""
    num_seeds, environments = len(seeds), len(seeds) * num_envs
    explore = policies.make_policy(algo, preprocessor, deterministic=False, values=runner.values,
                                   phase="online")
    act_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(jnp.asarray(seeds))
    driver = learner(algo, "online").driver()
    block = driver.block * num_envs  # environment steps of a seed between updates
    envs = gym.vector.SyncVectorEnv([make_env] * environments,  # seed i's environments: i num_envs, ...
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    action_dim = envs.single_action_space.shape[0]
    update_step = lambda: int(run.states.step)
    host_steps = [s for s in (schedule.eval_every, schedule.checkpoint_every, schedule.log_every) if s]

    tracked = driver.returns_to_go

    def start():
        """Fresh episodes, or the ones a checkpoint saved, continued (`run.environments`)."""
        observations, _ = envs.reset(seed=[environment_seed(s, run.env_step, index) for s in seeds
                                           for index in range(num_envs)])
        saved = run.environments
        if saved is None:
            return observations, np.zeros(environments), np.zeros(environments, int), [[] for _ in seeds]
        for env, state in zip(envs.envs, saved["snapshots"], strict=True):
            snapshot.restore(env, state)
        return (snapshot.decode(saved["observations"]), np.asarray(saved["returns"], np.float64),
                np.asarray(saved["lengths"], int), saved.get("rewards") or [[] for _ in seeds])

    def where_environments_stand():
        return {"snapshots": [snapshot.snapshot(env) for env in envs.envs],
                "observations": snapshot.encode(np.asarray(observations)),
                "returns": [float(r) for r in returns], "lengths": [int(n) for n in lengths],
                "rewards": episode_returns.running if tracked else None}

    observations, returns, lengths, running = start()
    episode_returns = EpisodeReturns(algo, running)
    started, started_step = time.perf_counter(), run.env_step
    spent = dict.fromkeys(("policy", "environment", "updates", "evaluation", "checkpoints"), 0.0)
    timed_from = None  # (clock, env step) at the end of the first block
    while run.env_step < schedule.steps:
        # Collect up to the next block end or host event, whichever comes first.
        stop = min(schedule.steps, (run.env_step // block + 1) * block,
                   *((run.env_step // every + 1) * every for every in host_steps))
        collected = {name: [] for name in Dataset._fields}
        policy = explore(run.states, act_keys)
        for env_step in range(run.env_step, stop, num_envs):
            tic = time.perf_counter()
            if env_step < schedule.start_steps:
                actions = uniform_actions(seeds, env_step, action_dim)
            else:  # one row per seed, its environments side by side; the key folded per step
                actions = policy(observations.reshape(num_seeds, num_envs, -1).astype(np.float32),
                                 env_step // num_envs).reshape(environments, -1)
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
                run.history["episodes"].append([env_step + num_envs, int(i) // num_envs, float(returns[i]),
                                                int(lengths[i]), success])
                returns[i], lengths[i] = 0.0, 0
            observations = next_obs
        run.env_step = stop
        # SIGTERM (experiments/preemption.py): a checkpoint at this block's end, then return early
        preempted = checkpoint is not None and stop < schedule.steps and preemption.requested()
        saving = checkpoint is not None and (stop == schedule.steps or preempted or (
            schedule.checkpoint_every and stop % schedule.checkpoint_every == 0))
        if on_collect is not None:
            on_collect({name: np.stack(values) for name, values in collected.items()}, stop)
        updates = driver.updates(len(collected["rewards"]), stop // num_envs, schedule.start_steps)
        rows_returns = None
        if tracked:  # each row's return-to-go, or -inf until its episode ends (module docstring)
            ended = np.logical_or(np.stack(collected["terminals"]), np.stack(collected["timeouts"]))
            rows_returns, writes = episode_returns.block(
                _preprocessed(preprocessor, collected).rewards, ended, int(run.buffers.position[0]),
                run.buffers.transitions.rewards.shape[1])
            run.buffers = fill_returns(run.buffers, writes)
        rows = _rows(preprocessor, collected, rows_returns, num_envs)
        if not driver.rows_in_program and updates:  # rows of any length, one update program
            run.buffers, rows = loop.append_rows(run.buffers, rows), None
        tic, compiling = time.perf_counter(), runner.compile_seconds
        run.states, run.buffers, run.keys, chunk_metrics = runner(
            run.states, run.buffers, run.keys, ctx, updates, update_step() + updates, rows=rows)
        spent["updates"] += time.perf_counter() - tic - (runner.compile_seconds - compiling)
        if updates:
            remember_losses(run.history, chunk_metrics)
        if log is not None and schedule.log_every and stop % schedule.log_every == 0:
            log(stop, log_record(run.history, run.env_step, environments, stop - started_step,
                                  time.perf_counter() - started, schedule.log_every))
        if evaluate is not None and (stop == schedule.steps or (
                schedule.eval_every and stop % schedule.eval_every == 0)):
            tic = time.perf_counter()
            evaluate(run)
            spent["evaluation"] += time.perf_counter() - tic
        if saving:
            tic = time.perf_counter()
            run.environments = None if stop == schedule.steps else where_environments_stand()
            checkpoint(run)
            spent["checkpoints"] += time.perf_counter() - tic
        if preempted:
            break
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


def remember_losses(history: dict, metrics: dict) -> None:
    """Keep the losses of the last updates (averaged over them; NaN of skipped updates aside) in
    the history: the checkpoint holds them, so a line logged after a resume, before the next
    update, reports what the straight run's line reports."""
    if metrics:
        history["losses"] = loop.summarize_metrics(metrics, len(next(iter(metrics.values()))))[0]


def log_record(history: dict, env_step: int, environments: int, steps: int, seconds: float,
               window: int) -> dict:
    """An online metrics line at `env_step` (host and compiled backends): the losses of the last
    updates (`remember_losses`), the mean return of the last 10 episodes per environment, every
    episode of the last `window` steps, and `steps / seconds` as the throughput."""
    record = dict(history.get("losses", {}))
    recent = history["episodes"][-10 * environments:]
    record["episode_return"] = float(np.mean([e[2] for e in recent])) if recent else None
    # every episode that ended since the previous line: [env step, seed index, return, length, success]
    record["episodes"] = [e for e in history["episodes"] if env_step - window < e[0] <= env_step]
    record["env_steps_per_second"] = steps / max(seconds, 1e-9)
    return record

