"""The documentation's promises: every code block of README.md, of docs/**/*.md and of the
results and notebooks pages runs or parses, and every relative link leads to a file (and heading)
that exists.

- ```python blocks of one file run in order in one namespace, in an empty temporary folder; the
  training-loop and Pareto examples are also held to what their comments say.
- ```bash blocks: each `python -m <package> ...` of this repository is parsed by that command's own
  argparse parser, never run (a `# comment` is no argument); `python FILE` and `bash FILE` must
  name a file of the repository; other commands (pip, python -m pytest, venv, ...) are not checked.
- A block that must not run here carries `<!-- no-exec: reason -->` on the line before its fence:
  a python block is then only compiled, and the test reports it as skipped with its reason.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKDOWN = [  # the pages a user reads and copies commands from
    README,
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "benchmarks" / "RESULTS.md",
    ROOT / "notebooks" / "README.md",
]
NO_EXEC = re.compile(r"<!--\s*no-exec:\s*(\S.*?)\s*-->")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PACKAGES = {"benchmarks", "toy_problems", "proofs_numeric", "notebooks", "core"}
PARSER_MODULES = {  # the module holding each command's `build_parser` (dotted modules: their own)
    "benchmarks": "benchmarks.__main__",
    "toy_problems": "toy_problems.inspect_cli",
    "proofs_numeric": "proofs_numeric.__main__",
    "notebooks": "notebooks.__main__",
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # the first word of the fence's info string ("python", "bash", "" ...)
    code: str
    no_exec: str | None  # the reason of a no-exec marker on the line before the fence

    @property
    def where(self) -> str:
        return f"{relative(self.path)}:{self.line}"


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, in order (fences may be indented, as in lists)."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.match(r"\s*```\s*(\S*)", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(
            (j for j in range(index + 1, len(lines)) if lines[j].strip().startswith("```")), None
        )
        assert end is not None, f"{relative(path)}:{index + 1}: a code fence is never closed"
        marker = NO_EXEC.search(lines[index - 1]) if index > 0 else None
        code = "\n".join(lines[index + 1 : end])
        blocks.append(
            Block(path, index + 1, opening.group(1), code, marker.group(1) if marker else None)
        )
        index = end + 1
    return blocks


def compiled(block: Block):
    """The block compiled with the markdown file's line numbers, so a traceback points into it."""
    from textwrap import dedent

    return compile("\n" * block.line + dedent(block.code), str(block.path), "exec")


# What the examples' comments promise, checked on the namespace of the file that holds them.
def check_training_loop(namespace: dict) -> None:
    info = namespace["info"]
    assert float(info.weights.sum()) > 0 and info.gramian.shape == (2, 2)


def check_pareto(namespace: dict) -> None:
    # the cylinder's axis, first-order predictions, 10 corrector Jacobians
    axis = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    torch.testing.assert_close(namespace["tangents"].directions.abs(), axis, rtol=0, atol=1e-8)
    assert namespace["local"].regular and namespace["explored"].counts.jacobians["correct"] == 10


CHECKS = {"README.md": check_training_loop, "docs/pareto_exploration.md": check_pareto}


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_python_blocks_run(path: Path, tmp_path, monkeypatch) -> None:
    blocks = [
        block for block in code_blocks(path) if block.language == "python" and block.no_exec is None
    ]
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace: dict = {"__name__": "__main__"}
    for block in blocks:
        exec(compiled(block), namespace)
    if relative(path) in CHECKS:
        CHECKS[relative(path)](namespace)


def test_the_checked_examples_are_where_the_checks_look() -> None:
    for name in CHECKS:
        runnable = [
            b for b in code_blocks(ROOT / name) if b.language == "python" and b.no_exec is None
        ]
        assert runnable, f"{name} lost the python example that test_docs.py checks"


NOT_RUN = [block for path in MARKDOWN for block in code_blocks(path) if block.no_exec is not None]


@pytest.mark.parametrize("block", NOT_RUN, ids=[block.where for block in NOT_RUN])
def test_blocks_marked_no_exec_compile_and_are_reported(block: Block) -> None:
    if block.language == "python":
        compiled(block)
    pytest.skip(f"{block.where} not run here: {block.no_exec}")


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_every_no_exec_marker_stands_before_a_fence(path: Path) -> None:
    blocks = code_blocks(path)
    marked = {block.line - 1 for block in blocks if block.no_exec is not None}
    inside = {
        block.line + i for block in blocks for i in range(block.code.count("\n") + 2)
    }  # a marker shown as an example
    lines = path.read_text().splitlines()
    stray = [
        n for n, line in enumerate(lines, 1) if NO_EXEC.search(line) and n not in marked | inside
    ]
    assert not stray, f"{relative(path)}: no-exec markers not right before a fence, lines {stray}"


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists (comments dropped, `\\` lines
    joined, split at `&&`, `||`, `;` and `|`, a leading `$ ` prompt removed)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line.removeprefix("$ "), comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def check_command(words: list[str], where: str) -> None:
    """Parse one command with its program's own parser, or check the file it runs exists."""
    python = next(
        (i for i, word in enumerate(words) if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", word)), None
    )
    if python is None:
        if words[0] == "bash" and len(words) > 1:
            assert (ROOT / words[1]).is_file(), (
                f"{where}: `{shlex.join(words)}` runs a file that does not exist"
            )
        return
    arguments = words[python + 1 :]
    if arguments and arguments[0].endswith(".py"):
        assert (ROOT / arguments[0]).is_file(), (
            f"{where}: `{shlex.join(words)}` runs a file that does not exist"
        )
        return
    if len(arguments) < 2 or arguments[0] != "-m" or arguments[1].split(".")[0] not in PACKAGES:
        return  # python -m pytest, pip, venv, ...: not this repository's commands
    parse(arguments[1], arguments[2:], f"{where}: `{shlex.join(words)}`")


def parse(module: str, arguments: list[str], what: str) -> None:
    owner = importlib.import_module(PARSER_MODULES.get(module, module))
    assert hasattr(owner, "build_parser"), (
        f"{what}: {owner.__name__} has no build_parser to check it with"
    )
    printed, failure = io.StringIO(), None
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            owner.build_parser().parse_args(arguments)
        except SystemExit as exit_:  # --help exits 0 after printing the help
            failure = None if exit_.code == 0 else printed.getvalue().strip()
        except Exception as error:  # noqa: BLE001 - parsers that raise their own usage errors
            failure = f"{type(error).__name__}: {error}"
    if failure is not None:
        pytest.fail(f"{what} does not parse: {failure}")


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_shell_commands_parse(path: Path) -> None:
    for block in code_blocks(path):
        if block.language in SHELL_LANGUAGES and block.no_exec is None:
            for words in shell_commands(block.code):
                check_command(words, block.where)


def test_the_command_check_catches_a_bad_flag_and_a_missing_file() -> None:
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command(shlex.split("python -m benchmarks toy --no-such-flag"), "here")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command(
            shlex.split("python -m toy_problems inspect --problem no_such_problem"), "here"
        )
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(shlex.split("bash ci/no_such_script.sh"), "here")
    [commented] = shell_commands("python -m benchmarks toy --quick  # a comment is no argument")
    check_command(commented, "here")
    check_command(shlex.split("python -m pytest --whatever"), "here")  # not ours: not checked


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(heading) for heading in re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{relative(path)}: links to nothing: {broken}"


def test_readme_commands_exist() -> None:
    text = README.read_text()
    for command in (
        "pip install -r requirements.txt",
        "python -m pytest",
        "python -m benchmarks toy",
        "pip install -e .",
    ):
        assert command in text
