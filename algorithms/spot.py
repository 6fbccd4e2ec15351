"""SPOT, Supported Policy Optimization (Wu, Wu, Long, Wang & Jordan, 2022), as in `thuml/SPOT`
(SPOT.py, vae.py, train_vae.py, main.py).

Stage 1 (`stages()`): a conditional VAE of the behaviour policy
(algorithms/core/vae.py: 750-750, latent 2|A|) trained for 1e5 steps (batch 256, Adam 1e-3) on
    L_VAE = E[mean_dims (D(s, z) - a)^2 + 0.5 mean_latent KL(q(z|s, a) || N(0, I))],
then frozen: every seed reads it from the shared context (`ctx.stages["vae"]`), never from its own
state. The loop trains it once per dataset and settings and reuses it from its cache.
Stage 2: TD3 (algorithms/td3_bc.py: the same critic, delay and targets) whose actor minimises
    L_pi = -E[Q_1(s, pi(s))] / sg(E|Q_1(s, pi(s))|) + lambda E[-log pi_beta(s, pi(s))]
with the density term estimated by the frozen VAE: the one-sample negative ELBO by default (the
code's default), the importance-weighted estimate with `density="iwae"` (an option in the code and
the paper). There is no alpha; lambda (per dataset, configs/algo/spot.yaml) is the only trade-off;
TD3+BC's `alpha` field is unused. The actor has dropout 0.1 (0 on AntMaze) in its loss's forward
pass and, as in the code, in the target policy of the TD target: SPOT.py makes the target actor a
deepcopy of the actor in training mode and never switches it to eval (`select_action` alone does),
so a' = pibar(s') is drawn with dropout. `target_dropout=False` gives the paper's plain TD3 target
(a deterministic target policy). Acting (evaluation) is always without dropout.

AntMaze (configs/algo/spot.yaml, the code's main.py): rewards r - 1 (0 at the goal, else -1), raw
states (no normalization, for the VAE too), actor lr 1e-4, last layers initialised U(+-1e-3) (actor)
and U(+-3e-3) (critic).

The code aborts training when Q_1(s, pi(s)) averaged over the batch exceeds 1e4; here
`early_stop` stops each seed for which that happens (`q_abort`, 0 turns it off): it keeps the
parameters it had then and is reported as stopped, while the other seeds train on.

Online fine-tuning (the code's main_finetune.py and SPOT.train_online, configs/online_finetune/):
the same update on one replay buffer holding the dataset and the online transitions (2M), with
exploration pi(s) + N(0, 0.1^2), lambda cooled as lambda max(lambd_end, 1 - t / 1e6) over the t
online updates (`lambd_cool`, on in every fine-tuning config of the code) and, on the large mazes
only, the discount 0.995 (`online_discount`; CORL uses it on every maze).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import register
from algorithms.core.algorithm import Context, SettingsError, Spec, Stage
from algorithms.core.networks import DeterministicActor, critic_ensemble
from algorithms.core.vae import create_vae_state, elbo_loss, iwae_loss, vae_for, vae_step
from algorithms.td3_bc import TD3BC

DENSITIES = {"elbo": elbo_loss, "iwae": iwae_loss}


def spot_actor_loss(q_pi: jax.Array, neg_log_density: jax.Array, lambd: float):
    """-mean Q / sg(mean |Q|) + lambda mean(-log pi_beta); returns (loss, mean -log pi_beta)."""
    scale = jax.lax.stop_gradient(jnp.abs(q_pi).mean())
    density = neg_log_density.mean()
    return -q_pi.mean() / scale + lambd * density, density


@register
@dataclass
class SPOT(TD3BC):
    name = "spot"
    lambd: float = 0.1  # per dataset: configs/algo/spot.yaml
    actor_dropout: float = 0.1
    target_dropout: bool = True  # the TD target's policy with dropout, as the code (False: without)
    actor_final_init: float | None = None  # U(+-value) last actor layer (AntMaze: 1e-3)
    critic_final_init: float | None = None  # U(+-value) last critic layer (AntMaze: 3e-3)
    density: str = "elbo"  # "elbo" (the code's default) or "iwae"
    density_samples: int = 1  # posterior samples of the density estimate (IWAE: e.g. 10)
    q_abort: float = 1e4  # stop a seed whose batch-mean Q_1(s, pi(s)) exceeds this (0: never)
    lambd_cool: bool = True  # online: lambda * max(lambd_end, 1 - t / lambd_cool_steps)
    lambd_end: float = 0.2
    lambd_cool_steps: int = 1_000_000
    online_discount: float | None = None  # the discount of the online phase (None: `discount`)
    vae_hidden_dims: tuple[int, ...] = (750, 750)
    vae_lr: float = 1e-3
    vae_kl_weight: float = 0.5
    vae_steps: int = 100_000
    vae_batch_size: int = 256
    vae_seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.density not in DENSITIES:
            raise SettingsError(f"algo.density must be one of {', '.join(sorted(DENSITIES))} (got "
                                f"'{self.density}'); fix the override algo.density=...")

    def stages(self, spec: Spec) -> list[Stage]:
        def init(key, spec: Spec, data):
            return create_vae_state(key, spec.observation_dim, spec.action_dim, self.vae_hidden_dims,
                                    self.vae_lr)

        def update(vae, batch, key):
            return vae_step(vae, batch.observations, batch.actions, key, self.vae_kl_weight)

        settings = {"hidden_dims": list(self.vae_hidden_dims), "lr": self.vae_lr,
                    "kl_weight": self.vae_kl_weight, "steps": self.vae_steps,
                    "batch_size": self.vae_batch_size, "seed": self.vae_seed}
        return [Stage("vae", self.vae_steps, self.vae_batch_size, init, update, settings,
                      result=lambda vae: vae.params)]

    def networks(self, spec: Spec):
        actor = DeterministicActor(self.hidden_dims, spec.action_dim, init_scheme="torch",
                                   dropout_rate=self.actor_dropout, final_init_scale=self.actor_final_init)
        critic = critic_ensemble(2, self.hidden_dims, init_scheme="torch",
                                 final_init_scale=self.critic_final_init)
        return actor, critic

    def update(self, state, batch, key, ctx: Context):
        """TD3's update with SPOT's actor loss; online, with the discount and lambda of the online
        phase (module docstring)."""
        if ctx.phase == "online" and self.online_discount is not None:
            return TD3BC.update(replace(self, discount=self.online_discount), state, batch, key, ctx)
        return super().update(state, batch, key, ctx)

    def target_actions(self, state, next_observations, key):
        """pibar(s') with dropout when `target_dropout` (the code's target actor in training mode)."""
        dropout_key = jax.random.fold_in(key, 1)  # the policy noise keeps `key` itself
        return state.actor.apply_fn(state.target_actor_params, next_observations, self.target_dropout,
                                    rngs={"dropout": dropout_key})

    def lambd_at(self, step, ctx: Context):
        """lambda, cooled online to lambda max(lambd_end, 1 - t / lambd_cool_steps) after t online
        updates when `lambd_cool` (the code's --lambd_cool, on in its fine-tuning configs)."""
        if ctx.phase != "online" or not self.lambd_cool:
            return self.lambd
        elapsed = (step - ctx.phase_start).astype(jnp.float32)
        return self.lambd * jnp.maximum(self.lambd_end, 1.0 - elapsed / self.lambd_cool_steps)

    def actor_loss(self, params, state, batch, key, ctx: Context):
        dropout_key, density_key = jax.random.split(key)
        pi = state.actor.apply_fn(params, batch.observations, True, rngs={"dropout": dropout_key})
        q_pi = state.critic.apply_fn(state.critic.params, batch.observations, pi)[0]
        vae = vae_for(pi.shape[-1], self.vae_hidden_dims)
        neg_log_density = DENSITIES[self.density](vae.apply, ctx.stages["vae"], batch.observations, pi,
                                                  density_key, self.vae_kl_weight, self.density_samples)
        loss, density = spot_actor_loss(q_pi, neg_log_density, self.lambd_at(state.step, ctx))
        return loss, {"density_loss": density, "q_pi": q_pi.mean()}

    def early_stop(self, metrics: dict) -> tuple[np.ndarray, str]:
        """The seeds whose Q_1 on the policy's actions exceeded `q_abort` (the code's check: it
        aborts when Q1(s, pi(s)) > 1e4); the other seeds go on."""
        q = np.asarray(metrics["q_pi"], np.float64)
        high = np.nan_to_num(q, nan=-np.inf).max(axis=0) > self.q_abort if self.q_abort else (
            np.zeros(q.shape[1], bool))
        if not high.any():
            return high, ""
        return high, (f"Q_1(s, pi(s)) exceeded q_abort={self.q_abort:g} (max {np.nanmax(q):.4g}); "
                      "SPOT's code aborts such runs as diverged")
