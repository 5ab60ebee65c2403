"""`python -m benchmarks perf`: the quick run produces every section, its tables and figure, with
finite positive ratios, and never touches the committed report; missing optional dependencies
skip their part. Speed itself is never asserted (no wall-clock thresholds)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.perf import engine_step, report

HAS_CVXPY = report.nash_solver.reference_solver() is not None
HAS_TORCHJD = report.solvers.torchjd_version() is not None
HAS_TORCHJD_CAGRAD = HAS_TORCHJD and report.solvers.torchjd_cagrad() is not None
try:
    import scipy  # noqa: F401

    HAS_SCIPY = True
except ImportError:
    HAS_SCIPY = False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """One `perf --quick` with every section, run from an empty folder with the committed
    report's folder redirected, so that writing it by mistake would show."""
    folder = tmp_path_factory.mktemp("perf")
    printed = io.StringIO()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        patch.setattr(report, "REPORT_FOLDER", folder / "committed")
        status = main(["perf", "--quick", "--quiet", "--device", "cpu"])
    out = folder / "results" / "perf"
    return {
        "status": status,
        "threads_restored": torch.get_num_threads() == threads,
        "printed": printed.getvalue(),
        "folder": folder,
        "markdown": (out / "PERFORMANCE.md").read_text(),
        "payload": json.loads((out / "perf.json").read_text()),
        "figure": out / "performance.png",
    }


def ratio_values(payload: dict) -> dict[str, float | None]:
    """Every ratio the report states, by a readable path."""
    sections = payload["sections"]
    found: dict[str, float | None] = {}
    for model, ratios in sections["engine"]["results"]["ratios"].items():
        found |= {f"engine/{model}/{label}": value for label, value in ratios.items()}
    for model, ratios in sections["representation"]["results"]["ratios"].items():
        found |= {f"representation/{model}/{label}": value for label, value in ratios.items()}
    for count, ratios in sections["scaling"]["results"]["ratios"].items():
        found |= {f"scaling/K={count}/{label}": value for label, value in ratios.items()}
    if not sections["nash"]["skipped"]:
        for count, result in sections["nash"]["results"]["per_task_count"].items():
            found |= {
                f"nash/K={count}/{key}": value
                for key, value in result.items()
                if key.startswith("speedup")
            }
    if not sections["solvers"]["skipped"]:
        for case, per_task_count in sections["solvers"]["results"]["per_case"].items():
            for count, result in per_task_count.items():
                found |= {
                    f"solvers/{case}/K={count}/{key}": value
                    for key, value in result.items()
                    if key.endswith("_over_torchjd")
                    and not (key.startswith("cagrad") and not HAS_TORCHJD_CAGRAD)
                }
    tangent = sections["tangent"]["results"]
    for row in tangent["scipy_comparison"] or []:
        found |= {
            f"tangent/n={row['parameters']:.0f}/{key}": value
            for key, value in row.items()
            if key.startswith("scipy_over_torch")
        }
    for row in tangent["costs"]["rows"]:
        found |= {
            f"tangent/n={row['parameters']:.0f}/{key}": row[key]
            for key in ("tangent_over_gradient", "functional_over_graph")
        }
    return found


def test_quick_run_produces_every_section(quick_run) -> None:
    assert quick_run["status"] == 0
    markdown = quick_run["markdown"]
    assert quick_run["printed"].startswith("# Performance report (CPU)")
    assert "## Summary" in markdown and "python -m benchmarks perf --quick" in markdown
    assert "The ratios are the result" in markdown
    for number, name in enumerate(report.SECTIONS, start=1):
        assert f"## {number}. " in markdown and f"`--sections {name}`" in markdown
    assert set(quick_run["payload"]["sections"]) == set(report.SECTIONS)
    assert (
        quick_run["payload"]["environment"]["threads"] == "1"
    )  # --quick: one thread unless --threads
    assert quick_run["threads_restored"]
    assert quick_run["figure"].stat().st_size > 0 and "](performance.png)" in markdown


def test_quick_run_tables_have_the_expected_rows(quick_run) -> None:
    markdown = quick_run["markdown"]
    rows = {line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("|")}
    for name, _ in engine_step.GRADIENT_METHODS.values():
        assert {
            f"{name} step / LS step",
            f"{name} weight solve, share of its step",
            f"{name}: MTL-R step / full step",
        } <= rows
    assert {"batched / looped per-task gradients", engine_step.NASH_REFERENCE_RATIO} <= rows
    assert {str(k) for k in engine_step.TASK_COUNTS} <= rows  # one scaling row per K
    summary = [
        line
        for line in markdown.split("## Summary")[1].split("\n## ")[0].splitlines()
        if line.startswith("| ")
    ][1:]
    assert {line.split("|")[1].strip() for line in summary} == set(report.SECTIONS)
    if HAS_CVXPY:
        assert (
            "| 5 | " in markdown.split("Nash-MTL weight solve: damped Newton")[1]
        )  # quick: K = 2 and 5
    else:
        assert report.SKIPPED in markdown.split("Nash-MTL weight solve: damped Newton")[1]
    assert ("scipy / torch, equal residual" in markdown) == HAS_SCIPY
    solvers_section = markdown.split("Weight solves alone: min-norm (MGDA) and CAGrad")[-1]
    if HAS_TORCHJD:
        for case in report.solvers.CASES:
            assert (
                f"| {case} | 5 | " in solvers_section
            )  # quick: K = 2 and 5, every case, both tables
        assert "| solvers | ours / TorchJD, MGDA weight solve |" in markdown
    else:
        assert report.SKIPPED in solvers_section
    assert "fitted exponent of tangent time against n" in markdown


