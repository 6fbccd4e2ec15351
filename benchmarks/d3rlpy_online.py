"""IQL's online phase in d3rlpy (`fit_online`), timed, for `python -m benchmarks online`.

    python -m benchmarks.d3rlpy_online --env Hopper-v5 --dataset data.npz \
        --hidden 256 256 --steps 2000 --json

Runs in an interpreter where d3rlpy imports (d3rlpy 2.8 pins gymnasium 1.0, older than ours, so it
usually lives in its own environment; see docs/speed.md); imports nothing of this
project. It builds d3rlpy's IQL (its defaults, with our hidden sizes and batch size) on CPU, a
replay buffer pre-filled with the dataset's episodes (our "prefilled" replay), and runs
`fit_online` for `steps` environment steps with one update per step (update_interval=1,
n_updates=1), no random steps and no evaluation. d3rlpy times the parts of each step itself (its
logger's measure_time: inference, environment_step, sample_batch, algorithm_update and the whole
step); a logger adapter collects the means, committed once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


class Collect:
    """A d3rlpy logger adapter (and its factory) that keeps the last committed metric means."""

    def __init__(self):
        self.metrics = {}

    def create(self, algo, experiment_name, n_steps_per_epoch):
        return self

    def write_metric(self, epoch, step, name, value):
        self.metrics[name] = float(value)

    def __getattr__(self, name):  # write_params, save_model, close, ...: nothing to do
        return lambda *args, **kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="gymnasium environment id")
    parser.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments of gymnasium.make")
    parser.add_argument("--max-episode-steps", type=int, default=1000)
    parser.add_argument("--dataset", required=True, help=".npz with observations, actions, rewards, "
                        "terminals, timeouts (actions in [-1, 1])")
    parser.add_argument("--hidden", nargs="+", type=int, default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import d3rlpy
    import gymnasium
    import torch

    torch.set_num_threads(args.threads)
    d3rlpy.seed(args.seed)
    env = gymnasium.make(args.env, max_episode_steps=args.max_episode_steps, **json.loads(args.env_kwargs))
    env = gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)  # as our environments: actions in [-1, 1]
    env.reset(seed=args.seed)
    arrays = np.load(args.dataset)
    timeouts = arrays["timeouts"].astype(np.float32)
    timeouts[-1] = max(timeouts[-1], 1.0 - arrays["terminals"][-1])  # the last episode must end
    dataset = d3rlpy.dataset.MDPDataset(arrays["observations"], arrays["actions"], arrays["rewards"],
                                        arrays["terminals"].astype(np.float32), timeouts)
    buffer = d3rlpy.dataset.create_infinite_replay_buffer(episodes=dataset.episodes)
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=list(args.hidden))
    iql = d3rlpy.algos.IQLConfig(batch_size=args.batch_size, actor_encoder_factory=encoder,
                                 critic_encoder_factory=encoder,
                                 value_encoder_factory=encoder).create(device="cpu:0")
    collect = Collect()
    tic = time.perf_counter()
    iql.fit_online(env, buffer, n_steps=args.steps, n_steps_per_epoch=args.steps, update_interval=1,
                   n_updates=1, random_steps=0, save_interval=args.steps + 1, show_progress=False,
                   logger_adapter=collect, with_timestamp=False)
    wall = time.perf_counter() - tic
    means = collect.metrics
    steps = args.steps
    seconds = {"policy": means["time_inference"] * steps,
               "environment": means["time_environment_step"] * steps,
               "updates": (means.get("time_sample_batch", 0.0) + means.get("time_algorithm_update", 0.0))
               * steps,
               "seconds": means["time_step"] * steps}
    record = {"version": d3rlpy.__version__, "torch": torch.__version__,
              "gymnasium": gymnasium.__version__, "threads": args.threads,
              "hidden": list(args.hidden), "batch_size": args.batch_size, "env_steps": steps,
              "dataset_transitions": int(buffer.transition_count), "timings": seconds,
              "wall_seconds": wall}
    print(json.dumps(record) if args.json else record, flush=True)


if __name__ == "__main__":
    main()
