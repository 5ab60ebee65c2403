"""The benchmark harness: run ids, the result store (atomic, checksummed, resumable), the shared
training loop (resume equals an uninterrupted run, divergence is recorded, selection rules) and
the summary scores."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from benchmarks.harness.runs import Checkpoint, ResultStore, RunSpec, run_sweep
from benchmarks.harness.suite import MetricSpec, TrainingProtocol
from benchmarks.harness.summary import (
    delta_m_figure,
    delta_m_pivot,
    delta_m_seed_table,
    family_groups,
    markdown_table,
    mean_rank_figure,
    method_family,
    single_task_base,
    single_task_reference,
    spread,
    summarize,
    transform_drift_table,
)
from benchmarks.harness.training import LossTransform, select_metrics, train_run
from benchmarks.suites.autompg import AUTOMPG
from core.errors import InvalidHyperparameterError
from core.metrics import delta_m, delta_p, mean_rank

SHORT = dataclasses.replace(AUTOMPG.protocol, epochs=3)
TWO_METRICS = (
    MetricSpec("acc", "a", True),
    MetricSpec("err", "b", False),
)  # one higher-is-better, one lower


def spec(method="ls", seed=0, transform="none", **config) -> RunSpec:
    return RunSpec("unit", method, seed, transform, config or {"epochs": 3})


# ---- run ids and the store


def test_run_id_is_readable_stable_and_changes_with_every_setting():
    base = spec()
    assert base.run_id == spec().run_id
    assert base.run_id.startswith("ls__none__seed0__")
    others = [
        spec(method="mgda"),
        spec(seed=1),
        spec(transform="0:exp"),
        spec(epochs=4),
        RunSpec("other", "ls", 0, "none", {"epochs": 3}),
    ]
    assert len({base.run_id, *(o.run_id for o in others[:-1])}) == 5
    assert "/" not in spec(transform="1:affine:1:1|log").run_id


def test_store_round_trip_and_checkpoint_removed(tmp_path):
    store = ResultStore(tmp_path)
    run = spec()
    store.save_checkpoint(run, {"epoch": 1})
    record = store.save(run, {"value": 1.5, "list": [1, 2]}, elapsed_s=0.1)
    assert not store.checkpoint_path(run).exists()
    loaded = store.load(run)
    assert loaded["result"] == {"value": 1.5, "list": [1, 2]} and loaded == {
        k: v for k, v in record.items() if k != "sha256"
    }
    assert [r["run_id"] for r in store.records("unit")] == [run.run_id]


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: text.replace("1.5", "2.5"),  # edited by hand: the checksum no longer matches
        lambda text: "",
        lambda text: "[1, 2]",
    ],
)
def test_a_corrupt_result_is_set_aside_and_the_run_redone(tmp_path, damage):
    store = ResultStore(tmp_path)
    run = spec()
    store.save(run, {"value": 1.5}, elapsed_s=0.0)
    path = store.result_path(run)
    path.write_text(damage(path.read_text()))
    assert store.records("unit") == []
    calls = []
    records = run_sweep(
        [run], lambda s, c: calls.append(s) or {"value": 7.0}, store, show_progress=False
    )
    assert len(calls) == 1 and records[0]["result"] == {"value": 7.0}
    assert path.with_suffix(".json.corrupt").exists()  # the damaged file is kept for inspection


def test_sweep_skips_finished_runs_and_refuses_duplicates(tmp_path):
    store = ResultStore(tmp_path)
    runs = [spec(seed=s) for s in range(3)]
    calls = []
    run_sweep(
        runs[:2], lambda s, c: calls.append(s.seed) or {"seed": s.seed}, store, show_progress=False
    )
    records = run_sweep(
        runs, lambda s, c: calls.append(s.seed) or {"seed": s.seed}, store, show_progress=False
    )
    assert calls == [0, 1, 2] and [r["result"]["seed"] for r in records] == [0, 1, 2]
    with pytest.raises(ValueError, match="twice"):
        run_sweep([runs[0], runs[0]], lambda s, c: {}, store, show_progress=False)


def test_non_finite_results_are_refused_before_writing(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="non-finite"):
        run_sweep([spec()], lambda s, c: {"x": float("nan")}, store, show_progress=False)
    assert not store.result_path(spec()).exists()


def test_an_unreadable_checkpoint_restarts_the_run(tmp_path):
    store = ResultStore(tmp_path)
    store.checkpoint_path(spec()).parent.mkdir(parents=True)
    store.checkpoint_path(spec()).write_bytes(b"not a checkpoint")
    assert store.load_checkpoint(spec()) is None


# ---- the training loop


class Interrupt(Exception):
    pass


class InterruptingCheckpoint(Checkpoint):
    """Saves like a Checkpoint, then 'kills' the run after `after` saves."""

    def __init__(self, store, spec, after):
        super().__init__(store, spec)
        self.after = after

    def save(self, state):
        super().save(state)
        self.after -= 1
        if self.after == 0:
            raise Interrupt


def _save_as_before_issue_18(store, run, result):
    """A record as the store wrote it before names carried their generation (`naming` absent)."""
    import hashlib

    from benchmarks.harness.runs import _canonical

    record = store.save(run, result, elapsed_s=1.0)
    del record["naming"], record["sha256"]
    record["sha256"] = hashlib.sha256(_canonical(record).encode()).hexdigest()
    store.result_path(run).write_text(json.dumps(record))


def test_results_stored_under_old_method_names_are_migrated(tmp_path):
    """Runs stored as `dibsmtl_multi_step`, `nsum` or (before issue 18) `imtl` are found under
    their canonical specs, rewritten under the new run id (`migrated_from` names the old one); the
    old file stays."""
    store = ResultStore(tmp_path)
    for old, new in (
        ("dibsmtl_multi_step", "dibsmtl:steps=5"),
        ("nsum", "normalized_sum"),
        ("imtl", "imtl_g"),
    ):
        old_run, new_run = spec(method=old), spec(method=new)
        _save_as_before_issue_18(store, old_run, {"value": 2.0})
        migrated = store.load(new_run)
        assert migrated["result"] == {"value": 2.0} and migrated["migrated_from"] == old_run.run_id
        assert migrated["spec"] == new_run.as_dict() and store.result_path(old_run).exists()
        assert store.load(new_run) == migrated  # now stored under the new id, checksum valid
    assert store.load(spec(method="ls")) is None


def test_a_reused_name_never_mixes_the_two_methods(tmp_path):
    """`imtl` meant IMTL-G in results stored before issue 18 and means the full IMTL since: an old
    `imtl` result is not the full IMTL's (it moves to `imtl_g` before the new run can overwrite
    it), and a new `imtl` result is never migrated to `imtl_g`."""
    store = ResultStore(tmp_path)
    imtl, imtl_g = spec(method="imtl"), spec(method="imtl_g")
    _save_as_before_issue_18(store, imtl, {"value": 1.0})
    assert store.load(imtl) is None  # the full IMTL has not run
    assert store.load(imtl_g)["result"] == {"value": 1.0}  # IMTL-G's result, kept under its name
    store.save(imtl, {"value": 3.0}, elapsed_s=1.0)  # the full IMTL runs, overwriting the old file
    assert store.load(imtl)["result"] == {"value": 3.0} and store.load(imtl_g)["result"] == {
        "value": 1.0
    }
    other = tmp_path / "other"
    fresh = ResultStore(other)
    fresh.save(imtl, {"value": 3.0}, elapsed_s=1.0)
    assert fresh.load(imtl_g) is None  # a full-IMTL result is not IMTL-G's


def test_batched_sweep_runs_unfinished_runs_together_in_batches(tmp_path):
    """`run_sweep_batched`: finished runs are read, the others computed in batches of `batch_size`,
    each result saved as its own record with its batch's time shared."""
    from benchmarks.harness.runs import run_sweep_batched

    store = ResultStore(tmp_path)
    runs = [spec(method="ls", seed=seed) for seed in range(5)]
    store.save(runs[1], {"value": -1.0}, elapsed_s=1.0)
    batches = []

    def run_many(specs):
        batches.append([s.seed for s in specs])
        return [{"value": float(s.seed)} for s in specs]

    records = run_sweep_batched(runs, run_many, store, batch_size=2)
    assert batches == [[0, 2], [3, 4]]
    assert [r["result"]["value"] for r in records] == [0.0, -1.0, 2.0, 3.0, 4.0]
    assert all(store.load(run) is not None for run in runs)
    again = run_sweep_batched(runs, run_many, store)
    assert [r["result"] for r in again] == [r["result"] for r in records] and len(
        batches
    ) == 2  # nothing rerun

    def failing(specs):
        raise RuntimeError("boom")

    fresh = [spec(method="ls", seed=seed) for seed in range(10, 12)]
    with pytest.raises(RuntimeError, match="boom"):
        run_sweep_batched(fresh, failing, store)
    assert all(store.load(run) is None for run in fresh)  # a failed batch saves nothing of itself


