"""SAC, the replay buffer, and the D4RL-protocol datasets generated from behaviour policies."""

from __future__ import annotations

import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from algorithms.core.algorithm import OnlineConfig
from algorithms.core.replay import ReplayBuffer, Transitions
from algorithms.sac import SAC, temperature_loss
from envs import behaviour_files, generated
from envs.dataset import Dataset, DatasetError
from envs.environment import episode_seeds, run_episodes
from envs.preprocessing import Preprocessor
from experiments import behaviour, generate, policies, splits
from experiments.assembly import Assembly
from experiments.data import ensure_generated, load
from experiments.online import OnlineRun, OnlineSchedule, train_online

PENDULUM = behaviour_files.BEHAVIOUR_DIR / "pendulum"


def rows(start: int, count: int) -> Transitions:
    values = np.arange(start, start + count, dtype=np.float32)
    return Transitions.from_dataset(
        Dataset(values[:, None], values[:, None], values, values[:, None], values * 0, values * 0))


# ---------------------------------------------------------------------------------------------
# Replay buffer and SAC
# ---------------------------------------------------------------------------------------------


def test_replay_buffer_wraps_around_and_keeps_the_newest():
    buffer = ReplayBuffer.create(5, 1, 1)
    buffer = buffer.add(rows(0, 3))
    assert int(buffer.size) == 3 and np.asarray(buffer.ordered().rewards).tolist() == [0, 1, 2]
    buffer = buffer.add(rows(3, 4))  # 7 rows into 5 slots: 0 and 1 are overwritten
    assert int(buffer.size) == 5 and int(buffer.position) == 2
    assert np.asarray(buffer.ordered().rewards).tolist() == [2, 3, 4, 5, 6]
    sampled = buffer.sample(jax.random.key(0), 1000)
    assert set(np.asarray(sampled.rewards).tolist()) == {2, 3, 4, 5, 6}
    np.testing.assert_array_equal(sampled.observations[:, 0], sampled.rewards)  # rows stay whole


def test_replay_buffer_samples_only_what_it_holds():
    buffer = ReplayBuffer.create(100, 1, 1).add(rows(10, 2))
    assert set(np.asarray(buffer.sample(jax.random.key(1), 200).rewards).tolist()) == {10, 11}


def test_sac_temperature_moves_towards_the_target_entropy():
    target = 1.0
    # entropy -log pi = 0.5, below the target: gradient descent raises log alpha
    low_entropy = jnp.full((8,), -0.5)
    assert jax.grad(temperature_loss)(jnp.asarray(0.0), low_entropy, target) < 0
    # entropy 2.0, above the target: it lowers log alpha
    assert jax.grad(temperature_loss)(jnp.asarray(0.0), jnp.full((8,), -2.0), target) > 0
    np.testing.assert_allclose(temperature_loss(jnp.asarray(2.0), low_entropy, target), -2.0 * 0.5)


def pendulum_env():
    env = gym.make("Pendulum-v1")
    return gym.wrappers.RescaleAction(env, -np.ones(1, np.float32), np.ones(1, np.float32))


def train_sac_online(steps: int, start_steps: int, seeds: list[int], evaluate=None, **sac):
    """SAC from scratch through the engine's online phase: 50 environment steps, then 50 updates, a
    buffer that keeps every step (with a 1 000-row ring, 8 000 steps leave Pendulum at about -890)."""
    algo = SAC(**sac, online=OnlineConfig(block=50))
    asm = Assembly.from_environment(algo, pendulum_env, seeds, steps, capacity=steps)
    run = OnlineRun(**asm.fresh("online"))
    schedule = OnlineSchedule(steps, eval_every=0, log_every=0, start_steps=start_steps)
    runner = asm.runner("online")  # no dataset: batches from the buffer
    return algo, train_online(algo, asm.contexts["online"], Preprocessor.identity(3), pendulum_env,
                              schedule, seeds, run, runner, evaluate=evaluate)


