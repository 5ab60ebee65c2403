"""toy_problems: shapes, dtypes, derivatives, starting points, and the analytic Pareto sets and
fronts of every problem (stationarity on the set, non-stationarity off it, front formulas,
mutual non-dominance)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import batched_task_gradients, gramian
from core.pareto import stationarity
from toy_problems import (
    DIBS_MTL_STARTS,
    ZDT,
    ZDT1,
    ZDT2,
    ZDT3,
    ZDT3_PARETO_INTERVALS,
    Bargaining1D,
    ConvexQuadratic,
    FonsecaFleming,
    Problem,
    RandomNonconvex,
    TwoTaskToy,
    ZDT2Variant,
)

F64 = torch.float64

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "quadratic_K2": lambda: ConvexQuadratic.random(3, 2, seed=0),
    "quadratic_K3": lambda: ConvexQuadratic.random(4, 3, seed=1),
    "nonconvex_K2": lambda: RandomNonconvex(3, 2, seed=0),
    "nonconvex_K4": lambda: RandomNonconvex(5, 4, seed=1),
    "two_task_toy": TwoTaskToy,
    "two_task_toy_scaled": lambda: TwoTaskToy(scale=0.1),
    "bargaining_x2": Bargaining1D,
    "bargaining_x4": lambda: Bargaining1D(first_power=4),
    "zdt1": lambda: ZDT1(n_var=6),
    "zdt1_30": ZDT1,
    "zdt2": lambda: ZDT2(n_var=4),
    "zdt3": lambda: ZDT3(n_var=5),
    "zdt2_variant": ZDT2Variant,
    "fonseca_fleming": FonsecaFleming,
    "fonseca_fleming_5": lambda: FonsecaFleming(n_var=5),
}
WITH_PARETO_SET = [name for name, make in PROBLEMS.items() if make().has_pareto_set]

FRONT_FORMULAS: dict[str, Callable[[Tensor], Tensor]] = {
    "bargaining_x2": lambda f1: (1 - f1.sqrt()) ** 2,
    "bargaining_x4": lambda f1: (1 - f1**0.25) ** 2,
    "zdt1": lambda f1: 1 - f1.sqrt(),
    "zdt1_30": lambda f1: 1 - f1.sqrt(),
    "zdt2": lambda f1: 1 - f1**2,
    "zdt3": lambda f1: 1 - f1.sqrt() - f1 * torch.sin(10 * math.pi * f1),
    "zdt2_variant": lambda f1: 1 - f1**2,
    "fonseca_fleming": lambda f1: 1 - torch.exp(-((2 - (-torch.log1p(-f1)).sqrt()) ** 2)),
    "fonseca_fleming_5": lambda f1: 1 - torch.exp(-((2 - (-torch.log1p(-f1)).sqrt()) ** 2)),
}
FRONT_F1_RANGE = {
    "bargaining_x2": (0.0, 1.0),
    "bargaining_x4": (0.0, 1.0),
    "zdt1": (0.0, 1.0),
    "zdt1_30": (0.0, 1.0),
    "zdt2": (0.0, 1.0),
    "zdt3": (0.0, ZDT3_PARETO_INTERVALS[-1][1]),
    "zdt2_variant": (0.0, 1.0),
    "fonseca_fleming": (0.0, 1 - math.exp(-4)),
    "fonseca_fleming_5": (0.0, 1 - math.exp(-4)),
}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def interior_points(
    problem: Problem,
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    dtype: torch.dtype = F64,
    margin: float = 0.05,
) -> Tensor:
    """Uniform points of the bounds shrunk by `margin` of their width on every side."""
    lower, upper = problem.lower_upper(dtype=F64)
    unit = margin + (1 - 2 * margin) * torch.rand(
        *shape, problem.n_var, generator=seeded(seed), dtype=F64
    )
    return (lower + (upper - lower) * unit).to(dtype)


def exact_pareto_points(problem: Problem, num_points: int, *, seed: int) -> Tensor:
    """Pareto-set points in float64 (the exact curve for the two-task toy, whose `pareto_set` is the
    reference's approximate segment)."""
    if isinstance(problem, TwoTaskToy):
        return problem.stationary_set(num_points, generator=seeded(seed))
    return problem.pareto_set(num_points, generator=seeded(seed))


def relative_residual(jacobian: Tensor, *, relative_to: str = "max") -> Tensor:
    """min-norm residual `min_{a in simplex} ||a^T J||` over the largest (or smallest) gradient norm."""
    _, residual = stationarity(gramian(jacobian))
    norms = jacobian.norm(dim=-1)
    scale = norms.amax(dim=-1) if relative_to == "max" else norms.amin(dim=-1)
    return residual / scale.clamp_min(torch.finfo(jacobian.dtype).tiny)


def box_kkt_residual(problem: Problem, x: Tensor, jacobian: Tensor) -> Tensor:
    """Pareto criticality on the box, relative to the largest gradient norm: the min-norm point of
    the gradients restricted to the free coordinates, plus the sign violations of that combination
    on the active bounds (it must point out of the box: >= 0 at a lower bound, <= 0 at an upper).
    Exact for points with at most one task-dependent free coordinate, as used here."""
    lower, upper = problem.lower_upper(dtype=x.dtype)
    at_lower, at_upper = x <= lower, x >= upper
    free = ~(at_lower | at_upper)
    weights, residual = stationarity(gramian(jacobian * free[..., None, :]))
    combined = (weights[..., None] * jacobian).sum(dim=-2)
    violation = torch.where(at_lower, (-combined).clamp_min(0), torch.zeros_like(combined))
    violation = violation + torch.where(at_upper, combined.clamp_min(0), torch.zeros_like(combined))
    return (residual + violation.norm(dim=-1)) / jacobian.norm(dim=-1).amax(dim=-1)


def criticality(problem: Problem, x: Tensor) -> Tensor:
    _, jacobian = batched_task_gradients(problem, x)
    if isinstance(problem, ZDT):
        return box_kkt_residual(problem, x, jacobian)
    return relative_residual(jacobian)


def dominated(front: Tensor, *, tolerance: float = 1e-12) -> Tensor:
    """`[m]`: whether some other point of `front` `[m, K]` dominates each point (<= in every
    objective up to `tolerance`, < by more than `tolerance` in one)."""
    no_worse = (front[:, None, :] <= front[None, :, :] + tolerance).all(dim=-1)
    better = (front[:, None, :] < front[None, :, :] - tolerance).any(dim=-1)
    return (no_worse & better).any(dim=0)


# --- every problem -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("name", PROBLEMS)
def test_output_shape_dtype_and_batch_independence(
    name: str, batch_shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    problem = PROBLEMS[name]()
    x = interior_points(problem, batch_shape, dtype=dtype)
    values = problem(x)
    assert values.shape == (*batch_shape, problem.n_obj)
    assert values.dtype == dtype
    assert bool(torch.isfinite(values).all())
    rows = x.reshape(-1, problem.n_var)
    one_by_one = torch.stack([problem(row) for row in rows]).reshape(values.shape)
    torch.testing.assert_close(values, one_by_one)
    _, jacobian = batched_task_gradients(problem, x)
    assert (
        jacobian.shape == (*batch_shape, problem.n_obj, problem.n_var) and jacobian.dtype == dtype
    )


@pytest.mark.parametrize("name", PROBLEMS)
def test_float32_agrees_with_float64(name: str) -> None:
    problem = PROBLEMS[name]()
    x = interior_points(problem, (16,))
    torch.testing.assert_close(problem(x.float()).double(), problem(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PROBLEMS)
def test_autograd_gradients_match_central_differences(name: str) -> None:
    problem = PROBLEMS[name]()
    x = interior_points(problem, (8,), seed=1)
    _, jacobian = batched_task_gradients(problem, x)
    step = 1e-6
    shifts = step * torch.eye(problem.n_var, dtype=F64)  # [n, n]
    plus, minus = problem(x[:, None, :] + shifts), problem(x[:, None, :] - shifts)  # [8, n, K]
    finite_differences = ((plus - minus) / (2 * step)).transpose(-1, -2)
    torch.testing.assert_close(jacobian, finite_differences, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PROBLEMS)
def test_starts_lie_in_the_bounds_and_are_reproducible(name: str) -> None:
    problem = PROBLEMS[name]()
    lower, upper = problem.lower_upper(dtype=F64)
    first = problem.starts(7, generator=seeded(3), dtype=F64)
    assert first.shape == (7, problem.n_var) and first.dtype == F64
    assert bool(((first >= lower) & (first <= upper)).all())
    torch.testing.assert_close(
        problem.starts(7, generator=seeded(3), dtype=F64), first, rtol=0, atol=0
    )
    assert not torch.equal(problem.starts(7, generator=seeded(4), dtype=F64), first)
    assert problem.starts(2, generator=seeded(3)).dtype == torch.float32
    defaults = problem.default_starts(dtype=F64)
    assert defaults.ndim == 2 and defaults.shape[-1] == problem.n_var
    assert bool(((defaults >= lower) & (defaults <= upper)).all())
    torch.testing.assert_close(problem.default_starts(dtype=F64), defaults, rtol=0, atol=0)


@pytest.mark.parametrize("name", PROBLEMS)
def test_signatures_match_the_base_class(name: str) -> None:
    problem = PROBLEMS[name]()
    for method in ("starts", "default_starts", "pareto_set", "pareto_front"):
        assert inspect.signature(getattr(problem, method)) == inspect.signature(
            getattr(Problem(), method)
        ), method


# --- problems with a known Pareto set ----------------------------------------------------------


@pytest.mark.parametrize("name", WITH_PARETO_SET)
def test_pareto_set_dtype_shape_and_determinism(name: str) -> None:
    problem = PROBLEMS[name]()
    points = problem.pareto_set(11, dtype=torch.float32, generator=seeded(0))
    assert points.shape == (11, problem.n_var) and points.dtype == torch.float32
    torch.testing.assert_close(
        problem.pareto_set(11, generator=seeded(0)).float(), points, rtol=0, atol=0
    )
    if not isinstance(
        problem, ConvexQuadratic
    ):  # its set is always drawn (from the global RNG without a generator)
        torch.testing.assert_close(problem.pareto_set(11), problem.pareto_set(11), rtol=0, atol=0)
    front = problem.pareto_front(11, dtype=torch.float32, generator=seeded(0))
    assert front.shape == (11, problem.n_obj) and front.dtype == torch.float32


@pytest.mark.parametrize("name", WITH_PARETO_SET)
def test_pareto_set_points_are_pareto_stationary(name: str) -> None:
    problem = PROBLEMS[name]()
    points = exact_pareto_points(problem, 64, seed=0)
    residual = criticality(problem, points)
    assert float(residual.max()) < 1e-6, residual.max()


@pytest.mark.parametrize("name", WITH_PARETO_SET)
def test_points_off_the_set_are_not_stationary(name: str) -> None:
    problem = PROBLEMS[name]()
    if isinstance(
        problem, Bargaining1D
    ):  # every point of the box is Pareto optimal: look outside it
        points = torch.cat(
            [torch.linspace(-1, -0.05, 16, dtype=F64), torch.linspace(1.05, 2, 16, dtype=F64)]
        )[:, None]
    elif isinstance(
        problem, TwoTaskToy
    ):  # in x2 > 0 the tanh factors saturate to a nearly flat plateau
        points = interior_points(problem, (64,), seed=5)
        points[:, 1] = -points[:, 1].abs()
        stationary_x2 = problem.stationary_set(1, generator=seeded(0))[0, 1]
        points = points[(points[:, 1] - stationary_x2).abs() > 0.5]
    else:
        points = interior_points(problem, (64,), seed=5)
    _, jacobian = batched_task_gradients(problem, points)
    residual = relative_residual(jacobian, relative_to="min")  # no constraint is active here
    assert float(residual.min()) > 1e-3, residual.min()


@pytest.mark.parametrize("name", sorted(FRONT_FORMULAS))
def test_pareto_front_follows_the_analytic_formula(name: str) -> None:
    problem = PROBLEMS[name]()
    front = problem.pareto_front(401)
    torch.testing.assert_close(
        front[:, 1], FRONT_FORMULAS[name](front[:, 0]), rtol=1e-10, atol=1e-12
    )
    low, high = FRONT_F1_RANGE[name]
    assert (
        abs(float(front[:, 0].min()) - low) < 1e-9 and abs(float(front[:, 0].max()) - high) < 1e-9
    )


@pytest.mark.parametrize("name", WITH_PARETO_SET)
def test_front_points_are_mutually_nondominated(name: str) -> None:
    problem = PROBLEMS[name]()
    front = problem(exact_pareto_points(problem, 300, seed=1))
    assert not bool(dominated(front).any())


def test_dominance_check_can_fail() -> None:
    front = ZDT2(n_var=3).pareto_front(50)
    worse = front[20] + torch.tensor([1e-6, 0.0], dtype=F64)
    assert bool(dominated(torch.cat([front, worse[None]]))[-1])
    assert not bool(dominated(front).any())


def test_box_kkt_check_can_fail() -> None:
    problem = ZDT1(n_var=4)
    on_face = problem.pareto_set(8, generator=seeded(2))
    lifted = on_face.clone()
    lifted[:, 1:] = 0.2  # off the face: interior, unconstrained, not stationary
    assert float(criticality(problem, on_face).max()) < 1e-6
    assert float(criticality(problem, lifted).min()) > 0.1
    gaps = on_face.clone()
    gaps[:, 0] = torch.linspace(0.3, 0.9, 8, dtype=F64)
    assert (
        float(criticality(ZDT3(n_var=4), gaps).max()) > 0.1
    )  # some gap points rise along the curve


# --- the two-task toy ----------------------------------------------------------------------------


def test_two_task_toy_default_starts_are_the_dibs_mtl_points() -> None:
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=F64)
    assert starts.tolist() == [[-8.5, 7.5], [0.1, 0.1], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]]
    assert starts.tolist() == [list(point) for point in DIBS_MTL_STARTS]
    assert problem.default_starts().dtype == torch.float32
    assert type(problem).starts is Problem.starts
    assert problem.starts(3, generator=seeded(0)).shape == (3, 2)


def test_two_task_toy_reference_segment_is_close_to_the_stationary_curve() -> None:
    problem = TwoTaskToy()
    segment, curve = problem.pareto_set(201), problem.stationary_set(201)
    torch.testing.assert_close(segment[:, 0], curve[:, 0])
    gaps = (segment[:, 1] - curve[:, 1]).abs()
    assert 0.075 < float(gaps.max()) < 0.085 and float(gaps.min()) < 2e-4  # as documented
    assert float((problem(segment) - problem(curve)).abs().max()) < 1e-3
    _, jacobian = batched_task_gradients(problem, segment[[0, -1]])
    assert (
        float(relative_residual(jacobian, relative_to="min").min()) > 0.5
    )  # its ends are not stationary


# --- bargaining ----------------------------------------------------------------------------------


@pytest.mark.parametrize("power", [2, 4])
def test_bargaining_preferred_states_and_opposite_unit_gradients(power: int) -> None:
    problem = Bargaining1D(first_power=power)
    grid = torch.linspace(0, 1, 101, dtype=F64)[:, None]
    values = problem(grid)
    anchors = problem.preferred_states()
    torch.testing.assert_close(problem(anchors).diagonal(), values.amin(dim=0))
    _, jacobian = batched_task_gradients(problem, grid[1:-1])
    units = jacobian / jacobian.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(units.sum(dim=-2), torch.zeros_like(units[..., 0, :]))  # Example 2


@pytest.mark.parametrize("power", [0, 3, 2.0])
def test_bargaining_rejects_other_powers(power) -> None:
    with pytest.raises(InvalidHyperparameterError):
        Bargaining1D(first_power=power)


# --- ZDT -----------------------------------------------------------------------------------------


def test_zdt_values_at_a_hand_computed_point() -> None:
    x = torch.tensor([0.25, 0.5], dtype=F64)  # n = 2: g = 1 + 9 * 0.5 = 5.5
    expected_second = {
        ZDT1: 5.5 * (1 - math.sqrt(0.25 / 5.5)),
        ZDT2: 5.5 * (1 - (0.25 / 5.5) ** 2),
        ZDT3: 5.5 * (1 - math.sqrt(0.25 / 5.5) - 0.25 / 5.5 * math.sin(2.5 * math.pi)),
    }
    for kind, second in expected_second.items():
        torch.testing.assert_close(
            kind(n_var=2)(x), torch.tensor([0.25, second], dtype=F64), rtol=1e-14, atol=1e-14
        )


@pytest.mark.parametrize("kind", [ZDT1, ZDT2, ZDT3])
def test_zdt_gradients_stay_finite_on_the_whole_box(kind: type[ZDT]) -> None:
    problem = kind(n_var=4)
    corners = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 1.0, 1.0]], dtype=F64
    )
    _, jacobian = batched_task_gradients(problem, corners)
    assert bool(torch.isfinite(jacobian).all())
    torch.testing.assert_close(
        jacobian[:, 0], torch.eye(4, dtype=F64)[0].expand(3, 4)
    )  # grad f1 = e1
    torch.testing.assert_close(
        problem.project(torch.tensor([-0.5, 0.3, 1.5, 1.0], dtype=F64)),
        torch.tensor([0.0, 0.3, 1.0, 1.0], dtype=F64),
    )


