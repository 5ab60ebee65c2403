"""The pareto_multimnist experiment: a quick run end to end, reuse on rerun, the walk's direction,
and the reported hypervolumes (benchmarks/experiments/pareto_multimnist.py)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.experiments import pareto_multimnist as experiment
from core.errors import InvalidHyperparameterError
from core.metrics import hypervolume, non_dominated_mask


def parse(argv: list[str]) -> experiment.Config:
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    return experiment.Config.from_args(parser.parse_args(argv))


def quick_args(out: Path) -> experiment.Config:
    return experiment.Config(quick=True, out=out, device="cpu", progress=False)


def stored_files(out: Path) -> dict[str, int]:
    folder = out / experiment.EXPERIMENT
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in [*folder.glob("runs/*.json"), *folder.glob("models/*.pt")]
    }


def read_report(out: Path) -> dict:
    return json.loads(
        (experiment.report_folder(out, quick=True) / "pareto_multimnist.json").read_text()
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pareto_multimnist")
    result = experiment.run(quick_args(out))
    assert result.details["report"] == read_report(out)
    assert (
        len(result.records) == experiment.QUICK.num_starts * 3
        and "hypervolume" in result.report.lower()
    )
    return out, read_report(out)


def test_quick_run_writes_runs_models_summary_and_figure(quick_run) -> None:
    out, report = quick_run
    settings = experiment.QUICK
    folder = out / experiment.EXPERIMENT
    num_walks = settings.num_starts * 2
    assert len(list(folder.glob("runs/*.json"))) == settings.num_starts + num_walks
    assert len(list(folder.glob("models/*.pt"))) == settings.num_starts
    assert not list(
        folder.glob("checkpoints/*.pt")
    )  # train_run's checkpoints are gone; the weights were kept
    quick = experiment.report_folder(out, quick=True)
    for name in ("summary.md", "front.png", "front.pdf", "pareto_multimnist.json"):
        assert (quick / name).stat().st_size > 0, name
    assert (quick / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = report["seeds"]["0"]
    points = data["points"]
    assert len(points) == settings.num_starts + num_walks * settings.walk.num_steps
    for point in points:
        assert len(point["test_error"]) == 2 and len(point["train_loss"]) == 2
        assert all(0 <= e <= 100 for e in point["test_error"]) and all(
            v > 0 for v in point["train_loss"]
        )
    assert [p["weights"] for p in points if p["step"] == 0] == experiment.preferences(
        settings.num_starts
    )
    summary = (quick / "summary.md").read_text()
    assert "Hypervolume" in summary and "points / minute" in summary
    assert (
        summary.count("| e1 |")
        == summary.count("| e2 |")
        == settings.num_starts * settings.walk.num_steps
    )
    cost = data["cost"]
    assert cost["walk_points"] == num_walks * settings.walk.num_steps and cost["walk_minutes"] > 0
    assert cost["ratio_walk_to_weighted_sum"] == pytest.approx(
        cost["walk_points_per_minute"] / cost["weighted_sum_points_per_minute"]
    )
    assert cost["ratio_fastest"] == pytest.approx(
        cost["fastest_weighted_sum_minutes_per_model"] / cost["fastest_walk_minutes_per_point"]
    )


def test_start_points_are_the_trained_models(quick_run) -> None:
    """The start's reported test error is that of train_run's last epoch: the kept weights are the
    trained ones."""
    out, report = quick_run
    for point in (p for p in report["seeds"]["0"]["points"] if p["step"] == 0):
        record = json.loads(
            (out / experiment.EXPERIMENT / "runs" / f"{point['run_id']}.json").read_text()
        )
        last = record["result"]["history"][-1]["test"]
        assert point["test_error"] == pytest.approx(
            [100 - last["left_accuracy"], 100 - last["right_accuracy"]]
        )
        assert len(record["result"]["history"]) == experiment.QUICK.epochs


def test_rerun_reuses_every_start_and_walk(quick_run, monkeypatch) -> None:
    out, report = quick_run
    before = stored_files(out)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(experiment, "train_run", must_not_run)
    monkeypatch.setattr(experiment, "tangent_walk", must_not_run)
    assert len(experiment.run(quick_args(out)).records) == experiment.QUICK.num_starts * 3
    assert stored_files(out) == before
    again = read_report(out)
    assert again["seeds"]["0"]["points"] == report["seeds"]["0"]["points"]


def test_walk_lowers_the_walked_tasks_loss(quick_run) -> None:
    """First-order claim of the tangent walk (spec §3, §5.3): along e_i the training loss of task i
    goes down and the other task's goes up or stays. Checked on the first step of every walk (at
    quick scale the walked loss drops by 0.017-0.033 and the other rises by 0.002-0.006, over
    4 seeds x 4 walks; docs/DECISIONS.md)."""
    _, report = quick_run
    points = report["seeds"]["0"]["points"]
    starts = {p["start"]: p for p in points if p["step"] == 0}
    walked, other = [], []
    for point in (p for p in points if p["step"] == 1):
        task = point["direction"] - 1
        change = [
            after - before
            for after, before in zip(point["train_loss"], starts[point["start"]]["train_loss"])
        ]
        walked.append(change[task])
        other.append(change[1 - task])
    assert len(walked) == 2 * experiment.QUICK.num_starts
    assert max(walked) < 0, walked
    assert all(w < o for w, o in zip(walked, other)), (walked, other)
    assert sum(other) / len(other) > -1e-3, other


def test_hypervolumes_match_core_on_the_listed_points(quick_run) -> None:
    _, report = quick_run
    data = report["seeds"]["0"]
    errors = torch.tensor([p["test_error"] for p in data["points"]], dtype=torch.float64)
    is_start = torch.tensor([p["step"] == 0 for p in data["points"]])
    hv = data["hypervolume"]
    assert hv["reference"] == pytest.approx((errors.max(dim=0).values + hv["margin"]).tolist())
    reference = torch.tensor(hv["reference"], dtype=torch.float64)
    assert hv["starts"] == pytest.approx(hypervolume(errors[is_start], reference), rel=1e-12)
    assert hv["starts_and_walk"] == pytest.approx(hypervolume(errors, reference), rel=1e-12)
    assert hv["starts_and_walk"] >= hv["starts"] > 0
    assert [p["non_dominated"] for p in data["points"]] == non_dominated_mask(errors).tolist()
    front = torch.tensor(data["front"]["test_error"], dtype=torch.float64)
    assert hypervolume(front, reference) == pytest.approx(hv["starts_and_walk"], rel=1e-12)


class Retrained(Exception):
    pass


def test_a_start_without_valid_weights_is_retrained(quick_run, tmp_path, monkeypatch) -> None:
    """A start whose weights file is damaged is trained again (and nothing else is): the rerun
    is stopped at its first training call, on a copy of the quick run's folder."""
    source, report = quick_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    start = next(p for p in report["seeds"]["0"]["points"] if p["step"] == 0)
    experiment.model_path(out, start["run_id"]).write_bytes(b"not a model")
    trained = []

    def stop(suite, spec, *args, **kwargs):
        trained.append(spec.run_id)
        raise Retrained

    monkeypatch.setattr(experiment, "train_run", stop)
    with pytest.raises(Retrained):
        experiment.run(quick_args(out))
    assert trained == [start["run_id"]]
    assert not (out / experiment.EXPERIMENT / "runs" / f"{start['run_id']}.json").exists()
    others = {name for name in stored_files(source) if start["run_id"] not in name}
    assert others <= set(stored_files(out))