def test_online_training_is_deterministic_and_fills_the_buffer():
    evaluated = []
    _, first = train_sac_online(300, 100, [0, 1], evaluated.append, hidden_dims=(16, 16), batch_size=32)
    _, second = train_sac_online(300, 100, [0, 1], hidden_dims=(16, 16), batch_size=32)
    assert first.env_step == 300 and np.asarray(first.buffers.size).tolist() == [300, 300]
    assert int(first.states.step) == 250  # 50 updates per 50 steps once 100 warm-up steps are in
    for a, b in zip(jax.tree.leaves(first.states), jax.tree.leaves(second.states), strict=True):
        np.testing.assert_array_equal(a, b)
    held = first.buffers.transitions
    assert held.timeouts[0].sum() == 1 and held.timeouts[0][199] == 1  # the 200-step time limit
    assert held.terminals.sum() == 0  # Pendulum never terminates
    # the next observation of one step is the observation of the next, within an episode
    np.testing.assert_array_equal(held.next_observations[0][:199], held.observations[0][1:200])
    assert len(evaluated) == 1  # at the end (eval_every=0)


@pytest.mark.slow
def test_sac_learns_pendulum():
    algo, run = train_sac_online(8_000, 1_000, [0], hidden_dims=(64, 64))
    policy = policies.make_policy(algo, Preprocessor.identity(3))(run.states)
    returns = run_episodes(policy, pendulum_env, episode_seeds([0], 123, 5))
    assert returns.mean() > -400, returns  # random actions: about -1200; swung up and held: > -200


# ---------------------------------------------------------------------------------------------
# Shipped behaviour policies and generated splits
# ---------------------------------------------------------------------------------------------


def test_shipped_pendulum_policy_follows_the_protocol():
    manifest = json.loads((PENDULUM / "policy.json").read_text())
    snapshots = {s["step"]: s for s in manifest["snapshots"]}
    roles = manifest["roles"]
    assert roles["random"] == 0 and roles["expert"] == max(snapshots)
    random, medium, expert = (snapshots[roles[r]]["return_mean"] for r in ("random", "medium", "expert"))
    assert random < medium < expert
    # medium is the snapshot nearest a third of the way from random to expert, among those trained
    target = random + (expert - random) / 3
    nearest = min(manifest["returns_during_training"][1:-1], key=lambda s: abs(s[1] - target))
    assert nearest[0] == roles["medium"]
    assert manifest["reference"]["min"] < manifest["reference"]["max"]
    for snapshot in manifest["snapshots"]:
        assert (PENDULUM / snapshot["file"]).is_file()


@pytest.fixture(scope="module")
def pendulum_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    report = splits.generate("pendulum", generated.SPLITS, size=1_000, root=root, progress=False)
    return root, report


def load_split(root, split):
    import minari

    return minari.load_dataset(generated.behaviour_dataset_id("pendulum", split), download=False)


@pytest.mark.xdist_group("pendulum_splits")
def test_splits_round_trip_through_minari(pendulum_splits, monkeypatch):
    root, report = pendulum_splits
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    for split in ("random", "medium", "expert"):
        dataset = load_split(root, split)
        assert dataset.total_steps == 1_000 == report[split]["transitions"]
        episodes = list(dataset.iterate_episodes())
        assert [len(e.rewards) for e in episodes] == [200] * 5
        assert all(e.truncations[-1] and not e.terminations.any() for e in episodes)
        assert dataset.spec.env_spec.id == "Pendulum-v1"
        assert np.abs(np.concatenate([e.actions for e in episodes])).max() <= 2.0
        metadata = dataset.storage.metadata
        assert "generation seed 0" in metadata["description"]
        assert metadata["ref_min_score"] < metadata["ref_max_score"]


