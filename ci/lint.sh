#!/usr/bin/env bash
# Lint with ruff, then type-check core with mypy (configuration of both in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check .
python -m ruff format --check .
python -m mypy
