"""The supervised benchmark suites (see `benchmarks.harness.suite.Suite`)."""
