"""The benchmark command line: clear errors, summaries, resuming (the docs' code blocks: tests/docs/test_docs.py)."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main


def test_unknown_method_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["toy", "--steps", "5", "--methods", "ls,nash", "--out", str(tmp_path)]) == 2
    assert "'ls,nash'" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def test_bad_transform_and_step_count_are_clear_errors(tmp_path, capsys) -> None:
    assert main(["toy", "--steps", "5", "--transforms", "none,0:cube", "--out", str(tmp_path)]) == 2
    assert "cube" in capsys.readouterr().err
    assert main(["toy", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def test_stateful_methods_run_in_the_toy_experiment(tmp_path, capsys, monkeypatch) -> None:
    from benchmarks.experiments import toy

    monkeypatch.setattr(
        toy, "draw_figures", lambda *args, **kwargs: []
    )  # tests/benchmarks/test_toy_experiment.py draws them
    assert (
        main(["toy", "--steps", "5", "--methods", "uw,famo", "--out", str(tmp_path), "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        printed.index("## Per method") < printed.index("| uw |") and "| famo |" in printed
    )  # the per-method table, printed
    assert "(-8.5, 7.5)" not in printed  # the per-start table went to the file only
    summary = (tmp_path / "toy" / "summary.md").read_text()
    assert "| uw | (-8.5, 7.5) |" in summary and "| famo | (-8.5, 7.5) |" in summary
    assert (
        len(list((tmp_path / "toy" / "runs").glob("*.json"))) == 4
    )  # 2 methods x {nominal, transformed}


def test_summary_prints_a_finished_store_without_computing_or_writing(
    tmp_path, capsys, monkeypatch
) -> None:
    import os

    from benchmarks.experiments import toy

    flags = ["toy", "--steps", "5", "--methods", "ls,mgda", "--out", str(tmp_path), "--quiet"]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    before = {path: os.stat(path).st_mtime_ns for path in tmp_path.rglob("*")}

    def no_compute(*args, **kwargs):
        raise AssertionError("--summary computed a run")

    monkeypatch.setattr(toy, "run_toy_experiments", no_compute)
    assert main([*flags, "--summary"]) == 0
    summary = capsys.readouterr().out
    assert (
        summary.strip() == printed[: printed.index("\nwrote ")].strip()
    )  # the same table and note
    assert {
        path: os.stat(path).st_mtime_ns for path in tmp_path.rglob("*")
    } == before  # nothing written

    assert main([*flags, "--summary", "--workers", "2"]) == 0  # no workers start for a summary
    assert capsys.readouterr().out.strip() == summary.strip()
    assert (
        main(["toy", "--steps", "5", "--methods", "ls,cagrad", "--out", str(tmp_path), "--summary"])
        == 2
    )
    error = capsys.readouterr().err
    assert (
        "2 of 4 runs with these settings are not finished" in error
        and "cagrad (none, seed 0)" in error
    )


def test_a_read_only_store_migrates_in_memory_and_refuses_writes(tmp_path) -> None:
    import json

    import pytest

    from benchmarks.harness.runs import ResultStore, RunSpec

    spec = RunSpec("toy", "dibsmtl:steps=5", 0, "none", {"steps": 5})
    old = RunSpec("toy", "dibsmtl_multi_step", 0, "none", {"steps": 5})
    ResultStore(tmp_path).save(old, {"value": 1.5}, elapsed_s=0.1)
    files = sorted(tmp_path.rglob("*.json"))
    reader = ResultStore(tmp_path, read_only=True)
    assert (
        reader.load(spec)["result"] == {"value": 1.5}
        and reader.load(spec)["migrated_from"] == old.run_id
    )
    assert sorted(tmp_path.rglob("*.json")) == files  # migrated in memory only
    corrupt = ResultStore(tmp_path).result_path(old)
    corrupt.write_text(json.dumps({"broken": True}))
    assert reader.load(old) is None and corrupt.exists()  # reported, left where it is
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(spec, {"value": 2.0}, elapsed_s=0.1)
    with pytest.raises(RuntimeError, match="read-only"):
        reader.discard(spec)


def test_an_out_that_is_a_file_fails_before_any_run(tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["toy", "--steps", "5", "--methods", "ls", "--out", str(blocker / "results")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    from benchmarks.experiments import toy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "run_toy_experiments", interrupted)
    assert main(["toy", "--steps", "5", "--methods", "ls", "--out", str(tmp_path)]) == 130
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("interrupted:")
        and "run the same command again to resume" in error
        and error.count("\n") == 0
    )


def test_list_names_every_experiment(capsys) -> None:
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert "toy" in printed and "perf" in printed


def test_bad_argument_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "--steps", "many"])
    assert exit_info.value.code == 2
