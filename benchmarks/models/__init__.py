"""Networks of the benchmark suites."""
