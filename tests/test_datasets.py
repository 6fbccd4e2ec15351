"""Data loading: D4RL's transition rule, the D4RL HDF5 and Minari loaders, the generated default
dataset, normalized scores and preprocessing. Every file is made here, in tmp."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import HOPPER_REF

import envs
from envs import generated, minari_source
from envs.dataset import (
    DatasetError,
    episode_returns,
    from_arrays,
    from_episodes,
    qlearning_transitions,
)
from envs.preprocessing import Normalizer, normalize_states, rescale_actions, transform_rewards

# ---------------------------------------------------------------------------------------------
# D4RL's qlearning_dataset rule, on hand-built step arrays
# ---------------------------------------------------------------------------------------------


def numbered_steps(n: int = 10):
    """Row i has observation (i, 10 i), action i / 10 and reward 100 + i, so kept rows are readable."""
    index = np.arange(n, dtype=np.float32)
    observations = np.stack([index, 10 * index], axis=1)
    return observations, (index / 10).reshape(-1, 1), 100 + index


def check_transitions(data, kept, next_rows, terminals, timeouts):
    assert data.observations[:, 0].tolist() == kept
    assert data.observations[:, 1].tolist() == [10 * i for i in kept]
    assert data.next_observations[:, 0].tolist() == next_rows
    assert data.next_observations[:, 1].tolist() == [10 * i for i in next_rows]
    np.testing.assert_allclose(data.actions[:, 0], np.array(kept) / 10, rtol=1e-6)
    assert data.rewards.tolist() == [100 + i for i in kept]
    assert data.terminals.tolist() == terminals
    assert data.timeouts.tolist() == timeouts
    for field in data:
        assert field.dtype == np.float32


def test_timeouts_in_awkward_places():
    # rows:        0  1  2  3  4  5  6  7  8  9
    terminals = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    timeouts = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
    # Row 0 times out (a one-step episode), rows 3 and 4 are consecutive timeouts, row 6 is both
    # terminal and timeout, row 9 (the last) is a timeout. D4RL drops every timeout row and the
    # last row; a kept row whose successor is a timeout row, or that is the last kept row, closes a
    # truncated episode (row 5's episode ended with a terminal on the dropped row 6, so what is
    # left of it is truncated too).
    data = qlearning_transitions(*numbered_steps(), terminals, timeouts)
    check_transitions(
        data,
        kept=[1, 2, 5, 7, 8],
        next_rows=[2, 3, 6, 8, 9],
        terminals=[0, 1, 0, 0, 0],
        timeouts=[0, 0, 1, 0, 1],
    )
    assert data.episode_ends.tolist() == [False, True, True, False, True]


def test_no_timeouts_array_uses_d4rl_step_count():
    # Without 'timeouts', D4RL counts steps: the row where its counter reaches
    # max_episode_steps - 1 = 2 is a timeout. The counter restarts at 0 after a timeout, and at 1
    # after a terminal (D4RL zeroes it, then increments it for the kept terminal row).
    #   row:       0  1  2  3  4  5  6  7  8  9
    #   terminal:  0  1  0  0  0  0  1  0  0  0
    #   counter:   0  1  1  2  0  1  2  0  1  2
    #   timeout:   .  .  .  T  .  .  T  .  .  T    (row 6 is also terminal: dropped all the same)
    terminals = [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    data = qlearning_transitions(*numbered_steps(), terminals, None, max_episode_steps=3)
    check_transitions(
        data,
        kept=[0, 1, 2, 4, 5, 7, 8],
        next_rows=[1, 2, 3, 5, 6, 8, 9],
        terminals=[0, 1, 0, 0, 0, 0, 0],
        timeouts=[0, 0, 1, 0, 1, 0, 1],
    )


@pytest.mark.parametrize(
    ("terminals", "expected_timeouts"),
    [
        # no timeout anywhere: only the data's end cuts the last episode
        ([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1]),
        # ... unless the last kept transition is itself terminal
        ([0, 0, 0, 1, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_all_zero_timeouts(terminals, expected_timeouts):
    data = qlearning_transitions(*numbered_steps(), terminals, np.zeros(10))
    check_transitions(
        data,
        kept=list(range(9)),
        next_rows=list(range(1, 10)),
        terminals=terminals[:9],
        timeouts=expected_timeouts,
    )


def d4rl_reference(observations, actions, rewards, terminals, timeouts, max_episode_steps):
    """D4RL's qlearning_dataset loop (terminate_on_end=False), written out step by step."""
    kept, episode_step = [], 0
    for i in range(len(rewards) - 1):
        if timeouts is not None:
            final_timestep = bool(timeouts[i])
        else:
            final_timestep = episode_step == max_episode_steps - 1
        if final_timestep:
            episode_step = 0
            continue
        if terminals[i]:
            episode_step = 0
        kept.append(i)
        episode_step += 1
    return np.array(kept, dtype=int)