def test_zdt_rejects_one_variable() -> None:
    with pytest.raises(InvalidHyperparameterError):
        ZDT1(n_var=1)


def test_zdt3_intervals_are_the_nondominated_part_of_the_curve() -> None:
    t = np.linspace(0.0, 1.0, 2_000_001)
    curve = 1 - np.sqrt(t) - t * np.sin(10 * np.pi * t)
    nondominated = curve < np.concatenate([[np.inf], np.minimum.accumulate(curve)[:-1]])
    changes = np.flatnonzero(np.diff(nondominated.astype(int)))
    starts, ends = t[changes[1::2] + 1], t[changes[0::2]]
    expected_starts = np.array([left for left, _ in ZDT3_PARETO_INTERVALS[1:]])
    expected_ends = np.array([right for _, right in ZDT3_PARETO_INTERVALS])
    np.testing.assert_allclose(starts, expected_starts, atol=2e-6)
    np.testing.assert_allclose(ends, expected_ends, atol=2e-6)
    inside = np.zeros_like(nondominated)
    for left, right in ZDT3_PARETO_INTERVALS:
        inside |= (t > left + 1e-5) & (t < right - 1e-5)
    assert not bool((inside & ~nondominated).any())  # inside the intervals: nondominated
    outside = np.ones_like(nondominated)
    for left, right in ZDT3_PARETO_INTERVALS:
        outside &= (t < left - 1e-5) | (t > right + 1e-5)
    assert not bool((outside & nondominated).any())  # outside: dominated by an earlier point


