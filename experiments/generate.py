"""Datasets made by D4RL's protocol on gymnasium MuJoCo v5, offline and deterministically.

    python -m experiments.generate env=hopper                # every split, from the shipped policies
    python -m experiments.generate env=hopper splits=[medium] size=100000
    python -m experiments.generate env=walker2d retrain=true  # retrain the behaviour policies (resumable)

Behaviour policies are SAC agents (`algorithms/sac.py`) trained online, with a snapshot of the
actor kept at every evaluation (`envs/behaviour/<env>/`). As in D4RL (Fu et al. 2020, section 5):
  random         the randomly initialised policy (the step-0 snapshot);
  medium         the snapshot whose evaluation return is nearest a third of the way from the
                 random policy's return to the expert's;
  expert         the fully trained policy (the last snapshot);
  medium-replay  what the replay buffer held when training reached the medium snapshot;
  medium-expert  medium and expert concatenated.
random, medium and expert hold `size` transitions each (default 1M), sampled from the policy's own
stochastic actions. medium-replay is, as in D4RL, what training itself collected up to the medium
snapshot (its uniform warm-up steps included): training logs every transition it collects, and
keeps that prefix in `envs/behaviour/<env>/medium_replay.npz`, so the split is the real data, not
a re-enactment. The reference scores (D4RL's min/max normalisation) are the random and expert
policies' mean returns, measured when the policies were trained.

Episodes end by termination (the robot fell) or by the 1000-step time limit (a truncation),
recorded apart; the last episode of a split is cut at `size` and marked truncated. Files are
written with Minari's API into `$OFFRL_DATA_DIR` (default ~/.cache/offrl-jax/datasets) via a
staging folder that is renamed into place when complete, so an interrupted run never leaves a
dataset that loads as if whole.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import flax
import numpy as np

from envs.dataset import DatasetError
from envs.generated import BEHAVIOUR_ENVS, SPLITS, behaviour_dataset_id
from experiments.progress import Progress

BEHAVIOUR_DIR = Path(__file__).resolve().parent.parent / "envs" / "behaviour"
REPLAY_FILE = "medium_replay.npz"  # what training collected up to the medium snapshot

log = logging.getLogger("generate")


def check_request(env: str, splits) -> None:
    if env not in BEHAVIOUR_ENVS:
        raise DatasetError(f"unknown environment '{env}' for generated datasets; choose one of "
                           f"{', '.join(BEHAVIOUR_ENVS)}.")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}.")


# --------------------------------------------------------------------------------------------
# Behaviour policies: snapshots of a SAC actor
# --------------------------------------------------------------------------------------------


class Behaviour:
    """The snapshots of one environment's behaviour policy, as listed in `policy.json`."""

    def __init__(self, directory: Path, manifest: dict | None = None):
        """`manifest`: the contents of policy.json when it is not written yet."""
        self.directory = Path(directory)
        path = self.directory / "policy.json"
        if manifest is None and not path.is_file():
            raise DatasetError(
                f"no behaviour policy in '{self.directory}' (policy.json missing). Train one with "
                f"`python -m experiments.generate env={self.directory.name} retrain=true`.")
        self.manifest = manifest or json.loads(path.read_text())
        self.env = self.manifest["env"]
        self.snapshots = {int(s["step"]): s for s in self.manifest["snapshots"]}

    def step_of(self, role: str) -> int:
        return int(self.manifest["roles"][role])

    @functools.cached_property
    def _policy(self):
        """The project's one batched policy (experiments.policies.make_policy) for SAC's actor,
        stochastic, on raw observations."""
        from algorithms.sac import SAC
        from envs.preprocessing import Preprocessor
        from experiments import policies

        algo = SAC(hidden_dims=tuple(self.manifest["hidden_dims"]))
        return policies.make_policy(algo, Preprocessor.identity(self.manifest["observation_dim"]),
                                    deterministic=False)

    def replay(self) -> dict:
        """The transitions training collected up to the medium snapshot, oldest first, as host
        arrays keyed by `Dataset` field (actions in the environment's units)."""
        path = self.directory / REPLAY_FILE
        try:
            with np.load(path) as stored:
                return unpack_transitions({name: stored[name] for name in stored.files})
        except (OSError, ValueError, EOFError, KeyError) as error:
            raise DatasetError(f"cannot read the medium-replay transitions '{path}' ({error}); "
                               "restore it from the repository or retrain with retrain=true.") from None

    def policy(self, step: int, seed: int):
        """The snapshot taken at training step `step` as a function (observation, counter) -> an
        action in [-1, 1], drawn with the key of `seed` folded with the counter."""
        import flax.serialization
        import jax
        import optax
        from flax.training.train_state import TrainState

        from algorithms.core.networks import TanhGaussianActor

        path = self.directory / self.snapshots[step]["file"]
        try:
            params = flax.serialization.msgpack_restore(path.read_bytes())
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read behaviour snapshot '{path}' ({error}); restore it "
                               "from the repository or retrain with retrain=true.") from None
        module = TanhGaussianActor(tuple(self.manifest["hidden_dims"]), self.manifest["action_dim"])
        actor = jax.tree.map(lambda x: jax.numpy.asarray(x)[None],  # a batch of one "seed"
                             TrainState.create(apply_fn=module.apply, tx=optax.identity(), params=params))
        act = self._policy(ActorSnapshot(actor, jax.numpy.zeros((), "int32")),
                           jax.random.key(seed)[None])
        return lambda observation, counter: act(np.asarray(observation, np.float32)[None, None],
                                                counter)[0, 0]


