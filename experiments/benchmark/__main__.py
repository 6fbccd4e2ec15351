from experiments.benchmark.cli import main

main()