def test_quick_run_ratios_are_finite_and_positive(quick_run) -> None:
    ratios = ratio_values(quick_run["payload"])
    assert len(ratios) > 50
    reference = [key for key in ratios if key.endswith(engine_step.NASH_REFERENCE_RATIO)]
    for key, value in ratios.items():
        if (
            value is None
        ):  # only the reference solver's ratio may be missing, and only without cvxpy
            assert key in reference and not HAS_CVXPY
            continue
        assert math.isfinite(value) and value > 0, (key, value)


def test_quick_run_leaves_the_committed_report_alone(quick_run) -> None:
    assert not (quick_run["folder"] / "committed").exists()
    assert sorted(p.name for p in (quick_run["folder"] / "results" / "perf").iterdir()) == [
        "PERFORMANCE.md",
        "perf.json",
        "performance.png",
    ]


def test_only_a_full_run_writes_the_committed_report(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    full = parser.parse_args(["--device", "cpu"])
    assert report.output_paths(full, report.SECTIONS)[:2] == (
        report.REPORT_FOLDER / "PERFORMANCE.md",
        report.REPORT_FOLDER / "performance.png",
    )
    gpu = parser.parse_args(["--device", "cuda"])
    assert (
        report.output_paths(gpu, report.SECTIONS)[0] == report.REPORT_FOLDER / "PERFORMANCE_CUDA.md"
    )
    for argv, sections in (
        (["--quick"], report.SECTIONS),
        ([], ("nash",)),
        (["--out", str(tmp_path)], report.SECTIONS),
    ):
        paths = report.output_paths(parser.parse_args(argv), sections)
        assert all(report.REPORT_FOLDER not in path.resolve().parents for path in paths), argv


def test_command_line_names_the_options_given() -> None:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser, sections=("nash",))
    args = parser.parse_args(["--threads", "1", "--quick", "--scaling-tasks", "2", "4"])
    args.experiment = "perf-nash"
    assert (
        report.command_line(args, ("nash",))
        == "python -m benchmarks perf-nash --quick --scaling-tasks 2 4 --threads 1"
    )


def test_missing_optional_dependencies_skip_their_part(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # importing them now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "torchjd", None)
    assert (
        main(
            [
                "perf",
                "--quick",
                "--quiet",
                "--sections",
                "nash",
                "tangent",
                "solvers",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        f"nash: {report.SKIPPED}" in captured.err and f"solvers: {report.SKIPPED}" in captured.err
    )
    markdown = (tmp_path / "PERFORMANCE.md").read_text()
    assert (
        markdown.count(report.SKIPPED) >= 5
    )  # the summary rows and sections of nash and solvers, the SciPy part
    assert "seconds per tangent direction" in markdown  # the tangent costs need neither
    payload = json.loads((tmp_path / "perf.json").read_text())
    assert (
        payload["sections"]["nash"]["skipped"] == report.SKIPPED
        and payload["sections"]["tangent"]["results"]["scipy_comparison"] is None
    )
    assert payload["sections"]["solvers"]["skipped"] == report.SKIPPED


def test_alias_whose_only_section_is_skipped_exits_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    assert main(["perf-nash", "--quick", "--quiet", "--out", str(tmp_path)]) == 2
    assert report.SKIPPED in capsys.readouterr().err


def test_engine_ratios_without_the_reference_solver_leave_only_it_out() -> None:
    timings = {
        f"{key}_{suffix}": 2.0
        for key in engine_step.GRADIENT_METHODS
        for suffix in ("step", "weights", "weights_in_place")
    }
    timings |= {"ls_step": 1.0, "jacobian_loop": 4.0, "jacobian_batched": 1.0}
    ratios = engine_step.ratios(timings)
    assert ratios.pop(engine_step.NASH_REFERENCE_RATIO) is None
    assert ratios["batched / looped per-task gradients"] == 0.25 and all(
        value > 0 for value in ratios.values()
    )
    assert "skipped: pip install -r requirements-bench.txt" in engine_step.ratio_cell(
        None, missing="cvxpy"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_run_on_cuda(tmp_path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(
            [
                "perf",
                "--quick",
                "--quiet",
                "--device",
                "cuda",
                "--sections",
                "engine",
                "representation",
                "scaling",
                "--out",
                str(tmp_path),
            ]
        )
    assert status == 0
    payload = json.loads((tmp_path / "perf.json").read_text())
    assert (
        payload["config"]["device"] == "cuda"
        and "Performance report (GPU)" in (tmp_path / "PERFORMANCE.md").read_text()
    )
    for ratios in payload["sections"]["scaling"]["results"]["ratios"].values():
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())


def test_the_committed_report_is_a_full_run() -> None:
    committed = Path(report.REPORT_FOLDER) / "PERFORMANCE.md"
    text = committed.read_text()
    assert "--quick" not in text.split("\n\n")[1]  # the provenance line
    for number, name in enumerate(report.SECTIONS, start=1):
        assert f"## {number}. " in text and f"`--sections {name}`" in text