def test_discard_forgets_old_names_too(tmp_path):
    """`--fresh` (ResultStore.discard) must not let `load` migrate an old-named result back."""
    store = ResultStore(tmp_path)
    old_run, new_run = spec(method="dibsmtl_multi_step"), spec(method="dibsmtl:steps=5")
    store.save(old_run, {"value": 1.0}, elapsed_s=1.0)
    assert store.load(new_run) is not None  # migrated
    store.discard(new_run)
    assert store.load(new_run) is None and not store.result_path(old_run).exists()


def test_checkpoints_hold_state_dicts_that_load_with_weights_only(tmp_path):
    store = ResultStore(tmp_path)
    run = spec(method="famo")
    with pytest.raises(Interrupt):
        train_run(
            AUTOMPG,
            run,
            InterruptingCheckpoint(store, run, after=1),
            protocol=SHORT,
            data_root=None,
            device=torch.device("cpu"),
            max_batches=3,
        )
    state = torch.load(store.checkpoint_path(run), weights_only=True)
    assert set(state["method"]) >= {"logits", "exp_avg", "exp_avg_sq", "step"}


@pytest.mark.parametrize("method", ["rlw", "uw", "famo", "dwa", "nashmtl", "dwa:window=2"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, method):
    store = ResultStore(tmp_path)
    run = spec(method=method, transform="mpg:exp")
    uninterrupted = train_run(
        AUTOMPG,
        run,
        Checkpoint(ResultStore(tmp_path / "other"), run),
        protocol=SHORT,
        data_root=None,
        device=torch.device("cpu"),
        max_batches=3,
    )
    with pytest.raises(Interrupt):
        train_run(
            AUTOMPG,
            run,
            InterruptingCheckpoint(store, run, after=2),
            protocol=SHORT,
            data_root=None,
            device=torch.device("cpu"),
            max_batches=3,
        )
    assert len(store.load_checkpoint(run)["history"]) == 2
    resumed = train_run(
        AUTOMPG,
        run,
        Checkpoint(store, run),
        protocol=SHORT,
        data_root=None,
        device=torch.device("cpu"),
        max_batches=3,
    )
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed["history"]) == strip(uninterrupted["history"])
    assert resumed["selected"] == uninterrupted["selected"]


