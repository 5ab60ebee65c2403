"""`python -m benchmarks toy`: the DiBS-MTL toy on the resumable harness (benchmarks/experiments/toy.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.experiments import toy
from benchmarks.harness.runs import ResultStore

FIGURES = ("toy_nominal", "toy_transformed", "toy_transformed_scaled", "toy_invariance_gap")


def run_files(out: Path) -> dict[str, float]:
    """Result file name -> modification time (ns) of every finished run under `out`."""
    return {
        path.name: path.stat().st_mtime_ns for path in sorted((out / "toy" / "runs").glob("*.json"))
    }


def results(out: Path) -> dict[tuple[str, int, str], dict]:
    return {
        (r["spec"]["method"], r["spec"]["seed"], r["spec"]["transform"]): r["result"]
        for r in ResultStore(out).records("toy")
    }


def gaps(found: dict, method: str, transform: str = "0:power:4") -> list[float]:
    nominal, transformed = found[(method, 0, "none")], found[(method, 0, transform)]
    return [math.dist(a, b) for a, b in zip(nominal["endpoints"], transformed["endpoints"])]


@pytest.fixture
def no_figures(monkeypatch) -> None:
    """Skip drawing (seconds of matplotlib per call) in tests about something else."""
    monkeypatch.setattr(toy, "draw_figures", lambda *args, **kwargs: [])


@pytest.fixture
def counted_runs(monkeypatch) -> list[tuple[str, str]]:
    """Records (method, transform) of every run the sweep actually executes (in its batches)."""
    calls: list[tuple[str, str]] = []
    real = toy.run_toy_experiments

    def counting(runs, /, **kwargs):
        calls.extend((method, transform) for method, transform, _ in runs)
        return real(runs, **kwargs)

    monkeypatch.setattr(toy, "run_toy_experiments", counting)
    return calls


def test_invariance_is_visible_in_the_results_and_the_table(tmp_path, capsys, no_figures) -> None:
    assert (
        main(
            ["toy", "--steps", "300", "--methods", "ls,dibsmtl", "--out", str(tmp_path), "--quiet"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    found = results(tmp_path)
    assert set(found) == {(m, 0, t) for m in ("ls", "dibsmtl") for t in ("none", "0:power:4")}
    assert (
        max(gaps(found, "dibsmtl")) < 1e-12
    )  # float64: the transformed run sees the same unit gradients
    assert max(gaps(found, "ls")) > 1e-2  # the transformed task dominates linear scalarisation
    run = found[("dibsmtl", 0, "0:power:4")]
    assert run["trajectory"]["steps"][0] == 0 and run["trajectory"]["steps"][-1] == 300
    assert len(run["trajectory"]["steps"]) == 301  # record every max(1, 300 // 500) = 1 steps
    assert torch.tensor(run["trajectory"]["x"]).shape == (301, 5, 2)
    # the stored losses are the untransformed ones, at the stored points; the methods saw h(f1)
    torch.testing.assert_close(
        torch.tensor(run["trajectory"]["losses"][-1]), torch.tensor(run["end_losses"])
    )
    assert run["end_losses_seen"][0][0] == pytest.approx(
        math.copysign(run["end_losses"][0][0] ** 4, run["end_losses"][0][0])
    )
    assert all(d >= 0 for d in run["distance_to_front"]) and all(
        r >= 0 for r in run["final_residual"]
    )
    summary = (tmp_path / "toy" / "summary.md").read_text()
    assert "| dibsmtl | (-8.5, 7.5) |" in summary and "max gap, 0:power:4" in summary
    assert "| dibsmtl |" in printed and "wrote" in printed


def test_figures_are_written_as_png_and_pdf(tmp_path) -> None:
    assert (
        main(["toy", "--steps", "40", "--methods", "dibsmtl,uw", "--out", str(tmp_path), "--quiet"])
        == 0
    )
    for name in FIGURES:
        for extension in ("png", "pdf"):
            path = tmp_path / "toy" / f"{name}.{extension}"
            assert path.stat().st_size > 1000, path
    assert not list((tmp_path / "toy").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_rerun_reuses_finished_runs_and_runs_only_new_ones(
    tmp_path, counted_runs, no_figures
) -> None:
    out = ["--steps", "30", "--out", str(tmp_path), "--quiet"]
    assert main(["toy", "--methods", "ls", *out]) == 0
    first = run_files(tmp_path)
    assert len(first) == 2 and len(counted_runs) == 2
    assert main(["toy", "--methods", "ls,dibsmtl", *out]) == 0
    assert counted_runs[2:] == [("dibsmtl", "none"), ("dibsmtl", "0:power:4")]  # ls was not rerun
    second = run_files(tmp_path)
    assert {name: second[name] for name in first} == first  # its files were not rewritten
    assert (
        main(["toy", "--methods", "ls", "--steps", "31", "--out", str(tmp_path), "--quiet"]) == 0
    )  # other settings
    assert len(counted_runs) == 6 and len(run_files(tmp_path)) == 6
    assert (
        main(["toy", "--methods", "ls", "--fresh", *out]) == 0
    )  # --fresh reruns the matching runs only
    assert (
        counted_runs[6:] == [("ls", "none"), ("ls", "0:power:4")] and len(run_files(tmp_path)) == 6
    )


def test_a_corrupt_result_file_is_set_aside_and_redone(tmp_path, counted_runs, no_figures) -> None:
    out = ["--steps", "20", "--methods", "ls", "--out", str(tmp_path), "--quiet"]
    assert main(["toy", *out]) == 0
    victim = next(p for p in (tmp_path / "toy" / "runs").glob("*.json") if "0-power-4" in p.name)
    text = victim.read_text()
    victim.write_text(text[: len(text) // 2])  # a run killed mid-write, or a bad disk
    assert main(["toy", *out]) == 0
    assert counted_runs == [("ls", "none"), ("ls", "0:power:4"), ("ls", "0:power:4")]
    assert victim.with_suffix(".json.corrupt").read_text() == text[: len(text) // 2]
    assert json.loads(victim.read_text())["result"]["method"] == "ls"


def test_stateful_methods_run_batched_with_state_per_start(tmp_path, no_figures) -> None:
    assert (
        main(
            ["toy", "--steps", "20", "--methods", "uw,famo,dwa", "--out", str(tmp_path), "--quiet"]
        )
        == 0
    )
    found = results(tmp_path)
    assert len(found) == 6
    starts = toy.TwoTaskToy().default_starts(dtype=torch.float64)
    for (method, _, transform), run in found.items():
        alone = toy.run_toy_experiment(
            method, transform, steps=20
        )  # alone, not in the batch: the same run
        assert alone["endpoints"] == run["endpoints"]
        moved = (torch.tensor(run["endpoints"]) - starts).norm(dim=-1)
        assert bool((moved > 1e-3).all()) and bool(
            (moved < 20 * 1e-3 * 2).all()
        )  # 20 Adam steps of at most ~lr each


def test_random_methods_draw_from_the_seed(tmp_path, no_figures) -> None:
    assert (
        main(
            [
                "toy",
                "--steps",
                "20",
                "--methods",
                "rlw",
                "--seeds",
                "0,1",
                "--transforms",
                "none",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    found = results(tmp_path)
    again = toy.run_toy_experiment("rlw", "none", steps=20, seed=1)
    assert (
        again["endpoints"] == found[("rlw", 1, "none")]["endpoints"]
    )  # reproducible from the seed
    assert found[("rlw", 0, "none")]["endpoints"] != found[("rlw", 1, "none")]["endpoints"]
    assert (
        "| rlw | 1 | (-8.5, 7.5) |" in (tmp_path / "toy" / "summary.md").read_text()
    )  # a seed column with several seeds


def test_quick_mode_is_stored_and_reported_apart(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "toy",
                "--quick",
                "--methods",
                "dibsmtl",
                "--transforms",
                "none",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    (record,) = ResultStore(tmp_path).records("toy")
    assert record["spec"]["config"]["steps"] == toy.QUICK_STEPS == 2000
    assert (
        record["spec"]["config"]["record_every"] == 4
        and len(record["result"]["trajectory"]["steps"]) == 501
    )
    assert (tmp_path / "toy" / "quick" / "summary.md").exists() and (
        tmp_path / "toy" / "quick" / "toy_nominal.png"
    ).exists()
    assert (
        "have not reached the front" in capsys.readouterr().out
    )  # says what a short run cannot show
    assert "have not reached the front" in (tmp_path / "toy" / "quick" / "summary.md").read_text()
    assert not (tmp_path / "toy" / "summary.md").exists()
    assert not (
        tmp_path / "toy" / "quick" / "toy_transformed.png"
    ).exists()  # no transformed runs, no such figure
    assert "--quick" in (tmp_path / "toy" / "quick" / "summary.md").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods", "ls,nash"], "nash"),
        (["--methods", "ls,ls"], "twice"),
        (["--transforms", "none,0:cube"], "cube"),
        (["--transforms", "none,2:power:4"], "tasks are 0..1"),
        (["--transforms", "none,0:log"], "domain"),
        (["--steps", "0"], "--steps"),
        (["--record-every", "0"], "--record-every"),
        (["--lr", "nan"], "--lr"),
        (["--seeds", "a"], "--seeds"),
    ],
)
def test_bad_settings_fail_before_any_run(tmp_path, capsys, arguments, message) -> None:
    assert main(["toy", "--steps", "5", *arguments, "--out", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def test_record_every_and_a_second_transform(tmp_path) -> None:
    arguments = [
        "--steps",
        "25",
        "--record-every",
        "10",
        "--methods",
        "dibsmtl",
        "--transforms",
        "none,0:power:4,1:exp",
    ]
    assert main(["toy", *arguments, "--out", str(tmp_path), "--quiet"]) == 0
    found = results(tmp_path)
    assert found[("dibsmtl", 0, "1:exp")]["trajectory"]["steps"] == [0, 10, 20, 25]
    assert max(gaps(found, "dibsmtl", "1:exp")) < 1e-12
    names = {path.name for path in (tmp_path / "toy").glob("*.png")}
    assert names == {
        "toy_nominal.png",
        "toy_transformed_0-power-4.png",
        "toy_transformed_0-power-4_scaled.png",
        "toy_transformed_1-exp.png",
        "toy_transformed_1-exp_scaled.png",
        "toy_invariance_gap_0-power-4.png",
        "toy_invariance_gap_1-exp.png",
    }
