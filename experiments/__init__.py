"""How algorithms are run: the Hydra train app, the compiled loop, checkpoints, benchmarks."""

import os

# XLA's CPU runtime can wedge: the program hangs forever in device_get with every XLA thread idle.
# Upstream reports tie it to the multi-threaded Eigen pool on vmapped graphs and find that turning
# it off avoids the hang. Here (2 cores) we saw it in about 1 of 6 fresh programs, and at least
# once more with the flag set, so the training loop also has a watchdog (`watchdog_seconds`).
# The flag costs ~10% (IQL 256-wide: 88 vs 97 updates/s) and only affects the CPU backend; set
# XLA_FLAGS=--xla_cpu_multi_thread_eigen=true to opt back in.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