@flax.struct.dataclass
class ActorSnapshot:
    """The part of a SAC state that acting reads."""

    actor: object
    step: object


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


def to_env_units(unit_actions: np.ndarray, space) -> np.ndarray:
    """Actions in [-1, 1] (the policies' and training's scale) -> the action space's bounds."""
    low, high = space.low, space.high
    return (low + (unit_actions + 1.0) * 0.5 * (high - low)).astype(space.dtype)


def collect(env_name: str, policy, steps: int, seed: int, progress=None) -> list:
    """Run one environment for `steps` steps with `policy` (from `Behaviour.policy(step, seed)`),
    sampling its stochastic actions. Returns Minari EpisodeBuffers holding exactly `steps`
    transitions (the last episode cut short)."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    spec = BEHAVIOUR_ENVS[env_name]
    env = gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps)
    episodes, episode_seed = [], seed * 1_000_003
    observation, _ = env.reset(seed=episode_seed)
    current = {"observations": [observation], "actions": [], "rewards": [], "terminations": [],
               "truncations": [], "seed": episode_seed}

    def close(truncate: bool):
        if truncate:
            current["truncations"][-1] = True
        episodes.append(EpisodeBuffer(
            id=len(episodes), seed=current.pop("seed"),
            **{name: np.asarray(value) for name, value in current.items()}))

    for done_steps in range(1, steps + 1):
        unit = policy(observation, done_steps - 1)
        action = to_env_units(unit, env.action_space)
        observation, reward, terminated, truncated, _ = env.step(action)
        current["observations"].append(observation)
        current["actions"].append(action)
        current["rewards"].append(float(reward))
        current["terminations"].append(bool(terminated))
        current["truncations"].append(bool(truncated) and not terminated)
        if terminated or truncated:
            close(truncate=False)
            episode_seed += 1
            observation, _ = env.reset(seed=episode_seed)
            current = {"observations": [observation], "actions": [], "rewards": [],
                       "terminations": [], "truncations": [], "seed": episode_seed}
        if progress is not None and (done_steps % 1_000 == 0 or done_steps == steps):
            progress(done_steps, steps)
    if current["actions"]:
        close(truncate=True)
    env.close()
    return episodes


def pack_transitions(transitions: dict) -> dict:
    """Store each observation once: next_observations[t] is observations[t + 1] except where an
    episode ended (kept in `cut_next_observations` at rows `cuts`) and at the last row."""
    observations, following = transitions["observations"], transitions["next_observations"]
    cuts = np.flatnonzero(np.any(following[:-1] != observations[1:], axis=-1))
    cuts = np.append(cuts, len(observations) - 1)
    packed = {k: v for k, v in transitions.items() if k != "next_observations"}
    return {**packed, "cuts": cuts, "cut_next_observations": following[cuts]}


def unpack_transitions(packed: dict) -> dict:
    transitions = {k: v for k, v in packed.items() if not k.startswith("cut")}
    following = np.concatenate([packed["observations"][1:], packed["observations"][-1:]])
    following[packed["cuts"]] = packed["cut_next_observations"]
    return {**transitions, "next_observations": following}


def replay_episodes(transitions: dict) -> list:
    """Cut a stream of transitions (Dataset fields, oldest first) into Minari EpisodeBuffers.
    An episode ends where it terminated or hit the time limit, and also where the next transition
    does not start from this one's next observation (training resumed from a checkpoint starts a
    fresh episode): that cut, like the stream's last episode, is recorded as a truncation."""
    from minari.data_collector import EpisodeBuffer

    observations, next_observations = transitions["observations"], transitions["next_observations"]
    terminations = transitions["terminals"].astype(bool)
    truncations = transitions["timeouts"].astype(bool)
    broken = np.zeros_like(truncations)
    broken[:-1] = np.any(next_observations[:-1] != observations[1:], axis=-1)
    broken[-1] = True
    truncations = (truncations | broken) & ~terminations
    ends = np.flatnonzero(terminations | truncations) + 1
    episodes, start = [], 0
    for end in ends:
        episodes.append(EpisodeBuffer(
            id=len(episodes),
            observations=np.concatenate([observations[start:end], next_observations[end - 1:end]]
                                        ).astype(np.float64),
            actions=transitions["actions"][start:end], rewards=transitions["rewards"][start:end],
            terminations=terminations[start:end], truncations=truncations[start:end]))
        start = end
    return episodes


