"""One vocabulary for building methods: canonical names and `name:key=value` specs.

Every command line and experiment builds its methods here; the library itself never dispatches
on method names. A spec is a canonical name followed by hyperparameters,
`"dibsmtl:steps=5"` or `"cagrad:c=0.5:rescale=2"`; a list of specs is comma separated
(`"dibsmtl:steps=5,cagrad:c=0.5"`), with list values in brackets (`"ls:weights=[1,3]"`).
Values are read as None (`none`), booleans (`true`/`false`), integers, floats, bracketed lists
or, failing those, strings; an integer given for a float hyperparameter becomes a float.

Old names stay readable for one release: `dibsmtl_multi_step` (now `dibsmtl:steps=5`) and
`nsum` (now `normalized_sum`) build the same method with a `DeprecationWarning`. `imtl` named
IMTL-G until issue 16 (now `imtl_g`) and names the full IMTL (IMTL-L + IMTL-G) since issue 18;
results stored under `imtl` before that are IMTL-G's (`REUSED_NAMES`, `NAMING_GENERATION`).
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import InvalidHyperparameterError, UnknownMethodError
from core.methods import (
    DBMTL,
    FAMO,
    IMTL,
    IMTLG,
    IMTLL,
    MGDA,
    CAGrad,
    DiBSMTL,
    DynamicWeightAverage,
    ExcessMTL,
    GradDrop,
    GradNorm,
    LinearScalarization,
    MoCo,
    MoDo,
    NashMTL,
    NormalizedSum,
    PCGrad,
    RandomGradientWeighting,
    RandomLossWeighting,
    ScaleInvariantLS,
    SDMGrad,
    UncertaintyWeighting,
)
from core.methods.base import GradientWeighting, JacobianAggregation, Method
from core.methods.dual_cone import DualProj, UPGrad
from core.methods.gradient_alignment import AlignedMTL, ConFIG, FairGrad, GradVac
from core.methods.preference import EPOSearch, ParetoMTL
from core.methods.rotograd import RotoGrad
from core.methods.scalarization import (
    GeometricLossStrategy,
    PenaltyBoundaryIntersection,
    SmoothTchebycheff,
    Tchebycheff,
)

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        DiBSMTL,
        NormalizedSum,
        MGDA,
        NashMTL,
        PCGrad,
        CAGrad,
        IMTLG,
        RandomGradientWeighting,
        LinearScalarization,
        ScaleInvariantLS,
        RandomLossWeighting,
        UncertaintyWeighting,
        DynamicWeightAverage,
        FAMO,
        GradDrop,
        MoCo,
        DBMTL,
        ExcessMTL,
        GradNorm,
        IMTLL,
        IMTL,
        MoDo,
        SDMGrad,
        ParetoMTL,
        EPOSearch,
        Tchebycheff,
        PenaltyBoundaryIntersection,
        SmoothTchebycheff,
        GeometricLossStrategy,
        UPGrad,
        DualProj,
        AlignedMTL,
        ConFIG,
        GradVac,
        FairGrad,
        RotoGrad,
    )
}
"""Canonical name -> method class; each class carries its own name (`Method.name`)."""

DEPRECATED_ALIASES: dict[str, str] = {
    "dibsmtl_multi_step": "dibsmtl:steps=5",
    "nsum": "normalized_sum",
}
"""Old names and the specs they now stand for (kept for one release, with a DeprecationWarning)."""

REMOVED_NAMES: dict[str, str] = {}
"""Names refused with an explanation (none at present)."""

NAMING_GENERATION = 2
"""The generation of the registry's names that stored results record (`naming`): 1 before issue
18, when `imtl` still meant IMTL-G in stored results, 2 since."""

REUSED_NAMES: dict[str, int] = {"imtl": 2}
"""Names that meant another method in stored results made before the given naming generation:
such a result belongs to the method in `RENAMED` (IMTL-G), never to today's method of that name."""
RENAMED: dict[str, str] = {**DEPRECATED_ALIASES, "imtl": "imtl_g"}
"""Every old name and what it meant, for reading results stored under old names (`legacy_specs`)."""

_CONTEXT = ("num_tasks", "generator")
"""Constructor arguments that come from the caller's context, never from a spec."""


@dataclass(frozen=True)
class MethodSpec:
    """A method name with explicit hyperparameters (sorted by name), as parsed from a spec."""

    name: str
    hyperparameters: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return ":".join(
            [self.name, *(f"{key}={_format_value(value)}" for key, value in self.hyperparameters)]
        )