def test_zdt3_pareto_set_samples_every_interval_and_only_them() -> None:
    x1 = ZDT3(n_var=3).pareto_set(500)[:, 0]
    membership = torch.stack(
        [(x1 > left) & (x1 <= right) for left, right in ZDT3_PARETO_INTERVALS[1:]]
    )
    membership = torch.cat([((x1 >= 0) & (x1 <= ZDT3_PARETO_INTERVALS[0][1]))[None], membership])
    assert bool((membership.sum(dim=0) == 1).all()) and bool(membership.any(dim=1).all())


# --- the ZDT2 variant (spec pareto_exploration.md §7.1) -----------------------------------------


def test_zdt2_variant_gradients_are_parallel_to_the_cylinder_normal_at_pareto_points() -> None:
    problem = ZDT2Variant()
    points = problem.pareto_set(64, generator=seeded(0))
    _, jacobian = batched_task_gradients(problem, points)
    normal = torch.stack(
        [torch.ones_like(points[:, 0]), 2 * points[:, 1], 2 * points[:, 2]], dim=-1
    )
    for task in range(2):
        cross = torch.linalg.cross(jacobian[:, task], normal)
        assert float(cross.norm(dim=-1).max()) < 1e-12
    weights, residual = stationarity(gramian(jacobian))
    torch.testing.assert_close(
        (weights[..., None] * jacobian).sum(dim=-2), torch.zeros_like(points), rtol=0, atol=1e-7
    )
    first = problem(points)[:, 0]
    torch.testing.assert_close(
        weights[:, 0], 2 * first / (1 + 2 * first), rtol=1e-6, atol=1e-6
    )  # w = 2 u1 / (g + 2 u1)


