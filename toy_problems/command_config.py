"""The typed settings under every command line: one dataclass field per flag.

A command's `Config` subclasses `CommandConfig`: its fields have the names argparse gives the flags
(`--n-var` is `n_var`), the same meanings and the same defaults, so `Config.from_args(args)` is the
whole translation from a parsed command line, and `config.argv()` is the way back (the flags that
differ from the defaults), for commands that start copies of themselves (data-parallel ranks).
The Python API of a command is then `run(config) -> Result`; argparse only builds the config.
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
        if not isinstance(args, argparse.Namespace):  # e.g. an argv list, which would silently give the defaults
            raise TypeError(f"{cls.__name__}.from_args takes parsed flags (an argparse.Namespace), got {type(args).__name__}; "
                            f"build the config with {cls.__name__}(field=value, ...) instead")
        values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls) if hasattr(args, field.name)}
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})

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
