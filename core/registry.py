"""A name -> factory registry of the methods, for command-line interfaces.

The library itself never dispatches on method names; CLIs call `make_method(name)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from core.errors import InvalidHyperparameterError, UnknownMethodError
from core.methods import (
    FAMO,
    IMTLG,
    MGDA,
    CAGrad,
    DiBSMTL,
    DynamicWeightAverage,
    LinearScalarization,
    NashMTL,
    NormalizedSum,
    PCGrad,
    RandomGradientWeighting,
    RandomLossWeighting,
    ScaleInvariantLS,
    UncertaintyWeighting,
)
from core.methods.base import Method

# Names follow the reference code where it has one (dibsmtl, ls, mgda, rlw, scaleinvls).
METHODS: dict[str, Callable[..., Method]] = {
    "dibsmtl": partial(DiBSMTL, steps=1),
    "dibsmtl_multi_step": partial(DiBSMTL, steps=5),
    "nsum": NormalizedSum,
    "mgda": MGDA,
    "nashmtl": NashMTL,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "imtl": IMTLG,
    "rgw": RandomGradientWeighting,
    "ls": LinearScalarization,
    "scaleinvls": ScaleInvariantLS,
    "rlw": RandomLossWeighting,
    "uw": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "famo": FAMO,
}

NEEDS_NUM_TASKS = frozenset({"uw", "dwa", "famo"})
"""Methods that hold per-task state and so take the number of tasks at construction."""


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def make_method(name: str, /, *, num_tasks: int | None = None, **hyperparameters) -> Method:
    """A fresh method instance for `name`, with keyword hyperparameters overriding the defaults.

    `num_tasks` is passed to the methods that keep per-task state (`NEEDS_NUM_TASKS`) and
    ignored by the others, so a CLI can always give it.
    """
    try:
        factory = METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}") from None
    if name in NEEDS_NUM_TASKS:
        if num_tasks is None:
            raise InvalidHyperparameterError(f"method {name!r} keeps per-task state: pass num_tasks=K to make_method")
        return factory(num_tasks, **hyperparameters)
    return factory(**hyperparameters)
