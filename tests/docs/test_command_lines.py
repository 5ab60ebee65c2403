"""The four command lines together: every `--help` works, docs/cli.md names every flag of every
parser, `--list` prints what the command runs then the methods, `--transforms` and `--out` mean
the same everywhere, and long commands announce their expected duration."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from benchmarks.__main__ import build_parser as benchmarks_parser
from core.registry import available_methods, describe_method
from notebooks.__main__ import build_parser as notebooks_parser
from proofs_numeric.__main__ import build_parser as proofs_parser
from toy_problems.command_config import duration_text, expected_duration_line
from toy_problems.inspect_cli import build_parser as toy_parser

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
PARSERS = {
    "benchmarks": benchmarks_parser,
    "toy_problems": toy_parser,
    "proofs_numeric": proofs_parser,
    "notebooks": notebooks_parser,
}
MAINS = {
    "benchmarks": "benchmarks.__main__",
    "toy_problems": "toy_problems.inspect_cli",
    "proofs_numeric": "proofs_numeric.__main__",
    "notebooks": "notebooks.__main__",
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return {name: sub for action in actions for name, sub in action.choices.items()}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


def _every_command() -> list[tuple[str, tuple[str, ...]]]:
    """(command, subcommand path) for every command and subcommand."""
    found = []
    for command, build in PARSERS.items():
        found.append((command, ()))
        found += [(command, (name,)) for name in _subcommands(build())]
    return found


@pytest.mark.parametrize(
    ("command", "path"),
    _every_command(),
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
)
def test_every_help_exits_0_and_prints_its_usage(command, path, capsys) -> None:
    """`--help` of every command and subcommand (argparse %-formats help strings: a literal '%'
    such as Δm% once crashed `python -m benchmarks --help`)."""
    import importlib

    main = importlib.import_module(MAINS[command]).main
    try:
        status = main([*path, "--help"])
    except SystemExit as exit_:
        status = exit_.code
    assert status in (0, None)
    printed = capsys.readouterr().out
    assert printed.startswith("usage:") and " ".join(path) in printed.splitlines()[0]


def _doc_sections() -> dict[str, str]:
    """docs/cli.md by command: `## \\`python -m X\\`` sections, keyed 'X'."""
    text = CLI_DOC.read_text()
    parts = re.split(r"^## `python -m (\w+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def _named(flag: str, text: str) -> bool:
    """Whether `text` names `flag` in backticks (`--transform` is not named by `--transforms`)."""
    return re.search("`" + re.escape(flag) + r"(?=[ `=\[])", text) is not None


def test_the_cli_doc_names_every_flag_of_every_parser() -> None:
    """Each flag in its command's section: a subcommand's flag in its `### ` subsection (whose
    heading names it in backticks) or in the part before the first subsection (flags it shares)."""
    sections = _doc_sections()
    assert set(sections) == set(PARSERS)
    missing = []
    for command, build in PARSERS.items():
        parser, section = build(), sections[command]
        shared, *subsections = re.split(r"^### ", section, flags=re.MULTILINE)
        missing += [f"{command} {flag}" for flag in _flags(parser) if not _named(flag, shared)]
        for name, sub in _subcommands(parser).items():
            own = [text for text in subsections if f"`{name}`" in text.splitlines()[0]]
            assert len(own) == 1, (
                f"docs/cli.md has no one '### `{name}`' subsection under python -m {command}"
            )
            missing += [
                f"{command} {name} {flag}"
                for flag in _flags(sub)
                if not (_named(flag, own[0]) or _named(flag, shared))
            ]
    assert not missing, f"docs/cli.md does not name: {', '.join(missing)}"


@pytest.mark.parametrize("command", ["benchmarks", "toy_problems"])
def test_list_prints_what_the_command_runs_then_one_line_per_method(command, capsys) -> None:
    import importlib

    assert importlib.import_module(MAINS[command]).main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    heading = next(
        index
        for index, line in enumerate(lines)
        if line.startswith(f"{len(available_methods())} methods:")
    )
    first = "toy" if command == "benchmarks" else "two_task_toy"
    assert any(line.split()[:1] == [first] for line in lines[:heading])  # its own things first
    assert lines[heading + 1 :] == [
        "  " + describe_method(name).line() for name in available_methods()
    ]


def test_a_method_line_names_kind_family_paper_and_defaults() -> None:
    line = describe_method("cagrad").line()
    assert line.split()[:4] == ["cagrad", "gradient", "weighting", "projection"]
    assert (
        "Liu et al., Conflict-Averse Gradient Descent" in line
        and "(NeurIPS 2021)" in line
        and "[c=0.4, rescale=1," in line
    )
    assert "Sener & Koltun, Multi-Task Learning" in describe_method("mgda").line()
    assert (
        "Gupta et al., DiBS, eq. 2" in describe_method("normalized_sum").line()
    )  # "DiBS" is a title, not an author
    assert describe_method("ls").line().split()[:3] == ["ls", "loss", "weighting"]


def test_the_methods_help_stays_readable_with_every_method(capsys) -> None:
    """The --methods help says what a long default is instead of printing its 36 specs."""
    from benchmarks.experiments import supervised, toy

    defaults = {
        "multimnist": supervised.EXPERIMENTS["multimnist"].methods.split(","),
        "toy": toy.default_methods(),
    }
    for experiment, methods in defaults.items():
        with pytest.raises(SystemExit):
            benchmarks_parser().parse_args([experiment, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        shown = text[text.index("--methods METHODS comma") : text.index("--seeds SEEDS comma")]
        assert f"({len(methods)} in all)" in shown and len(methods) > 30
        assert "--list" in shown and "aligned_mtl" not in shown and len(shown) < 600


def test_transforms_are_one_comma_separated_list_everywhere() -> None:
    """`--transforms a,b` in every parser that takes transforms; inspect's old `--transform a
    --transform b` still gives the same settings."""
    from toy_problems.inspect_cli import InspectConfig

    def inspect(*flags):
        return InspectConfig.from_args(
            toy_parser().parse_args(["inspect", "--problem", "quadratic", *flags])
        )

    assert inspect("--transforms", "0:exp,1:power:2").transform == ("0:exp", "1:power:2")
    assert inspect("--transform", "0:exp", "--transform", "1:power:2") == inspect(
        "--transforms", "0:exp,1:power:2"
    )
    assert inspect().transform == () and inspect("--transforms", "none").transform == ("none",)
    for experiment in ("toy", "multimnist", "pareto_multimnist"):
        args = benchmarks_parser().parse_args([experiment, "--transforms", "none,0:exp"])
        assert (
            args.transforms == "none,0:exp"
        )  # parsed by `benchmarks.harness.cli.parse_transforms`


def test_the_deprecated_transform_flag_says_so(tmp_path, capsys) -> None:
    toy_parser().parse_args(["inspect", "--problem", "two_task_toy", "--transform", "0:exp"])
    assert "--transform is deprecated; write --transforms 0:exp" in capsys.readouterr().err


def test_out_is_the_root_of_the_result_store_in_every_parser() -> None:
    """Every `--out` but perf's (its report's folder, the documented exception) is a store root
    whose default is `results`."""
    parsers = [(command, build()) for command, build in PARSERS.items()]
    parsers += [
        (f"{command} {name}", sub)
        for command, build in PARSERS.items()
        for name, sub in _subcommands(build()).items()
    ]
    checked = 0
    for name, parser in parsers:
        out = next((action for action in parser._actions if "--out" in action.option_strings), None)
        if out is None or name.startswith("benchmarks perf"):
            continue
        checked += 1
        assert "root of the result store" in out.help, name
        assert out.default in (Path("results"), None), (
            name
        )  # None: notebooks, whose --results (deprecated) may stand in
    assert checked == 10  # 7 sweeps, inspect, proofs_numeric, notebooks


def test_proofs_numeric_and_notebooks_write_under_the_store(tmp_path, monkeypatch) -> None:
    import proofs_numeric.__main__ as proofs
    from notebooks.__main__ import store_and_folder

    seen = []
    monkeypatch.setattr(proofs, "run_claims", lambda names, *, out, **_: seen.append(out) or [])
    monkeypatch.setattr(proofs, "report", lambda rows, out: "")
    for quick, folder in ((False, "proofs_numeric"), (True, "proofs_numeric/quick")):
        proofs.run(proofs.Config(quick=quick, claim=("dibs_fairness",), out=tmp_path))
        assert seen[-1] == tmp_path / folder

    def folders(*flags):
        return store_and_folder(notebooks_parser().parse_args(list(flags)))

    assert folders() == (Path("results"), Path("results/notebooks"))
    assert folders("--out", "R", "--quick") == (Path("R"), Path("R/notebooks/quick"))
    assert folders("--results", "S") == (
        Path("S"),
        Path("S/notebooks"),
    )  # deprecated: --out's meaning
    assert folders("--results", "S", "--out", "N") == (
        Path("S"),
        Path("N"),
    )  # both: the old meanings


def test_the_expected_duration_line() -> None:
    line = expected_duration_line(72, 0, 177.0, basis="the full sweep")
    assert (
        line
        == "72 runs to do (0 stored), expected about 3 min on the project's 2-core CPU machine (the full sweep)"
    )
    assert expected_duration_line(0, 72, 177.0) is None  # nothing left
    assert expected_duration_line(5, 0, 12.0) is None  # short
    assert (
        expected_duration_line(87, 0, None)
        == "87 runs to do (0 stored); no measured time per run for these settings"
    )
    assert [duration_text(s) for s in (40, 600, 3 * 3600)] == [
        "about 40 s",
        "about 10 min",
        "about 3.0 hours",
    ]


def test_a_long_sweep_announces_its_runs_and_duration_on_stderr(
    tmp_path, monkeypatch, capsys
) -> None:
    """The toy, made to look slow: the line names the runs left and those stored; a rerun (all
    stored) prints none."""
    from benchmarks.__main__ import main
    from benchmarks.experiments import toy

    monkeypatch.setattr(toy, "FULL_RUN_SECONDS_PER_RUN", 1e6)
    flags = [
        "toy",
        "--methods",
        "ls,mgda",
        "--transforms",
        "none",
        "--steps",
        "5",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main([*flags[:2], "ls", *flags[3:]]) == 0  # ls stored first
    capsys.readouterr()
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert re.search(
        r"^1 run to do \(1 stored\), expected about \d+ min on the project's 2-core CPU machine \(",
        err,
        flags=re.MULTILINE,
    ), err
    assert main(flags) == 0
    assert "to do" not in capsys.readouterr().err


def test_supervised_expected_durations_scale_the_measured_runs() -> None:
    from benchmarks.experiments import supervised

    def seconds(**flags):
        config = supervised.Config("multimnist", **flags)
        return supervised.expected_seconds(config, supervised.planned_runs(config))[0]

    full = seconds(methods="ls,mgda", seeds="0", transforms="none")
    assert full == pytest.approx(
        2 * 7.0 + 2 * 12.0
    )  # 2 single-task runs, 2 method runs of 20 epochs
    assert seconds(methods="ls,mgda", seeds="0", transforms="none", epochs=2) == pytest.approx(
        full / 10
    )
    assert seconds(methods="ls", seeds="0", max_batches=3) is None  # not what was measured
    no_data = supervised.Config("nyuv2", data_root="/nonexistent")
    assert supervised.expected_seconds(no_data, [])[0] is None
