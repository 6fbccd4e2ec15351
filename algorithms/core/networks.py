"""Networks shared by the algorithms: MLP, ensembles, critics and actors (flax.linen)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def orthogonal_init(scale: float = jnp.sqrt(2.0)) -> Initializer:
    """`nn.initializers.orthogonal(scale)` computed with matrix products only.

    Same random draw and the same matrix up to rounding: the Q of a Gaussian matrix's QR
    decomposition with R's diagonal made positive, transposed when the layer is wider than deep.
    Flax's version calls LAPACK's QR, whose batched CPU kernel (vmapped seeds, ensembles) splits
    its batch over XLA's intra-op thread pool and waits for it from a thread of that same pool:
    when two such kernels run at once on a small machine every pool thread waits and the program
    hangs forever (seen here in about one fresh program in six). Gram-Schmidt needs no LAPACK.
    """

    def init(key, shape, dtype=jnp.float32) -> jax.Array:
        rows, cols = math.prod(shape[:-1]), shape[-1]
        q = _orthonormal_columns(jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype))
        return scale * (q if rows >= cols else q.T).reshape(shape)

    return init


def _orthonormal_columns(matrix: jax.Array) -> jax.Array:
    """Q of the QR decomposition with a positive diagonal R (tall `matrix`), by classical
    Gram-Schmidt run twice per column, which keeps Q orthonormal to float precision."""

    def add_column(j, q):
        column = matrix[:, j]
        for _ in range(2):
            column = column - q @ (q.T @ column)  # q's not-yet-filled columns are zero
        return q.at[:, j].set(column / jnp.linalg.norm(column))

    return jax.lax.fori_loop(0, matrix.shape[1], add_column, jnp.zeros_like(matrix))


def torch_linear_init() -> tuple[Initializer, Callable]:
    """PyTorch's nn.Linear default: weights and biases ~ U(+-1/sqrt(fan_in)), as in the TD3+BC,
    PRDC and SPOT reference code."""
    weights = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

    def bias(key, shape, dtype=jnp.float32, fan_in: int = 1):
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return weights, bias


class MLP(nn.Module):
    hidden_dims: Sequence[int]
    output_dim: int | None = None
    activation: Callable = nn.relu
    layer_norm: bool = False
    dropout_rate: float = 0.0
    init_scheme: str = "default"  # "default" (lecun normal, zero bias), "orthogonal", or "torch"
    # The last layer, if given: U(+-scale) weights and biases; under init_scheme="orthogonal" an
    # orthogonal matrix of gain `scale` and zero biases (JaxCQL's and Cal-QL's `orthogonal_init`).
    final_init_scale: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
        dims = list(self.hidden_dims) + ([self.output_dim] if self.output_dim is not None else [])
        for i, size in enumerate(dims):
            is_last = self.output_dim is not None and i == len(dims) - 1
            x = self._dense(size, x.shape[-1], is_last)(x)
            if not is_last:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = self.activation(x)
                if self.dropout_rate > 0.0:
                    x = nn.Dropout(self.dropout_rate, deterministic=not training)(x)
        return x

    def _dense(self, size: int, fan_in: int, is_last: bool) -> nn.Dense:
        if is_last and self.final_init_scale is not None:
            if self.init_scheme == "orthogonal":
                return nn.Dense(size, kernel_init=orthogonal_init(self.final_init_scale))
            uniform = nn.initializers.uniform(2 * self.final_init_scale)
            shifted = lambda key, shape, dtype=jnp.float32: uniform(key, shape, dtype) - self.final_init_scale
            return nn.Dense(size, kernel_init=shifted, bias_init=shifted)
        if self.init_scheme == "orthogonal":
            return nn.Dense(size, kernel_init=orthogonal_init())
        if self.init_scheme == "torch":
            weights, bias = torch_linear_init()
            return nn.Dense(size, kernel_init=weights,
                            bias_init=lambda k, s, d=jnp.float32: bias(k, s, d, fan_in))
        return nn.Dense(size)


class QNetwork(nn.Module):
    """Q(s, a). Observations broadcast against actions with extra leading axes, so Q(s, a_1..K)
    for K sampled actions per state is one call: obs (B, d), actions (B, K, a) -> (B, K)."""

    hidden_dims: Sequence[int]
    layer_norm: bool = False
    init_scheme: str = "default"
    final_init_scale: float | None = None

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        extra = actions.ndim - observations.ndim
        observations = jnp.expand_dims(observations, tuple(range(-2, -2 - extra, -1)))
        observations = jnp.broadcast_to(observations, actions.shape[:-1] + observations.shape[-1:])
        inputs = jnp.concatenate([observations, actions], axis=-1)
        mlp = MLP(self.hidden_dims, 1, layer_norm=self.layer_norm, init_scheme=self.init_scheme,
                  final_init_scale=self.final_init_scale)
        return mlp(inputs).squeeze(-1)


class Ensemble(nn.Module):
    """N independent copies of `net` evaluated in one batched call; outputs stack on axis 0."""

    net: type[nn.Module]
    num: int = 2
    kwargs: dict | None = None

    @nn.compact
    def __call__(self, *args):
        batched = nn.vmap(
            self.net,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return batched(**(self.kwargs or {}))(*args)


def critic_ensemble(num: int, hidden_dims: Sequence[int], **kwargs) -> Ensemble:
    """`num` Q-networks as one module: apply(params, s, a) -> (num, ...)."""
    return Ensemble(QNetwork, num, {"hidden_dims": tuple(hidden_dims), **kwargs})


class ValueNetwork(nn.Module):
    hidden_dims: Sequence[int]
    init_scheme: str = "default"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, init_scheme=self.init_scheme)(observations).squeeze(-1)


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)) (TD3, TD3+BC, BC)."""

    hidden_dims: Sequence[int]
    action_dim: int
    init_scheme: str = "default"
    dropout_rate: float = 0.0
    final_init_scale: float | None = None

    @nn.compact
    def __call__(self, observations: jax.Array, training: bool = False) -> jax.Array:
        mlp = MLP(self.hidden_dims, self.action_dim, init_scheme=self.init_scheme,
                  dropout_rate=self.dropout_rate, final_init_scale=self.final_init_scale)
        return jnp.tanh(mlp(observations, training))


