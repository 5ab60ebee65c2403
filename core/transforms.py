"""Strictly increasing maps of task losses, with their derivative, inverse and domain.

A `MonotoneTransform` h is a strictly increasing map of the real line (or of a half-line such as
t > 0) applied elementwise to a loss tensor. The benchmarks use them to build "poorly scaled" task
losses `h(l_i)`, and the tests draw random nonaffine ones to check the invariance claims of the
DiBS family ([DiBS] Thm 2.2, spec `dibs.md` §4): `grad h(l) = h'(l) grad l`, so every method that
only looks at gradient directions is unaffected by h wherever h' > 0.

Every transform offers

- `h(t)`: the map itself, built from differentiable torch ops, for any shape, float32 or float64,
  keeping dtype and device. It first calls `check_domain(t)`;
- `h.derivative(t)`: the analytic derivative h'(t) (the tests compare it with autograd);
- `h.inverse(y)`: the analytic inverse h^{-1}(y), checking that y lies in `h.image`;
- `h.domain` / `h.image`: a `Domain` (a lower bound, open or closed, or the whole real line);
- `h.to_spec()`: the string that `parse_transform` turns back into an equal transform.

Domain checks look only at the bounds. NaN and infinite inputs are not rejected here (they
propagate as in torch; non-finite losses are the engine's concern). A check on a bounded domain
reads one boolean back from the device; a transform defined on all reals does no check at all.

The transforms: `Affine` (a t + b, a > 0), `Exp`, `Log` (t > 0), `SignedPower` (sign(t) |t|^p),
`Softplus`, `Arcsinh` and `Compose`; `parse_transform` builds them from command-line strings.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError

__all__ = [
    "TRANSFORM_SPEC_FORMS",
    "Affine",
    "Arcsinh",
    "Compose",
    "Domain",
    "Exp",
    "Log",
    "MonotoneTransform",
    "SignedPower",
    "Softplus",
    "parse_transform",
]

_MAX_REPORTED_VALUES = 3


@dataclass(frozen=True)
class Domain:
    """A half-line of the reals: {t > lower} (open) or {t >= lower} (closed); lower = -inf is all of R."""

    lower: float = -math.inf
    closed: bool = False

    @property
    def is_real_line(self) -> bool:
        """Whether the domain is the whole real line (no check needed)."""
        return self.lower == -math.inf

    def outside(self, t: Tensor, /) -> Tensor:
        """Boolean mask of the entries of `t` below the bound: t < lower (closed) or t <= lower (open).

        NaN entries are not flagged (comparisons with NaN are false).
        """
        if self.is_real_line:
            return torch.zeros_like(t, dtype=torch.bool)
        return t < self.lower if self.closed else t <= self.lower

    def __str__(self) -> str:
        if self.is_real_line:
            return "all real t"
        return f"t {'>=' if self.closed else '>'} {self.lower:g}"


_REAL_LINE = Domain()
_POSITIVE = Domain(lower=0.0, closed=False)


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t)


def _report(t: Tensor, bad: Tensor) -> str:
    values = t.detach()[bad].flatten()
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_REPORTED_VALUES].tolist())
    more = values.numel() - _MAX_REPORTED_VALUES
    return f"{shown}{f' (and {more} more)' if more > 0 else ''}"


def _positive_finite(owner: str, name: str, value: float, why: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidHyperparameterError(
            f"{owner} {name} must be a real number, got {value!r}"
        ) from err
    if not (math.isfinite(number) and number > 0):
        raise InvalidHyperparameterError(
            f"{owner} {name} must be a finite number > 0 ({why}), got {value!r}"
        )
    return number


def _finite(owner: str, name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidHyperparameterError(
            f"{owner} {name} must be a real number, got {value!r}"
        ) from err
    if not math.isfinite(number):
        raise InvalidHyperparameterError(f"{owner} {name} must be finite, got {value!r}")
    return number


class MonotoneTransform(ABC):
    """A strictly increasing, differentiable map h of (part of) the real line, applied elementwise.

    Subclasses implement `_forward`, `_derivative` and `_inverse` on values already known to be in
    the domain (resp. image), and `_params` / `to_spec` / `__repr__`. Equality and hashing
    compare the class and the hyperparameters.
    """

    domain: Domain = _REAL_LINE
    image: Domain = _REAL_LINE

    def __call__(self, t: Tensor, /) -> Tensor:
        """h(t), elementwise; raises `LossDomainError` if some entry of t is outside `domain`."""
        t = _as_tensor(t)
        self.check_domain(t)
        return self._forward(t)

    def derivative(self, t: Tensor, /) -> Tensor:
        """The analytic derivative h'(t), elementwise, with the same domain check as `__call__`."""
        t = _as_tensor(t)
        self.check_domain(t)
        return self._derivative(t)

    def inverse(self, y: Tensor, /) -> Tensor:
        """The analytic inverse h^{-1}(y), elementwise; raises `LossDomainError` if y is outside `image`."""
        y = _as_tensor(y)
        self.check_image(y)
        return self._inverse(y)

    def check_domain(self, t: Tensor, /) -> None:
        """Raise `LossDomainError` (naming the transform, the values and the domain) if t leaves `domain`."""
        self._check(_as_tensor(t), self.domain, what="is defined")

    def check_image(self, y: Tensor, /) -> None:
        """Raise `LossDomainError` if y is outside `image`, where the inverse is defined."""
        self._check(_as_tensor(y), self.image, what="has an inverse")

    def _check(self, t: Tensor, domain: Domain, *, what: str) -> None:
        if domain.is_real_line:
            return
        bad = domain.outside(t)
        if bool(bad.any()):
            raise LossDomainError(f"{self!r} {what} only for {domain}, got {_report(t, bad)}")

    @abstractmethod
    def _forward(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _derivative(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _inverse(self, y: Tensor) -> Tensor: ...

    @abstractmethod
    def _params(self) -> tuple[object, ...]: ...

    @abstractmethod
    def to_spec(self) -> str:
        """The `parse_transform` string of this transform (floats written so that they round-trip)."""

    @abstractmethod
    def __repr__(self) -> str: ...

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MonotoneTransform):
            return NotImplemented
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._params()))


