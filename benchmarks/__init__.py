"""Speed measurements of this repository, outside the installed package (docs/speed.md):
`python -m benchmarks <measurement> [--preset quick|full] [--out FILE.json]` (harness.py), one module
per measurement (updates, online, mopo, unio4, gpu, evaluation), their reports (*.json and *.md)
beside them.

Kept free of imports: torch_iql.py and d3rlpy_online.py run as modules of this folder in
interpreters that need not have JAX.
"""
