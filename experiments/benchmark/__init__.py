"""Benchmarks: the offline update throughput of every algorithm (`python -m experiments.benchmark`,
cli.py), the online phase against d3rlpy (`python -m experiments.benchmark.online`, online.py), and
trainings per program on an accelerator (`python -m experiments.benchmark.gpu`, gpu.py; benchmarks/gpu.sh),
and MOPO's dynamics ensemble and model rollouts (`python -m experiments.benchmark.mopo`, mopo.py).

Kept free of imports: torch_iql.py and d3rlpy_online.py run as modules of this package in
interpreters that need not have JAX.
"""