class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(mu(s)), exp(log_std)) with a state-independent, clipped log std and no
    tanh squashing of samples; actions are clipped to [-1, 1] only when acting. With the orthogonal
    scheme every layer, the mean layer included, is orthogonal with gain sqrt(2), as in the reference
    (implicit_q_learning policy.py: `nn.Dense(action_dim, kernel_init=default_init())`, common.py:
    `default_init(scale=sqrt(2))`). Dropout (IQL's Kitchen and Adroit setting) follows each hidden
    activation when `training`."""

    hidden_dims: Sequence[int]
    action_dim: int
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    init_scheme: str = "orthogonal"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, observations: jax.Array, training: bool = False) -> distrax.Distribution:
        features = MLP(self.hidden_dims, init_scheme=self.init_scheme,
                       dropout_rate=self.dropout_rate)(observations, training)  # ends activated
        orthogonal = self.init_scheme == "orthogonal"
        mean_init = orthogonal_init() if orthogonal else nn.initializers.lecun_normal()
        mean = nn.Dense(self.action_dim, kernel_init=mean_init)(features)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return distrax.MultivariateNormalDiag(jnp.tanh(mean), jnp.exp(log_std))


class BoundedGaussianPolicy(nn.Module):
    """Uni-O4's Gaussian policy (Lei-Kun/Uni-O4 `net.py:GaussPolicyMLP`): an MLP (orthogonal
    weights of gain 1, zero biases) whose 2|A| outputs y pass through tanh; the mean is mu = y[:|A|]
    and the log std is soft-clamped into (log_std_min, log_std_max) as
        log_std = log_std_min + (log_std_max - log_std_min) (y[|A|:] + 1) / 2.
    The distribution is an unsquashed Normal; whoever acts clamps actions to [-1, 1].
    `extra_tanh`: the online code (`ppo_finetune/net.py:soft_clamp`) applies tanh once more to the
    log-std half before the clamp, so a policy handed over from the offline phase has its std
    moved toward exp(-2.5) while its mean is unchanged (a quirk of the reference, kept as an option)."""

    hidden_dims: Sequence[int]
    action_dim: int
    activation: Callable = nn.relu
    log_std_min: float = -5.0
    log_std_max: float = 0.0
    extra_tanh: bool = False

    @nn.compact
    def __call__(self, observations: jax.Array) -> distrax.Distribution:
        x = observations
        for width in self.hidden_dims:
            x = self.activation(nn.Dense(width, kernel_init=orthogonal_init(1.0))(x))
        y = jnp.tanh(nn.Dense(2 * self.action_dim, kernel_init=orthogonal_init(1.0))(x))
        mean, raw_log_std = jnp.split(y, 2, axis=-1)
        if self.extra_tanh:
            raw_log_std = jnp.tanh(raw_log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw_log_std + 1.0)
        return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))


class TanhGaussianActor(nn.Module):
    """SAC policy: a = tanh(u), u ~ N(mu(s), sigma(s)); log-probabilities include the tanh
    Jacobian (distrax); the deterministic action is tanh(mu)."""

    hidden_dims: Sequence[int]
    action_dim: int
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    init_scheme: str = "default"

    @nn.compact
    def __call__(self, observations: jax.Array) -> distrax.Distribution:
        features = MLP(self.hidden_dims, init_scheme=self.init_scheme)(observations)  # ends activated
        mean = nn.Dense(self.action_dim)(features)
        log_std = jnp.clip(nn.Dense(self.action_dim)(features), self.log_std_min, self.log_std_max)
        return TanhGaussian(mean, jnp.exp(log_std))


class ReferenceTanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)), with the output layer of a SAC/CQL reference code:

    head="rlkit" (CQL's original code): separate mu and log sigma layers, weights and biases
        U(+-1e-3), log sigma clipped to [-5, 2];
    head="jaxcql" (JaxCQL): one layer gives (mu, raw), weights variance_scaling(1e-2, fan_in,
        uniform) and zero bias, log sigma = m * raw + o with learnable scalars m, o (initially 1
        and -1), clipped to [-20, 2].
    `init_scheme` sets the hidden layers' weights (MLP's schemes); "orthogonal" with the jaxcql head
    is JaxCQL's `orthogonal_init=True` (Cal-QL's default): hidden layers orthogonal with gain
    sqrt(2), the output layer orthogonal with gain 1e-2, zero biases. The rlkit head keeps its own.
    Either way the initial policy is close to tanh(N(0, sigma_0^2)) in every state, with sigma_0 = 1
    (rlkit) or e^-1 (jaxcql). `mode` is tanh(mu), the reference codes' deterministic action.
    """

    hidden_dims: Sequence[int]
    action_dim: int
    head: str = "rlkit"
    init_scheme: str = "default"

    @nn.compact
    def __call__(self, observations: jax.Array) -> distrax.Distribution:
        features = MLP(self.hidden_dims, init_scheme=self.init_scheme)(observations)  # ends activated
        if self.head == "rlkit":
            out = MLP((), 2 * self.action_dim, final_init_scale=1e-3)(features)
            mean, log_std = jnp.split(out, 2, axis=-1)
            log_std = jnp.clip(log_std, -5.0, 2.0)
        elif self.head == "jaxcql":
            if self.init_scheme == "orthogonal":
                small = orthogonal_init(1e-2)
            else:
                small = nn.initializers.variance_scaling(1e-2, "fan_in", "uniform")
            mean, raw = jnp.split(nn.Dense(2 * self.action_dim, kernel_init=small)(features), 2, axis=-1)
            multiplier = self.param("log_std_multiplier", nn.initializers.constant(1.0), ())
            offset = self.param("log_std_offset", nn.initializers.constant(-1.0), ())
            log_std = jnp.clip(multiplier * raw + offset, -20.0, 2.0)
        else:
            raise ValueError(f"unknown policy head '{self.head}'; use 'rlkit' or 'jaxcql'")
        return TanhGaussian(mean, jnp.exp(log_std))


class TanhGaussian(distrax.Transformed):
    """tanh(N(mean, diag(std^2))) whose mode is tanh(mean), the usual deterministic action (distrax
    leaves the mode of a tanh-transformed distribution undefined)."""

    def __init__(self, mean: jax.Array, std: jax.Array):
        super().__init__(distrax.MultivariateNormalDiag(mean, std), distrax.Block(distrax.Tanh(), ndims=1))

    def mode(self) -> jax.Array:
        return jnp.tanh(self.distribution.mode())