@pytest.mark.parametrize("with_timeouts", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_matches_d4rl_loop_on_random_flags(seed, with_timeouts):
    rng = np.random.default_rng(seed)
    n = 60
    observations, actions, rewards = numbered_steps(n)
    terminals = rng.random(n) < 0.12
    timeouts = (rng.random(n) < 0.15) if with_timeouts else None
    max_steps = int(rng.integers(2, 7))
    kept = d4rl_reference(observations, actions, rewards, terminals, timeouts, max_steps)
    data = qlearning_transitions(observations, actions, rewards, terminals, timeouts,
                                 max_episode_steps=max_steps)
    assert data.observations[:, 0].astype(int).tolist() == kept.tolist()
    assert data.next_observations[:, 0].astype(int).tolist() == (kept + 1).tolist()
    assert data.terminals.tolist() == terminals[kept].astype(float).tolist()
    # every kept transition that is not the last of its episode leads to the next kept one
    continues = ~data.episode_ends[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][continues],
                                  data.observations[1:][continues])
    assert data.episode_ends[-1]


def test_qlearning_transitions_errors():
    observations, actions, rewards = numbered_steps()
    with pytest.raises(DatasetError, match="no 'timeouts' array and no max_episode_steps"):
        qlearning_transitions(observations, actions, rewards, np.zeros(10), None)
    with pytest.raises(DatasetError, match="different lengths"):
        qlearning_transitions(observations[:9], actions, rewards, np.zeros(10), np.zeros(10))
    with pytest.raises(DatasetError, match="no transitions"):  # every row a timeout
        qlearning_transitions(observations, actions, rewards, np.zeros(10), np.ones(10))


def test_from_episodes_keeps_terminations_and_truncations_apart():
    def episode(start, steps, terminated, truncated):
        obs = np.arange(start, start + steps + 1, dtype=np.float32).reshape(-1, 1)
        flags = np.zeros(steps, dtype=bool)
        return {"observations": obs, "actions": np.zeros((steps, 1)), "rewards": np.ones(steps),
                "terminations": np.r_[flags[:-1], terminated],
                "truncations": np.r_[flags[:-1], truncated]}

    data = from_episodes([
        episode(0, 3, True, False),  # terminated
        episode(10, 2, False, True),  # truncated
        episode(20, 2, True, True),  # both flags: a true termination
        episode(30, 2, False, False),  # the recording stopped: treated as truncated
    ])
    assert data.observations[:, 0].tolist() == [0, 1, 2, 10, 11, 20, 21, 30, 31]
    assert data.next_observations[:, 0].tolist() == [1, 2, 3, 11, 12, 21, 22, 31, 32]
    assert data.terminals.tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert data.timeouts.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1]
    with pytest.raises(DatasetError, match="expected one more observation than actions"):
        bad = episode(0, 3, True, False)
        from_episodes([{**bad, "observations": bad["observations"][:-1]}])
    with pytest.raises(DatasetError, match="no episodes"):
        from_episodes([])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rewards", np.nan, "field 'rewards' has 1 NaN/inf values \\(first at row 2\\)"),
        ("actions", np.inf, "field 'actions' has 1 NaN/inf"),
        ("next_observations", -np.inf, "field 'next_observations' has 1 NaN/inf"),
    ],
)
def test_validate_rejects_non_finite(field, value, message):
    arrays = {"observations": np.zeros((4, 2)), "actions": np.zeros((4, 1)), "rewards": np.zeros(4),
              "next_observations": np.zeros((4, 2)), "terminals": np.zeros(4),
              "timeouts": np.zeros(4)}
    from_arrays(**arrays)  # clean arrays pass
    arrays[field] = arrays[field].copy()
    arrays[field].reshape(4, -1)[2, 0] = value  # one value in row 2
    with pytest.raises(DatasetError, match=message):
        from_arrays(**arrays)


