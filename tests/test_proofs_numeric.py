"""`python -m proofs_numeric`: every claim passes in quick mode, and a violated criterion fails."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from matplotlib.figure import Figure

from proofs_numeric import dibs_fairness
from proofs_numeric.__main__ import main
from proofs_numeric.claim import ClaimResult, stored_or_run


def test_quick_run_passes_and_writes_results(tmp_path, capsys) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert "PASS" in capsys.readouterr().out
    result = json.loads((tmp_path / "dibs_fairness.json").read_text())
    assert result["quick"] is True
    assert result["passed"] and result["data"]["checks"]["dibs_final_error"]["value"] < dibs_fairness.TOLERANCE
    assert (tmp_path / "dibs_fairness.png").stat().st_size > 0


def test_a_violated_criterion_fails_the_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(dibs_fairness, "TOLERANCE", 1e-30)  # no run of 2,000 steps gets this close
    assert main(["--quick", "--claim", "dibs_fairness", "--out", str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_claims_in_two_processes_give_the_rows_and_files_of_one(tmp_path, capsys) -> None:
    flags = ["--quick", "--claim", "tangent_accuracy", "--claim", "dibs_fairness"]
    assert main([*flags, "--processes", "1", "--out", str(tmp_path / "one")]) == 0
    one = capsys.readouterr().out
    assert main([*flags, "--processes", "2", "--out", str(tmp_path / "two")]) == 0
    two = capsys.readouterr().out
    assert one.splitlines()[:3] == two.splitlines()[:3]  # the header and both rows, in the order asked
    assert one.splitlines()[1].startswith("tangent_accuracy")
    for name in ("tangent_accuracy", "dibs_fairness"):
        first, second = (json.loads((tmp_path / run / f"{name}.json").read_text()) for run in ("one", "two"))
        assert (first["passed"], first["measured"]) == (second["passed"], second["measured"])
        assert (tmp_path / "two" / f"{name}.png").stat().st_size > 0


def test_processes_must_be_a_positive_integer(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--processes", "0"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_predicted_errors_follow_the_contraction() -> None:
    import torch

    starts = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    errors = dibs_fairness.predicted_errors(starts, lambda k: 0.25, 2)
    torch.testing.assert_close(errors, torch.tensor([[0.4, 0.0], [0.2, 0.0], [0.1, 0.0]], dtype=torch.float64))


def test_quick_results_go_to_their_own_folder_by_default(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--quick", "--claim", "dibs_fairness"]) == 0
    assert json.loads((tmp_path / "results/proofs_numeric/quick/dibs_fairness.json").read_text())["quick"] is True
    assert not (tmp_path / "results/proofs_numeric/dibs_fairness.json").exists()  # never over a full result


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
    assert (again.name, again.passed, again.measured, again.data, again.figure) == ("fake", True, "m", {"values": [1.5, 2.5]}, None)
    stored_or_run(module, quick=False, out=tmp_path)
    assert calls == [True, False]  # a quick result never stands in for a full one
    (tmp_path / "fake.json").write_text('{"name": "fake", "passed": tr')  # a torn or foreign file: rerun
    stored_or_run(module, quick=False, out=tmp_path)
    assert calls == [True, False, False]
    assert ClaimResult.load(tmp_path / "missing.json") is None


def test_the_typed_api_matches_the_command_line(tmp_path) -> None:
    """`run(Config(...))` is what `python -m proofs_numeric` runs: the bare command's config is
    `Config()`, and a run returns the rows it saved."""
    from proofs_numeric.__main__ import Config, build_parser, run

    assert Config.from_args(build_parser().parse_args([])) == Config()
    result = run(Config(quick=True, claim=("dibs_fairness",), out=tmp_path, processes=1))
    assert [row[0] for row in result.rows] == ["dibs_fairness"] and result.passed and result.out == tmp_path
    assert (tmp_path / "dibs_fairness.json").is_file() and "dibs_fairness  PASS" in result.report
    with pytest.raises(ValueError, match="unknown claims"):
        run(Config(claim=("no_such_claim",)))


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    import proofs_numeric.__main__ as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_claims", interrupted)
    assert command.main(["--quick", "--out", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().err
