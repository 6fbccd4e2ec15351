"""Uni-O4's offline phase (algorithms/unio4.py): the losses and schedules by hand, AM-Q on a known
model, the replacement of old policies, the hand-over rules, batching, and a run end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import UNIO4_TINY_RUN, cli_env, constant_model, resume_is_exact, run_cli

import envs
from algorithms.core.algorithm import Context, Spec
from algorithms.core.behaviour import Critics, PolicyEnsemble, bc_ensemble_loss, fit_normalizer, not_done
from algorithms.core.ppo import PPOConfig, clipped_surrogate
from algorithms.core.replay import Transitions
from algorithms.unio4 import UniO4, normalized_advantage
from envs.preprocessing import Normalizer
from experiments import loop, policies, run_parts

SPEC = Spec(observation_dim=1, action_dim=1, total_steps=40)
SMALL = dict(num_members=3, policy_hidden_dims=(8,), q_hidden_dims=(8,), v_hidden_dims=(8,), batch_size=16,
             rollout_batch=4, rollout_length=4, eval_step=10, state_norm=False, termination="pendulum")


class FirstObservation(nn.Module):
    """A parameter-free 'critic': Q(s, a) = s[0] (one member) or V(s) = s[0]; from s[0] >= `broken_from`
    on, `broken_value` instead (a critic that blows up far from the data)."""

    ensemble: bool = True
    broken_from: float = np.inf
    broken_value: float = np.inf

    @nn.compact
    def __call__(self, observations, actions=None):
        value = jnp.where(observations[..., 0] >= self.broken_from, self.broken_value, observations[..., 0])
        return value[None] if self.ensemble else value


def known_critics(**broken) -> Critics:
    return Critics({}, {}, FirstObservation(True, **broken), FirstObservation(False))


def model_adding(delta):
    """A deterministic model: s' = s + delta (a float, or one value per state dimension) for every
    member, reward 0 (log-variance at -60)."""
    delta = np.atleast_1d(np.asarray(delta, np.float32))
    outputs = delta.size + 1
    model = constant_model(np.tile(np.append(delta, 0.0), (3, 1)), np.full((3, outputs), -100.0),
                           elites=[0, 1, 2], observation_dim=delta.size, action_dim=1)
    params = {**model.params, "params": {**model.params["params"], "min_logvar": jnp.full((outputs,), -60.0)}}
    return model.replace(params=params)


def dataset(rows=32, start=0.0) -> Transitions:
    observations = jnp.full((rows, 1), start)
    actions = jax.random.uniform(jax.random.key(3), (rows, 1), minval=-1.0, maxval=1.0)
    zeros = jnp.zeros(rows)
    return Transitions(observations, actions, zeros, observations, zeros, zeros, zeros)


def context(algo: UniO4, data=None, delta=1.0) -> Context:
    data = dataset() if data is None else data
    bc = algo.bc_stage().init(jax.random.key(0), SPEC, data)
    return Context(data, {"critics": known_critics(), "dynamics": model_adding(delta),
                          "bc": PolicyEnsemble(bc.policies.params, bc.normalizer)})


def test_bc_ensemble_loss_by_hand():
    """l_i = -log pi_i - alpha (log pi_i - max_{j != i} log pi_j); its gradient is (1 + alpha) that
    of BC, the max being stop-gradient; one member is plain BC."""
    log_probs = jnp.array([[-1.0], [-2.0], [-3.0]])
    np.testing.assert_allclose(bc_ensemble_loss(log_probs, 0.1), [0.9, 2.1, 3.2], rtol=1e-6)
    gradient = jax.grad(lambda lp: bc_ensemble_loss(lp, 0.1).sum())(log_probs)
    np.testing.assert_allclose(gradient, -1.1 * np.ones((3, 1)), rtol=1e-6)
    np.testing.assert_allclose(bc_ensemble_loss(jnp.array([[-1.0, -3.0]]), 0.1), [2.0])


def test_bc_stage_trains_every_member_on_one_batch_in_one_computation():
    algo = UniO4(**SMALL)
    data = dataset()
    training = algo.bc_stage().init(jax.random.key(0), SPEC, data)
    members = jax.tree.leaves(training.policies.params)[0].shape[0]
    assert members == 3
    _, metrics = algo.bc_stage().update(training, data, jax.random.key(1))
    s, a = data.observations, data.actions
    by_member = [jax.tree.map(lambda x, i=i: x[i], training.policies.params) for i in range(3)]
    log_probs = jnp.stack([training.policies.apply_fn(p, s).log_prob(a) for p in by_member])
    np.testing.assert_allclose(metrics["bc_loss"], bc_ensemble_loss(log_probs, 0.1).mean(), rtol=1e-5)
    kernels = [x for x in jax.tree.leaves(training.policies.params) if x.ndim == 3]
    assert all(not np.allclose(x[0], x[1]) for x in kernels)  # different initialisations


def test_ppo_clip_loss_advantage_and_schedules_by_hand():
    ratio, advantage = jnp.array([0.5, 1.0, 1.5]), jnp.array([1.0, -1.0, 1.0])
    # min(rho A, clip(rho, 0.8, 1.2) A): min(0.5, 0.8) = 0.5; -1; min(1.5, 1.2) = 1.2
    ppo_clip_loss = lambda r: clipped_surrogate(jnp.log(r), jnp.zeros(3), advantage, 0.2)  # BPPO's loss
    np.testing.assert_allclose(ppo_clip_loss(ratio), -(0.5 - 1.0 + 1.2) / 3, rtol=1e-6)
    gradient = jax.grad(ppo_clip_loss)(ratio)
    np.testing.assert_allclose(gradient, [-1 / 3, 1 / 3, 0.0], atol=1e-7)  # clipped: no gradient
    np.testing.assert_allclose(normalized_advantage(jnp.array([1.0, 2.0, 3.0])), [-1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(normalized_advantage(jnp.array([1.0, 2.0, 3.0]), 0.7), [-0.3, 0, 0.7],
                               atol=1e-6)
    algo = UniO4()
    clips = [float(algo.clip_at(t, 10_000)) for t in (0, 100, 200, 5000)]
    np.testing.assert_allclose(clips, [0.25, 0.2475, 0.245, 0.245], rtol=1e-6)
    lr = algo.learning_rate(10_000)
    np.testing.assert_allclose([float(lr(t)) for t in (0, 1, 101)], [1e-4, 1e-4, 1e-4 * 0.99], rtol=1e-6)


def test_amq_on_a_known_model():
    """s' = s + 1 from s = 0, Q(s, a) = s: 4 steps visit 0, 1, 2, 3 (AM-Q 1.5); a termination at
    s' >= 2.5 counts the terminating step (s = 2) and nothing after it (AM-Q 1.0)."""
    algo = UniO4(**SMALL)
    ctx = context(algo)
    params = ctx.stages["bc"].params
    normalizer = fit_normalizer(ctx.data.observations, False)
    np.testing.assert_allclose(algo.amq(params, normalizer, jax.random.key(0), ctx), [1.5] * 3, rtol=1e-5)
    algo.termination_rule = lambda: (lambda s, a, s_next: s_next[:, 0] >= 2.5)
    np.testing.assert_allclose(algo.amq(params, normalizer, jax.random.key(0), ctx), [1.0] * 3, rtol=1e-5)


