"""The D4RL-protocol splits, collected from the shipped behaviour policies (Fu et al. 2020, section 5):
  random         the randomly initialised policy (the step-0 snapshot);
  medium         the snapshot whose evaluation return is nearest a third of the way from the
                 random policy's return to the expert's;
  expert         the fully trained policy (the last snapshot);
  medium-replay  what the replay buffer held when training reached the medium snapshot;
  medium-expert  medium and expert concatenated.
random, medium and expert hold `size` transitions each (default 1M), sampled from the policy's own
stochastic actions. medium-replay is, as in D4RL, what training itself collected up to the medium
snapshot (its uniform warm-up steps included), stored next to the snapshots
(`envs/behaviour/<env>/medium_replay.npz`), so the split is the real data, not a re-enactment. The
reference scores (D4RL's min/max normalisation) are the random and expert policies' mean returns,
measured when the policies were trained (experiments/behaviour.py).

Episodes end by termination (the robot fell) or by the 1000-step time limit (a truncation),
recorded apart; the last episode of a split is cut at `size` and marked truncated. The files'
format is envs/behaviour_files.py; the Minari writing (through a staging folder renamed into place,
so an interrupted run never leaves a dataset that loads as if whole) is envs/generated.py.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shlex
import sys
import time
from pathlib import Path

import flax
import flax.serialization
import gymnasium as gym
import jax
import numpy as np
import optax
from flax.training.train_state import TrainState

from algorithms.core.networks import TanhGaussianActor
from algorithms.sac import SAC
from envs.behaviour_files import (
    BEHAVIOUR_DIR,
    episode_statistics,
    read_manifest,
    read_replay,
    replay_episodes,
    to_env_units,
)
from envs.dataset import DatasetError
from envs.generated import (
    BEHAVIOUR_ENVS,
    SPLITS,
    behaviour_dataset_id,
    data_dir,
    dataset_complete,
    write_minari_dataset,
)
from envs.preprocessing import Preprocessor
from experiments import policies
from experiments.progress import Progress

log = logging.getLogger("generate")  # the program's name in its progress lines


def check_request(env: str, splits) -> None:
    if env not in BEHAVIOUR_ENVS:
        raise DatasetError(f"unknown environment '{env}' for generated datasets; choose one of "
                           f"{', '.join(BEHAVIOUR_ENVS)}.")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}.")


def command_line(argv: list[str] | None = None) -> str:
    """The command that made a file, recorded in its metadata."""
    return "python -m experiments.generate " + shlex.join(sys.argv[1:] if argv is None else argv)


class Behaviour:
    """The snapshots of one environment's behaviour policy, as listed in `policy.json`."""

    def __init__(self, directory: Path, manifest: dict | None = None):
        """`manifest`: the contents of policy.json when it is not written yet."""
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory)
        self.env = self.manifest["env"]
        self.snapshots = {int(s["step"]): s for s in self.manifest["snapshots"]}

    def step_of(self, role: str) -> int:
        return int(self.manifest["roles"][role])

    @functools.cached_property
    def _policy(self):
        """The project's one batched policy (experiments.policies.make_policy) for SAC's actor,
        stochastic, on raw observations."""
        algo = SAC(hidden_dims=tuple(self.manifest["hidden_dims"]))
        return policies.make_policy(algo, Preprocessor.identity(self.manifest["observation_dim"]),
                                    deterministic=False)

    def replay(self) -> dict:
        """What training collected up to the medium snapshot (envs.behaviour_files.read_replay)."""
        return read_replay(self.directory)

    def policy(self, step: int, seed: int):
        """The snapshot taken at training step `step` as a function (observation, counter) -> an
        action in [-1, 1], drawn with the key of `seed` folded with the counter."""
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


def collect(env_name: str, policy, steps: int, seed: int, progress=None) -> list:
    """Run one environment for `steps` steps with `policy` (from `Behaviour.policy(step, seed)`),
    sampling its stochastic actions. Returns Minari EpisodeBuffers holding exactly `steps`
    transitions (the last episode cut short)."""
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


def write_split(dataset_id: str, split: str, episodes: list, behaviour: Behaviour, root: Path,
                seed: int, command: str) -> dict:
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
    check_request(env, splits)
    root = Path(root or data_dir())
    behaviour = Behaviour(Path(policy_dir or BEHAVIOUR_DIR) / env)
    command = command or command_line()
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
