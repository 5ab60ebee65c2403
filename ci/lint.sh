#!/usr/bin/env bash
# Lint with ruff (configuration in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check .
