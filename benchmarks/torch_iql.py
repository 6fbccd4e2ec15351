"""IQL's update in plain, eager PyTorch, to time against algorithms/iql.py on the same machine.

    python -m benchmarks.torch_iql --hidden 256 256 --steps 200 --repeats 5

It performs the computation of `algorithms.iql.IQL.update`, in the same order: expectile value
step against the target twin Q, advantage-weighted actor step with the just-updated V (Gaussian
actor N(tanh(mu(s)), exp(log_std)) with a state-independent, clipped log std, cosine-decayed
learning rate), critic step towards r + gamma (1 - d) V(s'), then Polyak averaging of the target
critics. Adam everywhere, batches sampled uniformly (with replacement) from tensors in memory.
Initialisation is PyTorch's default rather than orthogonal: it changes no cost. torch is optional
(`pip install -e '.[bench]'`); benchmarks/updates.py runs this file in a subprocess.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def mlp(sizes: list[int], activate_last: bool = False) -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if activate_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    def __init__(self, observation_dim: int, action_dim: int, hidden: tuple[int, ...],
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.trunk = mlp([observation_dim, *hidden], activate_last=True)
        self.mean = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # Written out rather than through torch.distributions, whose argument validation would
        # add per-step Python work that the JAX version does not have.
        mean = torch.tanh(self.mean(self.trunk(observations)))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - LOG_SQRT_2PI).sum(-1)


class IQL:
    """Hyperparameters are algorithms.iql.IQL's defaults (the paper's Gym-locomotion values)."""

    def __init__(self, observation_dim: int, action_dim: int, hidden=(256, 256), lr: float = 3e-4,
                 discount: float = 0.99, tau: float = 0.005, expectile: float = 0.7,
                 temperature: float = 3.0, max_weight: float = 100.0,
                 total_steps: int = 1_000_000):
        hidden = tuple(hidden)
        self.discount, self.tau, self.expectile = discount, tau, expectile
        self.temperature, self.max_weight = temperature, max_weight
        self.critics = nn.ModuleList(
            [mlp([observation_dim + action_dim, *hidden, 1]) for _ in range(2)])
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.value = mlp([observation_dim, *hidden, 1])
        self.actor = GaussianActor(observation_dim, action_dim, hidden)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        # optax.cosine_decay_schedule(lr, total_steps), as IQL's actor uses
        self.actor_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.actor_optimizer,
            lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    def update(self, observations, actions, rewards, next_observations, terminals) -> dict:
        inputs = torch.cat([observations, actions], dim=-1)
        with torch.no_grad():
            target_q = torch.minimum(*(q(inputs).squeeze(-1) for q in self.target_critics))

        v = self.value(observations).squeeze(-1)
        diff = target_q - v
        weight = torch.where(diff > 0, self.expectile, 1.0 - self.expectile)
        value_loss = (weight * diff**2).mean()
        _step(self.value_optimizer, value_loss)

        with torch.no_grad():
            advantage = target_q - self.value(observations).squeeze(-1)
            weights = torch.exp(self.temperature * advantage).clamp(max=self.max_weight)
        dataset_actions = actions.clamp(-1.0 + 1e-5, 1.0 - 1e-5)
        actor_loss = -(weights * self.actor.log_prob(observations, dataset_actions)).mean()
        _step(self.actor_optimizer, actor_loss)
        self.actor_schedule.step()

        with torch.no_grad():
            next_v = self.value(next_observations).squeeze(-1)
            td_target = rewards + self.discount * (1.0 - terminals) * next_v
        q = torch.stack([critic(inputs).squeeze(-1) for critic in self.critics])
        critic_loss = ((q - td_target) ** 2).sum(0).mean()
        _step(self.critic_optimizer, critic_loss)

        with torch.no_grad():
            for target, online in zip(self.target_critics.parameters(), self.critics.parameters(),
                                      strict=True):
                target.lerp_(online, self.tau)
        # Detached tensors, not floats: .item() would force a synchronisation the JAX loop avoids.
        return {"value_loss": value_loss.detach(), "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(), "v": v.detach().mean(),
                "q": q.detach().mean(), "adv_weight": weights.mean()}


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def synthetic_data(size: int, observation_dim: int, action_dim: int, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, observation_dim, generator=generator),
            torch.rand(size, action_dim, generator=generator) * 2 - 1,
            torch.randn(size, generator=generator),
            torch.randn(size, observation_dim, generator=generator),
            torch.zeros(size))


def sample(data: tuple, batch_size: int, generator: torch.Generator) -> tuple:
    indices = torch.randint(0, data[0].shape[0], (batch_size,), generator=generator)
    return tuple(column[indices] for column in data)


def benchmark(hidden=(256, 256), observation_dim: int = 17, action_dim: int = 6,
              batch_size: int = 256, dataset_size: int = 1_000_000, steps: int = 200,
              repeats: int = 5, threads: int | None = None, seed: int = 0) -> dict:
    """Updates per second (sampling included): `steps` warm-up updates, then the median over
    `repeats` timed blocks of `steps` updates."""
    threads = threads or len(os.sched_getaffinity(0))
    _reset_peak_rss()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = synthetic_data(dataset_size, observation_dim, action_dim, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    agent = IQL(observation_dim, action_dim, hidden)
    for _ in range(steps):
        agent.update(*sample(data, batch_size, generator))
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(steps):
            metrics = agent.update(*sample(data, batch_size, generator))
        seconds.append(time.perf_counter() - tic)
    if not all(math.isfinite(float(value)) for value in metrics.values()):
        raise FloatingPointError(f"non-finite IQL metrics in PyTorch: {metrics}")
    return {
        "hidden": list(hidden),
        "batch_size": batch_size,
        "dataset_size": dataset_size,
        "observation_dim": observation_dim,
        "action_dim": action_dim,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps_per_timing": steps,
        "seconds": seconds,
        "updates_per_second": steps / statistics.median(seconds),
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def _reset_peak_rss() -> None:
    # A process started by another inherits its parent's ru_maxrss, so the peak must be reset
    # (Linux: write 5 to clear_refs) before it says anything about this process.
    try:
        with open("/proc/self/clear_refs", "w") as control:
            control.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Time IQL's update in eager PyTorch.")
    parser.add_argument("--hidden", nargs="+", type=int, default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dataset-size", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=200, help="updates per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="default: the cores this process may use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    result = benchmark(tuple(args.hidden), batch_size=args.batch_size,
                       dataset_size=args.dataset_size, steps=args.steps, repeats=args.repeats,
                       threads=args.threads, seed=args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"PyTorch {result['torch']} IQL {'x'.join(map(str, args.hidden))}: "
              f"{result['updates_per_second']:.1f} updates/s on {result['threads']} thread(s)")
    return result


if __name__ == "__main__":
    main()
