"""How algorithms are run: the Hydra train app, the compiled loop, checkpoints, benchmarks."""
