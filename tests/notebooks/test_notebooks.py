"""Every notebook executes in quick mode without a cell error and writes the figures it declares;
the runner fails a notebook on a cell error or a missing figure, and its command line checks its
arguments."""

from __future__ import annotations

import json

import pytest

from notebooks import runner, support
from notebooks.__main__ import main
from notebooks.runner import NOTEBOOKS, Notebook, execute

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_notebook_source_is_listed_once():
    sources = sorted(path.stem for path in runner.SOURCE_FOLDER.glob("[0-9]*.py"))
    assert sources == sorted(nb.name for nb in NOTEBOOKS)
    figures = [name for nb in NOTEBOOKS for name in nb.figures]
    assert len(figures) == len(set(figures)), "two notebooks write a figure of the same name"
    assert set(runner.PUBLISHED) <= set(figures)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(tmp_path, notebook):
    run = execute(
        notebook, quick=True, results=tmp_path / "results", out=tmp_path / "out", timeout=600
    )
    assert run.ok, f"{notebook.name}: {run.error} (executed notebook: {run.executed})"
    executed = json.loads(run.executed.read_text())
    outputs = [output for cell in executed["cells"] for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        "the executed notebook shows no figure"
    )
    for path in run.figures:
        assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


def _write_source(folder, name: str, text: str) -> Notebook:
    (folder / f"{name}.py").write_text(text)
    return Notebook(name, "a test notebook", ("made",))


def test_a_cell_error_fails_the_notebook_and_keeps_its_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SOURCE_FOLDER", tmp_path)
    source = "# %%\nprint('first cell ran')\n\n# %%\nraise ValueError('broken on purpose')\n"
    run = execute(
        _write_source(tmp_path, "99_broken", source),
        quick=True,
        results=tmp_path / "r",
        out=tmp_path / "out",
        timeout=120,
    )
    assert not run.ok and "ValueError: broken on purpose" in run.error
    executed = run.executed.read_text()
    assert (
        "first cell ran" in executed and "broken on purpose" in executed
    )  # written anyway, to show where it failed


def test_a_declared_figure_that_is_not_written_fails_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SOURCE_FOLDER", tmp_path)
    source = (
        "# %%\nfrom notebooks.support import QUICK, RESULTS\nassert QUICK and RESULTS.name == 'r'\n"
    )
    run = execute(
        _write_source(tmp_path, "98_no_figure", source),
        quick=True,
        results=tmp_path / "r",
        out=tmp_path / "out",
        timeout=120,
    )
    assert (
        not run.ok and "did not write made.png" in run.error
    )  # the cell itself ran: QUICK and RESULTS reached the kernel


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("false", False), ("1", True), ("YES", True)]
)
def test_quick_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(support.QUICK_VARIABLE, value)
    assert support.quick_mode() is expected


def test_an_unknown_quick_value_is_an_error(monkeypatch):
    monkeypatch.setenv(support.QUICK_VARIABLE, "fast")
    with pytest.raises(ValueError, match="set it to 1"):
        support.quick_mode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "42"], "no notebook '42'"),
        (["--quick", "--publish"], "drop --quick"),
        (["--timeout", "0"], "must be positive"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_publish_copies_the_named_figures_and_refuses_missing_ones(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "a.png").write_bytes(PNG_MAGIC + b"a")
    copied = runner.publish(figures, ["a"], target=tmp_path / "docs")
    assert [path.read_bytes() for path in copied] == [PNG_MAGIC + b"a"]
    with pytest.raises(FileNotFoundError, match="b not in"):
        runner.publish(figures, ["a", "b"], target=tmp_path / "docs")


def test_select_by_name_or_number():
    assert [nb.name for nb in runner.select(["01", NOTEBOOKS[1].name])] == [
        NOTEBOOKS[0].name,
        NOTEBOOKS[1].name,
    ]
    assert runner.select(None) == list(NOTEBOOKS)


def test_report_body_strips_title_and_provenance_and_rejects_other_files(tmp_path):
    from toy_problems.store import write_markdown_table

    path = write_markdown_table(
        tmp_path / "summary.md", "A title", "`a command`", "| a |\n|---|\n| 1 |\n\nnotes"
    )
    assert support.report_body(path) == "| a |\n|---|\n| 1 |\n\nnotes\n"
    (tmp_path / "other.md").write_text("| a |\n|---|\n| 1 |\n")
    with pytest.raises(ValueError, match="is not a report"):
        support.report_body(tmp_path / "other.md")


def test_inspect_toy_reads_what_it_stored_and_reruns_for_other_settings(tmp_path, monkeypatch):
    from toy_problems import inspect_cli
    from toy_problems.inspect_cli import InspectConfig

    monkeypatch.setattr(support, "RESULTS", tmp_path)
    calls = []
    real = inspect_cli.run

    def counting(config):
        calls.append(config)
        return real(config)

    monkeypatch.setattr(inspect_cli, "run", counting)
    config = InspectConfig("two_task_toy", methods="ls", steps=20, lr=0.01)
    first = support.inspect_toy(config)
    folder = support.inspect_folder(config)
    assert len(calls) == 1 and folder.is_relative_to(tmp_path / "toy_inspect" / "two_task_toy")
    assert support.inspect_toy(config) == first and len(calls) == 1  # read from the store
    support.inspect_toy(InspectConfig("two_task_toy", methods="ls", steps=20, lr=0.02))
    assert len(calls) == 2  # other settings, another folder
    (folder / "inspect.json").write_text("{")  # torn: recomputed
    assert (
        support.inspect_toy(config)["results"].keys() == first["results"].keys() and len(calls) == 3
    )


def test_claim_reads_the_store_of_python_m_proofs_numeric(tmp_path, monkeypatch, capsys):
    from proofs_numeric import dibs_fairness
    from proofs_numeric.__main__ import main as proofs_main

    assert proofs_main(["--quick", "--claim", "dibs_fairness", "--out", str(tmp_path)]) == 0
    monkeypatch.setattr(support, "QUICK", True)
    monkeypatch.setattr(
        support, "CLAIMS", tmp_path / "proofs_numeric" / "quick"
    )  # --out is the store's root
    monkeypatch.setattr(
        dibs_fairness, "run", lambda **_: pytest.fail("the stored result should have been read")
    )
    result = support.claim(dibs_fairness)
    assert result.passed and result.quick is True and result.data["checks"]