def test_zdt2_variant_whole_cylinders_are_pareto_optimal_and_even_sheets_are_dominated() -> None:
    problem = ZDT2Variant()
    generator = seeded(7)
    x1 = 20 * torch.rand(32, generator=generator, dtype=F64) - 10  # any x1, not only the chart
    theta = 2 * math.pi * torch.rand(32, generator=generator, dtype=F64)
    for sheet, on_front in [(1, True), (3, True), (2, False)]:
        radius = math.sqrt(sheet * math.pi)
        points = torch.stack([x1, radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1)
        values = problem(points)
        assert float(relative_residual(batched_task_gradients(problem, points)[1]).max()) < 1e-6
        gap = values[:, 1] - (1 - values[:, 0] ** 2)
        if on_front:
            assert float(gap.abs().max()) < 1e-12
        else:
            torch.testing.assert_close(values[:, 1], 10 - values[:, 0] ** 2 / 10)
            assert float(gap.min()) > 8.9


def test_zdt2_variant_reference_sampler_ranges() -> None:
    points = ZDT2Variant().pareto_set(2000, generator=seeded(0))
    assert (
        float(points[:, 0].min()) >= -1.5 * math.pi and float(points[:, 0].max()) <= -0.5 * math.pi
    )
    torch.testing.assert_close(
        points[:, 1] ** 2 + points[:, 2] ** 2, torch.full((2000,), math.pi, dtype=F64)
    )
    lower, upper = ZDT2Variant().lower_upper()
    assert bool(((points >= lower) & (points <= upper)).all())


# --- Fonseca-Fleming -----------------------------------------------------------------------------


@given(
    n_var=st.integers(1, 6),
    position=st.floats(-1.0, 1.0),
    offset=st.lists(st.floats(-2.0, 2.0), min_size=6, max_size=6),
)
def test_fonseca_fleming_segment_is_stationary_and_points_off_it_are_not(
    n_var: int, position: float, offset: list[float]
) -> None:
    problem = FonsecaFleming(n_var=n_var)
    on_segment = torch.full((n_var,), position / math.sqrt(n_var), dtype=F64)
    assert float(criticality(problem, on_segment)) < 1e-6
    beyond = on_segment * (1.5 / max(abs(position), 1e-3))  # outside the segment, on the same line
    if abs(position) > 1e-3:
        assert (
            float(relative_residual(batched_task_gradients(problem, beyond)[1], relative_to="min"))
            > 0.5
        )
    orthogonal = torch.tensor(offset[:n_var], dtype=F64)
    orthogonal = orthogonal - orthogonal.mean()  # orthogonal to (1, ..., 1)
    if float(orthogonal.norm()) > 1e-2:
        residual = relative_residual(
            batched_task_gradients(problem, on_segment + orthogonal)[1], relative_to="min"
        )
        assert float(residual) > 1e-3


def test_fonseca_fleming_rejects_zero_dimensions() -> None:
    with pytest.raises(InvalidHyperparameterError):
        FonsecaFleming(n_var=0)


# --- lower bounds and projections (problem facts) ----------------------------------------------

STRICT_LOWER_BOUND = {"two_task_toy", "two_task_toy_scaled", "zdt3", "nonconvex_K2", "nonconvex_K4"}
"""Problems whose losses are > lower_bound; the others reach it (an infimum 0 that is attained)."""

LOWER_BOUND_REACHED = {
    "quadratic_K2": lambda problem: problem.centers[:1],
    "quadratic_K3": lambda problem: problem.centers[:1],
    "bargaining_x2": lambda problem: torch.tensor([[0.0]], dtype=F64),
    "bargaining_x4": lambda problem: torch.tensor([[1.0]], dtype=F64),
    "zdt1": lambda problem: torch.zeros(1, 6, dtype=F64),
    "zdt1_30": lambda problem: torch.zeros(1, 30, dtype=F64),
    "zdt2": lambda problem: torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64),
    "zdt2_variant": lambda problem: torch.tensor([[-math.pi / 2, 0.0, 0.0]], dtype=F64),
    "fonseca_fleming": lambda problem: torch.full((1, 2), 1 / math.sqrt(2), dtype=F64),
    "fonseca_fleming_5": lambda problem: torch.full((1, 5), -1 / math.sqrt(5), dtype=F64),
}
"""A point where some loss equals the (non-strict) lower bound 0, for each such problem."""


