"""Hypothesis profiles: `ci` (default, bounded for a 2-core machine), `dev` and `thorough`.

Select one with HYPOTHESIS_PROFILE=dev|thorough (or `--hypothesis-profile`).
"""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=100, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how many inputs the fuzz suite (tests/core/test_fuzz.py) tried, and the engine's outcomes."""
    fuzz = sys.modules.get("tests.core.test_fuzz")
    counts = getattr(fuzz, "INPUTS_TRIED", None)
    if counts:
        per_test = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
        terminalreporter.write_line(f"fuzz: {sum(counts.values())} inputs tried ({per_test})")
    outcomes = getattr(fuzz, "ENGINE_OUTCOMES", None)
    if outcomes:
        listed = ", ".join(f"{name}: {count}" for name, count in outcomes.most_common())
        terminalreporter.write_line(f"fuzz: engine outcomes ({listed})")
