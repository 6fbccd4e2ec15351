"""Evaluation over worker processes (`eval.workers`, envs/parallel.py): the same episodes, returns
and order as on the main process; a failing environment or worker is one DatasetError and leaves
no process behind; the setting is checked."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import DatasetError
from envs.environment import run_episodes

HOPPER = envs.lookup("d4rl", "hopper-medium-v2")


def linear_policy(seen: list):
    """A tanh-linear policy that records every batch of observations it is given."""
    weights = np.random.default_rng(0).normal(size=(11, 3))

    def policy(observations):
        seen.append(observations.copy())
        return np.tanh(observations @ weights)
    return policy


def worker_processes() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("Worker<AsyncVectorEnv>")]


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_give_the_serial_episodes_in_the_serial_order(workers):
    """3 seeds x 2 episodes of D4RL's hopper (20 steps at most; this policy makes some fall
    earlier): with 2 workers (shares of 3) and 4 (shares of 2, 2, 1, 1) the policy is called with
    the same batches, and every episode's return is the serial one, at its place."""
    info = dataclasses.replace(HOPPER, max_episode_steps=20)
    seeds = envs.episode_seeds([0, 1, 2], 0, 2)
    serial_batches, parallel_batches = [], []
    serial = envs.evaluate(linear_policy(serial_batches), info, seeds, observation_dim=11, workers=1)
    parallel = envs.evaluate(linear_policy(parallel_batches), info, seeds, observation_dim=11,
                             workers=workers)
    np.testing.assert_array_equal(parallel, serial)
    assert len(parallel_batches) == len(serial_batches)
    for ours, theirs in zip(parallel_batches, serial_batches, strict=True):
        assert ours.shape == (3, 2, 11)
        np.testing.assert_array_equal(ours, theirs)
    assert len(set(serial.ravel())) == 6  # six different episodes
    assert worker_processes() == []


def test_episodes_end_at_their_own_length_in_every_worker():
    """Pendulum episodes of 7 steps and a reward of -1 per step: every return is -7 whichever
    worker steps it (an episode's steps after its end are not counted)."""
    factory = functools.partial(gym.make, "Pendulum-v1", max_episode_steps=7)
    returns = run_episodes(lambda obs: np.zeros(obs.shape[:-1] + (1,)),
                           lambda: gym.wrappers.TransformReward(factory(), lambda reward: -1.0),
                           envs.episode_seeds([5, 6], 1, 3), workers=3)
    np.testing.assert_array_equal(returns, np.full((2, 3), -7.0))


def test_an_environment_that_cannot_be_built_is_one_error_line():
    missing = dataclasses.replace(HOPPER, env_id="NoSuchEnv-v0")
    with pytest.raises(DatasetError, match="^cannot create the evaluation env 'NoSuchEnv-v0'.*episodes=0"):
        run_episodes(lambda obs: obs[..., :3], lambda: envs.make_env(missing),
                     envs.episode_seeds([0, 1], 0, 2), workers=2)
    assert worker_processes() == []


def test_an_environment_that_raises_is_one_error_line():
    def broken():  # raises on its first step
        return gym.wrappers.TransformAction(envs.make_env(HOPPER), lambda action: [][0], None)

    with pytest.raises(DatasetError) as error:
        run_episodes(lambda obs: np.zeros(obs.shape[:-1] + (3,)), broken, envs.episode_seeds([0], 0, 4),
                     workers=2)
    message = str(error.value)
    assert "\n" not in message and "worker process (IndexError: list index out of range)" in message
    assert "eval.workers=1" in message
    assert worker_processes() == []


def test_a_worker_that_dies_is_one_error_line_not_a_hang():
    def dying():  # its process exits with code 3 on the first step
        return gym.wrappers.TransformAction(envs.make_env(HOPPER), lambda action: os._exit(3), None)

    with pytest.raises(DatasetError, match=r"^an evaluation worker process died \(exit code 3\)"):
        run_episodes(lambda obs: np.zeros(obs.shape[:-1] + (3,)), dying, envs.episode_seeds([0], 0, 4),
                     workers=2)
    assert worker_processes() == []


def test_worker_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 1.0, 1.0))  # the evaluating process alone
    assert [envs.worker_count("auto", n) for n in (1, 10, 31, 32, 64, 255, 256, 1280)] == [
        1, 1, 1, 2, 4, 15, 16, 16]  # 16 environments a worker at least, one worker per core at most
    monkeypatch.setattr(os, "getloadavg", lambda: (12.2, 11.0, 7.0))  # a busy machine
    assert envs.worker_count("auto", 1280) == 5  # 16 cores less 11 busy besides this process
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 11.0, 7.0))
    assert envs.worker_count("auto", 1280) == 1
    assert envs.worker_count(4, 3) == 3 and envs.worker_count(1, 1000) == 1
    for bad in (0, -2, "two", True, 1.5, None):
        with pytest.raises(DatasetError, match=r"^eval.workers must be 'auto' or an integer >= 1"):
            envs.worker_count(bad, 10)