def test_single_task_runs_train_one_task_and_give_the_base(tmp_path):
    store = ResultStore(tmp_path)
    runs = [RunSpec("unit", f"stl:{task}", 0, "none", {}) for task in AUTOMPG.task_names]
    protocol = dataclasses.replace(AUTOMPG.protocol, epochs=2)
    records = run_sweep(
        runs,
        lambda s, c: train_run(
            AUTOMPG, s, c, protocol=protocol, data_root=None, device=torch.device("cpu")
        ),
        store,
        show_progress=False,
    )
    assert all(len(r["result"]["history"][0]["mean_weights"]) == 1 for r in records)
    base = single_task_base(records, AUTOMPG.metrics)
    assert base == {
        "mpg_mae": records[0]["result"]["selected"]["test"]["mpg_mae"],
        "origin_accuracy": records[1]["result"]["selected"]["test"]["origin_accuracy"],
    }
    with pytest.raises(InvalidHyperparameterError, match="has tasks"):
        train_run(
            AUTOMPG,
            RunSpec("unit", "stl:speed", 0),
            Checkpoint(store, RunSpec("unit", "stl:speed", 0)),
            protocol=protocol,
            data_root=None,
            device=torch.device("cpu"),
        )


@pytest.mark.parametrize("base_values", [None, {"mpg_mae": 3.0, "origin_accuracy": 70.0}])
def test_a_single_task_run_is_scheduled_and_selected_on_its_own_task(tmp_path, base_values):
    """Validation scores (plateau scheduler, best_val selection) of "stl:TASK" read TASK's
    metrics only: the other tasks' heads are never trained, and scoring them picked the epoch
    where they happened to be least bad (QM9's first single-task runs selected epoch 1 or 2 of 10)."""
    suite = dataclasses.replace(AUTOMPG, base_values=base_values)
    protocol = dataclasses.replace(
        AUTOMPG.protocol, epochs=3, selection="best_val", scheduler="plateau"
    )
    run = RunSpec("unit", "stl:origin", 0, "none", {})
    result = train_run(
        suite,
        run,
        Checkpoint(ResultStore(tmp_path), run),
        protocol=protocol,
        data_root=None,
        device=torch.device("cpu"),
    )
    for record in result["history"]:
        accuracy = record["val"]["origin_accuracy"]
        expected = -accuracy if base_values is None else delta_m([accuracy], [70.0], [True])
        assert record["val_score"] == pytest.approx(expected, rel=1e-12)
    best = min(result["history"], key=lambda record: record["val_score"])
    assert result["selected"]["epoch"] == best["epoch"]
    if base_values is not None:
        test_accuracy = result["selected"]["test"]["origin_accuracy"]
        assert result["selected"]["delta_m"] == pytest.approx(
            delta_m([test_accuracy], [70.0], [True]), rel=1e-12
        )