@pytest.mark.xdist_group("pendulum_splits")
def test_protocol_invariants(pendulum_splits, monkeypatch):
    root, report = pendulum_splits
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert (report["random"]["return_mean"] < report["medium"]["return_mean"]
            < report["expert"]["return_mean"])
    expert_return = report["expert"]["return_mean"]
    manifest = json.loads((PENDULUM / "policy.json").read_text())
    # medium-replay: everything training collected up to the medium snapshot
    assert report["medium-replay"]["transitions"] == manifest["roles"]["medium"]
    assert report["medium"]["return_mean"] < expert_return
    # medium-expert is exactly medium followed by expert
    union = list(load_split(root, "medium-expert").iterate_episodes())
    parts = [*load_split(root, "medium").iterate_episodes(), *load_split(root, "expert").iterate_episodes()]
    assert len(union) == len(parts)
    for a, b in zip(union, parts, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)


@pytest.mark.xdist_group("pendulum_splits")
def test_medium_replay_is_what_training_collected(pendulum_splits, monkeypatch):
    root, _ = pendulum_splits
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    stored = splits.Behaviour(PENDULUM).replay()
    episodes = list(load_split(root, "medium-replay").iterate_episodes())
    np.testing.assert_allclose(np.concatenate([e.actions for e in episodes]), stored["actions"])
    np.testing.assert_allclose(np.concatenate([e.observations[:-1] for e in episodes]),
                               stored["observations"], rtol=1e-6)
    # The warm-up steps act uniformly over the whole torque range, in the environment's units.
    warm_up = stored["actions"][: json.loads((PENDULUM / "policy.json").read_text())["start_steps"]]
    assert warm_up.min() < -1.8 and warm_up.max() > 1.8
    assert all(len(e.rewards) == 200 and e.truncations[-1] for e in episodes)


def stream(observations: list[float], ends: dict[int, str]) -> dict:
    """Transitions along a 1-d observation stream; `ends` marks 'terminal' or 'timeout' rows."""
    obs = np.asarray(observations, np.float32)[:, None]
    n = len(observations) - 1
    flags = {kind: np.asarray([ends.get(i) == kind for i in range(n)], np.float32)
             for kind in ("terminal", "timeout")}
    return {"observations": obs[:-1].copy(), "actions": np.zeros((n, 1), np.float32),
            "rewards": np.arange(n, dtype=np.float32), "next_observations": obs[1:].copy(),
            "terminals": flags["terminal"], "timeouts": flags["timeout"]}


def test_packed_transitions_store_each_observation_once():
    transitions = stream([0, 1, 2, 3, 4, 5, 6], {1: "terminal"})
    transitions["next_observations"][1] = 7.0  # the terminal state, not the next reset
    packed = behaviour_files.pack_transitions(transitions)
    assert "next_observations" not in packed and packed["cuts"].tolist() == [1, 5]
    for name, column in behaviour_files.unpack_transitions(packed).items():
        np.testing.assert_array_equal(column, transitions[name])


def test_replay_episodes_cut_at_ends_and_at_resumed_training():
    transitions = stream([0, 1, 2, 3, 4, 5, 6], {1: "terminal"})
    # Row 4 resumed training: it starts from 9, not from row 3's next observation 4.
    transitions["observations"][4] = 9.0
    episodes = behaviour_files.replay_episodes(transitions)
    assert [e.rewards.tolist() for e in episodes] == [[0, 1], [2, 3], [4, 5]]
    assert [bool(e.terminations[-1]) for e in episodes] == [True, False, False]
    assert [bool(e.truncations[-1]) for e in episodes] == [False, True, True]  # cut; stream end
    assert episodes[1].observations[:, 0].tolist() == [2, 3, 4]
    assert episodes[2].observations[:, 0].tolist() == [9, 5, 6]


def test_collection_log_resumes_and_keeps_the_prefix(tmp_path):
    log = behaviour.CollectionLog(tmp_path / "collected")
    whole = rows(0, 30)
    log.write(10, [Dataset(*(c[:5] for c in whole[:6])), Dataset(*(c[5:10] for c in whole[:6]))])
    log.write(20, [Dataset(*(c[10:20] for c in whole[:6]))])
    log.write(30, [Dataset(*(c[20:30] for c in whole[:6]))])
    log.resume(20, buffers=None)  # the checkpoint at 20: the part after it is collected again
    assert [p.stem for p in log.parts()] == ["000000010", "000000020"]
    space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    log.save_prefix(15, tmp_path / "prefix.npz", space)
    prefix = behaviour_files.unpack_transitions(dict(np.load(tmp_path / "prefix.npz")))
    assert prefix["rewards"].tolist() == list(range(15))
    np.testing.assert_array_equal(prefix["next_observations"], whole.next_observations[:15])
    np.testing.assert_allclose(prefix["actions"][:, 0], 2.0 * np.arange(15))  # [-1, 1] -> [-2, 2]
    with pytest.raises(DatasetError, match="fewer than 25"):
        log.save_prefix(25, tmp_path / "prefix.npz", space)


