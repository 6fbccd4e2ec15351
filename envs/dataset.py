"""The one transition-dataset type every data source produces, and how it is built and checked.

A `Dataset` is a NamedTuple of equally long arrays, so it is a JAX pytree as it is: it moves to the
device with `jax.device_put` and is indexed inside compiled code like any other pytree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DatasetError(ValueError):
    """Raised for data that cannot be trained on; the message names the problem and the fix."""


class Dataset(NamedTuple):
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) float32, 1.0 where the episode truly ended (no bootstrap)
    timeouts: np.ndarray  # (N,) float32, 1.0 on the last kept transition of a truncated episode

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def observation_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """Boolean mask of transitions after which an episode ends (terminated or truncated)."""
        return (np.asarray(self.terminals) > 0) | (np.asarray(self.timeouts) > 0)


def from_arrays(
    observations,
    actions,
    rewards,
    next_observations,
    terminals,
    timeouts,
    *,
    source: str = "dataset",
) -> Dataset:
    """Cast to the canonical dtypes and validate; `source` names the data in error messages."""
    check_numeric({"observations": observations, "actions": actions, "rewards": rewards,
                   "next_observations": next_observations, "terminals": terminals,
                   "timeouts": timeouts}, source)
    data = Dataset(
        observations=np.asarray(observations, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float32).reshape(-1),
        next_observations=np.asarray(next_observations, dtype=np.float32),
        terminals=np.asarray(terminals, dtype=np.float32).reshape(-1),
        timeouts=np.asarray(timeouts, dtype=np.float32).reshape(-1),
    )
    validate(data, source)
    return data


def check_numeric(arrays: dict, source: str = "dataset") -> None:
    """Every field must hold numbers or booleans (a file may hold strings or objects instead)."""
    for name, value in arrays.items():
        dtype = np.asarray(value).dtype
        if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
            raise DatasetError(
                f"{source}: field '{name}' holds non-numeric values (dtype {dtype}); every field must "
                "be numbers. The file was written wrongly: re-create it with numeric arrays."
            )


def validate(data: Dataset, source: str = "dataset") -> None:
    """Check shapes, lengths and finiteness; raise `DatasetError` naming the first problem."""
    if data.observations.ndim != 2 or data.next_observations.ndim != 2 or data.actions.ndim != 2:
        raise DatasetError(
            f"{source}: observations, next_observations and actions must be 2-D arrays (N, dim); "
            f"got shapes {data.observations.shape}, {data.next_observations.shape}, "
            f"{data.actions.shape}. Flatten per-step observations before building the dataset."
        )
    lengths = {name: len(value) for name, value in data._asdict().items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(
            f"{source}: arrays have different lengths {lengths}; every field needs one row per "
            "transition. Re-create the file; it is probably truncated or mixed from two datasets."
        )
    if lengths["rewards"] == 0:
        raise DatasetError(f"{source}: the dataset holds no transitions. Check the file or filter.")
    if data.observations.shape[1] != data.next_observations.shape[1]:
        raise DatasetError(
            f"{source}: observations have {data.observations.shape[1]} columns but "
            f"next_observations {data.next_observations.shape[1]}."
        )
    for name, value in data._asdict().items():
        finite = np.isfinite(value)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise DatasetError(
                f"{source}: field '{name}' has {int((~finite).sum())} NaN/inf values (first at "
                f"row {row}). Clean or drop those transitions before training."
            )


def qlearning_transitions(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray | None = None,
    *,
    max_episode_steps: int | None = None,
    source: str = "dataset",
    next_observations: np.ndarray | None = None,
) -> Dataset:
    """Turn D4RL's flat step arrays into transitions as `d4rl.qlearning_dataset` does, except at
    terminal rows when the file's own `next_observations` are given (D4RL v2 MuJoCo files have
    them): there D4RL's s_{i+1} is the next episode's first state, the file's is the state the
    episode ended in (as OfflineRL-Kit reads them). Model-free targets do not change (a terminal
    row's next state is multiplied by 1 - d = 0); a dynamics model no longer learns fall -> reset
    jumps. Elsewhere the two agree, and s_{i+1} is kept.

    D4RL's rule: row i gives (s_i, a_i, r_i, s_{i+1}, terminal_i), for i < N-1, except that rows
    flagged as timeouts are dropped (their s_{i+1} belongs to the next episode). Without a
    `timeouts` array, D4RL counts steps and treats step `max_episode_steps - 1` of each episode as
    the timeout (with D4RL's off-by-one after terminals, see `_timeouts_from_step_count`). Beyond
    D4RL we also mark, in `timeouts`, the last kept transition of an episode that ended without a
    terminal (truncated, or cut by the end of the data), so that episode boundaries are known
    exactly (IQL's return-range reward scaling needs them).
    """
    check_numeric({"observations": observations, "actions": actions, "rewards": rewards,
                   "terminals": terminals, **({} if timeouts is None else {"timeouts": timeouts}),
                   **({} if next_observations is None else {"next_observations": next_observations})},
                  source)
    n = len(rewards)
    terminals = np.asarray(terminals).reshape(-1).astype(bool)
    if timeouts is None:
        if max_episode_steps is None:
            raise DatasetError(
                f"{source}: no 'timeouts' array and no max_episode_steps to derive it from."
            )
        timeouts = _timeouts_from_step_count(terminals, max_episode_steps)
    timeouts = np.asarray(timeouts).reshape(-1).astype(bool)
    if not (len(observations) == len(actions) == n == len(terminals) == len(timeouts)):
        raise DatasetError(
            f"{source}: step arrays have different lengths (observations {len(observations)}, "
            f"actions {len(actions)}, rewards {n}, terminals {len(terminals)}, timeouts "
            f"{len(timeouts)}). Re-download or re-create the file."
        )
    if next_observations is not None and np.shape(next_observations) != np.shape(observations):
        raise DatasetError(
            f"{source}: 'next_observations' has shape {np.shape(next_observations)}, 'observations' "
            f"{np.shape(observations)}; they must match. Re-download or re-create the file."
        )
    keep = np.flatnonzero(~timeouts[:-1])  # the last row has no successor, as in D4RL
    is_last_row = keep == n - 2
    successor_is_timeout = timeouts[keep + 1]
    truncated_here = ~terminals[keep] & (successor_is_timeout | is_last_row)
    successors = np.array(observations[keep + 1])
    if next_observations is not None:
        ended = terminals[keep]
        successors[ended] = np.asarray(next_observations)[keep[ended]]
    return from_arrays(
        observations=observations[keep],
        actions=actions[keep],
        rewards=np.asarray(rewards).reshape(-1)[keep],
        next_observations=successors,
        terminals=terminals[keep],
        timeouts=truncated_here,
        source=source,
    )


def last_rows(data: Dataset, count: int, source: str = "dataset") -> Dataset:
    """The last `count` transitions in the file's order (all when it has fewer): what a replay pool
    of `count` rows holds after the dataset was poured into it in order, as MOPO's authors' 1M-row
    pool kept of the 2M-row medium-expert files. The first kept episode may start mid-way."""
    if count < 1:
        raise DatasetError(f"{source}: dataset.last_rows must be >= 1 (got {count}); fix the override "
                           "or drop it to keep every row.")
    return Dataset(*(np.asarray(column)[-count:] for column in data))


def goal_terminals(data: Dataset, goal_reward: float = 1.0) -> Dataset:
    """Every row that reaches the goal (reward == `goal_reward`) is terminal, D4RL's AntMaze
    convention: Minari recorded AntMaze as a continuing task (no terminations, the reward repeating
    while the ant stays at the goal), D4RL's files, which the references trained on, mark each such
    row terminal, and the evaluation environment ends the episode there. A relabelled row is no
    longer a timeout."""
    terminals = (np.asarray(data.terminals) > 0) | (np.asarray(data.rewards) == goal_reward)
    return data._replace(terminals=terminals.astype(np.float32),
                         timeouts=np.where(terminals, 0.0, data.timeouts).astype(np.float32))


def _timeouts_from_step_count(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """D4RL's fallback: a row is a timeout when D4RL's step counter reaches max_episode_steps - 1.

    As in D4RL, the counter restarts at 0 after a timeout but at 1 after a terminal (D4RL resets it
    to 0 and then increments it for the terminal row it keeps), so an episode that follows a
    terminal is cut one step earlier.
    """
    timeouts = np.zeros_like(terminals)
    episode_step = 0
    for i, terminal in enumerate(terminals):
        final = episode_step == max_episode_steps - 1
        timeouts[i] = final
        episode_step = 0 if final else 1 if terminal else episode_step + 1
    return timeouts


def from_episodes(episodes, *, source: str = "dataset") -> Dataset:
    """Flatten episodes given as dicts with `observations` (T+1 rows), `actions`, `rewards`,
    `terminations` and `truncations` (T rows), keeping terminations and truncations apart.

    An episode that ends with neither flag (the recording stopped) gets a timeout on its last step,
    so no transition ever bootstraps across an episode boundary it cannot see.
    """
    parts = {name: [] for name in Dataset._fields}
    for episode in episodes:
        obs = np.asarray(episode["observations"])
        steps = len(episode["actions"])
        if len(obs) != steps + 1:
            raise DatasetError(
                f"{source}: an episode has {len(obs)} observations for {steps} actions; "
                "expected one more observation than actions."
            )
        terminations = np.asarray(episode["terminations"]).astype(bool)
        truncations = np.asarray(episode["truncations"]).astype(bool)
        if steps and not (terminations[-1] or truncations[-1]):
            truncations = truncations.copy()
            truncations[-1] = True
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode["actions"]))
        parts["rewards"].append(np.asarray(episode["rewards"]))
        parts["terminals"].append(terminations)
        parts["timeouts"].append(truncations & ~terminations)
    if not parts["rewards"]:
        raise DatasetError(f"{source}: the dataset holds no episodes.")
    return from_arrays(**{k: np.concatenate(v) for k, v in parts.items()}, source=source)


def concatenate(datasets: list[Dataset], source: str = "dataset") -> Dataset:
    return from_arrays(
        *(np.concatenate(column) for column in zip(*datasets, strict=True)), source=source
    )


def episode_returns(data: Dataset) -> np.ndarray:
    """Undiscounted return of every (possibly partial) episode, in order of appearance."""
    ends = np.flatnonzero(data.episode_ends)
    if len(ends) == 0 or ends[-1] != data.size - 1:
        ends = np.append(ends, data.size - 1)
    cumulative = np.concatenate([[0.0], np.cumsum(data.rewards, dtype=np.float64)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return cumulative[ends + 1] - cumulative[starts]


def returns_to_go(data: Dataset, discount: float, failure_reward: float | None = None) -> np.ndarray:
    """Each transition's discounted Monte-Carlo return to the end of its (recorded) episode,
    sum_k discount^k r_{t+k}, float32. With `failure_reward`, an episode whose every reward equals
    it (a sparse-reward task never solved) gets failure_reward / (1 - discount) everywhere, the
    value of failing forever, as Cal-QL's code does (its episodes end by the time limit, not by
    failing)."""
    from scipy.signal import lfilter

    rewards = np.asarray(data.rewards, np.float64)
    ends = np.flatnonzero(data.episode_ends)
    if len(ends) == 0 or ends[-1] != data.size - 1:
        ends = np.append(ends, data.size - 1)
    result = np.empty_like(rewards)
    start = 0
    for end in ends:
        episode = rewards[start:end + 1]
        if failure_reward is not None and np.all(episode == failure_reward):
            result[start:end + 1] = failure_reward / (1.0 - discount)
        else:  # G_t = r_t + discount G_{t+1}: a first-order filter over the reversed episode
            result[start:end + 1] = lfilter([1.0], [1.0, -discount], episode[::-1])[::-1]
        start = end + 1
    return result.astype(np.float32)
