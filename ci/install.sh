#!/usr/bin/env bash
# The README's set-up command, in a virtual environment when CI provides none.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -r requirements.txt
