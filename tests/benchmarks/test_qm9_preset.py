"""QM9 at CPU scale (`python -m benchmarks qm9 --data-source qm9pack --preset cpu`): the preset's
settings are those the docs state, its splits are prefixes of the full protocol's, and it trains
through the command line (a tiny copy on the synthetic PyG fixture; with the optional extra and
the converted cache, the real preset for one step)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.data import qm9
from benchmarks.data.qm9pack import cache_path
from benchmarks.experiments.supervised import EXPERIMENTS, Config, planned_runs
from benchmarks.suites import qm9 as qm9_suite
from benchmarks.suites.qm9 import CPU_PRESET, PROTOCOL, TASKS, make_qm9_suite
from core.errors import InvalidHyperparameterError, MTLInputError

ROOT = Path(__file__).parents[2]
CPU_SWEEP_RUNS = 12 * 3 * 2 + 11 * 3  # methods x seeds x {none, mu:power:2} + single-task runs


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_preset_is_what_the_docs_say() -> None:
    assert (
        CPU_PRESET.train_size,
        CPU_PRESET.val_size,
        CPU_PRESET.test_size,
        CPU_PRESET.hidden,
        CPU_PRESET.epochs,
    ) == (6_000, 1_000, 1_000, 16, 10)
    assert CPU_PRESET.methods.split(",") == [
        "ls",
        "scaleinvls",
        "rlw",
        "uw",
        "famo",
        "mgda",
        "pcgrad",
        "cagrad",
        "imtl_g",
        "nashmtl",
        "dibsmtl",
        "dibsmtl:steps=5",
    ]
    assert (CPU_PRESET.seeds, CPU_PRESET.transforms, CPU_PRESET.representation) == (
        "0,1,2",
        "none,mu:power:2",
        True,
    )
    suite = CPU_PRESET.suite("qm9pack")
    assert suite is CPU_PRESET.suite("qm9pack")  # one suite per source: the split is read once
    assert suite.protocol == dataclasses.replace(PROTOCOL, epochs=10)  # only the epochs change
    model = suite.make_model()
    assert model.lin0.out_features == 16 and sum(p.numel() for p in model.parameters()) == 39_803
    runs = planned_runs(Config("qm9", data_source="qm9pack", preset="cpu"))
    assert len(runs) == CPU_SWEEP_RUNS and sum(run.method.startswith("stl:") for run in runs) == 33
    mtl = [run for run in runs if not run.method.startswith("stl:")]
    assert all(run.config["preset"] == "cpu" and run.config["representation"] for run in mtl)
    assert {run.transform for run in mtl} == {"none", "mu:power:2"}
    paper = planned_runs(
        Config("qm9", data_source="qm9pack", methods="ls", seeds="0", no_single_task=True)
    )
    assert "preset" not in paper[0].config  # runs without the preset keep their ids
    decisions = (ROOT / "docs" / "DECISIONS.md").read_text()
    section = decisions[decisions.index("## QM9 at CPU scale") :]
    for fact in (
        "6,000 / 1,000 / 1,000",
        "width 16",
        "10 epochs",
        "39,803",
        "mu:power:2",
        "--preset cpu",
        "--workers 2",
    ):
        assert fact in section, fact
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert "python -m benchmarks qm9 --data-source qm9pack --preset cpu --workers 2" in results
    assert (
        "6,000 / 1,000 / 1,000" in results
        and "--preset cpu --workers 2 --transforms none" in results
    )


def test_unknown_preset_and_bad_subsets_say_what_is_expected() -> None:
    with pytest.raises(
        InvalidHyperparameterError, match="qm9 has no --preset 'gpu'; choose one of: cpu"
    ):
        planned_runs(Config("qm9", data_source="qm9pack", preset="gpu"))
    with pytest.raises(
        InvalidHyperparameterError, match="multimnist has no --preset 'cpu'; choose one of: none"
    ):
        planned_runs(Config("multimnist", preset="cpu"))
    with pytest.raises(MTLInputError, match="subset"):
        make_qm9_suite(preset=dataclasses.replace(CPU_PRESET, test_size=20_000))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qm9")
    qm9.write_fixture(folder, count=40, seed=0)
    return folder


TINY = dataclasses.replace(CPU_PRESET, train_size=12, val_size=4, test_size=4)
"""The CPU preset's settings on subsets that the 40-molecule fixture holds (splits of 8 / 8 / 24)."""


def test_preset_splits_are_prefixes_of_the_full_protocols(root) -> None:
    full = make_qm9_suite(test_size=8, val_size=8)
    tiny = make_qm9_suite(test_size=8, val_size=8, preset=TINY)
    for split, size in (("train", 12), ("val", 4), ("test", 4)):
        assert tiny.datasets(root, split).indices == full.datasets(root, split).indices[:size]
    train = tiny.datasets(root, "train")
    columns = list(qm9.TARGET_COLUMNS)
    mean, std = qm9.target_statistics(train.molecules.y[train.indices][:, columns])
    assert torch.allclose(
        train.targets, (train.molecules.y[train.indices][:, columns] - mean) / std
    )  # the subset's statistics


def test_preset_trains_through_the_command_line(root, tmp_path, monkeypatch) -> None:
    definition = SimpleNamespace(
        **dataclasses.asdict(TINY),
        suite=lambda source: make_qm9_suite(test_size=8, val_size=8, preset=TINY),
    )
    monkeypatch.setattr(qm9_suite, "CPU_PRESET", definition)  # what `--preset cpu` loads
    out = tmp_path / "out"
    args = [
        "qm9",
        "--preset",
        "cpu",
        "--quick",
        "--methods",
        "mgda",
        "--transforms",
        "mu:power:2",
        "--no-single-task",
        "--data-root",
        str(root),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    record = json.loads(next((out / "qm9").glob("runs/mgda*.json")).read_text())
    assert (
        record["spec"]["config"]["preset"] == "cpu"
        and record["spec"]["config"]["representation"] is True
    )
    history = record["result"]["history"]
    assert (
        record["result"]["status"] == "finished" and len(history) == 1 and history[0]["steps"] == 1
    )  # 12 molecules: one batch of 120
    assert len(record["result"]["selected"]["test"]) == len(TASKS)
    assert (
        out / "qm9" / "cpu" / "quick" / "summary.md"
    ).is_file()  # beside, never over, the full protocol's report


HAS_REAL_CACHE = cache_path().is_file() and importlib.util.find_spec("rdkit") is not None


@pytest.mark.skipif(
    not HAS_REAL_CACHE,
    reason="needs the optional extra (pip install -e .[qm9data]) and the converted cache",
)
def test_real_cpu_preset_trains_a_step(tmp_path) -> None:
    suite = EXPERIMENTS["qm9"].load_suite("qm9pack", "cpu")
    assert [len(suite.datasets(None, split)) for split in ("train", "val", "test")] == [
        6_000,
        1_000,
        1_000,
    ]
    args = [
        "qm9",
        "--data-source",
        "qm9pack",
        "--preset",
        "cpu",
        "--quick",
        "--max-batches",
        "1",
        "--methods",
        "dibsmtl",
        "--transforms",
        "none",
        "--no-single-task",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    record = json.loads(next((tmp_path / "qm9").glob("runs/dibsmtl*.json")).read_text())
    assert record["result"]["status"] == "finished" and record["result"]["history"][0]["steps"] == 1
    assert all(value > 0 for value in record["result"]["selected"]["test"].values())