@dataclass(frozen=True)
class MethodDescription:
    """What `describe_method` reports: the class-level facts and the hyperparameters' defaults."""

    name: str
    cls: type[Method]
    paper: str
    kind: str
    hyperparameters: dict[str, Any]
    claims: frozenset[str]
    loss_domain: str
    stateful: bool
    random: bool
    head_gradient: str
    engine_modes: frozenset[str]
    summary: str

    @property
    def title(self) -> str:
        """The method's name as its docstring's first words give it ("CAGrad", "Pareto MTL")."""
        return re.split(r",| \(|:| `", self.summary, maxsplit=1)[0].strip()

    def line(self) -> str:
        """One line for listings: name, kind, family (the module of `core.methods`), the paper (its
        author list cut to "First et al." or "First & Second") and every hyperparameter with its
        default (each can be set in a spec)."""
        parts = self.paper.split(", ")
        authors = 0  # the leading surnames ("Liu", "Fridovich-Keil"); a title has spaces or capitals inside
        while authors < len(parts) - 1 and re.fullmatch(
            r"[A-Z][a-z']+(?:-[A-Z][a-z']+)?", parts[authors]
        ):
            authors += 1
        first = f"{parts[0]} & {parts[1]}" if authors == 2 else f"{parts[0]} et al."
        paper = ", ".join([first, *parts[authors:]]) if authors >= 2 else self.paper
        defaults = ", ".join(
            f"{key}={_format_value(value)}" for key, value in self.hyperparameters.items()
        )
        family = self.cls.__module__.rsplit(".", 1)[-1].replace(
            "_", " "
        )  # the module of core.methods, as the figures group methods
        return f"{self.name:<15} {self.kind:<21} {family:<19} {paper}" + (
            f"  [{defaults}]" if defaults else ""
        )


def available_methods() -> list[str]:
    """The canonical method names, sorted."""
    return sorted(METHODS)


def describe_method(name: str, /) -> MethodDescription:
    """The paper, the hyperparameters with their defaults and the class-level facts of a method."""
    cls = METHODS[_resolve(parse_method_spec(name)).name]
    doc = inspect.getdoc(cls) or ""
    return MethodDescription(
        name=cls.name,
        cls=cls,
        paper=cls.paper,
        kind=_kind(cls),
        hyperparameters={key: param.default for key, param in _hyperparameters(cls).items()},
        claims=frozenset(cls.claims),
        loss_domain=cls.loss_domain,
        stateful=bool(cls.stateful),
        random=bool(cls.random),
        head_gradient=cls.head_gradient.value,
        engine_modes=frozenset(cls.engine_modes),
        summary=doc.split("\n", 1)[0],
    )


def _kind(cls: type[Method]) -> str:
    """The method's kind, as `describe_method` names it."""
    if issubclass(cls, GradientWeighting):
        return "gradient weighting"
    return "jacobian aggregation" if issubclass(cls, JacobianAggregation) else "loss weighting"


