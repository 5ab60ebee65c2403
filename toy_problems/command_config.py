"""The typed settings under every command line: one dataclass field per flag.

A command's `Config` subclasses `CommandConfig`: its fields have the names argparse gives the flags
(`--n-var` is `n_var`), the same meanings and the same defaults, so `Config.from_args(args)` is the
whole translation from a parsed command line, and `config.argv()` is the way back (the flags that
differ from the defaults), for commands that start copies of themselves (data-parallel ranks).
The Python API of a command is then `run(config) -> Result`; argparse only builds the config.

Beside it, what every command line shares and the layers above import from here: `escape_help`
(argparse %-formats help strings), `method_listing` (the methods' part of `--list`) and
`expected_duration_line` (the one line a long command prints when it starts; docs/cli.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

Config = TypeVar("Config", bound="CommandConfig")


@dataclasses.dataclass(frozen=True)
class CommandConfig:
    """Base of the commands' settings; subclasses are frozen dataclasses, one field per flag."""

    @classmethod
    def from_args(cls: type[Config], args: argparse.Namespace, /) -> Config:
        """The config of parsed flags (a repeated flag's list becomes a tuple; flags the config has
        no field for, such as `--workers`, are the command line's own)."""
        if not isinstance(
            args, argparse.Namespace
        ):  # e.g. an argv list, which would silently give the defaults
            raise TypeError(
                f"{cls.__name__}.from_args takes parsed flags (an argparse.Namespace), got {type(args).__name__}; "
                f"build the config with {cls.__name__}(field=value, ...) instead"
            )
        values = {
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(cls)
            if hasattr(args, field.name)
        }
        return cls(
            **{
                name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items()
            }
        )

    def replace(self: Config, **changes: Any) -> Config:
        """A copy with `changes` (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def argv(self, *, skip: Iterable[str] = ()) -> list[str]:
        """The flags that give this config: every field that differs from its default (except those
        in `skip`), in field order; booleans as bare flags (`--no-X` for a default of True), tuples
        as repeated flags."""
        argv: list[str] = []
        skipped = set(skip)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in skipped or value == _default(field):
                continue
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                argv += [flag] if value else [f"--no-{flag[2:]}"]
            elif isinstance(value, tuple):
                for item in value:
                    argv += [flag, str(item)]
            elif value is not None:
                argv += [flag, str(value) if not isinstance(value, Path) else value.as_posix()]
        return argv


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# -- the expected duration a long command prints when it starts

MACHINE = "the project's 2-core CPU machine"
"""Where the seconds per run that commands quote were measured."""
LONG_COMMAND_SECONDS = 30.0
"""Commands expected to take less than this print no duration line."""


def duration_text(seconds: float, /) -> str:
    """'about 40 s', 'about 6 min', 'about 2.9 hours'."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} hours"


def expected_duration_line(
    todo: int, stored: int, seconds: float | None, /, *, basis: str = ""
) -> str | None:
    """The one line a long command prints (to stderr) when it starts: the runs left, the runs
    already stored and, where measured, the expected time (`basis`: the measurement it scales);
    None when no run is left or they are expected to take under `LONG_COMMAND_SECONDS`."""
    if todo == 0 or (seconds is not None and seconds < LONG_COMMAND_SECONDS):
        return None
    runs = f"{todo} run{'s' if todo != 1 else ''} to do ({stored} stored)"
    if seconds is None:
        return f"{runs}; no measured time per run for these settings"
    return f"{runs}, expected {duration_text(seconds)} on {MACHINE}" + (
        f" ({basis})" if basis else ""
    )


# -- help and listings shared by the command lines


def escape_help(text: str, /) -> str:
    """`text` for an argparse help string, which is %-formatted: a literal '%' (as in 'Δm%') becomes '%%'."""
    return text.replace("%", "%%")


def method_listing() -> list[str]:
    """What `--list` prints for the methods: a heading, then one line per registered method
    (`MethodDescription.line`: name, kind, paper, hyperparameters with their defaults)."""
    from core.registry import available_methods, describe_method

    return [
        f"{len(available_methods())} methods: name, kind, family (module of core.methods), paper, [hyperparameters with their defaults]; "
        "--methods takes 'name' or 'name:key=value:...' specs, e.g. dibsmtl:steps=5",
        *("  " + describe_method(name).line() for name in available_methods()),
    ]
