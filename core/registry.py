"""A name -> factory registry of the methods, for command-line interfaces.

The library itself never dispatches on method names; CLIs call `make_method(name)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from core.errors import UnknownMethodError
from core.methods import (
    MGDA,
    DiBSMTL,
    LinearScalarization,
    NormalizedSum,
    RandomGradientWeighting,
    RandomLossWeighting,
    ScaleInvariantLS,
)
from core.methods.base import Method

# Names follow the reference code where it has one (dibsmtl, ls, mgda, rlw, scaleinvls).
METHODS: dict[str, Callable[..., Method]] = {
    "dibsmtl": partial(DiBSMTL, steps=1),
    "dibsmtl_multi_step": partial(DiBSMTL, steps=5),
    "nsum": NormalizedSum,
    "mgda": MGDA,
    "rgw": RandomGradientWeighting,
    "ls": LinearScalarization,
    "scaleinvls": ScaleInvariantLS,
    "rlw": RandomLossWeighting,
}


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def make_method(name: str, /, **hyperparameters) -> Method:
    """A fresh method instance for `name`, with keyword hyperparameters overriding the defaults."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}") from None
    return factory(**hyperparameters)