def test_preferences_follow_the_reference_and_flags_are_checked() -> None:
    reference = [
        (1 / 6, 5 / 6),
        (2 / 6, 4 / 6),
        (3 / 6, 3 / 6),
        (4 / 6, 2 / 6),
        (5 / 6, 1 / 6),
    ]  # evenly_dist(5)
    for ours, theirs in zip(experiment.preferences(5), reference, strict=True):
        assert ours == pytest.approx(theirs) and sum(ours) == pytest.approx(1)
    assert parse([]) == experiment.Config(
        device=parse([]).device
    )  # the flags' defaults are the config's
    assert parse(["--quick", "--no-progress"]).argv() == ["--quick", "--no-progress"]
    assert experiment.settings_from(parse([])) == experiment.Settings()
    custom = experiment.settings_from(parse(["--quick", "--steps", "3", "--hvp-batch", "128"]))
    assert (
        custom.walk.num_steps == 3
        and custom.walk.hvp_batch == 128
        and custom.num_starts == experiment.QUICK.num_starts
    )
    with pytest.raises(InvalidHyperparameterError, match="weighted-sum"):
        experiment.run(parse(["--methods", "mgda"]))
    with pytest.raises(InvalidHyperparameterError, match="none"):
        experiment.run(parse(["--transforms", "left:exp"]))
    with pytest.raises(InvalidHyperparameterError):
        experiment.settings_from(parse(["--steps", "0"]))


