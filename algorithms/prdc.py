"""PRDC, Policy Regularization with Dataset Constraint (Ran, Li, Zhang, Zhang & Yu, 2023), as in the
authors' code `LAMDA-RL/PRDC` (prdc.py).

TD3+BC (algorithms/td3_bc.py: the same critic, delayed actor and target updates) with one change:
the behaviour-cloning target is not the dataset action of the sampled state but the action of the
dataset pair nearest to the policy's own choice,
    (s_hat, a_hat) = argmin_{(s_i, a_i) in D} || [beta s, pi(s)] - [beta s_i, a_i] ||_2      (k = 1)
    L_pi = -lambda E[Q_1(s, pi(s))] + E[(pi(s) - a_hat)^2],   lambda = alpha / E|Q_1(s, pi(s))|
with the query built from the actor before its step and not differentiated (a_hat is data). States
are standardized (mean, std + 1e-3) before the keys are formed, as in the code (its `--normalize`
flag is store_false, i.e. always on).

The search is exact over the whole dataset, inside the compiled update (`neighbour_search`):
  "auto" (default): "kdtree" when the backend is a CPU, else "matmul" (chosen by measurement: README,
      PRDC section; on a CPU the in-graph brute force is far slower than the tree).
  "kdtree": scipy's cKDTree over {[beta s_i, a_i]} built once on the host (`derive`, which the
      loop calls; every seed shares it through the context), queried through `jax.pure_callback`
      on all cores (the reference code's structure). Ties between identical dataset rows go to
      the lowest index. Its cost depends on how far the queries are from the data: an untrained
      policy's actions are far and visit much of the tree; once the actor has learnt (it is pulled
      towards the data) queries are close.
  "matmul": blocked brute force in the graph, GEMM distances with exact re-ranking
      (algorithms/core/neighbours.py); works on every backend, cost independent of the data.
  "direct": blocked brute force with exact elementwise distances only (slowest; a reference).

Hyperparameters per dataset (README of the code; configs/algo/prdc.yaml): beta = 2 and alpha = 2.5
(hopper, walker2d) or 40 (halfcheetah); AntMaze alpha = beta = 7.5 with rewards 10000 r - 1. The
argparse default beta = 1 is not used by any README command; the field default here is the README's 2.
The code evaluates 50 episodes every 1000 steps; the run protocol here stays the family's (train.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import register
from algorithms.core.algorithm import Context, Derived, SettingsError
from algorithms.core.neighbours import nearest_neighbour
from algorithms.td3_bc import TD3BC, delayed

SEARCHES = ("auto", "matmul", "kdtree", "direct")


class KDTreeSearch:
    """Exact k=1 search on the host: a cKDTree over the distinct rows of `keys` (float64), so that
    among identical rows the first index is returned."""

    def __init__(self, keys: np.ndarray):
        from scipy.spatial import cKDTree

        unique, first = np.unique(np.asarray(keys), axis=0, return_index=True)
        self.tree = cKDTree(unique.astype(np.float64))
        self.first = first.astype(np.int32)
        self.dim = keys.shape[1]

    def __call__(self, queries):
        queries = np.asarray(queries)
        # The compiled program waits for the answer, so the search may use every core.
        distance, index = self.tree.query(queries.reshape(-1, self.dim).astype(np.float64), k=1,
                                          workers=-1)
        shape = queries.shape[:-1]
        return self.first[index].reshape(shape), (distance**2).astype(np.float32).reshape(shape)

    def query(self, queries: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Inside jit; vmapped queries reach the host as one batch."""
        shapes = (jax.ShapeDtypeStruct(queries.shape[:-1], jnp.int32),
                  jax.ShapeDtypeStruct(queries.shape[:-1], jnp.float32))
        return jax.pure_callback(self, shapes, queries, vmap_method="expand_dims")


@register
@dataclass
class PRDC(TD3BC):
    name = "prdc"
    alpha: float = 2.5
    beta: float = 2.0
    neighbour_search: str = "auto"  # kdtree on CPU, matmul elsewhere; or name one (docstring)
    search_block: int = 8192  # dataset rows per block of the in-graph searches

    def __post_init__(self):
        super().__post_init__()
        if self.neighbour_search not in SEARCHES:
            raise SettingsError(f"algo.neighbour_search must be one of {', '.join(SEARCHES)} (got "
                                f"'{self.neighbour_search}'); fix the override algo.neighbour_search=...")

    def wants_tree(self) -> bool:
        return self.neighbour_search == "kdtree" or (
            self.neighbour_search == "auto" and jax.default_backend() == "cpu")

    def derive(self, data) -> Derived:
        """The KD-tree over {[beta s_i, a_i]}, built once from the preprocessed dataset and shared
        by every seed through `ctx` (when the search method asks for it)."""
        if not self.wants_tree():
            return Derived()
        observations = np.asarray(data.observations, np.float32)
        keys = np.concatenate([np.float32(self.beta) * observations,
                               np.asarray(data.actions, np.float32)], axis=1)
        return Derived(host={"kdtree": KDTreeSearch(keys)})

    def search_method(self, ctx: Context | None) -> str:
        """The method in use: "auto" is the KD-tree when the context holds one (built on a CPU
        backend), else the in-graph "matmul"."""
        if self.neighbour_search == "auto":
            return "kdtree" if ctx is not None and ctx.helper("kdtree") is not None else "matmul"
        return self.neighbour_search

    def nearest(self, queries: jax.Array, ctx: Context) -> tuple[jax.Array, jax.Array]:
        """(index, squared distance) of the dataset pair [beta s_i, a_i] nearest to each query."""
        if self.search_method(ctx) == "kdtree":
            tree = ctx.helper("kdtree")
            if tree is None:
                raise RuntimeError("neighbour_search='kdtree' needs the KD-tree among the context's "
                                   "host_helpers: build it with derive(data) (the loop does) before "
                                   "compiling")
            return tree.query(queries)
        return nearest_neighbour(queries, [ctx.data.observations, ctx.data.actions], [self.beta, 1.0],
                                 self.search_block, self.search_method(ctx))

    def update(self, state, batch, key, ctx: Context):
        state, metrics = self.critic_step(state, batch, key)

        def actor_step(state):
            pi = state.actor.apply_fn(state.actor.params, batch.observations)
            query = jax.lax.stop_gradient(jnp.concatenate([self.beta * batch.observations, pi], -1))
            index, distance = self.nearest(query, ctx)
            # TD3+BC's actor step with the neighbours' actions as the behaviour-cloning targets
            state, actor_metrics = self.actor_step(state, batch._replace(actions=ctx.data.actions[index]),
                                                   jax.random.fold_in(key, 1))
            return state, {**actor_metrics, "neighbour_distance": distance.mean()}

        state, actor_metrics = delayed(state.step % self.policy_freq == 0, actor_step, state)
        return state.replace(step=state.step + 1), {**metrics, **actor_metrics}