class Affine(MonotoneTransform):
    """The increasing affine map h(t) = scale * t + shift, scale > 0; h' = scale, h^{-1}(y) = (y - shift) / scale."""

    def __init__(self, *, scale: float, shift: float = 0.0) -> None:
        self.scale = _positive_finite(
            "Affine", "scale", scale, "a strictly increasing affine map needs a positive slope"
        )
        self.shift = _finite("Affine", "shift", shift)

    def _forward(self, t: Tensor) -> Tensor:
        return t * self.scale + self.shift

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.scale)

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.shift) / self.scale

    def _params(self) -> tuple[object, ...]:
        return (self.scale, self.shift)

    def to_spec(self) -> str:
        return f"affine:{self.scale!r}:{self.shift!r}"

    def __repr__(self) -> str:
        return f"Affine(scale={self.scale!r}, shift={self.shift!r})"


class Exp(MonotoneTransform):
    """The exponential h(t) = exp(t) on all reals; h' = exp(t), image t > 0, h^{-1}(y) = log(y)."""

    image = _POSITIVE

    def _forward(self, t: Tensor) -> Tensor:
        return torch.exp(t)

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.exp(t)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.log(y)

    def _params(self) -> tuple[object, ...]:
        return ()

    def to_spec(self) -> str:
        return "exp"

    def __repr__(self) -> str:
        return "Exp()"


