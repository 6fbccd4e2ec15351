"""The parts a run is assembled from (experiments/assembly.py puts them together; tests build single
parts): the prepared dataset, the context of a phase, the fresh per-seed states, the states the
online phase starts from, and the size of its replay buffers. States are made for every seed in one
compiled call; experiments/loop.py then trains them (its `init_buffers` makes the model data's
buffers, beside the rest of that component's loop-side code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import chex
import jax

import envs
from algorithms import Algorithm, Spec
from algorithms.core.algorithm import Context
from algorithms.core.components import learner
from algorithms.core.replay import Transitions
from experiments.config import ConfigError
from experiments.seed_axis import context_axes, seed_axes, with_values


@dataclass
class PreparedData:
    data: Transitions | None  # on the device, preprocessed as the algorithm asks (None: no dataset)
    preprocessor: envs.Preprocessor  # applied identically to evaluation and online transitions
    host: dict = field(default_factory=dict)  # the algorithm's host-side helpers (`derive`)


def prepare(algo: Algorithm, raw: envs.Dataset) -> PreparedData:
    """Apply the algorithm's reward convention and state normalization, derive what it computes
    once from the dataset (`Algorithm.derive`), and move the data to the device."""
    reward = algo.reward
    preprocessor = envs.Preprocessor.fit(raw, normalize_states=algo.normalize_states,
                                         returns_span=reward.returns_span, scale=reward.scale,
                                         shift=reward.shift)
    data = preprocessor(raw)
    derived = algo.derive(data)
    transitions = Transitions.from_dataset(data, derived.returns_to_go)
    return PreparedData(jax.device_put(transitions), preprocessor, dict(derived.host))


def make_context(algo: Algorithm, prepared: PreparedData | None, stages: dict | None = None,
                 phase: str = "offline", phase_start: int = 0, host: dict | None = None,
                 per_seed: tuple[str, ...] = ()) -> Context:
    """The read-only context: the device dataset, the stages' results (those named in `per_seed`
    with a leading seed axis), and the algorithm's host-side helpers (those `prepare` derived,
    unless `host` gives them)."""
    data = None if prepared is None else prepared.data
    if host is None:
        host = {} if prepared is None else prepared.host
    return Context(data, dict(stages or {}), phase, phase_start, tuple(sorted(host.items())),
                   tuple(per_seed))


def init_states(algo: Algorithm, spec: Spec, ctx: Context, keys: jax.Array, *,
                values: dict | None = None):
    """Initialise one state per key (the leading axis of `keys`), all in one compiled call;
    `values`: per-training grid values {field: (trainings,)} (None: no grid)."""
    missing = [stage.name for stage in algo.stages(spec) if stage.name not in ctx.stages]
    if missing:
        raise ValueError(f"{algo.name} starts from its pretraining stage '{missing[0]}': train the "
                         "algorithm's stages first (experiments.stages.train_stages)")
    if ctx.data is not None:  # the data the algorithm trains on has the widths its networks are built for
        check_transitions(ctx.data, spec)
    init = jax.vmap(lambda key, ctx, values: with_values(algo, values).init(key, spec, ctx),
                    in_axes=(0, context_axes(ctx), 0))
    states = jax.jit(init)(keys, ctx, values)
    return states.replace(step=states.step[0])


def begin(algo: Algorithm, spec: Spec, ctx: Context, states, values: dict | None = None):
    """The states the online phase starts from, for every seed in one compiled call: those of the
    learner the algorithm hands over to (`Algorithm.hand_over`), else the offline states themselves
    (the shared `step` stays shared). `jax.eval_shape` of it is the online checkpoint's template."""
    if algo.hand_over() is None:
        return states

    def begin_all(states, ctx, values):
        started = jax.vmap(lambda s, v, c: with_values(algo, v).hand_over().begin(s, spec, c),
                           in_axes=(seed_axes(states), 0, context_axes(ctx)))(states, values, ctx)
        return started.replace(step=started.step[0])

    return jax.jit(begin_all)(states, ctx, values)


def buffer_capacity(algo: Algorithm, dataset_size: int, steps: int, start_steps: int = 0) -> int:
    """Rows of each seed's online buffer, as the online learner's driver says (`OffPolicy.capacity`,
    `OnPolicy.capacity`); a warm-up of random actions its driver cannot learn from is refused."""
    driver = learner(algo, "online").driver()
    if start_steps and not driver.random_warmup:
        raise ConfigError(f"online.start_steps={start_steps}: uniformly random actions cannot be "
                          "trained on by an on-policy algorithm; set online.start_steps=0")
    return driver.capacity(dataset_size, steps)


def check_transitions(data: Transitions, spec: Spec) -> None:
    """Observations and actions as wide as `spec` says, one row per transition, float32."""
    chex.assert_shape([data.observations, data.next_observations], (None, spec.observation_dim))
    chex.assert_shape(data.actions, (None, spec.action_dim))
    chex.assert_equal_shape_prefix(list(data), 1)
    chex.assert_type(list(data), float)
