"""Benchmarks: the offline update throughput of every algorithm (`python -m experiments.benchmark`,
cli.py) and the online phase against d3rlpy (`python -m experiments.benchmark.online`, online.py).

Kept free of imports: torch_iql.py and d3rlpy_online.py run as modules of this package in
interpreters that need not have JAX.
"""