# Run ids of the default invocations, computed before `--baselines` existed: the published runs
# must stay reusable.
DEFAULT_RUN_IDS = [
    "ls__none__seed0__37c5daa8a2",
    "ls__none__seed0__c96d2dd62d",
    "ls__none__seed0__6f7f82951f",
    "ls__none__seed0__4b9d276252",
    "ls__none__seed0__41a654c843",
    "tangent-walk__none__seed0__b2f005ee97",
    "tangent-walk__none__seed0__1436d10f4f",
    "tangent-walk__none__seed0__55915a43ac",
    "tangent-walk__none__seed0__f1875dc282",
    "tangent-walk__none__seed0__1f5a934fc4",
    "tangent-walk__none__seed0__b76389dc8c",
    "tangent-walk__none__seed0__49552d1964",
    "tangent-walk__none__seed0__c06f3e4cb3",
    "tangent-walk__none__seed0__5a8295a6a0",
    "tangent-walk__none__seed0__c14a1452bc",
]
QUICK_RUN_IDS = [
    "ls__none__seed0__8a469ed9d7",
    "ls__none__seed0__fef67277c0",
    "tangent-walk__none__seed0__be7893d858",
    "tangent-walk__none__seed0__6356ccb582",
    "tangent-walk__none__seed0__57dbd5ce9b",
    "tangent-walk__none__seed0__ce9695d6e9",
]


def test_default_runs_are_unchanged_and_baselines_add_their_starts() -> None:
    assert [
        spec.run_id for spec in experiment.planned_runs(experiment.Config(device="cpu"))
    ] == DEFAULT_RUN_IDS
    assert [
        spec.run_id for spec in experiment.planned_runs(experiment.Config(quick=True, device="cpu"))
    ] == QUICK_RUN_IDS
    paper = experiment.planned_runs(
        experiment.Config(device="cpu", baselines="gradnorm,uw,mgda,pmtl,ls")
    )
    starts = [spec for spec in paper if spec.config["role"] == "start"]
    assert [spec.method for spec in starts] == ["ls"] * 5 + [
        f"pmtl:preference={k}" for k in range(5)
    ] + ["mgda", "uw", "gradnorm"]
    assert [experiment.start_baseline(spec.as_dict()) for spec in starts] == ["ls"] * 5 + [
        "pmtl"
    ] * 5 + ["mgda", "uw", "gradnorm"]
    assert len(paper) == 13 * 3  # every start walks along e1 and e2
    assert {spec.run_id for spec in paper} >= set(
        DEFAULT_RUN_IDS
    )  # the weighted-sum starts and their walks are the default's
    assert {spec.config["start"] for spec in paper if spec.config["role"] == "walk"} == {
        spec.run_id for spec in starts
    }
    quick = experiment.planned_runs(
        experiment.Config(quick=True, device="cpu", baselines="ls,pmtl")
    )
    assert [spec.method for spec in quick if spec.config["role"] == "start"][2:] == [
        f"pmtl:num_preferences=2:preference={k}" for k in range(2)
    ]