def episode_statistics(episodes) -> dict:
    """Mean return over complete episodes (not the cut-short last one), and counts."""
    complete = [e for e in episodes if e.terminations[-1] or e is not episodes[-1]]
    returns = [float(np.sum(e.rewards)) for e in complete] or [float(np.sum(episodes[-1].rewards))]
    return {"episodes": len(episodes), "transitions": int(sum(len(e.rewards) for e in episodes)),
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))}


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def write_split(dataset_id: str, split: str, episodes: list, behaviour: Behaviour, root: Path,
                seed: int, command: str) -> dict:
    from envs.generated import write_minari_dataset

    spec = BEHAVIOUR_ENVS[behaviour.env]
    reference = behaviour.manifest["reference"]
    stats = episode_statistics(episodes)
    roles = behaviour.manifest["roles"]
    source = {"random": f"the random initial policy (step {roles['random']})",
              "medium": f"the medium snapshot (training step {roles['medium']})",
              "expert": f"the expert snapshot (training step {roles['expert']})",
              "medium-replay": f"what SAC training collected up to step {roles['medium']}",
              "medium-expert": "medium followed by expert"}[split]
    write_minari_dataset(
        root, dataset_id, episodes, env=spec.env_id, eval_env=spec.env_id,
        algorithm_name=f"SAC behaviour policy: {source}",
        ref_min_score=reference["min"], ref_max_score=reference["max"],
        description=(
            f"D4RL-protocol {split} split for {spec.env_id}: {stats['transitions']} transitions, "
            f"{stats['episodes']} episodes, behaviour return {stats['return_mean']:.1f}; "
            f"{source}; generation seed {seed}; command `{command}`; generated by offrl-jax "
            "experiments/generate.py."),
    )
    return {**stats,
            "normalized_return": 100 * (stats["return_mean"] - reference["min"])
            / (reference["max"] - reference["min"])}