class Log(MonotoneTransform):
    """The logarithm h(t) = log(t) for positive losses t > 0; h' = 1 / t, h^{-1}(y) = exp(y)."""

    domain = _POSITIVE

    def _forward(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.reciprocal(t)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.exp(y)

    def _params(self) -> tuple[object, ...]:
        return ()

    def to_spec(self) -> str:
        return "log"

    def __repr__(self) -> str:
        return "Log()"


class SignedPower(MonotoneTransform):
    """The signed power h(t) = sign(t) |t|^power, power > 0; h'(t) = power |t|^(power - 1).

    h^{-1}(y) = sign(y) |y|^(1 / power). The reference toy's transform t^3 |t| is `SignedPower(4)`.
    At t = 0 the derivative is 0 for power > 1 (h is strictly increasing but not a
    diffeomorphism there: invariance arguments that need h' > 0 fail at that point) and +inf for
    power < 1, which `derivative` returns as such; autograd through `h` gives 0 and NaN
    respectively at t = 0.
    """

    def __init__(self, power: float) -> None:
        self.power = _positive_finite(
            "SignedPower", "power", power, "sign(t)|t|^p is strictly increasing only for p > 0"
        )

    def _forward(self, t: Tensor) -> Tensor:
        if self.power == 1.0:  # the identity; the general form would give autograd h'(0) = 0
            return t.clone()
        return torch.sign(t) * torch.abs(t).pow(self.power)

    def _derivative(self, t: Tensor) -> Tensor:
        return self.power * torch.abs(t).pow(self.power - 1.0)

    def _inverse(self, y: Tensor) -> Tensor:
        if self.power == 1.0:
            return y.clone()
        return torch.sign(y) * torch.abs(y).pow(1.0 / self.power)

    def _params(self) -> tuple[object, ...]:
        return (self.power,)

    def to_spec(self) -> str:
        return f"power:{self.power!r}"

    def __repr__(self) -> str:
        return f"SignedPower(power={self.power!r})"


class Softplus(MonotoneTransform):
    """The softplus h(t) = log(1 + exp(beta t)) / beta, beta > 0; h' = sigmoid(beta t), image t > 0.

    h^{-1}(y) = log(exp(beta y) - 1) / beta, evaluated as y + log(-expm1(-beta y)) / beta.
    Deviation: h is computed as `logaddexp(beta t, 0) / beta` rather than with
    `torch.nn.functional.softplus`, which switches to the identity above `beta t > 20`; that
    switch makes h, h' and h^{-1} disagree by about 2e-9 relative, whereas logaddexp is stable
    everywhere and its autograd derivative is exactly sigmoid(beta t).
    """

    image = _POSITIVE

    def __init__(self, *, beta: float = 1.0) -> None:
        self.beta = _positive_finite(
            "Softplus", "beta", beta, "log(1 + exp(beta t)) / beta is increasing only for beta > 0"
        )

    def _forward(self, t: Tensor) -> Tensor:
        return torch.logaddexp(t * self.beta, torch.zeros_like(t)) / self.beta

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.sigmoid(t * self.beta)

    def _inverse(self, y: Tensor) -> Tensor:
        return y + torch.log(-torch.expm1(-self.beta * y)) / self.beta

    def _params(self) -> tuple[object, ...]:
        return (self.beta,)

    def to_spec(self) -> str:
        return f"softplus:{self.beta!r}"

    def __repr__(self) -> str:
        return f"Softplus(beta={self.beta!r})"


class Arcsinh(MonotoneTransform):
    """The inverse hyperbolic sine h(t) = asinh(t) = log(t + sqrt(t^2 + 1)); h' = 1 / sqrt(1 + t^2), h^{-1} = sinh."""

    def _forward(self, t: Tensor) -> Tensor:
        return torch.asinh(t)

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.reciprocal(torch.hypot(t, torch.ones_like(t)))  # no overflow of t^2

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.sinh(y)

    def _params(self) -> tuple[object, ...]:
        return ()

    def to_spec(self) -> str:
        return "arcsinh"

    def __repr__(self) -> str:
        return "Arcsinh()"


class Compose(MonotoneTransform):
    """The composition h = h_n o ... o h_1 of `Compose(h_1, ..., h_n)` (h_1 is applied first).

    h'(t) = prod_k h_k'(z_{k-1}) with z_0 = t, z_k = h_k(z_{k-1}) (chain rule), and
    h^{-1} = h_1^{-1} o ... o h_n^{-1}. The domain is h_1's domain plus the requirement that each
    intermediate value z_{k-1} lies in h_k's domain; `check_domain` evaluates the intermediates
    (without autograd) only when some later h_k has a bounded domain, and `inverse` checks each
    intermediate against the image of the transform it inverts. Nested compositions are flattened.
    Where a factor is 0 and another +inf (e.g. SignedPower(0.5) then SignedPower(2) at t = 0) the
    product, hence h', is NaN.
    """

    def __init__(self, *transforms: MonotoneTransform) -> None:
        if not transforms:
            raise InvalidHyperparameterError("Compose needs at least one transform")
        flat: list[MonotoneTransform] = []
        for transform in transforms:
            if not isinstance(transform, MonotoneTransform):
                raise InvalidHyperparameterError(
                    f"Compose takes MonotoneTransform instances, got {transform!r}"
                )
            flat.extend(transform.transforms if isinstance(transform, Compose) else (transform,))
        self.transforms: tuple[MonotoneTransform, ...] = tuple(flat)
        self.domain = self.transforms[0].domain
        self.image = self.transforms[-1].image

    def _forward_chain(self, t: Tensor, *, check: bool) -> list[Tensor]:
        """[z_0, ..., z_n], checking z_{k-1} against h_k's domain for k >= 2 when `check`."""
        values = [t]
        for k, transform in enumerate(self.transforms):
            if check and k > 0:
                self._check_step(transform.check_domain, values[-1], k)
            values.append(transform._forward(values[-1]))
        return values

    def _check_step(self, check: Callable[[Tensor], None], value: Tensor, k: int) -> None:
        try:
            check(value)
        except LossDomainError as err:
            previous = self.transforms[k - 1] if k > 0 else None
            source = (
                f"the output of step {k} ({previous!r})" if previous is not None else "the input"
            )
            raise LossDomainError(
                f"{self!r}: step {k + 1} of {len(self.transforms)} receives {source} outside its domain: {err}"
            ) from err

    def check_domain(self, t: Tensor, /) -> None:
        """Check t against h_1's domain and each intermediate z_{k-1} against h_k's domain."""
        t = _as_tensor(t)
        self._check_step(self.transforms[0].check_domain, t, 0)
        if all(transform.domain.is_real_line for transform in self.transforms[1:]):
            return
        with torch.no_grad():
            self._forward_chain(t.detach(), check=True)

    def check_image(self, y: Tensor, /) -> None:
        """Check y against h_n's image and each intermediate of the inverse against the earlier images."""
        y = _as_tensor(y)
        self._check_inverse_step(y, len(self.transforms) - 1)
        if all(transform.image.is_real_line for transform in self.transforms[:-1]):
            return
        with torch.no_grad():
            self._inverse_chain(y.detach(), check=True)

    def _check_inverse_step(self, value: Tensor, k: int) -> None:
        try:
            self.transforms[k].check_image(value)
        except LossDomainError as err:
            n = len(self.transforms)
            raise LossDomainError(
                f"{self!r}: the inverse of step {k + 1} of {n} receives a value outside its image: {err}"
            ) from err

    def _inverse_chain(self, y: Tensor, *, check: bool) -> Tensor:
        for k in range(len(self.transforms) - 1, -1, -1):
            if check and k < len(self.transforms) - 1:
                self._check_inverse_step(y, k)
            y = self.transforms[k]._inverse(y)
        return y

    def _forward(self, t: Tensor) -> Tensor:
        return self._forward_chain(t, check=False)[-1]

    def _derivative(self, t: Tensor) -> Tensor:
        values = self._forward_chain(t, check=False)
        result = self.transforms[0]._derivative(t)
        for transform, value in zip(self.transforms[1:], values[1:-1]):
            result = result * transform._derivative(value)
        return result

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_chain(y, check=False)

    def _params(self) -> tuple[object, ...]:
        return self.transforms

    def to_spec(self) -> str:
        return "|".join(transform.to_spec() for transform in self.transforms)

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(transform) for transform in self.transforms)})"


