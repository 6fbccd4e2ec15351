"""Evaluation compiled (`eval.backend=mjx`, or `auto` with `env.backend=mjx`): every seed's
deterministic policy on the dataset's JAX environment (`Assembly.jax_env`), every seed's episodes in
one program.

    initial = jit(vmap(env.reset))(keys of the evaluation's episode seeds)          (seeds, episodes)
    returns = jit(scan over the time limit(policy on (seeds, episodes), vmap(env.step), done mask))

The host evaluation (experiments/records.py `play`, through experiments/run_folder.py) is the
reference, and this path does what it does: the same policy program (`policies.policy_program`,
deterministic, raw observations normalized as the training data was), the same episodes of each
evaluation (`records.episode_seeds`, turned into reset keys by envs/mjx/evaluation.py), and the
same record (`records.evaluation_entry`: every episode's return, D4RL's normalized scores). What
differs: the initial states are `jax.random`'s draws from gymnasium's distribution (not its
numbers), and the simulator is the compiled copy, which agrees with MuJoCo's to round-off that
contacts amplify; so scores agree in distribution, and from the same initial state to float32
round-off on Pendulum (tests/test_mjx_evaluation.py, docs/mjx.md).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

import envs
from envs.mjx import evaluation
from experiments import policies, records, seed_axis
from experiments.config import ConfigError


def evaluation_backend(cfg) -> str:
    """Where `cfg`'s evaluations run, "host" or "mjx": `eval.backend`, whose `auto` follows
    `env.backend`. A configuration written before the key evaluated on the host."""
    chosen = OmegaConf.select(cfg, "eval.backend", default="host")
    return OmegaConf.select(cfg, "env.backend", default="host") if chosen == "auto" else chosen


def check(cfg, info: envs.DatasetInfo) -> None:
    """Refuse (ConfigError) a compiled evaluation of a dataset that has no JAX environment."""
    if evaluation_backend(cfg) != "mjx":
        return
    from envs.mjx import make_jax_env

    try:
        make_jax_env(info)
    except envs.DatasetError as error:
        # its messages name the online phase's switch as the fix; for evaluation it is eval.backend
        raise ConfigError(str(error).replace("env.backend=", "eval.backend=")) from None


class CompiledEvaluation:
    """A run's compiled evaluations (`asm`: its Assembly): one program per phase and candidate
    count, compiled at its first evaluation."""

    def __init__(self, asm):
        self.asm = asm
        self.env = asm.jax_env
        self.programs: dict = {}
        self.reset = jax.jit(partial(evaluation.reset, self.env))

    def returns(self, phase: str, states, index: int, copies: int = 1) -> np.ndarray:
        """Every episode's return of evaluation number `index`, (seeds x copies, episodes), as
        `records.play` returns them: `copies` rows per seed (its candidates, member m of seed i at
        row i * copies + m) play the seed's episodes."""
        return self.play(phase, states, self.initial_states(phase, index, copies), copies)

    def initial_states(self, phase: str, index: int, copies: int = 1):
        """The environments' states at the start of evaluation `index`'s episodes, (seeds x copies,
        episodes), placed over the devices as the seeds are."""
        asm = self.asm
        seeds = records.episode_seeds(asm.seeds, asm.cfg, phase, index, copies)
        initial = self.reset(evaluation.episode_key_data(seeds))
        initial, _ = seed_axis.shard_seeds(initial, np.asarray(asm.seeds))
        return initial

    def play(self, phase: str, states, initial, copies: int = 1) -> np.ndarray:
        """The returns (float64, as the host's) of the episodes starting at `initial` (an EnvState
        with leading axes (seeds x copies, episodes))."""
        if (phase, copies) not in self.programs:
            self.programs[phase, copies] = self._program(phase, copies)
        returns = self.programs[phase, copies](states, self.asm.values, initial)
        return np.asarray(jax.device_get(returns), np.float64)

    def _program(self, phase: str, copies: int):
        act = policies.policy_program(self.asm.algo, self.asm.prepared.preprocessor, True, copies, phase)
        env = self.env

        def returns(states, values, initial):
            # the keys `policies.make_policy` binds to a deterministic policy (which draws nothing)
            keys = jax.vmap(jax.random.key)(jnp.zeros(initial.steps.shape[0] // copies, jnp.uint32))
            return evaluation.play(env, lambda observations: act(states, observations, keys, 0, values),
                                   initial)[0]

        return jax.jit(returns)
