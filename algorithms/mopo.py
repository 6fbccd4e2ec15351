"""MOPO: Model-based Offline Policy Optimization (Yu et al., NeurIPS 2020), as in the authors' code
(tianheyu927/mopo) and OfflineRL-Kit.

Stage (`stages()`): a probabilistic dynamics ensemble of (s' - s, r), 7 members, 5 elites
(algorithms/core/dynamics.py), one per training seed as the authors train one per run, so the spread
over seeds includes the model's own variance (cached per dataset, settings and seed;
`dynamics.shared=true`: one model for every seed, today's fast-sweep behaviour).

Agent: SAC with automatic entropy (algorithms/sac.py) on batches drawn `real_ratio` (0.05) from the
dataset and the rest from the seed's buffer of model rollouts. Every `rollout_freq` (1000) updates,
`rollout_batch` (50 000) dataset states are rolled out `rollout_length` (h) steps with the current
stochastic policy, each step through a random elite per row, with the penalised reward of eq. 2

    r~(s, a) = r^(s, a) - lambda u(s, a),   u(s, a) = max_i ||sigma_i(s, a)||_2   (all 7 members)

and the environment's termination rule (envs/termination.py); the steps after a rollout's
termination are not stored. The buffer keeps the last `retain_epochs` (5) refreshes, and the last
refresh's statistics, logged with every update (`rollout_length`: mean steps before termination;
over the stored steps `rollout_model_reward` r^, `rollout_uncertainty` u, `rollout_penalty` lambda u).

Where the references disagree (options; shared research notes §3 and §6):
- u: `uncertainty="aleatoric"` (the authors' D4RL configs and OfflineRL-Kit); "pairwise_diff" is
  the paper's ensemble-disagreement ablation (max_i ||mu_i - mean mu||, state outputs);
  "ensemble_std" OfflineRL-Kit's sqrt(mean Var_i mu_i). `penalty_members="elites"` takes the max
  over the elites only (unifloral) instead of all members.
- (h, lambda) per dataset: configs/algo/mopo.yaml has d3rlpy's table (v0), the authors' configs
  except halfcheetah-medium-expert (the authors' lambda 5, not 1); OfflineRL-Kit's v2 table
  elsewhere (both listed there as overrides).
- Target entropy: -|A| (SAC, OfflineRL-Kit, unifloral); the authors' code uses -3 for every
  environment (`algo.target_entropy=-3`, set by `+experiment=mopo_locomotion`).
- Rollouts run inside the compiled update loop, as in unifloral, but masked after termination and
  never sampling empty buffer slots (unifloral does both, a known quirk).

Raw states: the termination rules read raw observations, so states are not standardized
(`normalize_states` must stay false); the dynamics model standardizes its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flax
import jax
import jax.numpy as jnp

from algorithms import register
from algorithms.core.algorithm import Context, ModelData, SettingsError, Spec, Stage
from algorithms.core.dynamics import (
    PENALTY_MEMBERS,
    UNCERTAINTIES,
    DynamicsConfig,
    Rollout,
    dynamics_stage,
    rollout,
    sample_start_states,
)
from algorithms.core.replay import ReplayBuffer, Transitions
from algorithms.sac import SAC, SACState
from envs.termination import TERMINATIONS, termination_for


@flax.struct.dataclass
class RolloutStats:
    """A refresh's rollouts: the mean number of steps taken (the terminating one included), and
    over those steps the mean model reward r^ (before the penalty), uncertainty u and penalty."""

    length: jax.Array
    model_reward: jax.Array
    uncertainty: jax.Array
    penalty: jax.Array

    @classmethod
    def of(cls, rolled: Rollout, penalty) -> RolloutStats:
        taken = rolled.alive.astype(jnp.float32)
        mean = lambda values: (values * taken).sum() / taken.sum()  # the first step is always taken
        return cls(taken.sum(axis=0).mean(), mean(rolled.rewards + penalty * rolled.uncertainty),
                   mean(rolled.uncertainty), penalty * mean(rolled.uncertainty))


@flax.struct.dataclass
class RolloutBuffer:
    """MOPO's per-seed buffer: the model transitions, and the statistics of the last refresh (zeros
    before the first). Samples, and reads size/position/transitions, as its ReplayBuffer."""

    replay: ReplayBuffer
    last_refresh: RolloutStats

    size = property(lambda self: self.replay.size)
    position = property(lambda self: self.replay.position)
    transitions = property(lambda self: self.replay.transitions)
    capacity = property(lambda self: self.replay.capacity)

    def sample(self, key: jax.Array, batch_size: int) -> Transitions:
        return self.replay.sample(key, batch_size)


@register
@dataclass
class MOPO(SAC):
    name = "mopo"
    rollout_length: int = 5  # h
    penalty: float = 1.0  # lambda
    uncertainty: str = "aleatoric"
    penalty_members: str = "all"
    real_ratio: float = 0.05
    rollout_freq: int = 1000
    rollout_batch: int = 50_000
    retain_epochs: int = 5
    termination: str | None = None  # the environment whose termination rule ends rollouts
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)

    def __post_init__(self):
        if isinstance(self.dynamics, dict):
            self.dynamics = DynamicsConfig(**self.dynamics)
        super().__post_init__()  # rollout_length >= 0: 0 is plain SAC on the dataset
        if self.uncertainty not in UNCERTAINTIES:
            raise SettingsError(f"algo.uncertainty must be one of {', '.join(UNCERTAINTIES)} "
                                f"(got '{self.uncertainty}')")
        if self.penalty_members not in PENALTY_MEMBERS:
            raise SettingsError(f"algo.penalty_members must be one of {', '.join(PENALTY_MEMBERS)} "
                                f"(got '{self.penalty_members}')")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise SettingsError(f"algo.real_ratio must lie in [0, 1] (got {self.real_ratio})")
        if self.normalize_states:
            raise SettingsError("MOPO's termination rules read raw observations: "
                                "set algo.normalize_states=false")
        self.termination_rule()  # fails now, naming the known ones, not after the dynamics trained

    def termination_rule(self):
        if self.termination is None:
            raise SettingsError("MOPO needs the environment's termination rule and this dataset has none: "
                                f"set algo.termination to one of {', '.join(sorted(TERMINATIONS))}")
        try:
            return termination_for(self.termination)
        except KeyError as error:
            raise SettingsError(f"algo.termination: {error.args[0]}") from None

    @property
    def uses_model_data(self) -> bool:
        return self.rollout_length > 0 and self.real_ratio < 1.0

    def stages(self, spec: Spec) -> list[Stage]:
        return [dynamics_stage(self.dynamics, spec)]

    def model_data(self) -> ModelData:
        """Batches take `real_ratio` of their rows from the dataset, the rest from the rollouts."""
        return ModelData(self.real_ratio, self.init_rollouts, self.refresh_model_data)

    def buffer_capacity(self) -> int:
        """The last `retain_epochs` refreshes of `rollout_batch * rollout_length` transitions."""
        return max(1, self.retain_epochs * self.rollout_batch * self.rollout_length)

    def init_rollouts(self, spec: Spec, ctx: Context) -> RolloutBuffer:
        zero = jnp.zeros((), jnp.float32)
        return RolloutBuffer(ReplayBuffer.create(self.buffer_capacity(), spec.observation_dim,
                                                 spec.action_dim), RolloutStats(zero, zero, zero, zero))

    def rollout_metrics(self, buffer: RolloutBuffer) -> dict[str, jax.Array]:
        if not self.uses_model_data:
            return {}
        stats = buffer.last_refresh
        return {"rollout_length": stats.length, "rollout_model_reward": stats.model_reward,
                "rollout_uncertainty": stats.uncertainty, "rollout_penalty": stats.penalty}

    def fill_rollouts(self, state: SACState, buffer: RolloutBuffer, key: jax.Array, ctx: Context):
        """Every `rollout_freq` updates (from update 0 on), new model rollouts into the buffer."""
        if not self.uses_model_data:
            return buffer
        return jax.lax.cond(state.step % self.rollout_freq == 0,
                            lambda: self.refresh(state, buffer, key, ctx), lambda: buffer)

    def refresh_model_data(self, state: SACState, buffer: RolloutBuffer, key: jax.Array, ctx: Context):
        """Before each offline batch: the buffer, refreshed when due, and its last refresh's statistics."""
        buffer = self.fill_rollouts(state, buffer, key, ctx)
        return buffer, self.rollout_metrics(buffer)

    def model_rollout(self, state: SACState, key: jax.Array, ctx: Context) -> Rollout:
        """`rollout_batch` rollouts of h steps from dataset states with the current policy."""
        start_key, rollout_key = jax.random.split(key)
        starts = sample_start_states(ctx.data, start_key, self.rollout_batch)
        policy = lambda observations, k: self.act(state, observations, k, deterministic=False)
        return rollout(ctx.stages["dynamics"], policy, starts, rollout_key, self.rollout_length,
                       self.termination_rule(), self.penalty, self.uncertainty,
                       self.penalty_members)

    def refresh(self, state: SACState, buffer: RolloutBuffer, key: jax.Array, ctx: Context) -> RolloutBuffer:
        rolled = self.model_rollout(state, key, ctx)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        zeros = jnp.zeros_like(flat(rolled.terminals))
        transitions = Transitions(flat(rolled.observations), flat(rolled.actions), flat(rolled.rewards),
                                  flat(rolled.next_observations), flat(rolled.terminals), zeros, zeros)
        return RolloutBuffer(buffer.replay.add_where(transitions, flat(rolled.alive)),
                             RolloutStats.of(rolled, self.penalty))