def test_a_diverging_run_is_recorded_not_raised(tmp_path):
    store = ResultStore(tmp_path)
    run = spec(transform="origin:affine:1000:0|exp")  # exp(1000 * CE) overflows at once
    result = train_run(
        AUTOMPG,
        run,
        Checkpoint(store, run),
        protocol=SHORT,
        data_root=None,
        device=torch.device("cpu"),
        max_batches=3,
    )
    assert (
        result["status"] == "diverged"
        and "epoch 1" in result["diverged"]
        and "selected" not in result
    )
    json.dumps(result, allow_nan=False)


def test_loss_transform_parsing():
    names = ("a", "b")
    assert LossTransform.parse("none", names).transform is None
    assert LossTransform.parse("b:exp", names).task_index == 1
    assert LossTransform.parse("0:power:4", names).task_index == 0
    losses = [torch.tensor(2.0), torch.tensor(3.0)]
    assert [float(v) for v in LossTransform.parse("b:exp", names)(losses)] == [
        2.0,
        pytest.approx(float(torch.exp(torch.tensor(3.0)))),
    ]
    for bad in ("exp", "c:exp", "2:exp", "a:", "a:cube"):
        with pytest.raises(InvalidHyperparameterError):
            LossTransform.parse(bad, names)


def test_selection_rules():
    suite = dataclasses.replace(
        AUTOMPG, metrics=TWO_METRICS, task_names=("a", "b"), base_values={"acc": 50.0, "err": 1.0}
    )
    history = [
        {"epoch": 1, "test": {"acc": 10.0, "err": 3.0}, "val": {}, "val_score": 5.0},
        {"epoch": 2, "test": {"acc": 20.0, "err": 2.0}, "val": {}, "val_score": -1.0},
        {"epoch": 3, "test": {"acc": 30.0, "err": 4.0}, "val": {}, "val_score": 2.0},
    ]
    assert select_metrics(suite, history, "last")["test"] == {"acc": 30.0, "err": 4.0}
    assert select_metrics(suite, history, "last_mean:2")["test"] == {"acc": 25.0, "err": 3.0}
    assert select_metrics(suite, history, "best_val")["epoch"] == 2
    with pytest.raises(InvalidHyperparameterError):
        select_metrics(suite, history, "best")


