"""envs.snapshot: an environment saved in the middle of an episode (as JSON) and restored into a fresh
one steps exactly as the original, through the episode's end and the next reset; an environment it
cannot save is refused by name."""

import json

import gymnasium as gym
import numpy as np
import pytest

from envs import snapshot
from experiments import online
from experiments.config import ConfigError


def make(env_id: str, **kwargs):
    env = gym.make(env_id, **kwargs)
    ones = np.ones(env.action_space.shape, env.action_space.dtype)
    return gym.wrappers.RescaleAction(env, -ones, ones)  # as envs.make_env wraps every environment


@pytest.mark.parametrize("env_id, limit", [("Pendulum-v1", 30), ("Hopper-v5", 40), ("Ant-v5", 40)])
def test_a_restored_environment_continues_exactly(env_id, limit):
    original = make(env_id, max_episode_steps=limit)
    original.reset(seed=1)
    actions = np.random.default_rng(0).uniform(-1, 1, (100, *original.action_space.shape))
    for action in actions[:17]:
        original.step(action)
    saved = json.loads(json.dumps(snapshot.snapshot(original)))  # as a checkpoint's record keeps it
    restored = make(env_id, max_episode_steps=limit)
    restored.reset(seed=123)  # another episode entirely, then the saved one put back
    snapshot.restore(restored, saved)
    ends = 0
    for action in actions[17:]:
        expected, got = original.step(action), restored.step(action)
        for a, b in zip(expected[:4], got[:4], strict=True):  # observation, reward, terminated, truncated
            np.testing.assert_array_equal(a, b)
        if expected[2] or expected[3]:  # the time limit's counter and the random generator came along
            ends += 1
            np.testing.assert_array_equal(original.reset()[0], restored.reset()[0])
    assert ends >= 1


def test_an_environment_it_cannot_save_is_refused_by_name():
    env = gym.wrappers.RecordEpisodeStatistics(make("Pendulum-v1"))
    env.reset(seed=0)
    with pytest.raises(snapshot.SnapshotError, match="RecordEpisodeStatistics"):
        snapshot.snapshot(env)
    schedule = online.OnlineSchedule(100, checkpoint_every=50)
    with pytest.raises(ConfigError, match="online.checkpoint_every=0"):
        online.check_environments(lambda: gym.wrappers.RecordEpisodeStatistics(make("Pendulum-v1")),
                                  schedule)
    online.check_environments(lambda: gym.wrappers.RecordEpisodeStatistics(make("Pendulum-v1")),
                              online.OnlineSchedule(100, checkpoint_every=0))  # nothing to save