def amq_of(algo: UniO4, start, delta, **broken) -> np.ndarray:
    """Every member's AM-Q from `start` (one state, every rollout) in the model s' = s + delta, with
    the critic Q(s, a) = s[0] (`broken`: inf or NaN from some s[0] on)."""
    start = np.atleast_1d(np.asarray(start, np.float32))
    spec = Spec(observation_dim=start.size, action_dim=1, total_steps=40)
    states = jnp.tile(start, (32, 1))
    data = dataset()._replace(observations=states, next_observations=states)
    bc = algo.bc_stage().init(jax.random.key(0), spec, data)
    ctx = Context(data, {"critics": known_critics(**broken), "dynamics": model_adding(delta)})
    return np.asarray(algo.amq(bc.policies.params, fit_normalizer(data.observations, False),
                               jax.random.key(0), ctx))


def test_the_codes_rollout_ends_by_hand():
    """`amq_rollout_ended`: a non-finite s' always; any |s'| >= amq_state_bound (NaN included, as the
    code's `-100 < s' < 100`); on AntMaze's (achieved_goal, observation, desired_goal) the achieved
    goal within amq_goal_radius of the desired one."""
    next_states = jnp.array([[99.9, -99.9, 0.0], [100.0, 0.0, 0.0], [0.0, -100.0, 0.0], [jnp.nan, 0.0, 0.0],
                             [0.0, jnp.inf, 0.0], [1e6, 0.0, 0.0]])
    np.testing.assert_array_equal(UniO4(**SMALL).amq_rollout_ended(next_states), [0, 0, 0, 1, 1, 0])
    bounded = UniO4(**{**SMALL, "amq_state_bound": 100.0})
    np.testing.assert_array_equal(bounded.amq_rollout_ended(next_states), [0, 1, 1, 1, 1, 1])
    # (x, y, z, goal x, goal y): 0.5 from the goal ends it, 0.51 does not
    ant = jnp.array([[2.6, 0.3, 7.0, 2.6, -0.2], [2.0, 0.0, 7.0, 2.51, 0.0], [-1.0, -1.0, 0.0, -1.3, -1.4]])
    at_goal = UniO4(**{**SMALL, "amq_goal_radius": 0.5}).amq_rollout_ended(ant)
    np.testing.assert_array_equal(at_goal, [1, 0, 1])
    assert not UniO4(**SMALL).amq_rollout_ended(ant).any()


