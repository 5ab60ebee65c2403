"""`Problem.values_and_jacobian`: every closed form against autograd through `__call__`
(`core.jacobian.batched_task_gradients`), on random points of an enlarged box and exactly on
the kinks, in float32 and float64; the base class's autograd fallback; and an Adam trajectory
on the two-task toy driven by each.

Where the closed form repeats autograd's operations (the two-task toy, ZDT, the ZDT2 variant,
Fonseca-Fleming, bargaining) the Jacobians must be bitwise equal; where both take a matrix
product whose sums may be ordered differently (the quadratic and nonconvex families), equal to
1e-13 (float64; 1e-5 in float32) relative to each gradient's largest component. The values
must be bitwise `problem(x)` everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from core.jacobian import batched_task_gradients
from toy_problems import (
    ZDT,
    ZDT1,
    ZDT2,
    ZDT3,
    Bargaining1D,
    ConvexQuadratic,
    FonsecaFleming,
    Problem,
    RandomNonconvex,
    TwoTaskToy,
    ZDT2Variant,
)
from toy_problems.two_task_toy import LOWER

F32, F64 = torch.float32, torch.float64
DTYPES = [F32, F64]

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "two_task_toy": TwoTaskToy,
    "two_task_toy_scaled": lambda: TwoTaskToy(scale=0.1),
    "two_task_toy_scale_3": lambda: TwoTaskToy(scale=3.0),
    "zdt1": lambda: ZDT1(n_var=6),
    "zdt1_30": ZDT1,
    "zdt2": lambda: ZDT2(n_var=4),
    "zdt3": lambda: ZDT3(n_var=5),
    "zdt3_2": lambda: ZDT3(n_var=2),
    "zdt2_variant": ZDT2Variant,
    "fonseca_fleming": FonsecaFleming,
    "fonseca_fleming_1": lambda: FonsecaFleming(n_var=1),
    "fonseca_fleming_5": lambda: FonsecaFleming(n_var=5),
    "bargaining_x2": Bargaining1D,
    "bargaining_x4": lambda: Bargaining1D(first_power=4),
    "quadratic_K2": lambda: ConvexQuadratic.random(3, 2, seed=0),
    "quadratic_K3": lambda: ConvexQuadratic.random(4, 3, seed=1),
    "quadratic_identity": lambda: ConvexQuadratic(
        torch.linspace(-1, 1, 10, dtype=F64).reshape(2, 5)
    ),
    "nonconvex_K2": lambda: RandomNonconvex(3, 2, seed=0),
    "nonconvex_K4": lambda: RandomNonconvex(5, 4, seed=1),
}
MATRIX_PRODUCTS = (ConvexQuadratic, RandomNonconvex)
"""Problems whose closed form and autograd both sum through a matrix product: equal to rounding."""


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_points(
    problem: Problem, shape: tuple[int, ...], *, seed: int, dtype: torch.dtype
) -> Tensor:
    """Uniform points of the problem's domain: the bounds widened 2.5-fold around their centre for
    unconstrained problems (for the toy, |x2| up to 25, where tanh saturates in float32), the box
    itself for box problems (ZDT), with a fifth of the coordinates snapped onto its faces."""
    lower, upper = problem.lower_upper(dtype=F64)
    unit = torch.rand(*shape, problem.n_var, generator=seeded(seed), dtype=F64)
    if hasattr(problem, "project"):
        snap = torch.rand(unit.shape, generator=seeded(seed + 1), dtype=F64)
        unit = torch.where(snap < 0.1, 0.0, torch.where(snap < 0.2, 1.0, unit))
    else:
        unit = 2.5 * unit - 0.75
    return (lower + (upper - lower) * unit).to(dtype)


def assert_matches_autograd(problem: Problem, x: Tensor) -> tuple[Tensor, Tensor]:
    """The closed form's values are bitwise `problem(x)` and its Jacobian equals autograd's
    (bitwise, or to rounding for `MATRIX_PRODUCTS`); returns the closed form's output."""
    values, jacobian = problem.values_and_jacobian(x)
    reference_values, reference = batched_task_gradients(problem, x)
    assert values.shape == (*x.shape[:-1], problem.n_obj) and values.dtype == x.dtype
    assert (
        jacobian.shape == (*x.shape[:-1], problem.n_obj, problem.n_var)
        and jacobian.dtype == x.dtype
    )
    assert torch.equal(values, reference_values) and torch.equal(values, problem(x))
    if isinstance(problem, MATRIX_PRODUCTS):
        rtol = 1e-13 if x.dtype == F64 else 1e-5
        error = (jacobian - reference).abs().amax(dim=-1)
        scale = reference.abs().amax(dim=-1)
        assert bool((error <= rtol * scale).all()), float((error / scale).max())
    else:
        mismatch = (jacobian != reference).any(dim=-1).any(dim=-1)
        assert not bool(mismatch.any()), (
            x[mismatch][:3],
            jacobian[mismatch][:3],
            reference[mismatch][:3],
        )
    return values, jacobian


