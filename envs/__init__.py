"""Where data and environments come from. Knows nothing of algorithms or of how training runs:
it imports neither `algorithms` nor `experiments` (a local dataset that is not generated yet raises
`NotGenerated`; experiments.data.load generates it from its shipped behaviour policy)."""

from __future__ import annotations

from envs import d4rl, generated, minari_source
from envs.dataset import Dataset, DatasetError, goal_terminals, last_rows, returns_to_go
from envs.environment import (
    action_bounds,
    check_action_dim,
    check_observation_dim,
    episode_seeds,
    evaluate,
    make_env,
    normalized_score,
    worker_count,
)
from envs.generated import NotGenerated
from envs.preprocessing import (
    Normalizer,
    Preprocessor,
    normalize_states,
    rescale_actions,
    transform_rewards,
)
from envs.registry import REGISTRY, DatasetInfo, lookup

__all__ = [
    "REGISTRY", "Dataset", "DatasetError", "DatasetInfo", "Normalizer", "NotGenerated",
    "Preprocessor", "check_action_dim", "check_observation_dim", "episode_seeds", "evaluate",
    "last_rows", "load", "lookup", "make_env", "normalize_states", "normalized_score", "returns_to_go",
    "transform_rewards", "worker_count",
]


def load(source: str, name: str, path: str | None = None, download: bool = True):
    """Load a dataset by name as (Dataset with actions in [-1, 1], DatasetInfo)."""
    try:
        info = lookup(source, name)
    except KeyError as error:
        raise DatasetError(error.args[0]) from None
    if source == "d4rl":
        data, info = d4rl.load(info, path, download)
    elif source == "minari":
        data, info = minari_source.load(info, path, download)
    elif source == "local":
        if name == "pendulum-mixed":
            root = generated.ensure_pendulum_mixed(path)
            info = DatasetInfo(**{**info.__dict__, "minari_id": generated.PENDULUM_MIXED_ID})
        else:
            root = generated.behaviour_dataset_root(name, path)
        data, info = minari_source.load(info, str(root))
    else:
        raise DatasetError(f"unknown dataset source '{source}'; use d4rl, minari or local.")
    if info.family == "antmaze":  # D4RL's convention, which Minari's recordings lack
        data = goal_terminals(data)
    bounds = action_bounds(info)
    if bounds is not None:
        check_action_dim(info, data.action_dim, bounds)
        data = rescale_actions(data, *bounds)
    return data, info