@pytest.mark.parametrize("case", ["diverging", "infinite state", "nan q"])
def test_amq_rollouts_end_where_the_code_ends_them(case):
    """4-step rollouts from s = 0, Q(s, a) = s. s' = s + 60: the code's |s'| >= 100 ends the rollout at
    s' = 120 (visited 0, 60: AM-Q 30; without it 0, 60, 120, 180 all count: 90). A state that turns
    inf ends the rollout (visited 0: AM-Q 0). A step whose Q is NaN (here from s = 2 on, s' = s + 1)
    counts as terminated and adds nothing (visited 0, 1: AM-Q 0.5); with no finite Q at all the
    score is NaN. Before the fix: no bound to set (so 90), NaN and NaN."""
    if case == "diverging":
        bounded = UniO4(**{**SMALL, "amq_state_bound": 100.0})
        np.testing.assert_allclose(amq_of(bounded, 0.0, 60.0), [30.0] * 3, rtol=1e-5)
    elif case == "infinite state":
        np.testing.assert_array_equal(amq_of(UniO4(**SMALL), 0.0, np.inf), [0.0] * 3)
    else:
        np.testing.assert_allclose(amq_of(UniO4(**SMALL), 0.0, 1.0, broken_from=2.0, broken_value=np.nan),
                                   [0.5] * 3, rtol=1e-6)
        assert np.isnan(amq_of(UniO4(**SMALL), 0.0, 1.0, broken_from=0.0, broken_value=np.inf)).all()