# ---- the summary


def _record(method, seed, transform, acc, err):
    return {
        "spec": {"method": method, "seed": seed, "transform": transform},
        "result": {"status": "finished", "selected": {"test": {"acc": acc, "err": err}}},
    }


def test_summary_scores_follow_the_metric_definitions():
    records = [
        _record("stl:a", 0, "none", 90.0, 9.0),
        _record("stl:b", 0, "none", 10.0, 1.0),
        _record("ls", 0, "none", 80.0, 2.0),
        _record("ls", 1, "none", 84.0, 2.2),
        _record("mgda", 0, "none", 88.0, 1.5),
        _record("mgda", 1, "none", 86.0, 1.7),
        {
            "spec": {"method": "mgda", "seed": 2, "transform": "none"},
            "result": {"status": "diverged"},
        },
    ]
    rows, base, origin = summarize(records, TWO_METRICS)
    assert base == {"acc": 90.0, "err": 1.0} and "single-task" in origin
    ls, mgda = rows
    assert ls.mean == {"acc": 82.0, "err": 2.1} and ls.std["acc"] == pytest.approx(2 * 2**0.5)
    per_seed = [
        delta_m([88.0, 1.5], [90.0, 1.0], [True, False]),
        delta_m([86.0, 1.7], [90.0, 1.0], [True, False]),
    ]
    assert mgda.delta_m[0] == pytest.approx(sum(per_seed) / 2)
    assert mgda.delta_m_per_seed == pytest.approx({0: per_seed[0], 1: per_seed[1]})
    seed_table = delta_m_seed_table(rows).splitlines()
    assert seed_table[0] == "| transform | method | seed 0 | seed 1 |"
    assert seed_table[3] == f"| none | mgda | {per_seed[0]:+.2f} | {per_seed[1]:+.2f} |"
    assert (
        mgda.delta_p == pytest.approx(delta_p([87.0, 1.6], [82.0, 2.1], [True, False], ["a", "b"]))
        and ls.delta_p == 0.0
    )
    assert [ls.mean_rank, mgda.mean_rank] == mean_rank(
        [[82.0, 2.1], [87.0, 1.6]], [True, False]
    ).tolist()
    assert mgda.diverged == 1 and mgda.seeds == (0, 1)
    paired = [
        delta_p([88.0, 1.5], [80.0, 2.0], [True, False], ["a", "b"]),
        delta_p([86.0, 1.7], [84.0, 2.2], [True, False], ["a", "b"]),
    ]
    assert mgda.paired_delta_p[0] == pytest.approx(sum(paired) / 2) and mgda.paired_delta_p[2:] == (
        2,
        2,
    )
    assert mgda.paired_delta_p_per_seed == pytest.approx({0: paired[0], 1: paired[1]})
    table = markdown_table(rows, TWO_METRICS)
    assert "mgda" in table and "1 diverged" in table


def test_the_seed_table_marks_a_missing_seed():
    records = [
        _record("stl:a", 0, "none", 90.0, 9.0),
        _record("stl:b", 0, "none", 10.0, 1.0),
        _record("ls", 0, "none", 80.0, 2.0),
        _record("ls", 1, "none", 84.0, 2.2),
        _record("mgda", 1, "none", 86.0, 1.7),
    ]
    rows, _, _ = summarize(records, TWO_METRICS)
    mgda_line = delta_m_seed_table(rows).splitlines()[3]
    assert mgda_line.startswith("| none | mgda | – | +") and mgda_line.count("|") == 5