def test_validate_rejects_bad_shapes():
    good = {"observations": np.zeros((4, 2)), "actions": np.zeros((4, 1)), "rewards": np.zeros(4),
            "next_observations": np.zeros((4, 2)), "terminals": np.zeros(4), "timeouts": np.zeros(4)}
    with pytest.raises(DatasetError, match="must be 2-D"):
        from_arrays(**{**good, "observations": np.zeros(4)})
    with pytest.raises(DatasetError, match="different lengths"):
        from_arrays(**{**good, "actions": np.zeros((3, 1))})
    with pytest.raises(DatasetError, match="observations have 2 columns but next_observations 3"):
        from_arrays(**{**good, "next_observations": np.zeros((4, 3))})
    with pytest.raises(DatasetError, match="no transitions"):
        from_arrays(**{key: value[:0] for key, value in good.items()})


# ---------------------------------------------------------------------------------------------
# D4RL HDF5 files
# ---------------------------------------------------------------------------------------------

# The awkward flags of test_timeouts_in_awkward_places, on hopper-shaped random data.
D4RL_TERMINALS = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
D4RL_TIMEOUTS = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
D4RL_KEPT = [1, 2, 5, 7, 8]


def d4rl_file_arrays(d4rl_steps):
    steps = d4rl_steps()
    steps["terminals"], steps["timeouts"] = D4RL_TERMINALS, D4RL_TIMEOUTS
    extras = {  # keys D4RL files also carry; the loader must ignore them
        "infos/qpos": np.ones((10, 6)), "infos/qvel": np.ones((10, 6)),
        "infos/action_log_probs": np.zeros(10), "metadata/algorithm": np.bytes_("SAC"),
    }
    return steps, {**steps, **extras}


def check_d4rl_data(data, steps):
    kept = np.array(D4RL_KEPT)
    np.testing.assert_array_equal(data.observations, steps["observations"][kept])
    np.testing.assert_array_equal(data.next_observations, steps["observations"][kept + 1])
    np.testing.assert_array_equal(data.actions, steps["actions"][kept])  # Hopper acts in [-1, 1]
    np.testing.assert_array_equal(data.rewards, steps["rewards"][kept])
    assert data.terminals.tolist() == [0, 1, 0, 0, 0]
    assert data.timeouts.tolist() == [0, 0, 1, 0, 1]


def test_d4rl_file_by_path(tmp_path, data_dirs, d4rl_steps, write_hdf5):
    steps, contents = d4rl_file_arrays(d4rl_steps)
    file = write_hdf5(tmp_path / "anything.hdf5", contents)
    data, info = envs.load("d4rl", "hopper-medium-v2", path=str(file))
    check_d4rl_data(data, steps)
    assert (info.env_id, info.ref_min_score, info.ref_max_score) == ("Hopper-v4", *HOPPER_REF)
    assert list(data_dirs.d4rl.iterdir()) == []  # an explicit path never touches the cache


