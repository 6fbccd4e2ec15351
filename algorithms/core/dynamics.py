"""Probabilistic dynamics ensemble with elites (MBPO/MOPO), trained as a `Stage`: one per training
seed (the references train one per run), or one for every seed with `shared`.

N members (default 7), each a Gaussian over the state change and the reward,
    p_i(s' - s, r | s, a) = N(mu_i(x), diag exp(l_i(x))),  x = standardized (s, a),
with 4x200 swish layers, trained on
    L = sum_i [ mean_{batch,dim} (mu_i - y)^2 exp(-l_i) + mean_{batch,dim} l_i ]
        + sum_layers wd_layer * 0.5 ||W_layer||^2 + 0.01 (sum max_logvar - sum min_logvar)
where the log-variance is soft-clamped between learned bounds:
    l <- max - softplus(max - l);  l <- min + softplus(l - min)   (max, min learned, init 0.5, -10).
Each member is validated on a holdout split by the MSE of its mean; a member's parameters are
snapshotted when its holdout MSE improves by more than 1%, training stops after `patience` epochs
with no member improving, the snapshots are restored, and the `num_elites` members with the lowest
holdout MSE are the elites. This follows the MOPO authors' code (tianheyu927/mopo, TF) and
OfflineRL-Kit (`offlinerlkit/dynamics/ensemble_dynamics.py`); see shared research notes §3.1.

The whole ensemble is one batched computation: every layer is an `EnsembleDense` whose kernel has a
leading member axis (an einsum, as OfflineRL-Kit's `EnsembleLinear`), so no Python loop over members.

Where we differ from the references (options where it matters):
- Data per member: the references train each member on its own bootstrap resample of the training
  split, reshuffled every epoch. A `Stage` update receives uniformly drawn rows (with replacement),
  so each member gets its own independent minibatch of those (`per_member_batches=True`); with
  False every member sees the same minibatch (unifloral).
- Validation: the references validate once per epoch (one pass over the training split). The loop
  calls `validate` every `validate_every` updates; it acts at the first call after each epoch's
  worth of updates (ceil(rows / batch) steps, counted from the data `init` receives) and is a no-op
  otherwise, so the 1% rule and the patience count epochs as in the references.
- Inputs are standardized with the mean and std of the data `init` receives (std < 1e-12 -> 1).
- Patience: 5 epochs (OfflineRL-Kit's `cnt >= 5`); the MOPO authors stop after 6
  (`epochs_since_update > 5`): `patience=6`.
- Spectral normalization: none, as the authors' code (which imports it and never applies it); the
  paper describes it on every layer but the variance head.
- Training data: the columns in `DYNAMICS_COLUMNS`, without rows whose next state the data does not
  know (D4RL terminal rows of a file without `next_observations`; experiments/stages.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from algorithms.core.algorithm import SettingsError, Spec, Stage
from algorithms.core.replay import sample_batch

ACTIVATIONS: dict[str, Callable] = {"swish": nn.swish, "relu": nn.relu}
UNCERTAINTIES = ("aleatoric", "pairwise_diff", "ensemble_std")
PENALTY_MEMBERS = ("all", "elites")


@dataclass
class DynamicsConfig:
    """Hyperparameters of the ensemble and its training (MOPO's code defaults).

    weight_decays: one per layer (the hidden layers, then the output layer), as wd * 0.5 ||W||^2.
    holdout / max_holdout: the holdout split, min(holdout * rows, max_holdout) (None: uncapped,
        as unifloral). patience: epochs without a member improving by `improvement` before stopping
        (5 as OfflineRL-Kit's `cnt >= 5`; the MOPO authors' `epochs_since_update > 5` is 6).
    max_epochs: stop after this many epochs (None: no cap; the authors' `max_epochs`, which their
        and Uni-O4's scripts set for some datasets). max_steps: an upper bound on the updates (the
        references have none; early stopping ends them).
    shared: one model for every seed of a run, from `seed` (fast sweeps); false (default): one per
        training seed, from `seed` + the training seed, as the references train one per run.
    """

    num_members: int = 7
    num_elites: int = 5
    hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    activation: str = "swish"
    weight_decays: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    logvar_bound_coef: float = 0.01
    learning_rate: float = 1e-3
    batch_size: int = 256  # per member
    per_member_batches: bool = True
    holdout: float = 0.2
    max_holdout: int | None = 1000
    patience: int = 5
    improvement: float = 0.01
    validate_every: int = 100
    max_epochs: int | None = None
    max_steps: int = 1_000_000
    seed: int = 0
    shared: bool = False

    def __post_init__(self):
        self.hidden_dims, self.weight_decays = tuple(self.hidden_dims), tuple(self.weight_decays)
        if len(self.weight_decays) != len(self.hidden_dims) + 1:
            raise SettingsError(f"dynamics.weight_decays needs one value per layer "
                             f"({len(self.hidden_dims) + 1}: the hidden layers and the output layer), "
                             f"got {len(self.weight_decays)}")
        if not 0 < self.num_elites <= self.num_members:
            raise SettingsError(f"dynamics.num_elites must lie in 1..num_members ({self.num_members}), "
                             f"got {self.num_elites}")
        if self.activation not in ACTIVATIONS:
            raise SettingsError(f"dynamics.activation must be one of {sorted(ACTIVATIONS)}, "
                             f"not '{self.activation}'")
        if not 0.0 < self.holdout < 1.0:
            raise SettingsError(f"dynamics.holdout must lie in (0, 1) (got {self.holdout})")
        counts = {"hidden_dims": min(self.hidden_dims, default=0), "batch_size": self.batch_size,
                  "patience": self.patience, "validate_every": self.validate_every,
                  "max_steps": self.max_steps,
                  **({} if self.max_epochs is None else {"max_epochs": self.max_epochs})}
        for name, value in counts.items():
            if value < 1:
                raise SettingsError(f"dynamics.{name} must be >= 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise SettingsError(f"dynamics.learning_rate must be > 0 (got {self.learning_rate})")


class EnsembleDense(nn.Module):
    """`members` independent dense layers: (B, in) or (members, B, in) -> (members, B, features).
    Kernels ~ truncated normal, std 1 / (2 sqrt(in)) (the references' init); biases 0."""

    members: int
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init = nn.initializers.truncated_normal(1.0 / (2.0 * math.sqrt(fan_in)))
        kernel = self.param("kernel", init, (self.members, fan_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.members, 1, self.features))
        pattern = "bi,mio->mbo" if x.ndim == 2 else "mbi,mio->mbo"
        return jnp.einsum(pattern, x, kernel) + bias


class GaussianEnsemble(nn.Module):
    """(mean, log-variance) of every member: inputs (B, in) or (members, B, in) -> two
    (members, B, outputs) arrays, the log-variance soft-clamped between the learned bounds."""

    members: int
    outputs: int
    hidden_dims: Sequence[int] = (200, 200, 200, 200)
    activation: str = "swish"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = inputs
        for i, size in enumerate(self.hidden_dims):
            x = ACTIVATIONS[self.activation](EnsembleDense(self.members, size, name=f"layer_{i}")(x))
        out = EnsembleDense(self.members, 2 * self.outputs, name=f"layer_{len(self.hidden_dims)}")(x)
        mean, logvar = jnp.split(out, 2, axis=-1)
        max_logvar = self.param("max_logvar", nn.initializers.constant(0.5), (self.outputs,))
        min_logvar = self.param("min_logvar", nn.initializers.constant(-10.0), (self.outputs,))
        logvar = max_logvar - nn.softplus(max_logvar - logvar)
        logvar = min_logvar + nn.softplus(logvar - min_logvar)
        return mean, logvar


def ensemble_network(config: DynamicsConfig, spec: Spec) -> GaussianEnsemble:
    """The network for a problem: outputs are (s' - s, r), |S| + 1 values."""
    return GaussianEnsemble(config.num_members, spec.observation_dim + 1, tuple(config.hidden_dims),
                            config.activation)


@flax.struct.dataclass
class Scaler:
    """x -> (x - mean) / std over the model's inputs (s, a)."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def fit(cls, inputs: jax.Array) -> Scaler:
        std = inputs.std(axis=0)
        return cls(inputs.mean(axis=0), jnp.where(std < 1e-12, 1.0, std))

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return (inputs - self.mean) / self.std


def model_inputs(observations: jax.Array, actions: jax.Array) -> jax.Array:
    return jnp.concatenate([observations, actions], axis=-1)


def model_targets(batch) -> jax.Array:
    """(s' - s, r): the state change first, the reward last (OfflineRL-Kit's order)."""
    return jnp.concatenate([batch.next_observations - batch.observations, batch.rewards[..., None]], -1)


def weight_decay_loss(params, weight_decays: Sequence[float]) -> jax.Array:
    """sum_layers wd_layer * 0.5 * ||kernel_layer||^2 over every member (biases not decayed)."""
    return sum(decay * 0.5 * jnp.sum(params["params"][f"layer_{i}"]["kernel"] ** 2)
               for i, decay in enumerate(weight_decays))


def gaussian_nll(mean: jax.Array, logvar: jax.Array, targets: jax.Array) -> jax.Array:
    """Per member: mean_{batch,dim} (mu - y)^2 exp(-l) + mean_{batch,dim} l  ->  (members,)."""
    return (((mean - targets) ** 2) * jnp.exp(-logvar)).mean(axis=(1, 2)) + logvar.mean(axis=(1, 2))


def ensemble_loss(params, apply_fn: Callable, inputs: jax.Array, targets: jax.Array,
                  config: DynamicsConfig) -> tuple[jax.Array, dict]:
    """The training loss (module docstring); inputs are standardized, (B, in) or (members, B, in)."""
    mean, logvar = apply_fn(params, inputs)
    nll = gaussian_nll(mean, logvar, targets)
    bounds = params["params"]
    bound_penalty = config.logvar_bound_coef * (bounds["max_logvar"].sum() - bounds["min_logvar"].sum())
    decay = weight_decay_loss(params, config.weight_decays)
    loss = nll.sum() + decay + bound_penalty
    return loss, {"dynamics_loss": loss, "dynamics_nll": nll.mean(), "weight_decay": decay,
                  "max_logvar": bounds["max_logvar"].mean(), "min_logvar": bounds["min_logvar"].mean()}


def holdout_mse(params, apply_fn: Callable, scaler: Scaler, holdout) -> jax.Array:
    """Per member: the MSE of the predicted mean over the holdout rows and outputs -> (members,)."""
    mean, _ = apply_fn(params, scaler(model_inputs(holdout.observations, holdout.actions)))
    return ((mean - model_targets(holdout)) ** 2).mean(axis=(1, 2))


def elites_of(losses: jax.Array, num_elites: int) -> jax.Array:
    """Indices of the `num_elites` lowest losses, best first."""
    return jnp.argsort(losses)[:num_elites]


# ---------------------------------------------------------------------------------------------
# Training as a stage


@flax.struct.dataclass
class DynamicsTraining:
    """The stage's state: the network under training, the per-member best snapshot and the
    early-stopping bookkeeping (all arrays, so it checkpoints like any state)."""

    model: TrainState
    scaler: Scaler
    best_params: dict  # per-member snapshot of the layers (the log-variance bounds are not)
    best_holdout: jax.Array  # (members,), inf until validated
    epoch_steps: jax.Array  # updates per epoch of the training data
    next_validation: jax.Array  # the step at which the current epoch ends
    epochs_since_improvement: jax.Array


def _layers(params) -> dict:
    return {name: value for name, value in params["params"].items() if name.startswith("layer_")}


def _with_layers(params, layers) -> dict:
    return {**params, "params": {**params["params"], **layers}}


def init_training(config: DynamicsConfig, spec: Spec, key: jax.Array, data) -> DynamicsTraining:
    network = ensemble_network(config, spec)
    inputs = model_inputs(jnp.asarray(data.observations), jnp.asarray(data.actions))
    params = network.init(key, inputs[:1])
    model = TrainState.create(apply_fn=network.apply, params=params, tx=optax.adam(config.learning_rate))
    epoch_steps = jnp.asarray(math.ceil(inputs.shape[0] / config.batch_size), jnp.int32)
    return DynamicsTraining(model, Scaler.fit(inputs), _layers(params),
                            jnp.full((config.num_members,), jnp.inf), epoch_steps, epoch_steps,
                            jnp.zeros((), jnp.int32))


def train_step(config: DynamicsConfig, state: DynamicsTraining, batch, key=None):
    """One Adam step on a batch of `num_members * batch_size` rows (split into one minibatch per
    member when `per_member_batches`, else the first `batch_size` rows for every member)."""
    inputs = state.scaler(model_inputs(batch.observations, batch.actions))
    targets = model_targets(batch)
    members = config.num_members
    if config.per_member_batches:
        inputs, targets = (x.reshape(members, -1, x.shape[-1]) for x in (inputs, targets))
    else:
        inputs, targets = inputs[: config.batch_size], targets[: config.batch_size]

    def loss(params):
        return ensemble_loss(params, state.model.apply_fn, inputs, targets, config)

    grads, metrics = jax.grad(loss, has_aux=True)(state.model.params)
    return state.replace(model=state.model.apply_gradients(grads=grads)), metrics


def validate(config: DynamicsConfig, state: DynamicsTraining, holdout, force: bool = False):
    """At the end of an epoch (or when `force`d): snapshot the members whose holdout MSE improved
    by more than `improvement` (relative), count epochs without any improvement, ask to stop after
    `patience` of them or after `max_epochs` epochs. Returns (state, stop, metrics); the metrics'
    `stop_patience` / `stop_max_epochs` say which rule asked."""
    losses = holdout_mse(state.model.params, state.model.apply_fn, state.scaler, holdout)
    due = jnp.logical_or(force, state.model.step >= state.next_validation)
    improved = due & ((state.best_holdout - losses) / state.best_holdout > config.improvement)
    improved = improved | (due & ~jnp.isfinite(state.best_holdout))  # the first validation
    best_params = jax.tree.map(
        lambda best, new: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, best),
        state.best_params, _layers(state.model.params))
    since = jnp.where(due, jnp.where(improved.any(), 0, state.epochs_since_improvement + 1),
                      state.epochs_since_improvement)
    state = state.replace(
        best_params=best_params,
        best_holdout=jnp.where(improved, losses, state.best_holdout),
        next_validation=state.next_validation + jnp.where(due, state.epoch_steps, 0),
        epochs_since_improvement=since)
    elite_loss = jnp.sort(losses)[: config.num_elites].mean()
    epochs = state.next_validation // state.epoch_steps - 1
    out_of_patience = since >= config.patience
    out_of_epochs = (jnp.asarray(False) if config.max_epochs is None
                     else epochs >= config.max_epochs)
    metrics = {"holdout_mse": losses.mean(), "elite_holdout_mse": elite_loss, "epochs": epochs,
               "stop_patience": out_of_patience, "stop_max_epochs": out_of_epochs}
    return state, out_of_patience | out_of_epochs, metrics


@flax.struct.dataclass
class DynamicsModel:
    """A trained ensemble, frozen: what a rollout needs (the stage's `result`)."""

    params: dict
    elites: jax.Array  # (num_elites,) member indices, best first
    scaler: Scaler
    network: GaussianEnsemble = flax.struct.field(pytree_node=False)

    def __call__(self, observations: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every member's (mean, log-variance) of (s' - s, r): two (members, B, |S| + 1) arrays."""
        return self.network.apply(self.params, self.scaler(model_inputs(observations, actions)))


def finish(config: DynamicsConfig, state: DynamicsTraining, holdout):
    """A last validation, then every member's best snapshot restored and the elites chosen by their
    best holdout MSE. Returns (state, record) with the per-member holdout MSE and the elites."""
    state, _, _ = validate(config, state, holdout, force=True)
    params = _with_layers(state.model.params, state.best_params)
    state = state.replace(model=state.model.replace(params=params))
    record = {"holdout_mse": state.best_holdout, "elites": elites_of(state.best_holdout, config.num_elites),
              "steps": state.model.step}
    return state, record


def frozen_model(config: DynamicsConfig, spec: Spec, state: DynamicsTraining) -> DynamicsModel:
    return DynamicsModel(state.model.params, elites_of(state.best_holdout, config.num_elites),
                         state.scaler, ensemble_network(config, spec))


# Bumped when a change here changes the trained model, so that cached models are not reused.
DYNAMICS_VERSION = 2
# What the stage reads of the dataset: only these are fingerprinted for its cache.
DYNAMICS_COLUMNS = ("observations", "actions", "rewards", "next_observations")


def dynamics_stage(config: DynamicsConfig, spec: Spec, name: str = "dynamics") -> Stage:
    """The ensemble as a `Stage`: its result (`ctx.stages[name]`) is a `DynamicsModel`, one per
    training seed unless `config.shared`. It fits next states, so rows whose next state the data
    does not know are left out of its training set (experiments/stages.py)."""
    settings = {"num_members": config.num_members, "num_elites": config.num_elites,
                "hidden_dims": list(config.hidden_dims), "activation": config.activation,
                "weight_decays": list(config.weight_decays), "logvar_bound_coef": config.logvar_bound_coef,
                "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                "per_member_batches": config.per_member_batches, "holdout": config.holdout,
                "max_holdout": config.max_holdout, "patience": config.patience,
                "improvement": config.improvement, "max_steps": config.max_steps, "seed": config.seed,
                **({} if config.max_epochs is None else {"max_epochs": config.max_epochs}),
                "observation_dim": spec.observation_dim, "action_dim": spec.action_dim}
    rows = config.num_members * config.batch_size if config.per_member_batches else config.batch_size
    return Stage(
        name=name, steps=config.max_steps, batch_size=rows,
        init=lambda key, spec, data: init_training(config, spec, key, data),
        update=lambda state, batch, key: train_step(config, state, batch, key),
        settings=settings,
        result=lambda state: frozen_model(config, spec, state),
        holdout=config.holdout, max_holdout=config.max_holdout,
        validate_every=config.validate_every,
        validate=lambda state, holdout: validate(config, state, holdout),
        finish=lambda state, holdout: finish(config, state, holdout),
        per_seed=not config.shared, columns=DYNAMICS_COLUMNS, fits_next_states=True,
        version=DYNAMICS_VERSION,
    )


# ---------------------------------------------------------------------------------------------
# Using a trained model


class ModelStep(NamedTuple):
    next_observations: jax.Array  # (B, |S|)
    rewards: jax.Array  # (B,), sampled, not penalised
    uncertainty: jax.Array  # (B,), u(s, a) of the chosen measure


def uncertainty_of(mean: jax.Array, logvar: jax.Array, measure: str = "aleatoric",
                   members: jax.Array | None = None) -> jax.Array:
    """u(s, a) per row from every member's (mean, log-variance) of (s' - s, r), (members, B, out):

    aleatoric (MOPO's default, `penalty_learned_var=True`): max_i ||sigma_i(s, a)||_2 over all outputs
        (reward included);
    pairwise_diff (the MOPO paper's ensemble-disagreement ablation, the authors' `False` branch):
        max_i ||mu_i - mean_j mu_j||_2 over the state outputs;
    ensemble_std (OfflineRL-Kit): sqrt(mean over state outputs of Var_i mu_i).
    `members`: indices of the members the max/mean ranges over (None: all, as the authors and
    OfflineRL-Kit; the elites, as unifloral)."""
    if members is not None:
        mean, logvar = mean[members], logvar[members]
    if measure == "aleatoric":
        return jnp.linalg.norm(jnp.exp(0.5 * logvar), axis=-1).max(axis=0)
    state_means = mean[..., :-1]
    if measure == "pairwise_diff":
        return jnp.linalg.norm(state_means - state_means.mean(axis=0), axis=-1).max(axis=0)
    if measure == "ensemble_std":
        return jnp.sqrt(state_means.var(axis=0).mean(axis=-1))
    raise ValueError(f"unknown uncertainty '{measure}'; use one of {UNCERTAINTIES}")


def step(model: DynamicsModel, observations: jax.Array, actions: jax.Array, key: jax.Array,
         uncertainty: str = "aleatoric", penalty_members: str = "all") -> ModelStep:
    """One imagined step: each row picks a random elite and samples (s' - s, r) from its Gaussian."""
    member_key, noise_key = jax.random.split(key)
    mean, logvar = model(observations, actions)
    rows = jnp.arange(observations.shape[0])
    chosen = model.elites[jax.random.randint(member_key, rows.shape, 0, model.elites.shape[0])]
    chosen_mean, chosen_std = mean[chosen, rows], jnp.exp(0.5 * logvar[chosen, rows])
    sample = chosen_mean + chosen_std * jax.random.normal(noise_key, chosen_mean.shape)
    members = model.elites if penalty_members == "elites" else None
    return ModelStep(observations + sample[:, :-1], sample[:, -1],
                     uncertainty_of(mean, logvar, uncertainty, members))


class Rollout(NamedTuple):
    """h steps of B rollouts, each field (h, B, ...): transitions with penalised rewards, and `alive`
    marking the steps taken before the rollout terminated (a terminating step is alive; the steps
    after it are not and must not be used)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    terminals: jax.Array
    alive: jax.Array
    uncertainty: jax.Array


def rollout(model: DynamicsModel, policy: Callable, start_observations: jax.Array, key: jax.Array,
            length: int, termination: Callable, penalty: float = 0.0, uncertainty: str = "aleatoric",
            penalty_members: str = "all") -> Rollout:
    """Roll `policy(observations, key) -> actions` through the model for `length` steps from every
    start state; rewards are r_hat - penalty * u(s, a) (MOPO's eq. 2 with lambda = `penalty`).
    `termination(obs, actions, next_obs)` ends a rollout; later steps are marked not alive."""

    def one_step(carry, step_key):
        observations, alive = carry
        action_key, model_key = jax.random.split(step_key)
        actions = policy(observations, action_key)
        imagined = step(model, observations, actions, model_key, uncertainty, penalty_members)
        terminals = termination(observations, actions, imagined.next_observations)
        transition = Rollout(observations, actions, imagined.rewards - penalty * imagined.uncertainty,
                             imagined.next_observations, terminals.astype(jnp.float32), alive,
                             imagined.uncertainty)
        return (imagined.next_observations, alive & ~terminals), transition

    alive = jnp.ones(start_observations.shape[:1], bool)
    _, transitions = jax.lax.scan(one_step, (start_observations, alive), jax.random.split(key, length))
    return transitions


def sample_start_states(data, key: jax.Array, count: int) -> jax.Array:
    """`count` observations drawn uniformly from the dataset, the rollouts' start states."""
    return sample_batch(data.observations, key, count)
