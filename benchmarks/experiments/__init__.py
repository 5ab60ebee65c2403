"""One module per reproduced experiment of `python -m benchmarks`."""