def test_d4rl_cache_lookup(data_dirs, d4rl_steps, write_hdf5, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    info = envs.lookup("d4rl", "hopper-medium-v2")
    assert info.url.endswith("/gym_mujoco_v2/hopper_medium-v2.hdf5")
    steps, contents = d4rl_file_arrays(d4rl_steps)
    write_hdf5(data_dirs.d4rl / "hopper_medium-v2.hdf5", contents)
    for download in (False, True):
        data, _ = envs.load("d4rl", "hopper-medium-v2", download=download)
        check_d4rl_data(data, steps)


def test_d4rl_file_without_timeouts_counts_steps(tmp_path, d4rl_steps, write_hdf5):
    steps = d4rl_steps()
    del steps["timeouts"]
    steps["terminals"][4] = True
    file = write_hdf5(tmp_path / "old.hdf5", steps)
    data, info = envs.load("d4rl", "hopper-medium-v2", path=str(file))
    assert info.max_episode_steps == 1000  # never reached in 10 rows: only the last row goes
    np.testing.assert_array_equal(data.observations, steps["observations"][:9])
    assert data.terminals.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert data.timeouts.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_d4rl_not_cached_and_downloads_off(data_dirs):
    with pytest.raises(DatasetError, match="not cached and downloads are off") as error:
        envs.load("d4rl", "hopper-medium-v2", download=False)
    assert str(data_dirs.d4rl / "hopper_medium-v2.hdf5") in str(error.value)
    assert "dataset.path" in str(error.value)


def test_d4rl_missing_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "hopper.hdf5"
    with pytest.raises(DatasetError, match="does not exist") as error:
        envs.load("d4rl", "hopper-medium-v2", path=str(missing))
    assert str(missing) in str(error.value) and "dataset.path" in str(error.value)


class FakeResponse:
    """What urlopen returns: a context manager with headers and read(n)."""

    def __init__(self, body: bytes, length: int):
        self._body = io.BytesIO(body)
        self.headers = {"Content-Length": str(length)}

    def read(self, size=-1):
        return self._body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_without_network_fails_fast(data_dirs, monkeypatch):
    calls = []

    def unreachable(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    info = envs.lookup("d4rl", "hopper-medium-v2")
    with pytest.raises(DatasetError) as error:
        envs.load("d4rl", "hopper-medium-v2")
    message = str(error.value)
    assert "could not download" in message and info.url in message
    assert "dataset.path=FILE" in message and "Network is unreachable" in message
    assert len(calls) == 1  # no retry loop
    assert calls[0][1] is not None and calls[0][1] <= 60  # a bounded wait, never forever
    assert list(data_dirs.d4rl.iterdir()) == []  # neither the file nor a .part is left


def test_download_cut_short_leaves_no_file(data_dirs, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse(b"\x89HDF" * 10, length=100))
    with pytest.raises(DatasetError, match="40 of 100 bytes"):
        envs.load("d4rl", "hopper-medium-v2")
    assert list(data_dirs.d4rl.iterdir()) == []


def test_download_lands_in_cache(tmp_path, data_dirs, d4rl_steps, write_hdf5, monkeypatch):
    steps, contents = d4rl_file_arrays(d4rl_steps)
    body = write_hdf5(tmp_path / "served.hdf5", contents).read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse(body, length=len(body)))
    data, _ = envs.load("d4rl", "hopper-medium-v2")
    check_d4rl_data(data, steps)
    assert [p.name for p in data_dirs.d4rl.iterdir()] == ["hopper_medium-v2.hdf5"]
    assert (data_dirs.d4rl / "hopper_medium-v2.hdf5").read_bytes() == body


def test_unwritable_d4rl_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("D4RL_DATASET_DIR", str(blocker / "cache"))
    with pytest.raises(DatasetError, match="D4RL_DATASET_DIR"):
        envs.load("d4rl", "hopper-medium-v2")


# ---------------------------------------------------------------------------------------------
# Minari datasets, recorded with Minari's DataCollector (tests/conftest.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.xdist_group("minari_hopper")
def test_minari_loader(minari_hopper, monkeypatch):
    episodes = minari_hopper.episodes
    ends = [(bool(e["terminations"][-1]), bool(e["truncations"][-1])) for e in episodes]
    # the recording is meaningful: terminations and truncations both occur, and the last episode
    # was still running when the recording stopped
    assert (True, False) in ends and (False, True) in ends and ends[-1] == (False, False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", "/elsewhere")

    data, info = envs.load("minari", minari_hopper.dataset_id, path=str(minari_hopper.root))

    assert os.environ["MINARI_DATASETS_PATH"] == "/elsewhere"  # dataset.path is for this load only
    lengths = [len(e["actions"]) for e in episodes]
    assert data.size == sum(lengths)
    offsets = np.cumsum([0, *lengths])
    for e, start, stop in zip(episodes, offsets[:-1], offsets[1:], strict=True):
        obs = e["observations"].astype(np.float32)
        np.testing.assert_array_equal(data.observations[start:stop], obs[:-1])
        np.testing.assert_array_equal(data.next_observations[start:stop], obs[1:])
        np.testing.assert_array_equal(data.actions[start:stop], e["actions"])
        np.testing.assert_allclose(data.rewards[start:stop], e["rewards"], rtol=1e-6)
        terminated, truncated = e["terminations"], e["truncations"]
        if stop == data.size:  # Minari records the unfinished episode as truncated
            truncated = np.r_[truncated[:-1], True]
        assert data.terminals[start:stop].tolist() == terminated.astype(float).tolist()
        assert data.timeouts[start:stop].tolist() == (truncated & ~terminated).astype(float).tolist()
        # inside an episode, each next observation is the following observation...
        np.testing.assert_array_equal(data.next_observations[start:stop - 1],
                                      data.observations[start + 1:stop])
        # ... and at its end, the next episode starts from a reset, not from where this one ended
        if stop < data.size:
            assert not np.allclose(data.next_observations[stop - 1], data.observations[stop])
    assert np.flatnonzero(data.episode_ends).tolist() == (offsets[1:] - 1).tolist()
    # the environment and reference scores come from the dataset's own metadata
    assert (info.env_id, info.max_episode_steps) == ("Hopper-v5", 1000)
    assert (info.ref_min_score, info.ref_max_score) == HOPPER_REF
    assert envs.normalized_score([HOPPER_REF[1]], info).tolist() == [100.0]
    envs.check_observation_dim(info, data.observation_dim)


@pytest.mark.xdist_group("minari_hopper")
def test_minari_loader_by_environment_variable(minari_hopper, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_hopper.root))
    data, _ = envs.load("minari", minari_hopper.dataset_id)
    assert data.size == sum(len(e["actions"]) for e in minari_hopper.episodes)


def test_minari_missing_dataset(data_dirs, tmp_path):
    with pytest.raises(DatasetError, match="minari download nobody/nothing-v0"):
        envs.load("minari", "nobody/nothing-v0", download=False)
    with pytest.raises(DatasetError, match="does not exist; fix dataset.path"):
        envs.load("minari", "nobody/nothing-v0", path=str(tmp_path / "absent"), download=False)


@pytest.mark.xdist_group("minari_hopper")
def test_minari_damaged_dataset(minari_hopper, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(minari_hopper.root, root)
    data_file = root / minari_hopper.dataset_id / "data" / "main_data.hdf5"
    data_file.write_bytes(os.urandom(2048))
    with pytest.raises(DatasetError, match="could not be read"):
        envs.load("minari", minari_hopper.dataset_id, path=str(root), download=False)


def test_flatten_dict_observation():
    observation = {"b": np.array([[3.0], [4.0]]), "a": np.array([[1.0, 2.0], [5.0, 6.0]])}
    flat = minari_source.flatten_observation(observation, ("b", "a"))
    assert flat.tolist() == [[3.0, 1.0, 2.0], [4.0, 5.0, 6.0]]
    assert minari_source.flatten_observation(observation, ()).tolist() == [[1, 2, 3], [5, 6, 4]]


# ---------------------------------------------------------------------------------------------
# The generated default dataset, local/pendulum-mixed
# ---------------------------------------------------------------------------------------------

PENDULUM_INFO = dataclasses.replace(envs.lookup("local", "pendulum-mixed"),
                                    minari_id=generated.PENDULUM_MIXED_ID)
SMALL = 8  # episodes; 200 steps each


def load_generated(root):
    return minari_source.load(PENDULUM_INFO, str(root), download=False)


def test_generation_is_deterministic(tmp_path, monkeypatch):
    loaded = []
    for folder in ("first", "second"):
        monkeypatch.setenv("OFFRL_DATA_DIR", str(tmp_path / folder))
        root = generated.ensure_pendulum_mixed(episodes=SMALL)
        assert root == tmp_path / folder
        loaded.append(load_generated(root))
    (first, first_info), (second, second_info) = loaded
    assert first.size == SMALL * 200
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (first_info.ref_min_score, first_info.ref_max_score) == (
        second_info.ref_min_score, second_info.ref_max_score)
    assert first_info.ref_min_score < first_info.ref_max_score
    # Pendulum never terminates: every episode is cut by its 200-step limit
    assert first.terminals.sum() == 0
    assert np.flatnonzero(first.timeouts).tolist() == [200 * k + 199 for k in range(SMALL)]
    # the scripted quarter of the episodes returns far more than the random rest
    returns = np.sort(episode_returns(first))
    assert returns[-2:].min() > returns[:-2].max()


def test_load_local_rescales_actions(tmp_path):
    root = generated.ensure_pendulum_mixed(tmp_path, episodes=SMALL)
    raw, _ = load_generated(root)
    data, info = envs.load("local", "pendulum-mixed", path=str(root))
    assert info.env_id == "Pendulum-v1" and info.ref_max_score is not None
    np.testing.assert_allclose(data.actions, raw.actions / 2.0)  # torque in [-2, 2] -> [-1, 1]
    assert np.abs(data.actions).max() <= 1.0 and np.abs(raw.actions).max() > 1.0
    np.testing.assert_array_equal(data.observations, raw.observations)


def test_interrupted_generation_leaves_nothing_loadable(tmp_path, monkeypatch):
    import minari

    real = minari.create_dataset_from_buffers

    def interrupted(dataset_id, buffers, **kwargs):  # writes part of the dataset, then dies
        real(dataset_id, buffers[:2], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generated.ensure_pendulum_mixed(tmp_path, episodes=SMALL)
    assert not (tmp_path / generated.PENDULUM_MIXED_ID).exists()
    assert not list(tmp_path.glob(".staging-*"))  # cleaned up on the way out
    with pytest.raises(DatasetError, match="not in the local Minari folder"):
        load_generated(tmp_path)
    monkeypatch.setattr(minari, "create_dataset_from_buffers", real)
    data, _ = load_generated(generated.ensure_pendulum_mixed(tmp_path, episodes=SMALL))
    assert data.size == SMALL * 200


def test_leftovers_of_a_killed_run_are_not_taken_as_complete(tmp_path):
    # A process killed hard leaves its staging folder behind (half written); a copy interrupted by
    # hand can leave the target itself without its metadata.
    stale = tmp_path / ".staging-killed" / generated.PENDULUM_MIXED_ID / "data"
    stale.mkdir(parents=True)
    (stale / "main_data.hdf5").write_bytes(b"half written")
    (stale / "metadata.json").write_text('{"total_episodes": 1}')
    broken = tmp_path / generated.PENDULUM_MIXED_ID / "data"
    broken.mkdir(parents=True)
    (broken / "main_data.hdf5").write_bytes(b"half copied")
    root = generated.ensure_pendulum_mixed(tmp_path, episodes=SMALL)
    data, info = load_generated(root)
    assert data.size == SMALL * 200 and info.ref_max_score is not None


def test_unwritable_data_dir_names_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root can write anywhere, but not below a file
    monkeypatch.setenv("OFFRL_DATA_DIR", str(blocker / "datasets"))
    with pytest.raises(DatasetError, match="OFFRL_DATA_DIR") as error:
        envs.load("local", "pendulum-mixed")
    assert str(blocker / "datasets") in str(error.value)


# ---------------------------------------------------------------------------------------------
# Normalized scores and preprocessing
# ---------------------------------------------------------------------------------------------


def test_normalized_score_hopper():
    info = envs.lookup("d4rl", "hopper-medium-v2")
    # D4RL hopper: random -20.272305, expert 3234.3, so the span is 3254.572305
    scores = envs.normalized_score([-20.272305, 3234.3, 1607.0138475, 1000.0, -345.729514], info)
    np.testing.assert_allclose(
        scores, [0.0, 100.0, 50.0, 100 * 1020.272305 / 3254.572305, -10.0], atol=1e-9)
    assert envs.normalized_score(np.zeros((2, 3)), info).shape == (2, 3)
    assert envs.normalized_score([1.0], envs.lookup("minari", "some/unscored-v0")) is None


def small_dataset(rewards, terminals, timeouts):
    n = len(rewards)
    obs = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    return from_arrays(obs, np.zeros((n, 1)), rewards, obs + 1, terminals, timeouts)


def test_transform_rewards_with_returns_span():
    # episodes: [1, 2, 3] terminated (return 6), [1, 1] truncated (2), [10] cut by the data's end
    data = small_dataset(rewards=[1, 2, 3, 1, 1, 10], terminals=[0, 0, 1, 0, 0, 0],
                         timeouts=[0, 0, 0, 0, 1, 0])
    assert episode_returns(data).tolist() == [6, 2, 10]
    # spread of returns 10 - 2 = 8, so r' = 1000 r / 8 = 125 r; then 1 * r' - 1
    out = transform_rewards(data, returns_span=1000.0, scale=1.0, shift=-1.0)
    assert out.rewards.tolist() == [124, 249, 374, 124, 124, 1249]
    assert out.rewards.dtype == np.float32
    # without returns_span only scale and shift act: 2 r - 1
    out = transform_rewards(data, returns_span=None, scale=2.0, shift=-1.0)
    assert out.rewards.tolist() == [1, 3, 5, 1, 1, 19]
    # equal returns leave nothing to divide by: rewards unchanged
    flat = small_dataset(rewards=[1, 1, 2], terminals=[0, 1, 0], timeouts=[0, 0, 1])
    assert transform_rewards(flat, 1000.0, 1.0, 0.0).rewards.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(out.observations, data.observations)  # nothing else changes


def test_normalizer():
    obs = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]], dtype=np.float32)
    data = from_arrays(obs, np.zeros((3, 1)), np.zeros(3), obs * 2, np.zeros(3), np.zeros(3))
    normalizer = Normalizer.from_dataset(data)
    # mean (2, 10); population std (sqrt(8/3), 0) plus TD3+BC's eps 1e-3
    np.testing.assert_allclose(normalizer.mean, [2.0, 10.0])
    np.testing.assert_allclose(normalizer.std, [np.sqrt(8 / 3) + 1e-3, 1e-3], rtol=1e-6)
    out = normalize_states(data, normalizer)
    np.testing.assert_allclose(out.observations[:, 0], np.array([-2, 0, 2]) / (np.sqrt(8 / 3) + 1e-3),
                               rtol=1e-5)
    np.testing.assert_allclose(out.observations[:, 1], 0.0)
    np.testing.assert_allclose(out.next_observations, (obs * 2 - normalizer.mean) / normalizer.std,
                               rtol=1e-5)
    assert out.observations.dtype == np.float32 and out.next_observations.dtype == np.float32
    identity = Normalizer.identity(2)
    np.testing.assert_array_equal(identity(obs), obs)


