#!/usr/bin/env bash
# Execute every notebook with nbclient and write the executed notebooks and all figures under one
# folder (results/notebooks/quick with --quick, the default here; results/notebooks without).
# Extra arguments go to `python -m notebooks` (e.g. --only 01,03, --out DIR, --publish).
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
if [ "${MTL_NOTEBOOK_QUICK:-1}" = "1" ]; then
  python -m notebooks --quick "$@"
else
  python -m notebooks "$@"
fi