def enlarged_box_points(
    problem: Problem, num_points: int, *, seed: int, factor: float = 3.0
) -> Tensor:
    """Uniform points (float64) of the bounds widened `factor`-fold around their centre; for box
    problems (with a `project`, where the facts hold on the box) the box itself, with a fifth of the
    coordinates on its faces."""
    lower, upper = problem.lower_upper(dtype=F64)
    unit = torch.rand(num_points, problem.n_var, generator=seeded(seed), dtype=F64)
    if hasattr(problem, "project"):
        snap = torch.rand(unit.shape, generator=seeded(seed + 1), dtype=F64)
        unit = torch.where(snap < 0.1, 0.0, torch.where(snap < 0.2, 1.0, unit))
    else:
        unit = factor * unit - (factor - 1) / 2
    return lower + (upper - lower) * unit


def test_problems_without_a_known_bound_say_none() -> None:
    assert Problem.lower_bound is None
    assert TwoTaskToy.lower_bound == -20.0 and TwoTaskToy(scale=0.1).lower_bound == -20.0
    assert TwoTaskToy(scale=3.0).lower_bound == -60.0 and TwoTaskToy(scale=-1.0).lower_bound is None


@pytest.mark.parametrize("name", PROBLEMS)
def test_losses_lie_above_the_lower_bound(name: str) -> None:
    problem = PROBLEMS[name]()
    bound = problem.lower_bound
    assert bound is not None
    points = [enlarged_box_points(problem, 20_000, seed=11), problem.default_starts(dtype=F64)]
    if problem.has_pareto_set:
        points.append(exact_pareto_points(problem, 2_000, seed=0))  # where the losses are least
    if isinstance(problem, ConvexQuadratic):
        points.append(problem.centers)
    for dtype in (F64, torch.float32):
        values = problem(torch.cat(points).to(dtype))
        assert bool(torch.isfinite(values).all())
        assert (
            bool((values > bound).all())
            if name in STRICT_LOWER_BOUND
            else bool((values >= bound).all())
        ), float(values.min())
    if name in LOWER_BOUND_REACHED:  # documented as attained: a shift by exactly the bound gives 0
        assert float(problem(LOWER_BOUND_REACHED[name](problem)).min()) == bound