def _history_record(method, seed, transform, accs, status="finished"):
    history = [{"epoch": e + 1, "test": {"acc": acc, "err": 1.0}} for e, acc in enumerate(accs)]
    return {
        "spec": {"method": method, "seed": seed, "transform": transform},
        "result": {"status": status, "history": history},
    }


def test_the_drift_table_pairs_each_transformed_run_with_its_nominal_seed():
    records = [
        _record("stl:a", 0, "none", 90.0, 9.0),
        _history_record("ls", 0, "none", [50.0, 60.0, 70.0]),
        _history_record("ls", 0, "a:exp", [55.0, 66.0, 63.0]),
        _history_record("dibsmtl", 0, "none", [50.0, 60.0, 70.0]),
        _history_record("dibsmtl", 1, "none", [40.0, 45.0, 80.0]),
        _history_record("dibsmtl", 0, "a:exp", [50.00001, 60.0, 77.0]),
        _history_record("dibsmtl", 1, "a:exp", [40.0, 45.0]),  # stopped at epoch 2
        _history_record("pcgrad", 0, "a:exp", [1.0]),  # no nominal run to pair with
        _history_record("mgda", 0, "none", [1.0], status="diverged"),
        _history_record("mgda", 0, "a:exp", [1.0]),
    ]
    lines = transform_drift_table(records).splitlines()
    assert lines[0] == "| transform | method | after epoch 1 | after the last epoch |"
    assert lines[2:] == [
        "| a:exp | ls | 1.0e-01 (seed 0) | 1.0e-01 (seed 0, epoch 3) |",  # |63 - 70| / 70
        "| a:exp | dibsmtl | 2.0e-07 (seed 0) / 0.0e+00 (seed 1) "
        "| 1.0e-01 (seed 0, epoch 3) / 0.0e+00 (seed 1, epoch 2) |",
    ]
    assert transform_drift_table(records[:2]) == ""  # no transformed run


def test_summary_falls_back_to_the_published_base():
    rows, base, origin = summarize(
        [_record("ls", 0, "a:exp|log", 80.0, 2.0)],
        TWO_METRICS,
        published_base={"acc": 40.0, "err": 4.0},
    )
    assert base == {"acc": 40.0, "err": 4.0} and origin.startswith("published")
    assert rows[0].delta_m[0] == pytest.approx(delta_m([80.0, 2.0], [40.0, 4.0], [True, False]))
    assert "a:exp\\|log" in markdown_table(
        rows, TWO_METRICS
    )  # a transform's "|" does not split the table


def test_mean_rank_figure_puts_each_rank_at_its_method_under_its_transform():
    records = [
        _record("ls", 0, "none", 80.0, 2.0),
        _record("mgda", 0, "none", 88.0, 1.5),
        _record("dibsmtl", 0, "none", 84.0, 1.0),
        _record(
            "mgda", 0, "a:exp", 70.0, 3.0
        ),  # another order, and no dibsmtl under this transform
        _record("ls", 0, "a:exp", 90.0, 1.0),
    ]
    rows, _, _ = summarize(records, TWO_METRICS)
    axis = mean_rank_figure(rows, "ranks").axes[0]
    methods = [label.get_text() for label in axis.get_xticklabels()]
    assert methods == ["ls", "mgda", "dibsmtl"]  # order of first appearance, as in the tables
    series = {line.get_label(): line for line in axis.get_lines()}
    assert (
        list(series) == ["none", "a:exp"]
        and series["none"].get_marker() != series["a:exp"].get_marker()
    )
    expected = {(row.transform, row.method): row.mean_rank for row in rows}
    assert expected[("a:exp", "ls")] == 1.0 and expected[("a:exp", "mgda")] == 2.0
    for transform, line in series.items():
        drawn = {methods[round(x)]: y for x, y in zip(line.get_xdata(), line.get_ydata())}
        assert drawn == {method: rank for (t, method), rank in expected.items() if t == transform}
    assert "lower is better" in axis.get_ylabel()
    legend = axis.figure.legends[0]  # one legend for every panel
    assert [text.get_text() for text in legend.get_texts()] == ["none", "a:exp"]