def test_rescale_actions():
    actions = np.array([[-2.0, 0.0], [2.0, 1.0], [1.0, 0.5], [2.5, -0.1]])
    data = from_arrays(np.zeros((4, 1)), actions, np.zeros(4), np.zeros((4, 1)), np.zeros(4),
                       np.zeros(4))
    out = rescale_actions(data, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    # [low, high] -> [-1, 1]; out-of-range values are clipped
    assert out.actions.tolist() == [[-1.0, -1.0], [1.0, 1.0], [0.5, 0.0], [1.0, -1.0]]
    assert out.actions.dtype == np.float32
    unchanged = rescale_actions(data, -np.ones(2), np.ones(2))
    assert unchanged is data


# ---------------------------------------------------------------------------------------------
# Next states at terminal rows, AntMaze's goal terminals, the last rows of a dataset
# ---------------------------------------------------------------------------------------------


def test_d4rl_terminal_rows_take_the_files_next_observations(tmp_path, d4rl_steps, write_hdf5):
    """A hopper file whose episode falls at row 3 (terminal) and restarts at row 4: with the file's
    next_observations the terminal row's s' is the fallen state, not the next episode's start;
    every other row keeps s_{i+1}. Without the array, the loader says the terminal rows' next
    states are unknown."""
    steps = d4rl_steps()
    steps["terminals"][3] = True
    fallen = np.full(11, 7.0, np.float32)
    next_observations = np.concatenate([steps["observations"][1:], steps["observations"][:1]])
    next_observations[3] = fallen
    file = write_hdf5(tmp_path / "with.hdf5", {**steps, "next_observations": next_observations})
    data, info = envs.load("d4rl", "hopper-medium-v2", path=str(file))
    np.testing.assert_array_equal(data.next_observations[3], fallen)
    others = [i for i in range(9) if i != 3]
    np.testing.assert_array_equal(data.next_observations[others], steps["observations"][1:][others])
    assert info.next_at_terminals

    file = write_hdf5(tmp_path / "without.hdf5", steps)
    data, info = envs.load("d4rl", "hopper-medium-v2", path=str(file))
    np.testing.assert_array_equal(data.next_observations[3], steps["observations"][4])  # D4RL's rule
    assert not info.next_at_terminals


def minari_antmaze(root, rewards_per_episode):
    """A Minari dataset under AntMaze's id, written as Minari's AntMaze recordings are: dict
    observations, 8 actions, no terminations (a continuing task), the reward 1 repeating while the
    ant stays at the goal, each episode truncated at its end."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    sizes = {"achieved_goal": 2, "desired_goal": 2, "observation": 27}
    space = gym.spaces.Dict({key: gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
                             for key, size in sizes.items()})
    rng = np.random.default_rng(0)
    buffers = []
    for index, rewards in enumerate(rewards_per_episode):
        steps = len(rewards)
        buffers.append(EpisodeBuffer(
            id=index, observations={key: rng.normal(size=(steps + 1, size)) for key, size in sizes.items()},
            actions=rng.uniform(-1, 1, (steps, 8)).astype(np.float32), rewards=np.asarray(rewards, float),
            terminations=np.zeros(steps, bool), truncations=np.arange(steps) == steps - 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        minari.create_dataset_from_buffers(
            "D4RL/antmaze/umaze-v1", buffers, observation_space=space,
            action_space=gym.spaces.Box(-1, 1, (8,), np.float32), algorithm_name="tests", author="tests",
            author_email="none", code_permalink="tests/test_datasets.py", description="AntMaze-shaped")


def test_antmaze_goal_rows_are_terminal_as_in_d4rl(tmp_path):
    """Minari's AntMaze data has no terminations; loaded, every reward-1 row is terminal (D4RL's
    convention) and no longer a timeout, the other rows unchanged."""
    minari_antmaze(tmp_path, [[0, 0, 1, 1], [0, 0, 0]])
    data, info = envs.load("minari", "D4RL/antmaze/umaze-v1", path=str(tmp_path), download=False)
    assert info.family == "antmaze"
    assert data.rewards.tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert data.terminals.tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert data.timeouts.tolist() == [0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_array_equal(envs.returns_to_go(data, 0.5), [0.25, 0.5, 1, 1, 0, 0, 0])


def test_last_rows_keeps_the_end_of_the_file():
    data = from_arrays(*(np.arange(5.0).reshape(5, 1),) * 2, np.arange(5.0), np.arange(5.0).reshape(5, 1),
                       np.zeros(5), np.zeros(5))
    assert envs.last_rows(data, 2).rewards.tolist() == [3, 4]
    assert envs.last_rows(data, 9).size == 5
    with pytest.raises(DatasetError, match="last_rows must be >= 1"):
        envs.last_rows(data, 0)