def generate(env: str, splits=SPLITS, size: int = 1_000_000, seed: int = 0, root: Path | None = None,
             policy_dir: Path | None = None, force: bool = False, command: str | None = None,
             progress: bool = True, sized_name: bool = False) -> dict:
    """Write the requested splits of `env` (skipping those already complete unless `force`);
    returns per-split statistics of what was written. `sized_name`: write them under the
    fixed-size ids `local/<env>/<split>-<size/1000>k-v0` (envs.generated.SIZED) instead."""
    from envs.generated import data_dir, dataset_complete

    check_request(env, splits)
    root = Path(root or data_dir())
    behaviour = Behaviour(Path(policy_dir or BEHAVIOUR_DIR) / env)
    command = command or "python -m experiments.generate " + shlex.join(sys.argv[1:])
    collected: dict[str, list] = {}

    def episodes_of(split: str) -> list:
        # Collection is deterministic, so medium and expert come out the same when medium-expert
        # needs them again.
        if split == "medium-expert":
            episodes = [*episodes_of("medium"), *episodes_of("expert")]
            return [dataclasses.replace(e, id=i) for i, e in enumerate(episodes)]
        if split == "medium-replay":
            return replay_episodes(behaviour.replay())
        if split not in collected:
            shown = Progress(f"generating local/{env}-{split}", size, logger=log) if progress else None
            # random, medium and expert: sampled from that role's snapshot
            split_seed = seed * 1000 + SPLITS.index(split)
            collected[split] = collect(env, behaviour.policy(behaviour.step_of(split), split_seed),
                                       size, seed=split_seed,
                                       progress=shown and (lambda done, _total: shown.update(done)))
            if shown:
                shown.close()
        return collected[split]

    report = {}
    for split in (s for s in SPLITS if s in splits):
        dataset_id = behaviour_dataset_id(env, split, size if sized_name else None)
        if not force and dataset_complete(root, dataset_id):
            continue
        started = time.perf_counter()
        episodes = episodes_of(split)
        report[split] = write_split(dataset_id, split, episodes, behaviour, root, seed, command)
        report[split]["seconds"] = time.perf_counter() - started  # collection and writing
    return report


# --------------------------------------------------------------------------------------------
# Training the behaviour policies
# --------------------------------------------------------------------------------------------


