"""Performance benchmarks: ratios measured side by side in one run (never wall-clock asserts)."""
