"""The training example docs/examples/train.py: every kind of method runs in its quick mode and
logs weights and losses, a run interrupted mid-epoch and resumed ends bit for bit where an
uninterrupted run ends, and bad method specs exit with a clear error.

The script is imported and its `main(argv)` called in this process (the MultiMNIST data is
composed once); the bad-spec case also runs it as a file, as a user does.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "train.py"
QUICK = ["--epochs", "2", "--max-steps", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("docs_examples_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same(left, right, where: str = "checkpoint") -> None:
    """Nested state dicts equal exactly: tensors bit for bit, plain values by ==."""
    if isinstance(left, torch.Tensor):
        assert (
            isinstance(right, torch.Tensor)
            and left.dtype == right.dtype
            and torch.equal(left, right)
        ), where
    elif isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), where
        for key in left:
            _assert_same(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple)) and len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            _assert_same(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("mgda", []),  # stateless gradient weighting
        ("famo", []),  # stateful: after_step with the losses recomputed after the step
        ("uw", []),  # learnable log-variances in the optimiser
        ("rlw:distribution=dirichlet", []),  # random, from its own generator
        ("rotograd", ["--representation"]),  # representation mode only
    ],
)
def test_quick_run_logs_weights_and_losses(train, tmp_path, method, extra):
    assert train.main([*QUICK, "--method", method, "--out", str(tmp_path), *extra]) == 0
    rows = _rows(tmp_path)
    steps = [row for row in rows if row["event"] == "step"]
    epochs = [row for row in rows if row["event"] == "epoch"]
    assert [(row["epoch"], row["step"]) for row in steps] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [row["epoch"] for row in epochs] == [1, 2]
    for row in steps:
        assert len(row["losses"]) == len(row["weights"]) == 2
        assert all(math.isfinite(value) for value in row["losses"] + row["weights"])
    assert all(set(row["test_accuracy"]) == {"left", "right"} for row in epochs)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["settings"]["method"] == train.core.canonical_spec(method)
    assert {"model", "optimizer", "method", "rng"} <= set(state)
    if method in (
        "famo",
        "uw",
        "rlw:distribution=dirichlet",
    ):  # their weights move from step to step
        assert len({tuple(row["weights"]) for row in steps}) == len(steps)
    if method.startswith("rlw"):
        assert all(
            abs(sum(row["weights"]) - 1) < 1e-6 for row in steps
        )  # Dirichlet draws on the simplex


def test_random_method_is_reproducible_from_its_seed(train, tmp_path):
    for name in ("a", "b"):
        assert train.main([*QUICK, "--method", "rlw", "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "log.jsonl").read_text() == (tmp_path / "b" / "log.jsonl").read_text()
    assert train.main([*QUICK, "--method", "rlw", "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert [row.get("weights") for row in _rows(tmp_path / "a")] != [
        row.get("weights") for row in _rows(tmp_path / "c")
    ]


@pytest.mark.parametrize("method", ["dwa", "famo", "rlw", "uw"])
def test_resume_after_interruption_equals_uninterrupted_run(train, tmp_path, monkeypatch, method):
    argv = ["--epochs", "3", "--max-steps", "3", "--batch-size", "32", "--method", method]
    assert train.main([*argv, "--out", str(tmp_path / "whole")]) == 0

    calls = {"count": 0}
    step = train.train_step

    def interrupted_step(*args, **kwargs):  # Ctrl-C in the middle of the third epoch
        calls["count"] += 1
        if calls["count"] == 8:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", interrupted_step)
    assert train.main([*argv, "--out", str(tmp_path / "parts")]) == 130
    last = _rows(tmp_path / "parts")[-1]
    assert (last["event"], last["epoch"], last["step"]) == (
        "step",
        3,
        0,
    )  # the log holds part of epoch 3
    assert torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train, "train_step", step)
    assert train.main([*argv, "--out", str(tmp_path / "parts"), "--resume"]) == 0

    assert (tmp_path / "parts" / "log.jsonl").read_text() == (
        tmp_path / "whole" / "log.jsonl"
    ).read_text()
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    _assert_same(whole, parts)


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_to_overwrite(
    train, tmp_path, capsys
):
    assert (
        train.main(
            [
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "32",
                "--method",
                "ls",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--epochs", "2", "--method", "ls", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            [
                "--epochs",
                "2",
                "--max-steps",
                "1",
                "--batch-size",
                "32",
                "--method",
                "mgda",
                "--out",
                str(tmp_path),
                "--resume",
            ]
        )
    assert exit_info.value.code == 2 and "other settings (method)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cagrad:cc=1", "cagrad has no hyperparameter 'cc'; its hyperparameters: c,"),
        ("cagrad:c=-1", "must be a finite number >= 0, got -1.0"),
        ("dibsmtl:steps", "'steps' is not key=value"),
        ("rotograd", "works on the shared features only: add --representation"),
    ],
)
def test_bad_spec_exits_with_a_clear_error(train, tmp_path, capsys, spec, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--method", spec, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not tmp_path.joinpath("log.jsonl").exists()


def test_script_runs_as_a_file_and_names_the_methods_for_an_unknown_one(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--method", "nosuch", "--out", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        "--method 'nosuch': unknown method 'nosuch'; choose one of:" in done.stderr
        and "dibsmtl" in done.stderr
    )
    assert "Traceback" not in done.stderr