def train_behaviour(env: str, out_dir: Path, *, hidden_dims=(256, 256), total_steps: int,
                    start_steps: int = 10_000, snapshot_every: int = 10_000, eval_episodes: int = 10,
                    reference_episodes: int = 20, seed: int = 0, buffer_size: int = 1_000_000,
                    checkpoint_dir: Path | None = None, log=print) -> dict:
    """Train SAC on `env` with an actor snapshot at every evaluation, then pick the random,
    medium and expert snapshots and measure the reference returns; writes out_dir/policy.json.
    An orbax checkpoint (agent + replay buffer; `checkpoint_dir`, default runs/behaviour/<env>)
    is kept at every snapshot, so an interrupted run continues where it stopped when started
    again. Only the snapshots the splits use stay in out_dir."""
    import flax.serialization
    import gymnasium as gym
    import jax

    from algorithms.core.algorithm import Context, OnlineConfig, Sampling
    from algorithms.sac import SAC
    from envs.dataset import Dataset
    from envs.environment import episode_seeds, run_episodes
    from envs.preprocessing import Preprocessor
    from experiments import loop, online, policies
    from experiments.checkpoints import Checkpointer

    spec = BEHAVIOUR_ENVS[env]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def make_env():
        raw = gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps)
        ones = np.ones(raw.action_space.shape, raw.action_space.dtype)
        return gym.wrappers.RescaleAction(raw, -ones, ones)

    # SAC from scratch: 50 environment steps, then 50 updates, from its own buffer only.
    algo = SAC(hidden_dims=tuple(hidden_dims), online=OnlineConfig(block=50))
    schedule = online.OnlineSchedule(total_steps, eval_every=snapshot_every,
                                     checkpoint_every=snapshot_every, log_every=0,
                                     start_steps=start_steps)
    env_spec = online.environment_spec(make_env, total_steps)
    ctx = Context(None, phase="online")
    run = online.fresh_run(algo, env_spec, ctx, [seed], buffer_size)
    checkpoint_dir = Path(checkpoint_dir or Path("runs") / "behaviour" / env)
    checkpointer = Checkpointer(checkpoint_dir, keep=1)
    collected = CollectionLog(checkpoint_dir / "collected")
    snapshots, seconds = [], 0.0
    if checkpointer.latest() is not None:
        try:
            step, saved, trees = checkpointer.restore_latest(lambda record: {
                "states": run.states, "buffers": run.buffers, "keys": run.keys})
        except ValueError as error:
            raise DatasetError(
                f"cannot resume the training in '{checkpoint_dir}': it was made with other settings "
                f"({str(error).splitlines()[0][:200]}). Pass the same train.* values as when it "
                "started (train.buffer_size in particular), or delete that folder to start over."
            ) from None
        run = online.OnlineRun(trees["states"], trees["buffers"], trees["keys"], step, saved["history"],
                               saved.get("environments"))
        snapshots, seconds = saved["snapshots"], saved["seconds"]
        collected.resume(step, run.buffers)
        log(f"{env}: resuming SAC training from step {step}")
    started = time.perf_counter() - seconds
    pending: list = []  # transitions collected since the last checkpoint
    policy = policies.make_policy(algo, Preprocessor.identity(env_spec.observation_dim))

    def on_collect(transitions, step):
        pending.append(Dataset(*(transitions[name][:, 0] for name in Dataset._fields)))  # the one seed

    def evaluate(run):
        step = run.env_step
        returns = run_episodes(policy(run.states), make_env,
                               episode_seeds([seed], 10**6 + step, eval_episodes))
        params = jax.tree.map(lambda x: np.asarray(x[0]), run.states.actor.params)
        name = f"actor_{step:08d}.msgpack"
        (out_dir / name).write_bytes(flax.serialization.msgpack_serialize(params))
        snapshots.append({"step": step, "file": name, "return_mean": float(returns.mean()),
                          "return_std": float(returns.std())})
        log(f"{env} step {step}: evaluation return {returns.mean():.1f} ± {returns.std():.1f} "
            f"({time.perf_counter() - started:.0f} s)")

    def checkpoint(run):
        # The log first: a checkpoint never gets ahead of the transitions it was trained on.
        collected.write(run.env_step, pending)
        pending.clear()
        checkpointer.save(run.env_step, {"states": run.states, "buffers": run.buffers, "keys": run.keys},
                          {"history": run.history, "snapshots": snapshots,
                           "seconds": time.perf_counter() - started, "environments": run.environments})

    if run.env_step == 0:
        evaluate(run)  # the untrained policy: the `random` role
    runner = loop.ChunkRunner(algo, "online", sampling=Sampling("buffer"))
    online.train_online(algo, ctx, Preprocessor.identity(env_spec.observation_dim), make_env, schedule,
                        [seed], run, runner, evaluate=evaluate, checkpoint=checkpoint,
                        on_collect=on_collect)
    checkpointer.wait()
    train_seconds = time.perf_counter() - started

    expert = snapshots[-1]
    # "About a third of the expert": a third of the way from the random policy's return to the
    # expert's (the same as D4RL's third of the expert's return where random scores about 0, and
    # still meaningful where returns are negative).
    target = snapshots[0]["return_mean"] + (expert["return_mean"] - snapshots[0]["return_mean"]) / 3
    medium = min(snapshots[1:-1] or snapshots, key=lambda s: abs(s["return_mean"] - target))
    # Only the snapshots that a split uses are kept: the three roles.
    kept = [s for s in snapshots if s is snapshots[0] or s is medium or s is expert]
    for snapshot in snapshots:
        if snapshot not in kept:
            (out_dir / snapshot["file"]).unlink(missing_ok=True)
    manifest = {
        "env": env, "env_id": spec.env_id, "hidden_dims": list(hidden_dims),
        "observation_dim": env_spec.observation_dim, "action_dim": env_spec.action_dim,
        "seed": seed, "total_steps": total_steps, "start_steps": start_steps,
        "buffer_size": buffer_size,
        "snapshot_every": snapshot_every, "train_seconds": round(train_seconds, 1),
        "roles": {"random": 0, "medium": medium["step"], "expert": expert["step"]},
        "snapshots": kept, "command": "python -m experiments.generate " + shlex.join(sys.argv[1:]),
        "returns_during_training": [[s["step"], round(s["return_mean"], 1)] for s in snapshots],
    }
    collected.save_prefix(medium["step"], out_dir / REPLAY_FILE,
                          gym.make(spec.env_id).action_space)
    behaviour = Behaviour(out_dir, manifest)
    reference = {}
    for role, bound in (("random", "min"), ("expert", "max")):
        # Stochastic actions, as the datasets are sampled; seeds disjoint from the datasets'.
        episodes = collect(env, behaviour.policy(behaviour.step_of(role), 10**6 + seed),
                           reference_episodes * spec.max_episode_steps, seed=10**6 + seed)
        reference[bound] = episode_statistics(episodes)["return_mean"]
    manifest["reference"] = reference
    (out_dir / "policy.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"{env}: random {reference['min']:.1f}, medium (step {medium['step']}) "
        f"{medium['return_mean']:.1f}, expert {reference['max']:.1f}; {train_seconds:.0f} s")
    return manifest


