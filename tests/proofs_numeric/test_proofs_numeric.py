"""`python -m proofs_numeric`: every claim passes in quick mode, a violated criterion fails, rows
print as their claims finish, several values get a sub-table, and a run says how long it takes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.figure import Figure

from proofs_numeric import dibs_fairness, report
from proofs_numeric.__main__ import CLAIMS, main
from proofs_numeric.claim import ClaimResult, stored_or_run

QUICK_FOLDER = Path("proofs_numeric/quick")
"""Where a quick run stores its claims under the root `--out` names."""


def test_quick_run_passes_and_writes_results(tmp_path, capsys) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err.startswith("8 claims, quick mode") and "expected about" in err
    assert lines[-1] == f"all 8 claims pass; results in {tmp_path / QUICK_FOLDER}"
    rows = lines[1:9]  # the main table: one line per claim, none a long cell
    assert sorted(row.split()[0] for row in rows) == sorted(CLAIMS) and all(
        row.split()[1] == "PASS" for row in rows
    )
    assert (
        max(len(row) for row in rows)
        <= len("dibs_mtl_convergence  PASS     12 s  ") + report.CELL_WIDTH
    )
    # every claim's own sub-table was built from its real data (a failed one falls back to the cell)
    for title in (
        "dibs_mtl_convergence: checks",
        "invariance: per method",
        "method_invariance: per method",
        "dibs_theorems: checks",
        "dibs_fairness: checks",
        "rlw_theorem: checks",
        "rlw_theorem: per problem",
        "nash_transforms: checks",
        "tangent_accuracy: measured | bound",
    ):
        assert f"\n{title}" in out, title
    result = json.loads((tmp_path / QUICK_FOLDER / "dibs_fairness.json").read_text())
    assert result["quick"] is True
    assert (
        result["passed"]
        and result["data"]["checks"]["dibs_final_error"]["value"] < dibs_fairness.TOLERANCE
    )
    assert (tmp_path / QUICK_FOLDER / "dibs_fairness.png").stat().st_size > 0


def test_a_violated_criterion_fails_the_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(dibs_fairness, "TOLERANCE", 1e-30)  # no run of 2,000 steps gets this close
    assert main(["--quick", "--claim", "dibs_fairness", "--out", str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_claims_in_two_processes_give_the_rows_and_files_of_one(tmp_path) -> None:
    from proofs_numeric.__main__ import Config, run

    config = Config(quick=True, claim=("tangent_accuracy", "dibs_fairness"))
    one, two = (
        run(config.replace(processes=n, out=tmp_path / folder))
        for n, folder in ((1, "one"), (2, "two"))
    )
    assert [row[:4] for row in one.rows] == [
        row[:4] for row in two.rows
    ]  # every row but its seconds
    assert [row.details for row in one.rows] == [row.details for row in two.rows]
    assert [row.name for row in two.rows] == [
        "tangent_accuracy",
        "dibs_fairness",
    ]  # the order asked
    for name in ("tangent_accuracy", "dibs_fairness"):
        first, second = (
            json.loads((tmp_path / run / QUICK_FOLDER / f"{name}.json").read_text())
            for run in ("one", "two")
        )
        assert (first["passed"], first["measured"]) == (second["passed"], second["measured"])
        assert (tmp_path / "two" / QUICK_FOLDER / f"{name}.png").stat().st_size > 0


def test_processes_must_be_a_positive_integer(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--processes", "0"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_predicted_errors_follow_the_contraction() -> None:
    import torch

    starts = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    errors = dibs_fairness.predicted_errors(starts, lambda k: 0.25, 2)
    torch.testing.assert_close(
        errors, torch.tensor([[0.4, 0.0], [0.2, 0.0], [0.1, 0.0]], dtype=torch.float64)
    )


def test_quick_results_go_to_their_own_folder_by_default(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--quick", "--claim", "dibs_fairness"]) == 0
    assert (
        json.loads((tmp_path / "results/proofs_numeric/quick/dibs_fairness.json").read_text())[
            "quick"
        ]
        is True
    )
    assert not (
        tmp_path / "results/proofs_numeric/dibs_fairness.json"
    ).exists()  # never over a full result


def _counting_claim(calls: list[bool]) -> SimpleNamespace:
    def run(*, quick: bool) -> ClaimResult:
        calls.append(quick)
        figure = Figure(figsize=(1, 1))
        figure.subplots().plot([0, 1])
        return ClaimResult("fake", "a statement", True, "m", "b", {"values": [1.5, 2.5]}, figure)

    return SimpleNamespace(NAME="fake", run=run)


def test_a_stored_claim_is_read_not_rerun_when_its_setting_matches(tmp_path) -> None:
    calls: list[bool] = []
    module = _counting_claim(calls)
    first = stored_or_run(module, quick=True, out=tmp_path)
    assert calls == [True] and first.quick is True and (tmp_path / "fake.png").exists()
    again = stored_or_run(module, quick=True, out=tmp_path)
    assert calls == [True]  # read from the store
    assert (again.name, again.passed, again.measured, again.data, again.figure) == (
        "fake",
        True,
        "m",
        {"values": [1.5, 2.5]},
        None,
    )
    stored_or_run(module, quick=False, out=tmp_path)
    assert calls == [True, False]  # a quick result never stands in for a full one
    (tmp_path / "fake.json").write_text(
        '{"name": "fake", "passed": tr'
    )  # a torn or foreign file: rerun
    stored_or_run(module, quick=False, out=tmp_path)
    assert calls == [True, False, False]
    assert ClaimResult.load(tmp_path / "missing.json") is None


def test_the_typed_api_matches_the_command_line(tmp_path) -> None:
    """`run(Config(...))` is what `python -m proofs_numeric` runs: the bare command's config is
    `Config()`, and a run returns the rows it saved."""
    from proofs_numeric.__main__ import Config, build_parser, run

    assert Config.from_args(build_parser().parse_args([])) == Config()
    result = run(Config(quick=True, claim=("dibs_fairness",), out=tmp_path, processes=1))
    assert (
        [row[0] for row in result.rows] == ["dibs_fairness"]
        and result.passed
        and result.out == tmp_path / QUICK_FOLDER
    )
    assert (
        tmp_path / QUICK_FOLDER / "dibs_fairness.json"
    ).is_file() and "dibs_fairness  PASS" in result.report
    with pytest.raises(ValueError, match="unknown claims"):
        run(Config(claim=("no_such_claim",)))


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    import proofs_numeric.__main__ as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_claims", interrupted)
    assert command.main(["--quick", "--out", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().err


def _fake_claims(monkeypatch, delays: dict[str, float], *, on_run=None) -> None:
    """`python -m proofs_numeric`'s claims replaced by fakes that take `delays` seconds, with two
    checks each (`on_run(name)` is called as a fake starts)."""
    import proofs_numeric.__main__ as command

    def fake(name: str, delay: float) -> SimpleNamespace:
        def run(*, quick: bool) -> ClaimResult:
            if on_run is not None:
                on_run(name)
            time.sleep(delay)
            checks = {
                "gap": {"value": 1e-14, "bound": 1e-12},
                "spread": {"value": 0.5, "bound": 0.1, "relation": ">="},
            }
            return ClaimResult(
                name,
                "a statement",
                True,
                "gap 1e-14, spread 0.5",
                "<= 1e-12, >= 0.1",
                {"checks": checks},
            )

        return SimpleNamespace(NAME=name, STATEMENT="a statement", run=run)

    monkeypatch.setattr(
        command, "CLAIMS", {name: fake(name, delay) for name, delay in delays.items()}
    )


def test_each_row_is_printed_as_its_claim_finishes(tmp_path, monkeypatch, capsys) -> None:
    printed_before: dict[str, tuple[str, str]] = {}
    _fake_claims(
        monkeypatch,
        {"first": 0.0, "second": 0.0},
        on_run=lambda name: printed_before.setdefault(name, capsys.readouterr()),
    )
    assert main(["--quick", "--processes", "1", "--out", str(tmp_path)]) == 0
    rest = capsys.readouterr().out
    out, err = printed_before["first"]
    assert err.startswith("2 claims, quick mode") and out.split() == [
        "claim",
        "verdict",
        "time",
        "measured",
        "|",
        "bound",
    ]
    assert (
        printed_before["second"].out.startswith("first ") and "PASS" in printed_before["second"].out
    )  # before the second ran
    assert (
        rest.startswith("second ")
        and rest.splitlines()[-1] == f"all 2 claims pass; results in {tmp_path / QUICK_FOLDER}"
    )


def test_rows_come_in_the_order_claims_finish_and_the_report_in_table_order(
    tmp_path, monkeypatch
) -> None:
    from proofs_numeric.__main__ import Config, run

    _fake_claims(monkeypatch, {"slow": 1.5, "fast": 0.0})
    finished: list[str] = []
    result = run(
        Config(quick=True, out=tmp_path, processes=2), on_row=lambda row: finished.append(row.name)
    )
    assert finished == ["fast", "slow"]  # printed as they finish: the fast one is not held back
    assert [row.name for row in result.rows] == ["slow", "fast"] and result.rows[0].seconds >= 1.5
    assert result.report.splitlines()[1].startswith("slow ") and result.report.splitlines()[
        2
    ].startswith("fast ")


def test_a_claim_with_several_values_gets_a_sub_table() -> None:
    checks = {
        "gap": {"value": 2e-11, "bound": 1e-12},
        "spread": {"value": 0.5, "bound": 0.1, "relation": ">="},
        "runs": {"value": 0.0, "bound": 0.0},
        "diverged": {"value": math.inf, "bound": 1.0, "sense": "<="},
    }
    measured, bound = (
        "gap 2e-11, spread 0.5, runs 0, diverged inf" + " and more" * 10,
        "<= 1e-12, >= 0.1, <= 0, <= 1",
    )
    row = report.claim_row(
        ClaimResult("demo", "a statement", False, measured, bound, {"checks": checks}), seconds=3.0
    )
    (table,) = row.details
    assert table.rows == (
        ("gap", "2e-11", "<= 1e-12", "FAIL"),
        ("spread", "0.5", ">= 0.1", "ok"),
        ("runs", "0", "<= 0", "ok"),
        ("diverged", "inf", "<= 1", "FAIL"),
    )
    assert (
        report.main_cell(row) == "4 checks, failing: gap, diverged (table below)"
    )  # the long cell, summarised
    lines = report.render_table("demo", table)
    assert lines[0] == "demo: checks" and lines[1].split() == [
        "check",
        "measured",
        "bound",
        "verdict",
    ]
    assert (
        len({line.index("<=" if "<=" in line else ">=") for line in lines[2:]}) == 1
    )  # columns aligned
    text = report.report([row], Path("out"))
    assert text.splitlines()[1].startswith("demo   FAIL     3.0 s  4 checks") and text.endswith(
        "1 of 1 claims FAIL: demo; results in out"
    )


def test_a_long_cell_without_tables_is_split_and_a_short_one_stays() -> None:
    long = ClaimResult(
        "demo",
        "s",
        True,
        "slopes 2.0, 1.9; saving " + "x" * 100 + "; error 0",
        "slopes >= 1.8; saving >= 5x; error <= 1e-8",
    )
    (table,) = report.detail_tables(long)
    assert table.rows == (
        ("slopes 2.0, 1.9", "slopes >= 1.8"),
        ("saving " + "x" * 100, "saving >= 5x"),
        ("error 0", "error <= 1e-8"),
    )
    short = report.claim_row(ClaimResult("demo", "s", True, "error 0", "<= 1e-8"), seconds=0.5)
    assert short.details == () and report.main_cell(short) == "error 0 | <= 1e-8"


def test_data_of_another_shape_falls_back_to_the_cell_without_losing_the_row(caplog) -> None:
    result = ClaimResult(
        "invariance", "s", True, "a; " + "b" * 120, "c; d", {"invariant": {"dibs": {}}}
    )  # no measures
    (table,) = report.detail_tables(result)
    assert table.unit == "measurements" and "no sub-table" in caplog.text


def test_the_expected_duration_follows_the_schedule(monkeypatch) -> None:
    assert set(CLAIMS) <= set(report.EXPECTED_SECONDS)  # a new claim needs its timing here
    monkeypatch.setattr(
        report, "EXPECTED_SECONDS", {"a": (100.0, 10.0), "b": (60.0, 6.0), "c": (50.0, 5.0)}
    )
    monkeypatch.setattr(report, "STARTUP_SECONDS", 0.0)
    assert (
        report.expected_seconds(["c", "a", "b"], quick=False, processes=2) == 110.0
    )  # a alone; b then c
    assert report.expected_seconds(["c", "a", "b"], quick=False, processes=1) == 210.0
    assert report.expected_seconds(["b"], quick=True, processes=2) == 6.0
    line = report.expected_duration_line(["a", "b", "c"], quick=False, processes=2)
    assert (
        line
        == "3 claims, full mode, 2 processes: expected about 2 min on the project's 2-core CPU machine (approximate; --quick: about 11 s)"
    )


def test_the_expected_full_run_matches_the_measured_one_and_is_printed_first(
    tmp_path, capsys
) -> None:
    seconds = report.expected_seconds(list(CLAIMS), quick=False, processes=2)
    assert 330 <= seconds <= 450  # docs/DECISIONS.md: 366 s and 405 s on an idle 2-core machine
    assert (
        main(["--quick", "--claim", "dibs_fairness", "--processes", "1", "--out", str(tmp_path)])
        == 0
    )
    first = capsys.readouterr().err.splitlines()[0]  # a status line, not part of the report
    assert (
        first.startswith("1 claim, quick mode, 1 process: expected about ")
        and "(approximate; full run: about " in first
    )