def test_collection_log_recovers_history_from_an_unwrapped_buffer(tmp_path):
    buffers = jax.vmap(lambda _: ReplayBuffer.create(8, 1, 1))(jnp.arange(1))
    buffers = jax.vmap(ReplayBuffer.add)(buffers, jax.tree.map(lambda x: x[None], rows(0, 6)))
    log = behaviour.CollectionLog(tmp_path / "collected")
    log.resume(6, buffers)
    log.save_prefix(6, tmp_path / "prefix.npz", gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
    assert dict(np.load(tmp_path / "prefix.npz"))["rewards"].tolist() == list(range(6))
    wrapped = jax.vmap(ReplayBuffer.add)(buffers, jax.tree.map(lambda x: x[None], rows(6, 4)))
    with pytest.raises(DatasetError, match="wrapped around"):
        behaviour.CollectionLog(tmp_path / "other").resume(10, wrapped)


@pytest.mark.xdist_group("pendulum_splits")
def test_same_seed_same_arrays(pendulum_splits, tmp_path, monkeypatch):
    root, _ = pendulum_splits
    splits.generate("pendulum", ["medium"], size=1_000, root=tmp_path, progress=False)
    first, _ = envs.minari_source.load(envs.lookup("local", "pendulum-medium"), str(root))
    second, _ = envs.minari_source.load(envs.lookup("local", "pendulum-medium"), str(tmp_path))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    splits.generate("pendulum", ["medium"], size=1_000, seed=1, root=tmp_path, force=True,
                      progress=False)
    other, _ = envs.minari_source.load(envs.lookup("local", "pendulum-medium"), str(tmp_path))
    assert not np.array_equal(first.actions, other.actions)


def test_generated_on_first_use_by_the_command_line_layer(data_dirs):
    with pytest.raises(envs.NotGenerated, match="experiments.generate env=pendulum"):
        envs.load("local", "pendulum-expert")  # envs cannot run a behaviour policy itself
    data, info = load("local", "pendulum-expert")
    assert data.size == generated.BEHAVIOUR_ENVS["pendulum"].default_size
    assert info.env_id == "Pendulum-v1" and info.ref_max_score is not None
    assert np.abs(data.actions).max() <= 1.0  # rescaled from torque
    assert generated.dataset_complete(data_dirs.offrl, generated.behaviour_dataset_id("pendulum", "expert"))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["env=pong"], "unknown environment 'pong'"),
    (["env=hopper", "splits=[medium,mixed]"], "unknown split(s) mixed"),
    (["sise=10"], "bad override"),
    (["size=0"], "size must be positive"),
])
def test_cli_rejects_bad_requests(argv, message, capsys, data_dirs):
    assert generate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_cli_unwritable_data_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = generate.main(["env=pendulum", "splits=[random]", "size=300",
                          f"data_dir={blocker / 'datasets'}"])
    assert code == 2 and "cannot write datasets" in capsys.readouterr().err


def test_missing_policy_says_how_to_train_one(tmp_path, capsys):
    code = generate.main(["env=pendulum", f"policy_dir={tmp_path}", f"data_dir={tmp_path / 'd'}"])
    assert code == 2 and "retrain=true" in capsys.readouterr().err