TRANSFORM_SPEC_FORMS = (
    "'exp', 'log', 'arcsinh', 'affine:A:B' (A t + B, A > 0), 'power:P' (sign(t)|t|^P, P > 0), "
    "'softplus' or 'softplus:BETA' (BETA > 0), and 'h1|h2|...' (h1 applied first)"
)


def _parse_number(text: str, part: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidHyperparameterError(
            f"transform spec {spec!r}: {text!r} in {part!r} is not a number; valid forms: {TRANSFORM_SPEC_FORMS}"
        ) from None


def _parse_one(part: str, spec: str) -> MonotoneTransform:
    name, *args = (field.strip() for field in part.split(":"))
    name = name.lower()
    arity = {
        "exp": (0,),
        "log": (0,),
        "arcsinh": (0,),
        "affine": (2,),
        "power": (1,),
        "softplus": (0, 1),
    }
    if name not in arity or len(args) not in arity[name]:
        raise InvalidHyperparameterError(
            f"transform spec {spec!r}: cannot parse {part!r}; valid forms: {TRANSFORM_SPEC_FORMS}"
        )
    numbers = [_parse_number(arg, part, spec) for arg in args]
    try:
        if name == "exp":
            return Exp()
        if name == "log":
            return Log()
        if name == "arcsinh":
            return Arcsinh()
        if name == "affine":
            return Affine(scale=numbers[0], shift=numbers[1])
        if name == "power":
            return SignedPower(numbers[0])
        return Softplus(beta=numbers[0]) if numbers else Softplus()
    except InvalidHyperparameterError as err:
        raise InvalidHyperparameterError(f"transform spec {spec!r}: {err}") from err


def parse_transform(spec: str) -> MonotoneTransform:
    """Build a transform from a command-line string, e.g. "power:4" or "affine:2:1|exp" (= exp(2t + 1)).

    Forms: "exp", "log", "arcsinh", "affine:A:B", "power:P", "softplus[:BETA]", joined by "|" for
    `Compose` (the leftmost is applied first). Names are case-insensitive and spaces around
    fields are ignored. `parse_transform(h.to_spec()) == h` for every transform h (a Compose of one
    transform comes back as that transform). Anything else raises `InvalidHyperparameterError`.
    """
    if not isinstance(spec, str):
        raise InvalidHyperparameterError(
            f"a transform spec must be a string, got {spec!r}; valid forms: {TRANSFORM_SPEC_FORMS}"
        )
    parts = [_parse_one(part, spec) for part in spec.split("|")]
    return parts[0] if len(parts) == 1 else Compose(*parts)
