"""Benchmark reproductions and the command-line entry point `python -m benchmarks`."""
