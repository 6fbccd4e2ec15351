"""How algorithms are run: the Hydra train app, the compiled loop, checkpoints, benchmarks."""

import os

# XLA's multi-threaded Eigen pool on the CPU backend can wedge: the program hangs forever in
# device_get with every XLA thread idle. We hit it here on 2 cores (training runs and tests stuck
# for 10+ minutes), and it is reported upstream for vmapped graphs. Single-threaded Eigen avoids
# it at ~10% of throughput (IQL 256-wide: 88 vs 97 updates/s here). The flag only affects the CPU
# backend; set XLA_FLAGS=--xla_cpu_multi_thread_eigen=true to opt back in.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
