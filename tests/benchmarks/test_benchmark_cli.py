"""`python -m benchmarks` supervised experiments end to end: MultiMNIST on the embedded digits,
NYUv2, Cityscapes and QM9 on tiny fixtures in their published layouts (with small models), the
random-weighting litmus test, resuming, and clear errors for missing data."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import benchmarks.harness.training as training
from benchmarks.__main__ import main
from benchmarks.data import dense, qm9
from benchmarks.suites import cityscapes, nyuv2
from benchmarks.suites import qm9 as qm9_suite

SMALL_FILTERS = (4, 8, 8, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # tiny convolutions are slower with two threads on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


def _runs(folder):
    return sorted(path.name for path in folder.glob("runs/*.json"))


def test_multimnist_runs_summarises_and_resumes(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path)]
    args = [
        "multimnist",
        "--methods",
        "ls,dibsmtl",
        "--seeds",
        "0",
        "--transforms",
        "none,left:exp",
        "--epochs",
        "1",
        "--max-batches",
        "4",
        *out,
    ]
    assert main(args) == 0
    folder = tmp_path / "multimnist"
    assert len(_runs(folder)) == 2 * 2 + 2  # methods x transforms + one single-task run per task
    summary = (folder / "summary.md").read_text()
    assert "left:exp" in summary and "single-task runs" in summary and "Δm%" in summary
    assert "| none | single-task (stl) |" in summary  # the reference of Δm%, as the first row
    assert "(n=1)" in summary and " ± " not in summary  # one seed: no spread to show
    assert (
        "6 runs to do (0 stored)" in capsys.readouterr().err
    )  # no time measured with --max-batches: the count only
    assert (folder / "delta_m.png").stat().st_size > 0 and (
        folder / "delta_m.pdf"
    ).stat().st_size > 0
    record = json.loads(next(folder.glob("runs/dibsmtl__left-exp*.json")).read_text())
    assert record["result"]["status"] == "finished" and record["spec"]["transform"] == "left:exp"
    assert set(record["result"]["selected"]["test"]) == {"left_accuracy", "right_accuracy"}

    def no_training(*_, **__):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(training, "train_run", no_training)
    monkeypatch.setattr("benchmarks.experiments.supervised.train_run", no_training)
    capsys.readouterr()
    assert main(args) == 0  # everything is reused
    printed = capsys.readouterr()
    assert "dibsmtl" in printed.out and "to do" not in printed.err


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
def test_dense_benchmarks_run_on_fixtures_in_the_release_layout(
    tmp_path, capsys, monkeypatch, name
):
    module = {"nyuv2": nyuv2, "cityscapes": cityscapes}[name]
    suite = getattr(module, name.upper())
    monkeypatch.setattr(
        module,
        name.upper(),
        dataclasses.replace(suite, make_model=lambda: module.make_model(filters=SMALL_FILTERS)),
    )
    root = dense.write_fixture(
        tmp_path / "data", dataset=name, count=4, height=32, width=64, seed=0
    )
    assert main([name, "--quick", "--data-root", str(root), "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / name
    assert len(_runs(folder)) == 2 * 2 + len(
        suite.task_names
    )  # ls, dibsmtl x none, depth:power:2; one single-task run per task
    text = (
        folder / "quick" / "summary.md"
    ).read_text()  # a quick look never overwrites the full report
    assert "dibsmtl" in text and "mean_iou" in text and not (folder / "summary.md").exists()


def test_qm9_runs_on_a_fixture_in_pyg_layout(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(qm9_suite, "QM9", qm9_suite.make_qm9_suite(test_size=6, val_size=6))
    root = tmp_path / "data"
    qm9.write_fixture(root, count=30, seed=0)
    out = ["--out", str(tmp_path / "out")]
    assert main(["qm9", "--quick", "--no-single-task", "--data-root", str(root), *out]) == 0
    record = json.loads(next((tmp_path / "out" / "qm9").glob("runs/dibsmtl*.json")).read_text())
    selected = record["result"]["selected"]
    assert "val" in selected and len(selected["test"]) == 11  # best-validation selection, 11 MAEs
    assert selected["delta_m"] is not None  # against the published base values


def test_random_weighting_litmus_test_runs(tmp_path, capsys):
    args = [
        "random_weighting",
        "--quick",
        "--datasets",
        "autompg",
        "--variants",
        "ew,rlw_dirichlet,rgw_normal",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    text = (tmp_path / "random_weighting" / "quick" / "summary.md").read_text()
    assert "rlw_dirichlet" in text and "Δp vs ew" in text
    assert len(_runs(tmp_path / "random_weighting" / "autompg")) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nyuv2"], "needs --data-root"),
        (["qm9", "--data-root", "/nonexistent/qm9"], "is not a folder"),
        (["multimnist", "--transforms", "middle:exp"], "unknown task"),
        (["multimnist", "--seeds", "0,0"], "distinct"),
        (["random_weighting", "--variants", "rlw_normal"], "must include ew"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.json"))


def test_a_data_folder_without_the_files_names_the_missing_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for name in ("nyuv2", "qm9"):
        assert (
            main(
                [
                    name,
                    "--quick",
                    "--data-root",
                    str(tmp_path / "empty"),
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 2
        )
        error = capsys.readouterr().err
        assert str(tmp_path / "empty") in error and ("expected" in error or "was expected" in error)


@pytest.mark.parametrize(
    "name",
    ["toy", "multimnist", "nyuv2", "cityscapes", "qm9", "random_weighting", "pareto_multimnist"],
)
def test_every_experiment_config_has_its_flags_defaults_and_round_trips(name) -> None:
    """`Config.from_args` of the bare command is the config's defaults (so the typed API and the
    command line run the same thing), and `argv()` gives back the flags of a changed config."""
    from benchmarks.__main__ import EXPERIMENTS, build_parser

    module = EXPERIMENTS[name][0]
    parsed = module.Config.from_args(build_parser().parse_args([name]))
    positional = (
        (name,) if "experiment" in {f.name for f in dataclasses.fields(module.Config)} else ()
    )
    default = module.Config(*positional)
    assert parsed == default
    changed = default.replace(quick=True, seeds="3,4", fresh=True)
    flags = changed.argv(skip=("experiment",))
    assert (
        flags[:1] == ["--quick"]
        and "--fresh" in flags
        and flags[flags.index("--seeds") + 1] == "3,4"
    )
    assert module.Config.from_args(build_parser().parse_args([name, *flags])) == changed
    with pytest.raises(
        TypeError, match="takes parsed flags"
    ):  # an argv list would otherwise give the defaults
        module.Config.from_args(["--quick"])


def test_the_typed_api_returns_the_records_and_the_report(tmp_path) -> None:
    """`run(Config(...))` of the random-weighting test: every planned run's record, in order, and the
    table the command prints, with nothing printed."""
    from benchmarks.experiments import random_weighting

    config = random_weighting.Config(
        quick=True,
        datasets="autompg",
        variants="ew,rlw_uniform",
        seeds="0",
        epochs=1,
        out=tmp_path,
        device="cpu",
    )
    result = random_weighting.run(config)
    assert [(r["spec"]["method"], r["spec"]["experiment"]) for r in result.records] == [
        (spec.method, spec.experiment) for spec in random_weighting.planned_runs(config)
    ]
    assert "rlw_uniform" in result.report and result.files == [
        tmp_path / "random_weighting" / "quick" / "summary.md"
    ]


def test_methods_the_benchmark_models_cannot_host_are_refused() -> None:
    """RotoGrad works on the shared features only (needs --representation), and its rotations
    would train without effect in the suites' models (their heads see the unrotated features):
    both refused at planning, with the way out; its scaling alone plans."""
    from benchmarks.experiments import supervised
    from core.errors import InvalidHyperparameterError

    with pytest.raises(InvalidHyperparameterError, match="add --representation"):
        supervised.planned_runs(supervised.Config("multimnist", quick=True, methods="rotograd"))
    with pytest.raises(InvalidHyperparameterError, match="do not apply RotoGrad's rotations"):
        supervised.planned_runs(
            supervised.Config(
                "multimnist", quick=True, methods="rotograd:rotation_size=8", representation=True
            )
        )
    runs = supervised.planned_runs(
        supervised.Config("multimnist", quick=True, methods="rotograd", representation=True)
    )
    assert "rotograd" in {run.method for run in runs}


def test_optimizer_and_lr_override_the_protocol_and_get_their_own_runs() -> None:
    """`--optimizer sgd --lr 0.05` trains every run (single-task ones included) with SGD at 0.05,
    stored under other ids than the protocol's Adam runs; a bad value is refused at planning."""
    from benchmarks.experiments import supervised
    from core.errors import InvalidHyperparameterError

    def plan(**flags):
        return supervised.planned_runs(
            supervised.Config("multimnist", quick=True, methods="ls", **flags)
        )

    adam, sgd = plan(), plan(optimizer="sgd", lr=0.05)
    assert {run.config["protocol"]["optimizer"] for run in adam} == {"adam"}
    assert {(run.config["protocol"]["optimizer"], run.config["protocol"]["lr"]) for run in sgd} == {
        ("sgd", 0.05)
    }
    assert not {run.run_id for run in adam} & {run.run_id for run in sgd}
    with pytest.raises(InvalidHyperparameterError, match="--lr must be a positive"):
        plan(lr=0.0)
    with pytest.raises(InvalidHyperparameterError, match="--optimizer must be one of"):
        plan(optimizer="rmsprop")


def test_single_task_runs_scored_on_validation_are_marked_and_the_others_keep_their_ids() -> None:
    """Single-task runs of a protocol that reads the validation split (QM9: plateau scheduler and
    best-validation selection) are scored on their own task since the fix, and carry
    `"validation": "own task"`, so that runs stored before it are not reused; MultiMNIST's (last
    epoch, no plateau) are unaffected and keep their ids."""
    from benchmarks.experiments import supervised

    def stl_configs(experiment: str) -> list[dict]:
        runs = supervised.planned_runs(supervised.Config(experiment, quick=True, methods="ls"))
        return [run.config for run in runs if run.method.startswith("stl:")]

    qm9 = stl_configs("qm9")
    assert qm9 and all(config["validation"] == "own task" for config in qm9)
    multimnist = stl_configs("multimnist")
    assert multimnist and all("validation" not in config for config in multimnist)
