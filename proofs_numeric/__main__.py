"""`python -m proofs_numeric [--quick] [--claim NAME] [--out DIR]`: run the numerical claim checks.

Prints one row per claim (verdict, measured, bound), writes `<claim>.json` and `<claim>.png`
under `--out` (default `results/proofs_numeric`, `results/proofs_numeric/quick` with `--quick`),
and exits 1 when any claim fails (2 on bad arguments). The notebooks read these files instead of
rerunning a claim (`proofs_numeric.claim.stored_or_run`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from proofs_numeric import (
    dibs_fairness,
    dibs_mtl_convergence,
    dibs_theorems,
    invariance,
    nash_transforms,
    rlw_theorem,
    tangent_accuracy,
)
from proofs_numeric.claim import run_claim

DEFAULT_OUT = Path("results/proofs_numeric")
CLAIMS = {
    module.NAME: module
    for module in (dibs_mtl_convergence, invariance, dibs_theorems, dibs_fairness, rlw_theorem, nash_transforms, tangent_accuracy)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proofs_numeric", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer starts and iterations: every claim in seconds")
    parser.add_argument("--claim", action="append", choices=sorted(CLAIMS), help="run only this claim (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for JSON and figures (default: results/proofs_numeric, with --quick results/proofs_numeric/quick)")
    parser.add_argument("--list", action="store_true", help="list the claims with their statements and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.list:
        for name, module in CLAIMS.items():
            print(f"{name}: {module.STATEMENT}")
        return 0
    if args.out is None:  # quick results never overwrite full ones
        args.out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    rows = []
    for name in args.claim or list(CLAIMS):
        result = run_claim(CLAIMS[name], quick=args.quick)
        result.save(args.out)
        rows.append((name, "PASS" if result.passed else "FAIL", result.measured, result.bound))
    width = max(len(row[0]) for row in rows)
    print(f"{'claim':<{width}}  verdict  measured | bound")
    for name, verdict, measured, bound in rows:
        print(f"{name:<{width}}  {verdict:<7}  {measured} | {bound}")
    print(f"\nresults in {args.out}")
    return 0 if all(row[1] == "PASS" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