class CollectionLog:
    """Every transition behaviour training collects, in files of one checkpoint interval each
    (`<end step>.npz`, actions in [-1, 1]); medium-replay is read from it. The replay buffer
    cannot serve: it is a ring that forgets its oldest transitions."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("*.npz"))

    def write(self, step: int, batches: list) -> None:
        from envs.dataset import Dataset

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
            import jax

            held = jax.tree.map(lambda x: np.asarray(x[0]), buffers)  # the one seed
            if int(held.size) != step:
                raise DatasetError(
                    f"the checkpoint at step {step} has no log of what it collected and its replay "
                    "buffer has wrapped around, so medium-replay cannot be rebuilt; retrain from "
                    f"scratch (delete '{self.directory.parent}').")
            from algorithms.core.replay import ReplayBuffer

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
        np.savez_compressed(path, **pack_transitions(prefix))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

# SAC budgets per environment, chosen to train within one working session on a 2-core CPU.
TRAINING = {
    "pendulum": {"hidden_dims": [64, 64], "total_steps": 12_000, "start_steps": 1_000,
                 "snapshot_every": 1_000},
    # SAC at 128x2 runs ~200 updates/s here (256x2: ~87), about 5 ms per environment step with the
    # environment; D4RL's 1M steps at 256x2 would take over 3 hours per environment.
    **{env: {"hidden_dims": [128, 128], "total_steps": 200_000, "start_steps": 10_000,
             "snapshot_every": 10_000} for env in ("hopper", "halfcheetah", "walker2d", "ant")},
}


@dataclasses.dataclass
class TrainSettings:
    hidden_dims: list[int] | None = None  # None: the environment's entry in TRAINING
    total_steps: int | None = None
    start_steps: int | None = None
    snapshot_every: int | None = None
    eval_episodes: int = 10
    buffer_size: int | None = None  # None: 1M (a resumed training must keep its first value)


@dataclasses.dataclass
class GenerateSettings:
    env: str = "hopper"
    splits: list[str] = dataclasses.field(default_factory=lambda: list(SPLITS))
    size: int | None = None  # transitions in random, medium and expert; None: the env's default
    seed: int = 0
    data_dir: str | None = None  # default: $OFFRL_DATA_DIR or ~/.cache/offrl-jax/datasets
    policy_dir: str | None = None  # default: the shipped envs/behaviour
    force: bool = False  # rewrite splits that already exist
    retrain: bool = False  # train the behaviour policy first (resumes an interrupted training)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)


def parse(argv: list[str]) -> GenerateSettings:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(GenerateSettings),
                                 OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise DatasetError(f"bad override ({message}); write key=value with keys from "
                           f"{', '.join(f.name for f in dataclasses.fields(GenerateSettings))}.") from None
    settings = OmegaConf.to_object(merged)
    check_request(settings.env, settings.splits)
    if settings.size is None:
        settings.size = BEHAVIOUR_ENVS[settings.env].default_size
    if settings.size <= 0:
        raise DatasetError(f"size must be positive, got {settings.size}.")
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the progress lines
    try:
        settings = parse(argv)
        policy_root = Path(settings.policy_dir or BEHAVIOUR_DIR)
        command = "python -m experiments.generate " + shlex.join(argv)
        if settings.retrain:
            train = {**TRAINING[settings.env],
                     **{k: v for k, v in dataclasses.asdict(settings.train).items() if v is not None}}
            train_behaviour(settings.env, policy_root / settings.env, seed=settings.seed, **train)
        report = generate(settings.env, settings.splits, settings.size, settings.seed,
                          Path(settings.data_dir) if settings.data_dir else None, policy_root,
                          force=settings.force, command=command)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, stats in report.items():
        print(f"local/{settings.env}-{split}: {stats['transitions']:,} transitions, "
              f"{stats['episodes']} episodes, return {stats['return_mean']:.1f} "
              f"(normalized {stats['normalized_return']:.1f}), {stats['seconds']:.0f} s")
    if not report:
        print(f"every requested split of {settings.env} already exists (force=true rewrites).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
