"""`python -m proofs_numeric`: every claim passes in quick mode, and a violated criterion fails."""

from __future__ import annotations

import json

from proofs_numeric import dibs_fairness
from proofs_numeric.__main__ import main


def test_quick_run_passes_and_writes_results(tmp_path, capsys) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert "PASS" in capsys.readouterr().out
    result = json.loads((tmp_path / "dibs_fairness.json").read_text())
    assert result["passed"] and result["data"]["checks"]["dibs_final_error"]["value"] < dibs_fairness.TOLERANCE
    assert (tmp_path / "dibs_fairness.png").stat().st_size > 0


def test_a_violated_criterion_fails_the_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(dibs_fairness, "TOLERANCE", 1e-30)  # no run of 2,000 steps gets this close
    assert main(["--quick", "--claim", "dibs_fairness", "--out", str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_predicted_errors_follow_the_contraction() -> None:
    import torch

    starts = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    errors = dibs_fairness.predicted_errors(starts, lambda k: 0.25, 2)
    torch.testing.assert_close(errors, torch.tensor([[0.4, 0.0], [0.2, 0.0], [0.1, 0.0]], dtype=torch.float64))
