"""Training the behaviour policies of the generated splits: SAC (`algorithms/sac.py`) trained online
from scratch, with a snapshot of the actor kept at every evaluation. Afterwards the random, medium
and expert snapshots are picked as D4RL does (experiments/splits.py says how), the reference
returns are measured, and the folder `envs/behaviour/<env>/` is written in the format of
envs/behaviour_files.py. Every transition training collects is logged (`CollectionLog`), so the
medium-replay split is the real data. An orbax checkpoint at every snapshot makes the training
resumable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import flax.serialization
import gymnasium as gym
import jax
import numpy as np

from algorithms.core.algorithm import OnlineConfig
from algorithms.core.replay import ReplayBuffer
from algorithms.sac import SAC
from envs.behaviour_files import REPLAY_FILE, episode_statistics, to_env_units, write_replay
from envs.dataset import Dataset, DatasetError
from envs.environment import episode_seeds, run_episodes
from envs.generated import BEHAVIOUR_ENVS
from experiments import online
from experiments.assembly import Assembly
from experiments.checkpoints import Checkpointer
from experiments.splits import Behaviour, collect, command_line

# SAC budgets per environment, chosen to train within one working session on a 2-core CPU.
TRAINING = {
    "pendulum": {"hidden_dims": [64, 64], "total_steps": 12_000, "start_steps": 1_000,
                 "snapshot_every": 1_000},
    # SAC at 128x2 runs ~200 updates/s here (256x2: ~87), about 5 ms per environment step with the
    # environment; D4RL's 1M steps at 256x2 would take over 3 hours per environment.
    **{env: {"hidden_dims": [128, 128], "total_steps": 200_000, "start_steps": 10_000,
             "snapshot_every": 10_000} for env in ("hopper", "halfcheetah", "walker2d", "ant")},
}


def behaviour_env(env: str):
    """A maker of the environment SAC trains on, actions rescaled to [-1, 1]."""
    spec = BEHAVIOUR_ENVS[env]

    def make_env():
        raw = gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps)
        ones = np.ones(raw.action_space.shape, raw.action_space.dtype)
        return gym.wrappers.RescaleAction(raw, -ones, ones)

    return make_env


def sac_run(make_env, hidden_dims, total_steps: int, seed: int, buffer_size: int) -> Assembly:
    """SAC from scratch, one seed: 50 environment steps, then 50 updates, from its own buffer only
    (a run without a dataset samples its buffer: `Assembly.runner`)."""
    algo = SAC(hidden_dims=tuple(hidden_dims), online=OnlineConfig(block=50))
    return Assembly.from_environment(algo, make_env, [seed], total_steps, buffer_size)


class Snapshots:
    """The online phase's hooks during behaviour training: an actor snapshot and its evaluation
    return at every evaluation, the collected transitions logged and an orbax checkpoint at every
    checkpoint."""

    def __init__(self, env: str, out_dir: Path, make_env, policy, checkpointer: Checkpointer,
                 collected: CollectionLog, *, seed: int, eval_episodes: int, log,
                 snapshots: list | None = None, seconds: float = 0.0):
        self.env, self.out_dir, self.make_env, self.policy = env, out_dir, make_env, policy
        self.checkpointer, self.collected = checkpointer, collected
        self.seed, self.eval_episodes, self.log = seed, eval_episodes, log
        self.taken = snapshots or []
        self.started = time.perf_counter() - seconds
        self.pending: list = []  # transitions collected since the last checkpoint

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def on_collect(self, transitions, step):
        self.pending.append(Dataset(*(transitions[name][:, 0] for name in Dataset._fields)))  # the one seed

    def evaluate(self, run):
        step = run.env_step
        returns = run_episodes(self.policy(run.states), self.make_env,
                               episode_seeds([self.seed], 10**6 + step, self.eval_episodes))
        params = jax.tree.map(lambda x: np.asarray(x[0]), run.states.actor.params)
        name = f"actor_{step:08d}.msgpack"
        (self.out_dir / name).write_bytes(flax.serialization.msgpack_serialize(params))
        self.taken.append({"step": step, "file": name, "return_mean": float(returns.mean()),
                           "return_std": float(returns.std())})
        self.log(f"{self.env} step {step}: evaluation return {returns.mean():.1f} ± {returns.std():.1f} "
                 f"({self.seconds():.0f} s)")

    def checkpoint(self, run):
        # The log first: a checkpoint never gets ahead of the transitions it was trained on.
        self.collected.write(run.env_step, self.pending)
        self.pending.clear()
        self.checkpointer.save(
            run.env_step, {"states": run.states, "buffers": run.buffers, "keys": run.keys},
            {"history": run.history, "snapshots": self.taken, "seconds": self.seconds(),
             "environments": run.environments})


def resume(checkpointer: Checkpointer, run: online.OnlineRun, checkpoint_dir: Path):
    """(the run restored from the latest checkpoint, the saved record), or (run, None) if none."""
    if checkpointer.latest() is None:
        return run, None
    try:
        step, saved, trees = checkpointer.restore_latest(lambda record: {
            "states": run.states, "buffers": run.buffers, "keys": run.keys})
    except ValueError as error:
        raise DatasetError(
            f"cannot resume the training in '{checkpoint_dir}': it was made with other settings "
            f"({str(error).splitlines()[0][:200]}). Pass the same train.* values as when it "
            "started (train.buffer_size in particular), or delete that folder to start over."
        ) from None
    return online.OnlineRun(trees["states"], trees["buffers"], trees["keys"], step, saved["history"],
                            saved.get("environments")), saved


def choose_roles(snapshots: list[dict]) -> tuple[dict, dict]:
    """(medium, expert) among the snapshots, oldest first. "About a third of the expert": a third
    of the way from the random policy's return to the expert's (the same as D4RL's third of the
    expert's return where random scores about 0, and still meaningful where returns are negative)."""
    expert = snapshots[-1]
    target = snapshots[0]["return_mean"] + (expert["return_mean"] - snapshots[0]["return_mean"]) / 3
    medium = min(snapshots[1:-1] or snapshots, key=lambda s: abs(s["return_mean"] - target))
    return medium, expert


def train_behaviour(env: str, out_dir: Path, *, hidden_dims=(256, 256), total_steps: int,
                    start_steps: int = 10_000, snapshot_every: int = 10_000, eval_episodes: int = 10,
                    reference_episodes: int = 20, seed: int = 0, buffer_size: int = 1_000_000,
                    checkpoint_dir: Path | None = None, log=print) -> dict:
    """Train SAC on `env` with an actor snapshot at every evaluation, then pick the random,
    medium and expert snapshots and measure the reference returns; writes out_dir/policy.json.
    An orbax checkpoint (agent + replay buffer; `checkpoint_dir`, default runs/behaviour/<env>)
    is kept at every snapshot, so an interrupted run continues where it stopped when started
    again. Only the snapshots the splits use stay in out_dir."""
    spec = BEHAVIOUR_ENVS[env]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    make_env = behaviour_env(env)
    sac = sac_run(make_env, hidden_dims, total_steps, seed, buffer_size)
    checkpoint_dir = Path(checkpoint_dir or Path("runs") / "behaviour" / env)
    checkpointer = Checkpointer(checkpoint_dir, keep=1)
    collected = CollectionLog(checkpoint_dir / "collected")
    run, saved = resume(checkpointer, online.OnlineRun(**sac.fresh("online")), checkpoint_dir)
    if saved is not None:
        collected.resume(run.env_step, run.buffers)
        log(f"{env}: resuming SAC training from step {run.env_step}")
    hooks = Snapshots(env, out_dir, make_env, sac.policy("online"), checkpointer, collected, seed=seed,
                      eval_episodes=eval_episodes, log=log,
                      **({"snapshots": saved["snapshots"], "seconds": saved["seconds"]} if saved else {}))
    if run.env_step == 0:
        hooks.evaluate(run)  # the untrained policy: the `random` role
    schedule = online.OnlineSchedule(total_steps, eval_every=snapshot_every,
                                     checkpoint_every=snapshot_every, log_every=0,
                                     start_steps=start_steps)
    online.train_online(sac.algo, sac.contexts["online"], sac.prepared.preprocessor, make_env,
                        schedule, [seed], run, sac.runner("online"), evaluate=hooks.evaluate,
                        checkpoint=hooks.checkpoint, on_collect=hooks.on_collect)
    checkpointer.wait()
    train_seconds = hooks.seconds()

    snapshots = hooks.taken
    medium, expert = choose_roles(snapshots)
    # Only the snapshots that a split uses are kept: the three roles.
    kept = [s for s in snapshots if s is snapshots[0] or s is medium or s is expert]
    for snapshot in snapshots:
        if snapshot not in kept:
            (out_dir / snapshot["file"]).unlink(missing_ok=True)
    manifest = {
        "env": env, "env_id": spec.env_id, "hidden_dims": list(hidden_dims),
        "observation_dim": sac.spec.observation_dim, "action_dim": sac.spec.action_dim,
        "seed": seed, "total_steps": total_steps, "start_steps": start_steps,
        "buffer_size": buffer_size,
        "snapshot_every": snapshot_every, "train_seconds": round(train_seconds, 1),
        "roles": {"random": 0, "medium": medium["step"], "expert": expert["step"]},
        "snapshots": kept, "command": command_line(),
        "returns_during_training": [[s["step"], round(s["return_mean"], 1)] for s in snapshots],
    }
    collected.save_prefix(medium["step"], out_dir / REPLAY_FILE,
                          gym.make(spec.env_id).action_space)
    manifest["reference"] = reference_returns(env, Behaviour(out_dir, manifest), seed, reference_episodes)
    (out_dir / "policy.json").write_text(json.dumps(manifest, indent=1) + "\n")
    reference = manifest["reference"]
    log(f"{env}: random {reference['min']:.1f}, medium (step {medium['step']}) "
        f"{medium['return_mean']:.1f}, expert {reference['max']:.1f}; {train_seconds:.0f} s")
    return manifest


def reference_returns(env: str, behaviour: Behaviour, seed: int, episodes: int) -> dict:
    """D4RL's normalisation bounds: the random (min) and expert (max) snapshots' mean returns, with
    stochastic actions as the datasets are sampled, on seeds disjoint from the datasets'."""
    steps = episodes * BEHAVIOUR_ENVS[env].max_episode_steps
    reference = {}
    for role, bound in (("random", "min"), ("expert", "max")):
        collected = collect(env, behaviour.policy(behaviour.step_of(role), 10**6 + seed), steps,
                            seed=10**6 + seed)
        reference[bound] = episode_statistics(collected)["return_mean"]
    return reference


class CollectionLog:
    """Every transition behaviour training collects, in files of one checkpoint interval each
    (`<end step>.npz`, actions in [-1, 1]); medium-replay is read from it. The replay buffer
    cannot serve: it is a ring that forgets its oldest transitions."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("*.npz"))

    def write(self, step: int, batches: list) -> None:
        if not batches:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        columns = {name: np.concatenate([getattr(b, name) for b in batches])
                   for name in Dataset._fields}
        staging = self.directory / f".{step:09d}.npz"
        np.savez(staging, **columns)
        staging.rename(self.directory / f"{step:09d}.npz")

    def resume(self, step: int, buffers) -> None:
        """Drop parts beyond the checkpoint at `step` (they will be collected again). A training
        checkpointed before the log existed still has its whole history in the replay buffer
        if that never wrapped around: log it as one part."""
        for part in self.parts():
            if int(part.stem) > step:
                part.unlink()
        if not self.parts():
            held = jax.tree.map(lambda x: np.asarray(x[0]), buffers)  # the one seed
            if int(held.size) != step:
                raise DatasetError(
                    f"the checkpoint at step {step} has no log of what it collected and its replay "
                    "buffer has wrapped around, so medium-replay cannot be rebuilt; retrain from "
                    f"scratch (delete '{self.directory.parent}').")
            self.write(step, [ReplayBuffer(held.transitions, held.size, held.position).ordered()])

    def save_prefix(self, steps: int, path: Path, action_space) -> None:
        """The first `steps` transitions, actions in the environment's units, compressed."""
        columns: dict[str, list] = {}
        for part in self.parts():
            with np.load(part) as stored:
                for name in stored.files:
                    columns.setdefault(name, []).append(stored[name])
        prefix = {name: np.concatenate(values)[:steps] for name, values in columns.items()}
        if len(prefix.get("rewards", ())) != steps:
            raise DatasetError(f"the collection log in '{self.directory}' holds fewer than {steps} "
                               "transitions; retrain from scratch.")
        prefix["actions"] = to_env_units(prefix["actions"], action_space)
        write_replay(path, prefix)
