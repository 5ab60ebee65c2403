"""core.transforms: derivatives against autograd, monotonicity, inverses, domains, parsing, dtypes.

Floating-point tolerances that depend on the transform use the *input resolution* of h at t,
r(t) = sum_k (u |z_k| + tiny) / |dz_k/dt| over the intermediate values z_0 = t, z_1, ..., z_n = h(t)
of a composition (u the unit roundoff, tiny the smallest normal number): rounding z_k moves it as
much as moving t by (u |z_k| + tiny) / |dz_k/dt| would. Inverses are checked to within a multiple
of r(t), and strict increase h(t_1) < h(t_2) is required where t_2 - t_1 exceeds a multiple of
r(t_1) + r(t_2).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError, LossDomainError
from core.transforms import (
    Affine,
    Arcsinh,
    Compose,
    Domain,
    Exp,
    Log,
    MonotoneTransform,
    SignedPower,
    Softplus,
    parse_transform,
)
from tests.strategies import (
    INPUT_RANGE,
    POSITIVE_INPUT_RANGE,
    monotone_transforms,
    positive_domain_transforms,
)

SAFETY = 64.0  # multiple of the resolution r(t) allowed for rounding (libm functions are a few ulp)


# --------------------------------------------------------------------------------------------
# helpers


def layers(transform: MonotoneTransform) -> tuple[MonotoneTransform, ...]:
    return transform.transforms if isinstance(transform, Compose) else (transform,)


def chain(
    transform: MonotoneTransform, t: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Intermediate values [z_0 = t, ..., z_n] and slopes [dz_0/dt = 1, ..., dz_n/dt], layer by layer."""
    values, slopes = [t], [torch.ones_like(t)]
    for layer in layers(transform):
        slopes.append(slopes[-1] * layer.derivative(values[-1]))
        values.append(layer(values[-1]))
    return values, slopes