def test_one_seed_prints_n_1_never_plus_minus_0():
    """Over one seed a value has no spread: `value (n=1)` in the tables and the pivot, not `± 0`;
    over several, `mean ± std`."""
    records = [
        _record("stl:a", 0, "none", 90.0, 9.0),
        _record("stl:b", 0, "none", 10.0, 1.0),
        _record("ls", 0, "none", 80.0, 2.0),
        _record("mgda", 0, "none", 88.0, 1.5),
        _record("ls", 0, "a:exp", 70.0, 3.0),
        _record("mgda", 0, "a:exp", 86.0, 1.7),
        _record("mgda", 1, "a:exp", 84.0, 1.9),
        _record("ls", 1, "a:exp", 72.0, 2.9),
    ]
    rows, _, _ = summarize(records, TWO_METRICS)
    table, pivot = markdown_table(rows, TWO_METRICS), delta_m_pivot(rows)
    assert not re.search(r"± 0(\.0*)?(?![\d.])", table + pivot)  # no "± 0" nor "± 0.00"
    one_seed = next(line for line in table.splitlines() if line.startswith("| none | mgda "))
    assert (
        one_seed.count("(n=1)") == 3 and "(1/1)" in one_seed
    )  # two metrics, Δm%; the paired Δp says 1/1
    two_seeds = next(line for line in table.splitlines() if line.startswith("| a:exp | mgda "))
    assert "(n=1)" not in two_seeds and two_seeds.count(" ± ") == 4
    assert (
        spread(1.5, 0.0, 1) == "1.50 (n=1)"
        and spread(1.5, 0.25, 3, digits="+.2f") == "+1.50 ± 0.25"
    )


def test_the_table_starts_with_the_single_task_reference():
    records = [
        _record("stl:a", 0, "none", 90.0, 9.0),
        _record("stl:a", 1, "none", 92.0, 9.0),
        _record("stl:b", 0, "none", 10.0, 1.0),
        _record("stl:b", 1, "none", 10.0, 1.2),
        _record("ls", 0, "none", 80.0, 2.0),
    ]
    rows, base, _ = summarize(records, TWO_METRICS)
    reference = single_task_reference(records, TWO_METRICS)
    assert reference.mean == base == {"acc": 91.0, "err": 1.1} and reference.seeds == (0, 1)
    lines = markdown_table(rows, TWO_METRICS, single_task=reference).splitlines()
    assert lines[2].startswith(
        "| none | single-task (stl) | 91 ± 1.4 | 1.1 ± 0.14 | 0 (reference) |"
    ) and lines[3].startswith("| none | ls |")
    published = single_task_reference(
        records[4:], TWO_METRICS, published_base={"acc": 50.0, "err": 4.0}
    )
    assert (
        published.method == "single-task (published)"
        and "| 50 | 4 | 0 (reference) |" in markdown_table(rows, TWO_METRICS, single_task=published)
    )
    assert single_task_reference(records[4:], TWO_METRICS) is None


def _many_methods_rows(seeds=(0,)):
    """Rows of the multimnist default (36 specs) under two transforms, with made-up scores."""
    from benchmarks.experiments.supervised import EXPERIMENTS

    methods = EXPERIMENTS["multimnist"].methods.split(",")
    records = [
        _record(f"stl:{task}", seed, "none", 90.0, 1.0) for task in ("a", "b") for seed in seeds
    ]
    records += [
        _record(method, seed, transform, 80.0 + index % 7 + seed, 2.0 + index % 5)
        for transform in ("none", "a:exp")
        for index, method in enumerate(methods)
        for seed in seeds
    ]
    rows, base, origin = summarize(records, TWO_METRICS)
    return methods, rows, base, origin