# --- every problem -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROBLEMS)
def test_every_problem_has_a_closed_form(name: str) -> None:
    problem = PROBLEMS[name]()
    assert type(problem).values_and_jacobian is not Problem.values_and_jacobian


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_shape", [(), (2000,), (3, 5)])
@pytest.mark.parametrize("name", PROBLEMS)
def test_closed_form_equals_autograd_on_random_points(
    name: str, batch_shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    problem = PROBLEMS[name]()
    assert_matches_autograd(
        problem, sample_points(problem, batch_shape, seed=len(batch_shape), dtype=dtype)
    )


@pytest.mark.parametrize("name", PROBLEMS)
def test_closed_form_builds_no_graph(name: str) -> None:
    problem = PROBLEMS[name]()
    x = sample_points(problem, (4,), seed=0, dtype=F64).requires_grad_(True)
    with torch.enable_grad():
        values, jacobian = problem.values_and_jacobian(x)
    for output in (values, jacobian):
        assert not output.requires_grad and output.grad_fn is None
    assert x.grad is None


class _TwoParaboloids(Problem):
    """A problem without a closed form: `(||x||^2, ||x - 1||^2)`, gradients `2x`, `2(x - 1)`."""

    n_var, n_obj, bounds = 3, 2, (-1.0, 1.0)

    def __call__(self, x: Tensor, /) -> Tensor:
        return torch.stack([x.pow(2).sum(dim=-1), (x - 1).pow(2).sum(dim=-1)], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_base_class_takes_the_gradients_by_autograd(dtype: torch.dtype) -> None:
    problem = _TwoParaboloids()
    x = sample_points(problem, (2, 4), seed=3, dtype=dtype).requires_grad_(True)
    values, jacobian = problem.values_and_jacobian(x)
    reference_values, reference = batched_task_gradients(problem, x)
    assert torch.equal(values, reference_values) and torch.equal(jacobian, reference)
    assert not values.requires_grad and not jacobian.requires_grad and x.grad is None
    torch.testing.assert_close(jacobian, torch.stack([2 * x, 2 * (x - 1)], dim=-2).detach())


# --- the two-task toy: exactly on its kinks ------------------------------------------------------


def toy_arguments(x: Tensor) -> tuple[Tensor, Tensor]:
    """`d1`, `d2`, the arguments of the toy's absolute values, by `__call__`'s own operations."""
    x1, x2 = x[..., 0], x[..., 1]
    shared = torch.tanh(-x2)
    return 0.5 * (-x1 - 7) - shared, 0.5 * (-x1 + 3) + shared + 2


def neighbours(value: float | Tensor, dtype: torch.dtype, count: int) -> Tensor:
    """`value` rounded to `dtype` and its `count` nearest floats on either side, `[2 count + 1]`."""
    centre = torch.as_tensor(value, dtype=dtype)
    up, down = [centre], [centre]
    for _ in range(count):
        up.append(torch.nextafter(up[-1], torch.tensor(math.inf, dtype=dtype)))
        down.append(torch.nextafter(down[-1], torch.tensor(-math.inf, dtype=dtype)))
    return torch.stack(down[::-1] + up[1:])


def points(x1: Tensor | float, x2: Tensor | float, dtype: torch.dtype) -> Tensor:
    x1, x2 = torch.as_tensor(x1, dtype=dtype), torch.as_tensor(x2, dtype=dtype)
    x1, x2 = torch.broadcast_tensors(x1, x2)
    return torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=-1)


def toy_kinks(dtype: torch.dtype) -> dict[str, Tensor]:
    """Points exactly on the toy's kinks, by name: the gates' kink x2 = +-0 and subnormal x2, the
    log clamps' boundary |d1| = 5e-6, d1 = 0, d2 = 0 and active clamps (these with x2 > 0, where
    the log branch is active; found by walking float by float), and saturated tanh."""
    lower = torch.tensor(LOWER, dtype=dtype)  # the clamp's bound, rounded as the clamp rounds it
    x1 = torch.tensor([-9.0, -7.0, 0.0, 3.0, 7.0, 9.5], dtype=F64)
    kinks: dict[str, Tensor] = {}
    kinks["gates at x2 = +-0"] = points(
        x1.repeat(2), torch.tensor([0.0, -0.0], dtype=F64).repeat_interleave(6), dtype
    )
    # Subnormal x2: tanh(+-x2/2) is a subnormal of either sign, or rounds to +-0 (the smallest one).
    smallest = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    subnormals = torch.tensor([smallest, -smallest, 1024 * smallest, -1024 * smallest], dtype=F64)
    kinks["x2 subnormal"] = points(x1.repeat(4), subnormals.repeat_interleave(6), dtype)
    # d1 = +5e-6 exactly: x1 = -7 makes d1 = -tanh(-x2); walk x2 around atanh(5e-6).
    candidates = points(-7.0, neighbours(math.atanh(LOWER), dtype, 64), dtype)
    kinks["|d1| = 5e-6, d1 > 0"] = candidates[toy_arguments(candidates)[0] == lower]
    # d1 = -5e-6 exactly: x1 = -7 + 4 (5e-6) puts 0.5 (-x1 - 7) near -2 (5e-6), so d1 = -5e-6 needs
    # tanh(-x2) = 0.5 (-x1 - 7) + 5e-6 (about -5e-6): walk x2 around its atanh.
    x1 = torch.tensor(-7 + 4 * LOWER, dtype=dtype)
    half_shift = 0.5 * (-x1 - 7)
    candidates = points(x1, neighbours(-math.atanh(float(half_shift) + LOWER), dtype, 64), dtype)
    kinks["|d1| = 5e-6, d1 < 0"] = candidates[toy_arguments(candidates)[0] == -lower]
    # d1 = 0 and d2 = 0 exactly (the clamp is active there as well): walk x1 around the roots.
    x2 = torch.linspace(0.05, 4.0, 64, dtype=dtype)
    shared = torch.tanh(-x2)
    for index, root in ((0, -7 - 2 * shared), (1, 7 + 2 * shared)):
        steps = torch.stack([neighbours(value, dtype, 16) for value in root])  # [64, 33]
        candidates = points(steps, x2[:, None].expand_as(steps), dtype)
        kinks[f"d{index + 1} = 0"] = candidates[toy_arguments(candidates)[index] == 0]
    kinks["d2 = 0"] = torch.cat(
        [kinks["d2 = 0"], points(7.0, 1e-30, dtype)]
    )  # -2 + tanh(-1e-30) rounds to -2
    # The clamp active: 0 < |d| < 5e-6 (x1 within 1e-5 of the roots).
    offsets = torch.linspace(-4 * LOWER, 4 * LOWER, 9, dtype=dtype)
    for index, root in ((0, -7 - 2 * shared), (1, 7 + 2 * shared)):
        candidates = points(root[:, None] + offsets, x2[:, None].expand(-1, 9), dtype)
        argument = toy_arguments(candidates)[index].abs()
        kinks[f"clamp of d{index + 1} active"] = candidates[(argument > 0) & (argument < lower)]
    kinks["tanh saturated"] = points(
        torch.tensor([-9.0, 0.0, 7.0]).repeat(4),
        torch.tensor([40.0, -40.0, 400.0, -400.0]).repeat_interleave(3),
        dtype,
    )
    for name, found in kinks.items():
        assert found.shape[0] >= 1, f"no point found for {name} in {dtype}"
    return kinks


def toy_parts(problem: TwoTaskToy, x: Tensor) -> dict[str, Tensor]:
    """The toy's intermediate terms, by `__call__`'s operations."""
    x1, x2 = x[..., 0], x[..., 1]
    d1, d2 = toy_arguments(x)
    return {
        "c1": torch.tanh(0.5 * x2).clamp_min(0),
        "c2": torch.tanh(-0.5 * x2).clamp_min(0),
        "a": torch.stack([torch.log(d.abs().clamp_min(LOWER)) + 6 for d in (d1, d2)], dim=-1),
        "s": torch.stack(
            [((-x1 + shift) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20 for shift in (7, -7)], dim=-1
        ),
        "d": torch.stack([d1, d2], dim=-1),
        "k": torch.tensor([problem.scale, 1.0], dtype=x.dtype),
    }


@pytest.mark.parametrize("scale", [1.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_two_task_toy_is_exact_on_its_kinks(dtype: torch.dtype, scale: float) -> None:
    problem = TwoTaskToy(scale=scale)
    for name, x in toy_kinks(dtype).items():
        _, jacobian = assert_matches_autograd(problem, x)
        parts = toy_parts(problem, x)
        k = parts["k"]
        if (
            name == "gates at x2 = +-0"
        ):  # c1 = c2 = 0: no x1-slope; both gates' slopes, tanh'(0) = 1
            assert bool((jacobian[..., 0] == 0).all()), name
            expected = (k * parts["a"]) * 0.5 + (k * parts["s"]) * -0.5
            torch.testing.assert_close(jacobian[..., 1], expected, rtol=0, atol=0)
        elif name.startswith("|d1| = 5e-6"):  # the clamp's boundary passes the gradient
            sign = torch.sign(parts["d"][..., 0])
            expected = -(k[0] * parts["c1"] / torch.tensor(LOWER, dtype=dtype) * sign) * 0.5
            assert bool((jacobian[..., 0, 0] != 0).all()), name
            torch.testing.assert_close(jacobian[..., 0, 0], expected, rtol=0, atol=0)
        elif name in ("d1 = 0", "clamp of d1 active"):  # sgn(0) = 0, and an active clamp blocks
            assert bool((jacobian[..., 0, 0] == 0).all()), name
        elif name in ("d2 = 0", "clamp of d2 active"):
            assert bool((jacobian[..., 1, 0] == 0).all()), name
        elif (
            name == "tanh saturated"
        ):  # tanh rounds to +-1: its slope is 0; only the quadratics' x2-slope remains
            x2 = x[..., 1:]
            quadratic_slope = -((k * parts["c2"][..., None] / 10) * 0.1) * (2 * (-x2 - 8))
            torch.testing.assert_close(
                jacobian[..., 1], torch.where(x2 > 0, 0.0, quadratic_slope), rtol=0, atol=0
            )


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_task_toy_is_exact_near_its_kinks(dtype: torch.dtype) -> None:
    """Dense sweeps across x2 = 0 and across the log clamps (both sides of each kink)."""
    problem = TwoTaskToy()
    x2 = torch.cat([neighbours(0.0, dtype, 200), torch.linspace(-1e-3, 1e-3, 401, dtype=dtype)])
    assert_matches_autograd(
        problem, points(torch.linspace(-10, 10, 21, dtype=dtype)[:, None], x2, dtype)
    )
    x2 = torch.linspace(0.01, 6.0, 50, dtype=dtype)
    offsets = torch.linspace(-1e-4, 1e-4, 201, dtype=dtype)
    for root in (-7 + 2 * torch.tanh(x2), 7 - 2 * torch.tanh(x2)):
        assert_matches_autograd(
            problem, points(root[:, None] + offsets, x2[:, None].expand(-1, 201), dtype)
        )


# --- ZDT: the square root's kink and the box's faces ----------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [ZDT1, ZDT2, ZDT3])
def test_zdt_is_exact_at_the_square_root_kink_and_on_the_faces(
    kind: type[ZDT], dtype: torch.dtype
) -> None:
    problem = kind(n_var=4)
    first = torch.tensor([0.0, -0.0, torch.finfo(dtype).tiny, 1e-30, 0.5, 1.0, -0.25], dtype=F64)
    rest = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5]], dtype=F64)
    x = torch.cat([first.repeat_interleave(3)[:, None], rest.repeat(7, 1)], dim=-1).to(dtype)
    _, jacobian = assert_matches_autograd(problem, x)
    assert torch.equal(jacobian[:, 0], torch.eye(4, dtype=dtype)[0].expand(21, 4))  # grad f1 = e1
    at_kink = x[:, 0] <= 0
    if kind is not ZDT2:  # sqrt(max(x1, 0)) has slope 0 at x1 <= 0, and d f2 / d g = 1 there
        g_slope = torch.tensor(9.0 / 3, dtype=dtype)
        assert bool((jacobian[at_kink, 1, 1:] == g_slope).all())
        if kind is ZDT1:
            assert bool((jacobian[at_kink, 1, 0] == 0).all())
    assert bool(torch.isfinite(jacobian).all())


# --- a trajectory driven by each -----------------------------------------------------------------


def test_adam_on_the_two_task_toy_follows_the_same_path_with_either_jacobian() -> None:
    """3,000 Adam steps (lr 1e-3, update `sum_i g_i`) from the five DiBS-MTL starts, float64: the
    closed-form and the autograd-driven iterates stay within 1e-10 (they are in fact equal)."""
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=F64)
    closed_form, autograd = starts.clone().requires_grad_(True), starts.clone().requires_grad_(True)
    optimizers = [torch.optim.Adam([closed_form], lr=1e-3), torch.optim.Adam([autograd], lr=1e-3)]
    deviation = 0.0
    for _ in range(3000):
        closed_form.grad = problem.values_and_jacobian(closed_form.detach())[1].sum(dim=-2)
        autograd.grad = batched_task_gradients(problem, autograd.detach())[1].sum(dim=-2)
        for optimizer in optimizers:
            optimizer.step()
        deviation = max(deviation, float((closed_form.detach() - autograd.detach()).abs().max()))
    assert deviation <= 1e-10, deviation
    assert float((closed_form.detach() - starts).abs().max()) > 1.0  # the runs did move