def test_baselines_flag() -> None:
    assert parse(["--baselines", "ls,mgda"]).argv() == ["--baselines", "ls,mgda"]
    assert experiment.settings_from(parse([])).baselines == ("ls",)
    assert experiment.settings_from(parse(["--baselines", "gradnorm, ls,uw"])).baselines == (
        "ls",
        "uw",
        "gradnorm",
    )
    for bad in ("ls,nash_mtl", "", ","):
        with pytest.raises(InvalidHyperparameterError, match="--baselines"):
            experiment.settings_from(parse(["--baselines", bad]))
    with pytest.raises(InvalidHyperparameterError, match="Pareto MTL"):
        experiment.planned_runs(parse(["--baselines", "pmtl", "--starts", "1"]))


def test_baselines_add_starts_walks_and_hypervolumes(tmp_path) -> None:
    """`--baselines ls,mgda` at the smallest scale (1 weighted-sum start and MGDA's, 1 epoch of
    20 batches, 1 step per direction): each start is trained and walked, and each baseline gets its
    hypervolumes with and without its walks (same reference point as the whole set)."""
    config = experiment.Config(
        quick=True,
        epochs=1,
        starts=1,
        steps=1,
        threads=1,
        out=tmp_path,
        device="cpu",
        progress=False,
        baselines="ls,mgda",
    )
    result = experiment.run(config)
    assert len(result.records) == 2 * 3
    assert sorted(record["spec"]["method"] for record in result.records) == [
        "ls",
        "mgda",
        "tangent_walk",
        "tangent_walk",
        "tangent_walk",
        "tangent_walk",
    ]
    assert len(list((tmp_path / experiment.EXPERIMENT).glob("models/*.pt"))) == 2
    data = read_report(tmp_path)["seeds"]["0"]
    points, hv = data["points"], data["hypervolume"]
    assert [(p["baseline"], p["method"]) for p in points if p["step"] == 0] == [
        ("ls", "ls"),
        ("mgda", "mgda"),
    ]
    assert len(points) == 2 * (1 + 2)
    errors = torch.tensor([p["test_error"] for p in points], dtype=torch.float64)
    is_start = torch.tensor([p["step"] == 0 for p in points])
    reference = torch.tensor(hv["reference"], dtype=torch.float64)
    assert hv["reference"] == pytest.approx((errors.max(dim=0).values + hv["margin"]).tolist())
    assert list(hv["baselines"]) == ["ls", "mgda"]
    for baseline, entry in hv["baselines"].items():
        mine = torch.tensor([p["baseline"] == baseline for p in points])
        assert entry["starts"] == 1 and entry["points"] == 3
        assert entry["hypervolume_starts"] == pytest.approx(
            hypervolume(errors[mine & is_start], reference), rel=1e-12
        )
        assert entry["hypervolume_starts_and_walk"] == pytest.approx(
            hypervolume(errors[mine], reference), rel=1e-12
        )
        assert (
            entry["hypervolume_starts_and_walk"] >= entry["hypervolume_starts"] > 0
        )  # adding points never shrinks a hypervolume
        assert (
            hv["starts_and_walk"] >= entry["hypervolume_starts_and_walk"]
            and hv["starts"] >= entry["hypervolume_starts"]
        )
    assert data["cost"]["models_priced"] == ["ls"] and data["cost"]["weighted_sum_models"] == 1
    folder = experiment.report_folder(tmp_path, quick=True)
    summary = (folder / "summary.md").read_text()
    assert (
        "| MGDA (`mgda`) | 1 |" in summary
        and "| weighted sum (`ls`) | 1 |" in summary
        and "--baselines ls,mgda" in summary
    )
    assert (folder / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