def parse_method_spec(text: str, /) -> MethodSpec:
    """`"name:key=value:key=value"` -> `MethodSpec` (values parsed, not yet checked by the class)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidHyperparameterError(
            f"a method spec is 'name' or 'name:key=value:...', got {text!r}"
        )
    name, *assignments = [part.strip() for part in _split_outside_brackets(text.strip(), ":")]
    hyperparameters: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidHyperparameterError(
                f"in method spec {text!r}: {assignment!r} is not key=value (write e.g. 'dibsmtl:steps=5')"
            )
        key = key.strip()
        if key in hyperparameters:
            raise InvalidHyperparameterError(f"in method spec {text!r}: {key!r} is given twice")
        hyperparameters[key] = _parse_value(value.strip())
    return MethodSpec(name, tuple(sorted(hyperparameters.items())))


def parse_method_specs(text: str, /) -> list[MethodSpec]:
    """A comma-separated list of specs (commas inside brackets belong to list values)."""
    parts = [part.strip() for part in _split_outside_brackets(text, ",")]
    if not any(parts):
        raise InvalidHyperparameterError(
            f"no method given in {text!r}; choose from: {', '.join(available_methods())}"
        )
    return [parse_method_spec(part) for part in parts if part]


def canonical_spec(spec: str | MethodSpec, /, *, num_tasks: int | None = None) -> str:
    """The one text of a spec: canonical name, hyperparameters sorted, values normalised (an int
    for a float is a float), defaults dropped (`rescale=1.0` is the default 1); the values are
    checked by building the method (with `num_tasks` where the method needs it; without it such a
    method's values are checked when it is built).

    Specs that differ only in that way have one canonical text (`"dibsmtl:steps=1"` and
    `"dibsmtl"`; `"dibsmtl_multi_step"` and `"dibsmtl:steps=5"`; `"cagrad:rescale=1.0"` and
    `"cagrad"`), which is what run ids are made of. Hyperparameters that a setting makes
    irrelevant (`inner_step_rule` with `steps=1`) still count.
    """
    resolved = _resolve(parse_method_spec(spec) if isinstance(spec, str) else spec)
    cls = METHODS[resolved.name]
    accepted = _hyperparameters(cls)
    _check_keys(cls, dict(resolved.hyperparameters), accepted)
    explicit = {}
    for key, value in resolved.hyperparameters:
        value = _coerce(value, accepted[key])
        if not _same_value(value, accepted[key].default):
            explicit[key] = value
    if num_tasks is not None or not cls.requires_num_tasks:  # the class checks the values
        make_method(MethodSpec(cls.name, tuple(sorted(explicit.items()))), num_tasks=num_tasks)
    return str(MethodSpec(cls.name, tuple(sorted(explicit.items()))))


def legacy_specs(spec: str, /) -> list[str]:
    """The old names that meant this spec (for reading results stored under old names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        canonical = canonical_spec(spec)
        return [
            old
            for old, new in RENAMED.items()
            if canonical_spec(new) == canonical and old != canonical
        ]


def make_method(
    spec: str | MethodSpec,
    /,
    *,
    num_tasks: int | None = None,
    generator: torch.Generator | None = None,
    **hyperparameters: Any,
) -> Method:
    """A fresh method from a spec (`"name"` or `"name:key=value:..."`), keywords overriding the spec.

    `num_tasks` is accepted for every method and passed to those that create per-task state at
    construction (`requires_num_tasks`); `generator` likewise to the random ones (`random`).
    Unknown names and hyperparameters raise with the accepted ones listed; values are checked by
    the class (non-finite or out-of-range values raise `InvalidHyperparameterError`).
    """
    resolved = _resolve(parse_method_spec(spec) if isinstance(spec, str) else spec)
    cls = METHODS[resolved.name]
    accepted = _hyperparameters(cls)
    given = {**dict(resolved.hyperparameters), **hyperparameters}
    for key in _CONTEXT:
        if key in given:
            raise InvalidHyperparameterError(
                f"{key} is not a hyperparameter of a spec; pass make_method(..., {key}=...)"
            )
    _check_keys(cls, given, accepted)
    arguments = {key: _coerce(value, accepted[key]) for key, value in given.items()}
    if cls.requires_num_tasks:
        arguments["num_tasks"] = num_tasks
    if cls.random and generator is not None:
        arguments["generator"] = generator
    return cls(**arguments)


# -- helpers ---------------------------------------------------------------------------------------


def _resolve(spec: MethodSpec) -> MethodSpec:
    """Apply the deprecated aliases and refuse removed or unknown names."""
    if spec.name in REMOVED_NAMES:
        raise UnknownMethodError(f"unknown method {spec.name!r}: {REMOVED_NAMES[spec.name]}")
    if spec.name in DEPRECATED_ALIASES:
        target = parse_method_spec(DEPRECATED_ALIASES[spec.name])
        warnings.warn(
            f"method name {spec.name!r} is deprecated; write {DEPRECATED_ALIASES[spec.name]!r}",
            DeprecationWarning,
            stacklevel=3,
        )
        merged = {**dict(target.hyperparameters), **dict(spec.hyperparameters)}
        return MethodSpec(target.name, tuple(sorted(merged.items())))
    if spec.name not in METHODS:
        raise UnknownMethodError(
            f"unknown method {spec.name!r}; choose one of: {', '.join(available_methods())}"
        )
    return spec


def _hyperparameters(cls: type[Method]) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(cls.__init__).parameters
    return {
        key: param
        for key, param in parameters.items()
        if key not in ("self", *_CONTEXT)
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def _check_keys(
    cls: type[Method], given: Mapping[str, Any], accepted: Mapping[str, inspect.Parameter]
) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        choices = ", ".join(accepted) or "none"
        raise InvalidHyperparameterError(
            f"{cls.name} has no hyperparameter {unknown[0]!r}; its hyperparameters: {choices}"
        )


def _coerce(value: Any, parameter: inspect.Parameter) -> Any:
    """An int given where the default or annotation is a float becomes a float (`radius=1`), in a
    list too (`ls:weights=[1,3]` is `[1.0, 3.0]`)."""
    annotation = str(parameter.annotation)
    wants_float = (
        isinstance(parameter.default, float) or re.search(r"\bfloat\b", annotation) is not None
    )
    wants_int = isinstance(parameter.default, int) and not isinstance(parameter.default, bool)
    if isinstance(value, list):
        return [_coerce(item, parameter) for item in value]
    if wants_float and not wants_int and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _same_value(value: Any, default: Any) -> bool:
    """Whether a given value is the default: numbers by value (`rescale=1.0` is `rescale=1`)."""
    if default is inspect.Parameter.empty:
        return False
    numbers = (int, float)
    if (
        isinstance(value, numbers)
        and isinstance(default, numbers)
        and not isinstance(value, bool)
        and not isinstance(default, bool)
    ):
        return value == default or (math.isnan(value) and math.isnan(default))
    return type(value) is type(default) and value == default


def _split_outside_brackets(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []  # the characters of the part being read
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise InvalidHyperparameterError(f"unbalanced ']' in {text!r}")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise InvalidHyperparameterError(f"unbalanced '[' in {text!r}")
    parts.append("".join(current))
    return parts


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered == "none":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return (
            [_parse_value(item.strip()) for item in _split_outside_brackets(inner, ",")]
            if inner
            else []
        )
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)
