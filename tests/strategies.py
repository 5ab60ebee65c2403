"""Hypothesis strategies for random strictly increasing, nonaffine loss transforms (`core.transforms`).

A drawn transform is a composition of 1 to `max_depth` nonaffine layers (Exp, SignedPower with
power in [0.5, 4] other than 1, Softplus with beta in [0.2, 5], Arcsinh, and for positive losses
Log), each optionally preceded by an Affine map (scale in [0.1, 10], shift in [-3, 3]), plus an
optional final Affine. While drawing, the strategies follow the interval that the inputs of
`input_range` occupy after each layer (the layers are increasing, so the ends map to the ends) and
only accept a layer that keeps the values moderate:

- every intermediate value has magnitude at most `max_magnitude` (no Exp after a power of a
  large value, no power of a large value);
- an interval that does not contain 0 stays at least 1 / `max_magnitude` away from it, so that
  what Exp and Softplus produce on very negative inputs is not swallowed by a later shift (which
  would make the composition flat in floating point and its inverse leave the domain).

A rejected nonaffine layer is replaced by Arcsinh (which never increases magnitudes) and a
rejected Affine is left out, so drawing never fails and shrinks towards short compositions.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from core.transforms import (
    Affine,
    Arcsinh,
    Compose,
    Exp,
    Log,
    MonotoneTransform,
    SignedPower,
    Softplus,
)

INPUT_RANGE = (-3.0, 3.0)
"""The inputs `monotone_transforms` is tuned for by default (all reals are in the domain)."""

POSITIVE_INPUT_RANGE = (1e-3, 1e3)
"""The positive losses `positive_domain_transforms` is tuned for by default."""

MAX_MAGNITUDE = 1e6
"""The default bound on every intermediate value (and 1 / it on the distance to 0, see above)."""

_NONAFFINE_KINDS = ("exp", "power", "softplus", "arcsinh")


def _image_of(transform: MonotoneTransform, interval: tuple[float, float]) -> tuple[float, float]:
    ends = transform(torch.tensor(interval, dtype=torch.float64)).tolist()
    return ends[0], ends[1]


def _moderate(
    transform: MonotoneTransform, interval: tuple[float, float], max_magnitude: float
) -> bool:
    """Whether `interval`, the image of the current values under `transform`, keeps them moderate."""
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)) or max(abs(low), abs(high)) > max_magnitude:
        return False
    if not transform.image.is_real_line and low - transform.image.lower < 1.0 / max_magnitude:
        return False  # Exp or Softplus of very negative values: (nearly) underflowed
    away_from_zero = low > 0 or high < 0
    return not away_from_zero or min(abs(low), abs(high)) >= 1.0 / max_magnitude


def _affine(draw) -> Affine:
    return Affine(scale=draw(st.floats(0.1, 10.0)), shift=draw(st.floats(-3.0, 3.0)))


def _nonaffine(draw, kind: str) -> MonotoneTransform:
    if kind == "exp":
        return Exp()
    if kind == "log":
        return Log()
    if kind == "power":
        return SignedPower(draw(st.floats(0.5, 4.0).filter(lambda power: power != 1.0)))
    if kind == "softplus":
        return Softplus(beta=draw(st.floats(0.2, 5.0)))
    return Arcsinh()


def _draw_layers(
    draw,
    *,
    interval: tuple[float, float],
    min_depth: int,
    max_depth: int,
    max_magnitude: float,
    allow_log: bool,
) -> list[MonotoneTransform]:
    """Draw Affine? (nonaffine Affine?)* layers, tracking and bounding the interval of values."""
    layers: list[MonotoneTransform] = []

    def accept(candidate: MonotoneTransform) -> bool:
        nonlocal interval
        image = _image_of(candidate, interval)
        if not _moderate(candidate, image, max_magnitude):
            return False
        layers.append(candidate)
        interval = image
        return True

    for _ in range(draw(st.integers(min_depth, max_depth))):
        if draw(st.booleans()):
            accept(_affine(draw))
        kinds = _NONAFFINE_KINDS + (("log",) if allow_log and interval[0] > 0 else ())
        if not accept(_nonaffine(draw, draw(st.sampled_from(kinds)))):
            layers.append(Arcsinh())  # |asinh(z)| <= |z|: always moderate
            interval = _image_of(layers[-1], interval)
    if draw(st.booleans()):
        accept(_affine(draw))
    return layers


def _combine(layers: list[MonotoneTransform]) -> MonotoneTransform:
    return layers[0] if len(layers) == 1 else Compose(*layers)


@st.composite
def monotone_transforms(
    draw,
    max_depth: int = 3,
    *,
    input_range: tuple[float, float] = INPUT_RANGE,
    max_magnitude: float = MAX_MAGNITUDE,
) -> MonotoneTransform:
    """A random strictly increasing nonaffine transform defined on all reals (no Log).

    1 to `max_depth` nonaffine layers from Exp, SignedPower(p in [0.5, 4], p != 1),
    Softplus(beta in [0.2, 5]) and Arcsinh, with Affine(scale in [0.1, 10], shift in [-3, 3])
    layers in between; on inputs in `input_range` all intermediate values stay within
    +-`max_magnitude` (see the module docstring). A single layer comes back bare, more as `Compose`.
    """
    layers = _draw_layers(
        draw,
        interval=input_range,
        min_depth=1,
        max_depth=max_depth,
        max_magnitude=max_magnitude,
        allow_log=False,
    )
    return _combine(layers)


@st.composite
def positive_domain_transforms(
    draw,
    max_depth: int = 3,
    *,
    input_range: tuple[float, float] = POSITIVE_INPUT_RANGE,
    max_magnitude: float = MAX_MAGNITUDE,
) -> MonotoneTransform:
    """A random strictly increasing nonaffine transform for positive losses; it may contain Log.

    Half of the draws start with Log (domain t > 0), and Log may also follow any layer whose
    values are positive on `input_range` (e.g. Exp or Softplus); otherwise as `monotone_transforms`,
    with the same bound on intermediate values for inputs in `input_range` (default [1e-3, 1e3]).
    """
    if not 0 < input_range[0] <= input_range[1]:
        raise ValueError(f"input_range must be positive, got {input_range}")
    layers: list[MonotoneTransform] = []
    interval = input_range
    if draw(st.booleans()):
        layers.append(Log())
        interval = _image_of(layers[0], interval)
    layers += _draw_layers(
        draw,
        interval=interval,
        min_depth=0 if layers else 1,
        max_depth=max_depth - len(layers),
        max_magnitude=max_magnitude,
        allow_log=True,
    )
    return _combine(layers)


def awkward_two_task_jacobians(seed: int, width: int = 3) -> torch.Tensor:
    """Ten 2 x n Jacobians `[10, 2, width]` (float64) for the K = 2 fast paths' tests: random, a
    zero gradient, parallel, opposite, identical, nearly parallel, scaled by 1e-150 and 1e140, a
    1e8 norm ratio, all zero."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(10, 2, width, generator=generator, dtype=torch.float64)
    jacobian[1, 0] = 0.0
    jacobian[2, 1] = 3.0 * jacobian[2, 0]
    jacobian[3, 1] = -0.5 * jacobian[3, 0]
    jacobian[4, 1] = jacobian[4, 0]
    jacobian[5, 1] = jacobian[5, 0] + 1e-9 * jacobian[5, 1]
    jacobian[6] *= 1e-150
    jacobian[7] *= 1e140
    jacobian[8, 1] *= 1e8
    jacobian[9] = 0.0
    return jacobian