@pytest.mark.parametrize("scale", [1.0, 0.1, 3.0])
def test_two_task_toy_lower_bound_is_nearly_tight_and_the_log_branch_is_above_minus_6_3(
    scale: float,
) -> None:
    """Dense grids of [-40, 40] x [-60, 40] and around the quadratic branch's minima, and the log
    branch where its clamp is active: the losses are > lower_bound = -20 max(scale, 1), the least
    is -19.9894 max(scale, 1) (at x1 = +-7, x2 = -8.4345), and on x2 > 0 they are >= -6.206."""
    problem = TwoTaskToy(scale=scale)
    factor = max(scale, 1.0)  # f2 is unscaled, f1 = scale (...)
    axes = (torch.linspace(-40, 40, 801, dtype=F64), torch.linspace(-60, 40, 1001, dtype=F64))
    near_minima = (
        torch.linspace(-7.5, 7.5, 1501, dtype=F64),
        torch.linspace(-9, -8, 1001, dtype=F64),
    )
    x2 = torch.linspace(1e-3, 30, 3001, dtype=F64)  # on the log branch, with its clamps active
    points = torch.cat(
        [
            torch.cartesian_prod(*axes),
            torch.cartesian_prod(*near_minima),
            torch.stack([-7 + 2 * torch.tanh(x2), x2], dim=-1),
            torch.stack([7 - 2 * torch.tanh(x2), x2], dim=-1),
        ]
    )
    for dtype in (F64, torch.float32):
        values = problem(points.to(dtype)).to(F64)
        assert float(values.min()) > problem.lower_bound == -20.0 * factor
        assert abs(float(values.min()) - -19.9894 * factor) < 1e-3 * factor  # nearly tight
        log_branch = values[points[:, 1] > 0]
        assert float(log_branch.min()) >= factor * (math.log(5e-6) + 6) - 1e-5 * factor
        assert float(log_branch.min()) > -6.3 * factor