def test_figures_of_36_methods_have_a_panel_per_group():
    """The published table's methods in the first panel, in their order; then one panel per family
    of `core.methods`; every method once; the panels share the y axis; the figure fits the README."""
    from benchmarks.experiments.supervised import MULTIMNIST_FIRST

    methods, rows, base, origin = _many_methods_rows()
    first = MULTIMNIST_FIRST.split(",")
    groups = family_groups(methods, first=first)
    assert groups[0] == ("published table", first) and len(groups) == 8
    assert [label for label, _ in groups[1:]] == sorted(
        label for label, _ in groups[1:]
    )  # families alphabetically
    assert all(len({method_family(m) for m in members}) == 1 for _, members in groups[1:])
    for figure in (
        delta_m_figure(rows, "Δm%", first=first, base=base, base_origin=origin),
        mean_rank_figure(rows, "ranks", first=first),
    ):
        axes = figure.axes
        assert [axis.get_title() for axis in axes] == [label for label, _ in groups]
        assert [[label.get_text() for label in axis.get_xticklabels()] for axis in axes] == [
            members for _, members in groups
        ]
        assert all(axis.get_shared_y_axes().joined(axes[0], axis) for axis in axes)
        width, height = figure.get_size_inches()
        assert width <= 13 and height <= 11
    figure = delta_m_figure(rows, "Δm%", first=first, base=base, base_origin=origin)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["none", "a:exp", "single-task\nreference (Δm% = 0)"]
    assert (
        "acc 90" in figure.get_supxlabel() and "err 1" in figure.get_supxlabel()
    )  # what Δm% = 0 stands for


def test_error_bars_only_over_several_seeds():
    def error_bars(rows):
        figure = delta_m_figure(rows, "Δm%")
        return sum(
            len(container.lines[2][0].get_segments())
            for axis in figure.axes
            for container in axis.containers
            if container.__class__.__name__ == "ErrorbarContainer"
        )

    one = [
        _record("stl:a", 0, "none", 90.0, 1.0),
        _record("stl:b", 0, "none", 90.0, 1.0),
        _record("ls", 0, "none", 80.0, 2.0),
        _record("mgda", 0, "none", 85.0, 2.0),
    ]
    assert error_bars(summarize(one, TWO_METRICS)[0]) == 0
    two = [*one, _record("ls", 1, "none", 82.0, 2.0)]  # ls over two seeds, mgda over one
    assert error_bars(summarize(two, TWO_METRICS)[0]) == 1


def test_the_pivot_groups_many_methods_and_keeps_few_as_they_were():
    from benchmarks.experiments.supervised import MULTIMNIST_FIRST

    methods, rows, _, _ = _many_methods_rows()
    first = MULTIMNIST_FIRST.split(",")
    lines = delta_m_pivot(rows, first=first).splitlines()
    assert lines[0] == "| group | method | none | a:exp |"
    labelled = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert (
        labelled[0] == "published table"
        and labelled[1] == ""
        and labelled.count("published table") == 1
    )
    assert [line.split(" | ")[1] for line in lines[2:]] == [
        m for _, members in family_groups(methods, first=first) for m in members
    ]
    few = delta_m_pivot(
        [row for row in rows if row.method in ("ls", "mgda")], first=first
    ).splitlines()
    assert few[0] == "| method | none | a:exp |" and len(few) == 4


def test_the_toy_figures_group_methods_as_the_summary_does():
    from benchmarks.experiments.toy import PAPER_ORDER, default_methods, panel_groups

    methods = default_methods()
    parts = panel_groups(methods)
    assert parts[0][: len(PAPER_ORDER)] == list(PAPER_ORDER) and all(
        len(part) <= 15 for part in parts
    )
    others = [m for part in parts for m in part][len(PAPER_ORDER) :]
    assert others == sorted(others, key=lambda m: (method_family(m), methods.index(m)))


def test_protocol_dataclass_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingProtocol(epochs=1, batch_size=1, lr=1.0).epochs = 2
