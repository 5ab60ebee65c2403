#!/usr/bin/env bash
# The README's set-up command, into whatever Python environment runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -r requirements.txt