def test_antmaze_amq_rollouts_end_within_half_a_unit_of_the_goal():
    """From (x, y) = (0, 0) with the goal (2.6, 0) in the observation, moving 1 along x per step:
    (2, 0) -> (3, 0) comes within 0.5 of the goal and ends the rollout (visited x = 0, 1, 2: AM-Q 1;
    without the rule 0..3: 1.5)."""
    start, delta = [0.0, 0.0, 7.0, 2.6, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(amq_of(UniO4(**{**SMALL, "amq_goal_radius": 0.5}), start, delta), [1.0] * 3,
                               rtol=1e-6)


def test_the_paper_configs_end_amq_rollouts_and_train_the_model_as_the_code():
    """configs/algo/unio4.yaml: |s'| >= 100 on HalfCheetah and Walker2d, the goal rule on Minari AntMaze,
    the code's AntMaze model (4 x 400, lr 3e-4) and walker2d-medium's 30 epochs."""
    from experiments.config import compose, make_algorithm

    def algo(dataset):
        return make_algorithm(compose(["algo=unio4", f"dataset={dataset}"]).algo)

    for name in ("d4rl/halfcheetah-medium-v2", "d4rl/walker2d-medium-expert-v2"):
        assert algo(name).amq_state_bound == 100.0 and algo(name).amq_goal_radius is None
    hopper = algo("d4rl/hopper-medium-v2")
    assert hopper.amq_state_bound is None and hopper.termination == "hopper"
    antmaze = algo("minari/D4RL/antmaze/umaze-v1")
    assert antmaze.amq_goal_radius == 0.5 and antmaze.termination is None
    assert antmaze.dynamics.hidden_dims == (400,) * 4 and antmaze.dynamics.learning_rate == 3e-4
    assert hopper.dynamics.hidden_dims == (200,) * 4 and hopper.dynamics.learning_rate == 1e-3
    # 30 of the code's epochs: ceil((1 000 000 - 1 - 1000 holdout) / 256) updates each
    assert algo("d4rl/walker2d-medium-v2").dynamics.max_steps == 30 * -(-(1_000_000 - 1 - 1000) // 256)
    assert algo("d4rl/walker2d-medium-replay-v2").dynamics.max_steps == hopper.dynamics.max_steps == 1_000_000


def test_the_chosen_member_follows_the_latest_amq_until_an_evaluation_overrides_it():
    """Every AM-Q scoring hands over the member with the highest latest AM-Q (NaN never), so the online
    phase starts from a member of the latest scores even without evaluations; `choose` overrides it
    with real scores. Before the fix the member stayed the one the BC scores chose."""
    algo = UniO4(**{**SMALL, "num_members": 4})
    ctx = context(algo)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    assert int(state.chosen) == 0  # the BC members tie (1.5 each)
    algo.amq = lambda params, normalizer, key, ctx: jnp.array([1.0, 0.5, jnp.nan, 2.0])
    state, _ = algo.replace_improved(state, jax.random.key(1), ctx)
    assert int(state.chosen) == 3
    chosen, _ = algo.choose(state, jnp.array([0.0, 50.0, 99.0, 10.0]))  # top 3 by AM-Q: 3, 0, 1
    assert int(chosen.chosen) == 1
    online = algo.begin_online(state, SPEC, ctx)
    members = jax.tree.leaves(state.policies.params)
    for a, b in zip(jax.tree.leaves(online.actor.params), members, strict=True):
        np.testing.assert_array_equal(a, b[3])
    algo.amq = lambda params, normalizer, key, ctx: jnp.array([0.0, 1.0, 3.0, 2.0])
    update = jax.jit(lambda s, k: algo.update(s, ctx.data, k, ctx))
    for t in range(9):  # not scored: the evaluation's choice stands
        chosen, _ = update(chosen, jax.random.key(t))
        assert int(chosen.chosen) == 1
    chosen, _ = update(chosen, jax.random.key(9))  # the 10th update is scored
    assert int(chosen.chosen) == 2 and int(chosen.step) == 10


def test_a_nan_best_amq_is_replaced_by_the_next_score():
    """A member whose best AM-Q is NaN would never be replaced again (NaN > x is false)."""
    algo = UniO4(**SMALL)
    ctx = context(algo)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    state = state.replace(best_amq=jnp.array([jnp.nan, 1.5, 1.5]))
    algo.amq = lambda params, normalizer, key, ctx: jnp.array([-5.0, 1.0, jnp.nan])
    state, replaced = algo.replace_improved(state, jax.random.key(1), ctx)
    np.testing.assert_array_equal(replaced, [True, False, False])
    np.testing.assert_allclose(state.best_amq, [-5.0, 1.5, 1.5])


def test_handover_code_without_evaluation_warns_once(offline_data, tmp_path, monkeypatch, caplog):
    """With evaluation off there are no real scores: handover=code falls back to AM-Q and says so in
    one warning line; handover=amq and evaluated runs say nothing."""
    from experiments import train
    from experiments.config import compose

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(run_parts, "prepare", stop)  # right after the run's settings are checked
    for overrides, warned in ((["eval.every=0"], True), (["eval.episodes=0"], True),
                              (["eval.every=0", "algo.handover=amq"], False), ([], False)):
        caplog.clear()
        with pytest.raises(Stop):
            train.run(compose(["algo=unio4", "dataset=local/pendulum-mixed", *overrides]), tmp_path)
        lines = [r.getMessage() for r in caplog.records
                 if r.levelname == "WARNING" and "handover" in r.getMessage()]
        assert len(lines) == int(warned), (overrides, lines)


def test_old_policy_is_replaced_only_when_amq_improves():
    algo = UniO4(**SMALL)
    ctx = context(algo)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    np.testing.assert_allclose(state.best_amq, [1.5] * 3, rtol=1e-5)  # the BC members' scores
    moved = state.policies.replace(params=jax.tree.map(lambda x: x + 1.0, state.policies.params))
    state = state.replace(policies=moved)
    algo.amq = lambda params, normalizer, key, ctx: jnp.array([2.0, 1.5, 0.5])
    new, replaced = algo.replace_improved(state, jax.random.key(1), ctx)
    np.testing.assert_array_equal(replaced, [True, False, False])
    np.testing.assert_allclose(new.best_amq, [2.0, 1.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(new.last_amq, [2.0, 1.5, 0.5])
    np.testing.assert_array_equal(new.replacements, [1, 0, 0])
    for current, old, before in zip(jax.tree.leaves(new.policies.params), jax.tree.leaves(new.old_params),
                                    jax.tree.leaves(state.old_params), strict=True):
        np.testing.assert_array_equal(old[0], current[0])
        np.testing.assert_array_equal(old[1:], before[1:])


def test_update_scores_every_eval_step_and_keeps_old_policies_otherwise():
    algo = UniO4(**SMALL)
    ctx = context(algo)
    state = algo.init(jax.random.key(0), SPEC, ctx)
    old = state.old_params
    update = jax.jit(lambda s, k: algo.update(s, ctx.data, k, ctx))
    for t in range(9):
        state, metrics = update(state, jax.random.key(t))
        assert np.isnan(metrics["amq"])
    for current, before in zip(jax.tree.leaves(state.old_params), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(current, before)
    state, metrics = update(state, jax.random.key(9))
    assert int(state.step) == 10 and np.isfinite(metrics["amq"])


def test_handover_rules():
    """"code": among the 3 best by AM-Q, the best real score; "amq": the best AM-Q alone. `act`
    follows the chosen member."""
    for rule, expected in (("code", 1), ("amq", 0)):
        algo = UniO4(**{**SMALL, "num_members": 4, "handover": rule})
        ctx = context(algo)
        state = algo.init(jax.random.key(0), SPEC, ctx)
        state = state.replace(last_amq=jnp.array([3.0, 1.0, 2.0, 0.0]))
        chosen, record = algo.choose(state, jnp.array([10.0, 50.0, 5.0, 100.0]))
        assert int(chosen.chosen) == expected == int(record["chosen"])
        np.testing.assert_allclose(record["estimates"], [3.0, 1.0, 2.0, 0.0])
        observations = jnp.linspace(-1, 1, 5)[:, None]
        member = jax.tree.map(lambda x, i=expected: x[i], state.policies.params)
        direct = jnp.clip(state.policies.apply_fn(member, observations).mean(), -1, 1)
        np.testing.assert_allclose(algo.act(chosen, observations, None), direct, rtol=1e-6)
        np.testing.assert_allclose(algo.act(algo.member_state(state, expected), observations, None), direct,
                                   rtol=1e-6)


def test_handover_gives_ppo_the_chosen_member_and_the_offline_value():
    """`begin_online`: PPO's actor is the chosen member (the same mean action; with the code's extra
    tanh the std moves as log_std = -5 + 2.5 (tanh(y) + 1) for the offline -5 + 2.5 (y + 1)), its
    critic the critics stage's V, its optimisers new; the online `update` is PPO's on states
    standardized with the offline statistics."""
    ctx = context(UniO4(**SMALL))
    observations = jnp.linspace(-1, 1, 5)[:, None]
    for extra_tanh in (False, True):
        algo = UniO4(**SMALL, online_extra_tanh=extra_tanh)
        state = algo.init(jax.random.key(0), SPEC, ctx).replace(chosen=jnp.asarray(2, jnp.int32))
        online = algo.begin_online(state, SPEC, ctx)
        chosen_params = jax.tree.map(lambda x: x[2], state.policies.params)
        for a, b in zip(jax.tree.leaves(online.actor.params), jax.tree.leaves(chosen_params), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(online.critic.apply_fn(online.critic.params, observations),
                                   observations[:, 0])  # the critics stage's V(s) = s[0]
        assert int(online.step) == 0 and int(online.actor.step) == 0
        np.testing.assert_allclose(algo.hand_over().learner.act(online, observations, None),
                                   algo.act(state, observations, None), rtol=1e-6)
        offline_std = state.policies.apply_fn(chosen_params, observations).stddev()
        online_std = online.actor.apply_fn(online.actor.params, observations).stddev()
        y = (jnp.log(offline_std) + 5.0) / 2.5 - 1.0  # the head's tanh output
        expected = jnp.exp(-5.0 + 2.5 * (jnp.tanh(y) + 1.0)) if extra_tanh else offline_std
        np.testing.assert_allclose(online_std, expected, rtol=1e-4)
    rows = algo.ppo.minibatch_size
    rollout = dataset(rows=rows, start=0.5)._replace(rewards=jnp.ones(rows))
    state = state.replace(normalizer=Normalizer(jnp.full(1, 0.5), jnp.full(1, 2.0)))
    online = algo.begin_online(state, SPEC, ctx)
    updated, metrics = algo.hand_over().learner.update(online, rollout, jax.random.key(1), ctx)
    # V(s) = s[0] of the standardized states (0.5 - 0.5) / 2 = 0: the values PPO saw
    assert float(metrics["value"]) == 0.0 and int(updated.step) == 1
    assert isinstance(updated, type(online)) and updated.normalizer is state.normalizer


@pytest.mark.parametrize("scaling", ["number", "dynamic"])
def test_the_online_value_is_refit_on_the_scaled_returns_of_the_dataset(scaling):
    """With reward scaling the code re-fits V on the Monte-Carlo returns of the scaled dataset
    rewards (episodes end at terminals and timeouts); "dynamic" leaves each episode's last reward
    unscaled and hands its running statistics to the online phase."""
    algo = UniO4(**SMALL, ppo=PPOConfig(reward_scaling=scaling), value_refit_steps=3,
                 value_refit_hidden_dims=(8,), value_refit_batch_size=4)
    assert [stage.name for stage in algo.stages(SPEC)][-1] == "online_value"
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    data = dataset(rows=5)._replace(rewards=rewards, timeouts=jnp.array([0.0, 1.0, 0.0, 0.0, 0.0]),
                                    terminals=jnp.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    training = algo.value_refit_stage().init(jax.random.key(0), SPEC, data)
    if scaling == "number":
        scaled = 0.1 * rewards
    else:  # running returns R = 1 | (episode end) | 3, 3 gamma + 4 | (end), their running std as the
        # reference's RunningMeanStd (sum of squares S from 1; std 1 until the second R), r / std after
        # each R is counted: std sqrt(S / n) with S = 1 + (3 - 1)(3 - 2) = 3 at n = 2, then
        # S = 3 + (R - 2)(R - mean) at n = 3
        third = 3.0 * 0.99 + 4.0
        mean = 2.0 + (third - 2.0) / 3
        std_2, std_3 = np.sqrt(3.0 / 2), np.sqrt((3.0 + (third - 2.0) * (third - mean)) / 3)
        scaled = jnp.array([1.0, 2.0, 3.0 / std_2, 4.0 / std_3, 5.0])
        assert int(training.scaler.count) == 3  # 1, 3 and 3 gamma + 4; the episodes' last rows skipped
    expected = [scaled[0] + 0.99 * scaled[1], scaled[1], scaled[2] + 0.99 * (scaled[3] + 0.99 * scaled[4]),
                scaled[3] + 0.99 * scaled[4], scaled[4]]
    np.testing.assert_allclose(training.returns, expected, rtol=1e-5)
    refit = training
    for i in range(3):
        refit, metrics = algo.value_refit_stage().update(refit, None, jax.random.key(i))
    assert np.isfinite(metrics["value_loss"]) and int(refit.value.step) == 3
    assert (refit.value.apply_fn(refit.value.params, jnp.linspace(-3, 3, 7)[:, None]) >= 0).all()  # ReLU


def test_seeds_and_members_batched_equal_single_runs():
    """Two seeds trained (and every member evaluated) in one program match each seed alone."""
    algo = UniO4(**SMALL)
    ctx = context(algo, dataset(start=0.3))

    def train(seeds):
        init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(
            jax.vmap(jax.random.key)(jnp.asarray(seeds)))
        states = run_parts.init_states(algo, SPEC, ctx, init_keys)
        states, _, _, _ = loop.make_train_chunk(algo, 20)(states, None, train_keys, ctx)
        preprocessor = envs.Preprocessor.identity(1)
        policy = policies.make_policy(algo, preprocessor, members=3)(states)
        observations = np.tile(np.linspace(-1, 1, 6, dtype=np.float32)[None, :, None], (3 * len(seeds), 1, 1))
        return states, policy(observations)

    both, both_actions = train([0, 1])
    for index, seed in enumerate([0, 1]):
        alone, alone_actions = train([seed])
        for a, b in zip(jax.tree.leaves(alone.replace(step=None)), jax.tree.leaves(both.replace(step=None)),
                        strict=True):
            np.testing.assert_allclose(a[0], b[index], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone_actions, both_actions[3 * index: 3 * index + 3], rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(both_actions[0], both_actions[1])  # the members act differently


# A whole run in seconds: tiny networks, 20 steps per stage, short AM-Q rollouts.


@pytest.mark.integration
def test_train_end_to_end_reports_every_member(offline_data, tmp_path):
    overrides = [*UNIO4_TINY_RUN, "steps=40"]
    run_dir = tmp_path / "run"
    done = run_cli(overrides, run_dir, cli_env(OFFRL_DATA_DIR=str(offline_data)))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert [stage["stage"] for stage in results["stages"]] == ["critics", "bc", "dynamics"]
    for seed in results["seeds"]:
        last = seed["members"]["40"]
        assert len(last["normalized_score"]) == len(last["estimates"]) == 4
        assert seed["final_score"] == pytest.approx(last["normalized_score"][last["chosen"]])
        assert 0.0 <= seed["member_ranking"]["pairwise"] <= 1.0
    assert "member_ranking_top1_mean" in results["summary"]


@pytest.mark.integration
def test_train_end_to_end_then_online_ppo(offline_data, tmp_path):
    """Offline BPPO, the hand-over of the chosen member, then online PPO rollouts; with reward
    scaling the re-fitted V is a fourth stage."""
    overrides = [*UNIO4_TINY_RUN, "steps=20", "online.steps=128", "algo.online.block=64",
                 "algo.ppo.minibatch_size=32", "online.eval_every=64", "online.log_every=64",
                 "algo.ppo.reward_scaling=number", "algo.value_refit_steps=20",
                 "algo.value_refit_hidden_dims=[16]"]
    run_dir = tmp_path / "run"
    done = run_cli(overrides, run_dir, cli_env(OFFRL_DATA_DIR=str(offline_data)))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert [stage["stage"] for stage in results["stages"]] == ["critics", "bc", "dynamics", "online_value"]
    for seed in results["seeds"]:
        last = seed["members"]["20"]
        assert seed["offline_score"] == pytest.approx(last["normalized_score"][last["chosen"]])
        assert len(seed["online_episode_returns"]) == 2  # evaluations at environment steps 64 and 128
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    online = [line for line in lines if line["type"] == "train" and line.get("phase") == "online"]
    assert [line["step"] for line in online] == [1, 2]  # one PPO update per rollout of 64 steps
    assert all(np.isfinite(line["actor_loss"]).all() and min(line["actor_lr"]) > 0 for line in online)


@pytest.mark.slow
def test_a_killed_offline_to_online_run_resumes_to_the_same_numbers(offline_data, tmp_path):
    """Killed after the second online PPO update (the last checkpoint at environment step 64, after
    the hand-over) and resumed: the offline phase, the hand-over and online PPO (its state restored:
    the offline state statistics, the return scaler the V re-fit started) give the numbers of the
    run straight through."""
    settings = [*UNIO4_TINY_RUN, "steps=20", "online.steps=192", "algo.online.block=64",
                "algo.ppo.minibatch_size=32", "online.eval_every=64", "online.log_every=64",
                "online.checkpoint_every=64", "algo.ppo.reward_scaling=dynamic", "algo.value_refit_steps=20",
                "algo.value_refit_hidden_dims=[16]"]
    # the resumed run trains its stages again (no cache here): their lines are logged twice
    lines = resume_is_exact(settings, 2, tmp_path, skip_types=("pretrain", "validate")).lines
    online = [line for line in lines if line["type"] == "train" and line.get("phase") == "online"]
    assert [line["step"] for line in online] == [1, 2, 3]


@pytest.mark.parametrize("critic", ["iql", "sarsa"])
def test_critic_stage_targets_and_schedule(critic):
    """SARSA pairs each row with the next row's action; timeouts end episodes unless told
    otherwise; the target Q moves every second step only."""
    algo = UniO4(**{**SMALL, "critic": critic, "critic_batch_size": 8})
    rows = dataset(rows=8)._replace(timeouts=jnp.zeros(8).at[3].set(1.0), returns_to_go=jnp.ones(8))
    training = algo.critics_stage().init(jax.random.key(0), SPEC, rows)
    np.testing.assert_array_equal(not_done(rows, algo.timeouts_terminal), 1.0 - rows.timeouts)
    if critic == "sarsa":
        np.testing.assert_array_equal(training.next_actions[:-1], rows.actions[1:])
    else:
        truncations_continue = UniO4(**{**SMALL, "timeouts_terminal": False})
        np.testing.assert_array_equal(not_done(rows, truncations_continue.timeouts_terminal), 1.0)
    targets = [training.target_q_params]
    for t in range(2):
        training, metrics = algo.critics_stage().update(training, rows, jax.random.key(t))
        assert np.isfinite(metrics["critic_loss"]) and np.isfinite(metrics["value_loss"])
        targets.append(training.target_q_params)
    first, second, third = (jax.tree.leaves(t)[-1] for t in targets)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(second, third)


LEARNING = ["dataset=local/pendulum-mixed", "seeds=3", "log_every=500", "eval.episodes=10"]
UNIO4 = ["algo=unio4", "steps=2000", "eval.every=1000", "algo.dynamics.hidden_dims=[64,64,64,64]",
         "algo.dynamics.max_steps=10000", "algo.rollout_batch=128"]
BC = ["algo=bc", "steps=20000", "eval.every=20000", "algo.hidden_dims=[64,64]"]


@pytest.mark.slow
def test_offline_phase_beats_behaviour_cloning(tmp_path, monkeypatch):
    """On local/pendulum-mixed (a quarter good episodes): the toy settings of configs/algo/unio4.yaml
    (critics 2x256 for 20k steps, 4 BC members 3x256 for 10k, AM-Q over 100-step rollouts), the
    dynamics ensemble 4x64 for at most 10k steps, 2000 BPPO updates, 3 seeds, against BC (64x2,
    20k steps). Measured 2026-12-02 (2 shared cores, load ~10, 11.6 min): Uni-O4 101.3 ± 1.7 (seeds
    102.2, 98.9, 102.8), BC 18.9 ± 8.5."""
    from experiments.config import compose
    from experiments.train import run

    monkeypatch.setenv("OFFRL_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("OFFRL_CACHE_DIR", str(tmp_path / "cache"))
    unio4 = run(compose([*LEARNING, *UNIO4]), tmp_path / "unio4")
    bc = run(compose([*LEARNING, *BC]), tmp_path / "bc")
    scores = {name: [seed["final_score"] for seed in out["seeds"]] for name, out in (("unio4", unio4),
                                                                                      ("bc", bc))}
    print(scores, unio4["summary"])
    assert np.mean(scores["unio4"]) > np.mean(scores["bc"]) + 15.0, scores


@pytest.mark.slow
def test_online_ppo_improves_on_the_offline_policy(tmp_path, monkeypatch):
    """On local/pendulum-medium (its behaviour policy scores ~33): the offline phase with the toy
    settings above (2000 BPPO updates, 2 seeds), then 150 000 environment steps of online PPO with the
    code's defaults (rollouts of 2048, 30 epochs of minibatches of 128, lr_a 2e-5, the offline IQL V
    as the critic, no reward scaling, the std quirk on). Measured 2026-12-02 (2 CPU cores, mostly
    idle; 5.8 min with the dataset's generation): offline 35.8 and 40.3, online 72.9 and 89.5 (the
    online phase 107 s for 2 x 148k timed environment steps: policy calls 41 s, environments 11 s,
    PPO updates 48 s). With lr_a 1e-4 and 10 epochs: 38.0 -> 61.3 ± 5.3 after 60k steps."""
    from experiments.config import compose
    from experiments.train import run

    monkeypatch.setenv("OFFRL_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("OFFRL_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["algo=unio4", "dataset=local/pendulum-medium", "seeds=2", "steps=2000", "log_every=500",
                 "eval.every=1000", "eval.episodes=10", "algo.dynamics.hidden_dims=[64,64,64,64]",
                 "algo.dynamics.max_steps=10000", "algo.rollout_batch=128", "online.steps=150000",
                 "online.eval_every=25000", "online.episodes=10", "online.log_every=2048"]
    results = run(compose(overrides), tmp_path / "run")
    offline = [seed["offline_score"] for seed in results["seeds"]]
    online = [seed["online_final_score"] for seed in results["seeds"]]
    print(offline, online, results["timings"])
    assert np.mean(online) > np.mean(offline) + 15.0, (offline, online)