def resolution(
    transform: MonotoneTransform, t: torch.Tensor, *, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """r(t) = sum_k (u |z_k| + tiny) / |dz_k/dt| for `dtype`'s unit roundoff u and smallest normal tiny.

    The absolute term accounts for underflow (and for float32 values below its normal range); r
    is +inf where a slope is 0.
    """
    info = torch.finfo(dtype)
    values, slopes = chain(transform, t)
    total = torch.zeros_like(t)
    for value, slope in zip(values, slopes):
        total = total + (info.eps / 2 * value.abs() + info.tiny) / slope.abs()
    return total.nan_to_num(nan=math.inf)  # a slope 0 * inf (documented NaN derivative)


def inverse_power_resolution(transform: MonotoneTransform, t: torch.Tensor) -> torch.Tensor:
    """The extra error of SignedPower inverses: `1 / p` is rounded, and `y^(1/p + d) = y^(1/p) *
    exp(d log|y|)`, a relative error `u |log|y||` on the layer's input (1e-14 for y near 1e-230)."""
    info = torch.finfo(torch.float64)
    values, slopes = chain(transform, t)
    total = torch.zeros_like(t)
    for k, layer in enumerate(layers(transform)):
        if isinstance(layer, SignedPower):
            log_output = torch.log(values[k + 1].abs().clamp_min(info.tiny)).abs()
            total = total + info.eps * values[k].abs() * (1 + log_output) / slopes[k].abs()
    return total.nan_to_num(nan=math.inf)


def near_singular(transform: MonotoneTransform, t: torch.Tensor, distance: float) -> torch.Tensor:
    """Where a SignedPower layer's input is within `distance` of 0 (its singular point)."""
    values, _ = chain(transform, t)
    mask = torch.zeros_like(t, dtype=torch.bool)
    for layer, value in zip(layers(transform), values):
        if isinstance(layer, SignedPower):
            mask |= value.abs() <= distance
    return mask


def singular(transform: MonotoneTransform, t: torch.Tensor) -> torch.Tensor:
    """Where a SignedPower layer meets its documented point (h' = 0 or +inf, i.e. input 0 or underflow)."""
    values, _ = chain(transform, t)
    mask = torch.zeros_like(t, dtype=torch.bool)
    for layer, value in zip(layers(transform), values):
        if isinstance(layer, SignedPower):
            factor = layer.derivative(value)
            mask |= (factor == 0) | torch.isinf(factor)
    return mask


def autograd_derivative(transform: MonotoneTransform, t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(transform(t).sum(), t)
    return gradient


def points_in(interval: tuple[float, float], *, min_size: int = 1, max_size: int = 16):
    low, high = interval
    return st.lists(st.floats(low, high), min_size=min_size, max_size=max_size).map(
        lambda values: torch.tensor(values, dtype=torch.float64)
    )


any_transform = st.one_of(monotone_transforms(), positive_domain_transforms())


@st.composite
def transform_and_points(draw, *, min_size: int = 1, max_size: int = 16):
    """(transform, float64 points, interval): a transform from either strategy and points of the
    input range it is tuned for."""
    if draw(st.booleans()):
        transform, interval = draw(monotone_transforms()), INPUT_RANGE
    else:
        transform, interval = draw(positive_domain_transforms()), POSITIVE_INPUT_RANGE
    return transform, draw(points_in(interval, min_size=min_size, max_size=max_size)), interval


@st.composite
def single_transform_and_points(draw):
    """One basic transform with random hyperparameters and float64 points in a wide part of its domain."""
    kind = draw(st.sampled_from(["affine", "exp", "log", "power", "softplus", "arcsinh"]))
    if kind == "affine":
        transform = Affine(scale=draw(st.floats(1e-3, 1e3)), shift=draw(st.floats(-1e3, 1e3)))
        interval = (-1e6, 1e6)
    elif kind == "exp":
        transform, interval = Exp(), (-700.0, 700.0)
    elif kind == "log":
        transform, interval = Log(), (1e-300, 1e300)
    elif kind == "power":
        transform, interval = SignedPower(draw(st.floats(0.1, 8.0))), (-1e6, 1e6)
    elif kind == "softplus":
        transform, interval = Softplus(beta=draw(st.floats(1e-2, 1e2))), (-1e3, 1e3)
    else:
        transform, interval = Arcsinh(), (-1e6, 1e6)
    low, high = interval
    values = draw(
        st.lists(st.floats(low, high, exclude_min=kind == "log"), min_size=1, max_size=16)
    )
    return transform, torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# derivatives


@given(single_transform_and_points())
def test_derivative_of_each_transform_equals_autograd(case) -> None:
    transform, t = case
    keep = ~singular(transform, t)  # SignedPower(p < 1) at 0: h' = inf, autograd NaN (documented)
    torch.testing.assert_close(
        transform.derivative(t)[keep], autograd_derivative(transform, t)[keep], rtol=1e-9, atol=0.0
    )


@given(transform_and_points())
def test_derivative_of_random_compositions_equals_autograd(case) -> None:
    transform, t, _ = case
    keep = ~singular(transform, t)
    analytic = transform.derivative(t)
    assert torch.isfinite(analytic[keep]).all()
    torch.testing.assert_close(
        analytic[keep], autograd_derivative(transform, t)[keep], rtol=1e-9, atol=0.0
    )


def test_derivative_through_a_later_log_equals_autograd() -> None:
    # Log after other layers: the domain check evaluates the chain without autograd first.
    transform = Compose(Exp(), Affine(scale=2.0, shift=1.0), Log())
    t = torch.linspace(-5.0, 5.0, 11, dtype=torch.float64)
    expected = 2.0 * torch.exp(t) / (2.0 * torch.exp(t) + 1.0)
    torch.testing.assert_close(transform.derivative(t), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(autograd_derivative(transform, t), expected, rtol=1e-12, atol=0.0)


def test_signed_power_derivative_at_zero_is_documented() -> None:
    zero = torch.zeros(1, dtype=torch.float64)
    assert SignedPower(2.0).derivative(zero).item() == 0.0
    assert SignedPower(0.5).derivative(zero).item() == math.inf
    assert SignedPower(1.0).derivative(zero).item() == 1.0
    assert autograd_derivative(SignedPower(4.0), zero).item() == 0.0


# --------------------------------------------------------------------------------------------
# monotonicity


@given(transform_and_points(min_size=2, max_size=32))
def test_strictly_increasing_where_resolvable(case) -> None:
    transform, drawn, interval = case
    grid = torch.linspace(*interval, 101, dtype=torch.float64)
    t = torch.unique(torch.cat([drawn, grid]))  # sorted, distinct
    y = transform(t)
    tolerance = SAFETY * resolution(transform, t)
    resolvable = (t[1:] - t[:-1]) > tolerance[1:] + tolerance[:-1]
    assert resolvable.sum() >= 1
    assert (y[1:] > y[:-1])[resolvable].all(), (
        f"{transform!r} decreases at {t[:-1][resolvable & ~(y[1:] > y[:-1])]}"
    )
    derivative = transform.derivative(t)
    # a product of layer derivatives can underflow to 0 right next to a singular point (t ~ 1e-172)
    assert ((derivative > 0) | singular(transform, t) | near_singular(transform, t, 1e-100)).all()


# --------------------------------------------------------------------------------------------
# inverses


@given(transform_and_points())
def test_inverse_undoes_the_transform(case) -> None:
    transform, t, _ = case
    recovered = transform.inverse(transform(t))
    tolerance = SAFETY * (resolution(transform, t) + inverse_power_resolution(transform, t))
    # at (or within 1e-12 of) a SignedPower's singular point, input 0 where h' = inf for p < 1,
    # the first-order bound vanishes; the error there is of second order (the downstream rounding
    # delta z comes back as delta z^(1/p), e.g. (1e-16)^2 for p = 1/2): allow a small absolute one
    tolerance = torch.where(
        near_singular(transform, t, 1e-12), tolerance.clamp_min(1e-12), tolerance
    )
    assert ((recovered - t).abs() <= tolerance).all(), f"{transform!r}: {t} -> {recovered}"


@given(single_transform_and_points())
def test_transform_undoes_the_inverse(case) -> None:
    transform, t = case
    y = transform(t)
    inside = ~transform.image.outside(y) & torch.isfinite(y)  # exp underflow can reach 0
    y = y[inside]
    torch.testing.assert_close(transform(transform.inverse(y)), y, rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------------------------------------
# domains


@pytest.mark.parametrize("value", [0.0, -1e-300, -1.0, -math.inf])
def test_log_outside_its_domain_raises(value: float) -> None:
    t = torch.tensor([1.0, value, 2.0], dtype=torch.float64)
    for call in (Log(), Log().derivative, Log().check_domain):
        with pytest.raises(LossDomainError, match=r"Log\(\).*t > 0") as info:
            call(t)
        assert f"{value:g}" in str(info.value)


def test_compose_rejects_an_intermediate_outside_the_next_domain() -> None:
    transform = Compose(Affine(scale=1.0, shift=-5.0), Log())
    assert transform(torch.tensor([6.0])).item() == pytest.approx(0.0)
    with pytest.raises(LossDomainError) as info:
        transform(torch.tensor([6.0, 2.0]))
    message = str(info.value)
    assert "Compose(" in message and "Log()" in message and "-3" in message and "t > 0" in message
    with pytest.raises(LossDomainError, match="Log"):
        transform.derivative(torch.tensor([2.0]))
    with pytest.raises(LossDomainError, match="step 1 of 2"):
        Compose(Log(), Exp())(torch.tensor([-1.0]))


def test_inverse_outside_the_image_raises() -> None:
    for transform in (Exp(), Softplus(beta=2.0), Compose(Arcsinh(), Exp())):
        with pytest.raises(LossDomainError, match="t > 0"):
            transform.inverse(torch.tensor([0.0]))
    with pytest.raises(
        LossDomainError, match=r"inverse of step 1.*Exp\(\).*-5"
    ):  # -10 + 5 is not in exp's image
        Compose(Exp(), Affine(scale=1.0, shift=-5.0)).inverse(torch.tensor([-10.0]))


@given(positive_domain_transforms(), st.floats(0.0, 1e3))
def test_positive_domain_transforms_check_their_domain(transform, magnitude) -> None:
    t = torch.tensor([1.0, -magnitude], dtype=torch.float64)
    if transform.domain.is_real_line:
        assert torch.isfinite(transform(t[:1])).all()
    else:
        with pytest.raises(LossDomainError, match=r"Log\(\)"):
            transform(t)


def test_call_checks_the_domain_first() -> None:
    calls: list[str] = []

    class SpyLog(Log):
        def check_domain(self, t: torch.Tensor, /) -> None:
            calls.append("check")
            super().check_domain(t)

        def _forward(self, t: torch.Tensor) -> torch.Tensor:
            calls.append("forward")
            return super()._forward(t)

    SpyLog()(torch.tensor([2.0]))
    assert calls == ["check", "forward"]


def test_domains_are_described() -> None:
    assert str(Log().domain) == "t > 0" and str(Exp().domain) == "all real t"
    assert str(Domain(lower=1.0, closed=True)) == "t >= 1"
    assert Domain(lower=1.0, closed=True).outside(torch.tensor([0.5, 1.0, 2.0])).tolist() == [
        True,
        False,
        False,
    ]
    assert (
        Compose(Log(), Exp()).domain == Log().domain
        and Compose(Arcsinh(), Exp()).image == Exp().image
    )


# --------------------------------------------------------------------------------------------
# hyperparameters and parsing


@pytest.mark.parametrize(
    "build",
    [
        lambda: Affine(scale=0.0),
        lambda: Affine(scale=-2.0, shift=1.0),
        lambda: Affine(scale=math.nan),
        lambda: Affine(scale=math.inf),
        lambda: Affine(scale=1.0, shift=math.inf),
        lambda: Affine(scale="two"),
        lambda: SignedPower(0.0),
        lambda: SignedPower(-1.5),
        lambda: SignedPower(math.nan),
        lambda: Softplus(beta=0.0),
        lambda: Softplus(beta=-1.0),
        lambda: Compose(),
        lambda: Compose(Exp(), torch.exp),
    ],
)
def test_invalid_hyperparameters_raise(build) -> None:
    with pytest.raises(InvalidHyperparameterError):
        build()


def test_invalid_hyperparameter_messages_say_why() -> None:
    with pytest.raises(InvalidHyperparameterError, match=r"Affine scale.*> 0.*positive slope.*-2"):
        Affine(scale=-2.0)
    with pytest.raises(InvalidHyperparameterError, match=r"SignedPower power.*> 0"):
        SignedPower(0.0)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "foo",
        "exp:1",
        "log:2",
        "affine",
        "affine:1",
        "affine:1:2:3",
        "affine:x:0",
        "affine:-1:0",
        "power",
        "power:",
        "power:0",
        "power:abc",
        "softplus:1:2",
        "softplus:-1",
        "exp|",
        "|exp",
        "exp||log",
        "sqrt",
    ],
)
def test_parse_rejects_invalid_specs(spec: str) -> None:
    with pytest.raises(InvalidHyperparameterError, match=re.escape(repr(spec))):
        parse_transform(spec)


def test_parse_unknown_names_list_the_valid_forms() -> None:
    with pytest.raises(
        InvalidHyperparameterError,
        match=r"valid forms.*exp.*log.*affine:A:B.*power:P.*softplus.*\|",
    ):
        parse_transform("cube")


def test_parse_examples() -> None:
    assert parse_transform("power:4") == SignedPower(4.0)
    assert parse_transform("softplus") == Softplus(beta=1.0)
    assert parse_transform("softplus:0.5") == Softplus(beta=0.5)
    assert parse_transform(" Exp | affine: 2 : -1 |arcsinh") == Compose(
        Exp(), Affine(scale=2.0, shift=-1.0), Arcsinh()
    )
    assert parse_transform("log|exp") == Compose(Log(), Exp())
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(parse_transform("affine:2:1|exp")(t), torch.exp(2.0 * t + 1.0))


@given(any_transform)
def test_parse_round_trips(transform) -> None:
    spec = transform.to_spec()
    parsed = parse_transform(spec)
    assert parsed == transform and hash(parsed) == hash(transform)
    assert parsed.to_spec() == spec and repr(parsed) == repr(transform)


def test_compose_flattens_and_reprs() -> None:
    nested = Compose(Compose(Exp(), Arcsinh()), Log())
    assert nested == Compose(Exp(), Arcsinh(), Log()) and len(nested.transforms) == 3
    assert (
        repr(Compose(Affine(scale=2.0, shift=0.5), SignedPower(3.0)))
        == "Compose(Affine(scale=2.0, shift=0.5), SignedPower(power=3.0))"
    )
    assert Exp() != Log() and Affine(scale=1.0) != Affine(scale=1.0, shift=1.0)


# --------------------------------------------------------------------------------------------
# dtypes and shapes


@given(transform_and_points(max_size=12))
def test_float32_in_float32_out_and_close_to_float64(case) -> None:
    transform, t64, _ = case
    t32 = t64.to(torch.float32).reshape(-1, 1).expand(-1, 2)  # also a 2-d, non-contiguous input
    reference = t32.double()
    if not transform.domain.is_real_line:
        reference = reference.clamp_min(torch.finfo(torch.float32).tiny)
        t32 = reference.float()
    for result in (transform(t32), transform.derivative(t32)):
        assert result.dtype == torch.float32 and result.shape == t32.shape
    y32 = transform(t32)
    assert transform.inverse(y32).dtype == torch.float32
    # forward error bound in the output: |dy| <= C h'(t) r(t) with float32's unit roundoff
    keep = ~singular(transform, reference)
    bound = (
        SAFETY
        * transform.derivative(reference)
        * resolution(transform, reference, dtype=torch.float32)
    )
    error = (y32.double() - transform(reference)).abs()
    assert (error[keep] <= bound[keep] + 1e-300).all(), (
        f"{transform!r}: {error[keep].max()} > bound"
    )


def test_dtype_and_shape_kept_for_each_transform() -> None:
    t = torch.rand(2, 3, 4, dtype=torch.float32) + 0.5
    for transform in (
        Affine(scale=2.0, shift=1.0),
        Exp(),
        Log(),
        SignedPower(3.0),
        Softplus(beta=0.5),
        Arcsinh(),
    ):
        for dtype in (torch.float32, torch.float64):
            for result in (
                transform(t.to(dtype)),
                transform.derivative(t.to(dtype)),
                transform.inverse(transform(t.to(dtype))),
            ):
                assert result.dtype == dtype and result.shape == t.shape, transform