BOX_PROBLEMS = [name for name, make in PROBLEMS.items() if hasattr(make(), "project")]
"""The box-constrained problems (ZDT); the others are unconstrained (bounds only say where starts are drawn)."""


def test_the_box_problems_are_the_zdt_problems() -> None:
    assert (
        BOX_PROBLEMS == [name for name, make in PROBLEMS.items() if isinstance(make(), ZDT)]
        and BOX_PROBLEMS
    )


@pytest.mark.parametrize("name", BOX_PROBLEMS)
def test_box_problems_document_their_projection_and_it_maps_onto_the_box(name: str) -> None:
    problem = PROBLEMS[name]()
    assert "project" in (type(problem).__doc__ or "") or any(
        "project" in (base.__doc__ or "") for base in type(problem).__mro__
    )
    assert "box" in (inspect.getdoc(problem.project) or "")
    lower, upper = problem.lower_upper(dtype=F64)
    outside = lower + (upper - lower) * (
        3 * torch.rand(500, problem.n_var, generator=seeded(4), dtype=F64) - 1
    )
    projected = problem.project(outside)
    assert bool(((projected >= lower) & (projected <= upper)).all())
    torch.testing.assert_close(problem.project(projected), projected, rtol=0, atol=0)
    inside = (outside >= lower) & (outside <= upper)
    assert torch.equal(projected[inside], outside[inside])
    nearest = torch.minimum(torch.maximum(outside, lower), upper)  # the box's Euclidean projection
    torch.testing.assert_close(projected, nearest, rtol=0, atol=0)
