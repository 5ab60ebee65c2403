"""`python -m notebooks [--quick] [--only NAMES] [--out DIR] [--publish]`.

Executes every notebook (or the named ones) in a fresh kernel, writes the executed notebooks and
all their figures under OUT/notebooks (OUT/notebooks/quick with --quick), prints one line per
notebook, and exits 1 if any failed (2 on bad arguments). `--out` is the result store (default
`results`), as for every command: finished experiment runs there are read, not recomputed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from notebooks.runner import NOTEBOOKS, PUBLISHED, PUBLISHED_FOLDER, execute, publish, select


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m notebooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="quick mode (MTL_NOTEBOOK_QUICK=1): each notebook in about a minute on 2 cores",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated notebooks to run, by name or number (e.g. 01,03); default: all",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="root of the result store: the experiments read and write it, the executed notebooks and figures/ go to "
        "OUT/notebooks (OUT/notebooks/quick with --quick) (default: results)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="deprecated: the result store, now --out; with --out as well, the old meanings (--results the store, "
        "--out the notebooks' folder) still hold",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds one cell may run before the notebook fails (default: %(default)g)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"after a full run, copy the published figures ({', '.join(PUBLISHED)}) into {PUBLISHED_FOLDER.relative_to(PUBLISHED_FOLDER.parents[1])}/",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the notebooks and the figures they write, then exit",
    )
    return parser


def store_and_folder(args: argparse.Namespace, /) -> tuple[Path, Path]:
    """The result store and the notebooks' folder: `--out` and OUT/notebooks[/quick]; the
    deprecated `--results` alone stands for `--out`, and with `--out` keeps its old meaning."""
    folder = Path("notebooks") / ("quick" if args.quick else "")
    if args.results is None:
        root = args.out if args.out is not None else Path("results")
        return root, root / folder
    print(
        "note: --results is deprecated; write --out DIR (the result store; the notebooks go to DIR/notebooks)",
        file=sys.stderr,
    )
    return args.results, args.out if args.out is not None else args.results / folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for notebook in NOTEBOOKS:
            print(
                f"{notebook.name:<24} {notebook.summary}\n{'':<24} figures: {', '.join(notebook.figures)}"
            )
        return 0
    try:
        chosen = select(args.only.split(",") if args.only else None)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.publish and args.quick:
        print(
            "error: --publish copies full-run figures into the repository; drop --quick",
            file=sys.stderr,
        )
        return 2
    if not args.timeout > 0:
        print(f"error: --timeout must be positive, got {args.timeout}", file=sys.stderr)
        return 2
    results, out = store_and_folder(args)
    failures = 0
    for notebook in chosen:
        print(f"{notebook.name} ...", flush=True)
        run = execute(notebook, quick=args.quick, results=results, out=out, timeout=args.timeout)
        verdict = "ok" if run.ok else f"FAILED: {run.error}"
        print(f"{notebook.name}: {verdict} ({run.seconds:.0f} s) -> {run.executed}", flush=True)
        failures += not run.ok
    print(f"\n{len(chosen) - failures}/{len(chosen)} notebooks ran; figures in {out / 'figures'}")
    if failures:
        return 1
    if args.publish:
        copied = publish(out / "figures")
        print(f"published {len(copied)} figures into {PUBLISHED_FOLDER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
