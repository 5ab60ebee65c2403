#!/usr/bin/env bash
# The README's test command. HYPOTHESIS_PROFILE=ci (the default) bounds the example counts.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
export MPLBACKEND=Agg
python -m pytest "$@"
