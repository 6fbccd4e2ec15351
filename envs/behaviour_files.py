"""The files behind the generated D4RL-protocol splits, and the format they are written in.

A behaviour policy's folder (`envs/behaviour/<env>/`, written by experiments/behaviour.py) holds
`policy.json` (the manifest: roles, reference returns, the snapshots' list), one msgpack file of
actor parameters per kept snapshot, and `medium_replay.npz`: what training collected up to the
medium snapshot, packed so that each observation is stored once. The splits themselves are Minari
datasets of episodes (envs.generated.write_minari_dataset writes them); this module turns a stream
of transitions into those episodes. Running a policy needs the algorithms, so that part lives in
experiments/splits.py; everything here is plain arrays and files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs.dataset import DatasetError

BEHAVIOUR_DIR = Path(__file__).resolve().parent / "behaviour"
MANIFEST_FILE = "policy.json"
REPLAY_FILE = "medium_replay.npz"  # what training collected up to the medium snapshot


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(
            f"no behaviour policy in '{directory}' ({MANIFEST_FILE} missing). Train one with "
            f"`python -m experiments.generate env={Path(directory).name} retrain=true`.")
    return json.loads(path.read_text())


def to_env_units(unit_actions: np.ndarray, space) -> np.ndarray:
    """Actions in [-1, 1] (the policies' and training's scale) -> the action space's bounds."""
    low, high = space.low, space.high
    return (low + (unit_actions + 1.0) * 0.5 * (high - low)).astype(space.dtype)


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


def write_replay(path: Path, transitions: dict) -> None:
    np.savez_compressed(path, **pack_transitions(transitions))


def read_replay(directory: Path) -> dict:
    """The transitions training collected up to the medium snapshot, oldest first, as host arrays
    keyed by `Dataset` field (actions in the environment's units)."""
    path = Path(directory) / REPLAY_FILE
    try:
        with np.load(path) as stored:
            return unpack_transitions({name: stored[name] for name in stored.files})
    except (OSError, ValueError, EOFError, KeyError) as error:
        raise DatasetError(f"cannot read the medium-replay transitions '{path}' ({error}); "
                           "restore it from the repository or retrain with retrain=true.") from None


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