@pytest.mark.integration
def test_the_command_shows_its_progress_lines(tmp_path):
    import subprocess
    import sys

    from helpers import REPO, cli_env

    done = subprocess.run([sys.executable, "-m", "experiments.generate", "env=pendulum", "splits=[random]",
                           "size=300", f"data_dir={tmp_path}"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "generating local/pendulum-random: done, 300 steps" in done.stderr
    assert done.stdout.startswith("local/pendulum-random: 300 transitions")


def test_interrupted_split_is_not_complete(tmp_path, monkeypatch):
    import minari

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        splits.generate("pendulum", ["random"], size=300, root=tmp_path, progress=False)
    assert not generated.dataset_complete(tmp_path, generated.behaviour_dataset_id("pendulum", "random"))
    assert not list(tmp_path.glob(".staging-*"))


def test_corrupt_cached_split_is_reported(tmp_path):
    splits.generate("pendulum", ["random"], size=300, root=tmp_path, progress=False)
    data_file = tmp_path / generated.behaviour_dataset_id("pendulum", "random") / "data" / "main_data.hdf5"
    data_file.write_bytes(b"\0" * 512)
    with pytest.raises(DatasetError, match="could not be read"):
        envs.load("local", "pendulum-random", path=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Fixed-size variants and the README's default run
# ---------------------------------------------------------------------------------------------


def test_sized_variant_is_generated_apart_from_the_default_size(data_dirs, monkeypatch):
    monkeypatch.setitem(generated.SIZED, "pendulum-medium-2k", ("pendulum", "medium", 2_000))
    ensure_generated("pendulum-medium-2k")
    assert generated.dataset_complete(data_dirs.offrl, "local/pendulum/medium-2k-v0")
    assert not generated.dataset_complete(data_dirs.offrl, "local/pendulum/medium-v0")
    info = envs.DatasetInfo("pendulum-medium-2k", "local", "Pendulum-v1", "toy", None, None,
                            minari_id="local/pendulum/medium-2k-v0", max_episode_steps=200)
    data, _ = envs.minari_source.load(info, str(data_dirs.offrl))
    assert data.size == 2_000


def test_small_hopper_medium_is_registered_apart_with_a_short_protocol():
    from experiments.config import compose

    cfg = compose([f"dataset=local/{generated.QUICKSTART}"])
    assert cfg.steps == 20_000 and cfg.eval.episodes == 10
    info = envs.lookup("local", generated.QUICKSTART)
    assert info.env_id == "Hopper-v5" and info.family == "locomotion"
    assert info.minari_id == "local/hopper/medium-50k-v0" != envs.lookup("local", "hopper-medium").minari_id


# ---------------------------------------------------------------------------------------------
# Training a behaviour policy (experiments/behaviour.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # two SAC trainings with compilation: about 40 s of CPU
def test_behaviour_training_resumes_and_writes_a_policy_the_splits_use(tmp_path):
    out, checkpoints, lines = tmp_path / "pendulum", tmp_path / "checkpoints", []
    settings = dict(hidden_dims=(16, 16), start_steps=100, snapshot_every=100, eval_episodes=1,
                    reference_episodes=1, buffer_size=1_000, checkpoint_dir=checkpoints, log=lines.append)
    behaviour.train_behaviour("pendulum", out, total_steps=200, **settings)
    manifest = behaviour.train_behaviour("pendulum", out, total_steps=400, **settings)
    assert "pendulum: resuming SAC training from step 200" in lines
    assert [step for step, _ in manifest["returns_during_training"]] == [0, 100, 200, 300, 400]
    roles = manifest["roles"]
    assert roles["random"] == 0 and roles["expert"] == 400 and roles["medium"] in (100, 200, 300)
    kept = sorted(path.name for path in out.glob("actor_*.msgpack"))
    assert kept == sorted(f"actor_{roles[r]:08d}.msgpack" for r in ("random", "medium", "expert"))
    # medium-replay is everything collected up to the medium snapshot, across the resumption
    assert len(splits.Behaviour(out).replay()["rewards"]) == roles["medium"]
    report = splits.generate("pendulum", ["expert", "medium-replay"], size=200, root=tmp_path / "data",
                             policy_dir=tmp_path, progress=False)
    assert report["expert"]["transitions"] == 200
    assert report["medium-replay"]["transitions"] == roles["medium"]
