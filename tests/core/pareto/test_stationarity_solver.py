"""The min-norm solver on its own (`core.min_norm_point`: Wolfe's active set, float64 on the host).

What is stated, for `a = argmin_{a in simplex} a^T G a`:
- KKT: `a >= 0`, `sum a = 1`, `(G a)_j >= a^T G a` for every j, with equality where `a_j > 0`
  (up to rounding, relative to `max_i G_ii`, and on well-posed input relative to the gradients
  that make up the solution), at row scales from 1e-12 to 1e12, rank-deficient, with zero rows;
- termination within the documented bound (`iterations <= max_iterations` face solves);
- the smallest gradient's vertex when it is the minimiser, with norms spanning 12 orders;
- float32 Gramians solved to a tiny gap (in float64);
- batches (including the all-faces path for small K) agree with single solves;
- the face solves (with the CAGrad shift) solve their KKT systems;
- K = 2: the closed form agrees with the general path.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core import min_norm_point
from core.errors import InvalidHyperparameterError
from core.jacobian import gramian
from core.pareto.stationarity import default_tolerance
from tests.jacobian_strategies import jacobians

solver = importlib.import_module(
    "core.pareto.stationarity"
)  # the module (core.pareto re-exports a function of that name)
F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)


def unit_scaled(gram: torch.Tensor) -> np.ndarray:
    gram = gram.to(F64)
    return (gram / gram.diagonal().max()).numpy()


def slack(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`a^T G a - (G a)_j` per task j (<= 0 everywhere at a KKT point, = 0 on the support)."""
    product = gram @ weights
    return float(weights @ product) - product


def well_posed_jacobian(seed: int, num_tasks: int, *, low: float, high: float) -> torch.Tensor:
    """K x (K + 3) Gaussian rows with log-uniform norms in [10^low, 10^high]."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(num_tasks, num_tasks + 3, generator=generator, dtype=F64)
    rows = rows / rows.norm(dim=1, keepdim=True)
    exponents = low + (high - low) * torch.rand(num_tasks, 1, generator=generator, dtype=F64)
    return rows * 10.0**exponents


@given(jacobian=jacobians(min_tasks=3, max_tasks=10, max_dim=8), batched=st.booleans())
@settings(deadline=None, max_examples=60)
def test_kkt_conditions_at_every_scale(jacobian, batched) -> None:
    """Row scales 1e-12..1e12, rank deficient, duplicate, opposite and zero rows."""
    gram = gramian(jacobian)
    solution = min_norm_point(torch.stack([gram] * 4)) if batched else min_norm_point(gram)
    weights = (solution.weights[1] if batched else solution.weights).numpy()
    gap = float(solution.kkt_gap.max())
    assume(float(gram.diagonal().max()) > 0)
    assert bool((weights >= 0).all()) and abs(weights.sum() - 1) <= 1e-12
    scaled = unit_scaled(gram)
    slacks = slack(scaled, weights)
    # (G a)_j >= a^T G a for every j, equality on the support: to rounding, relative to max_i G_ii
    assert slacks.max() <= 1e-14
    assert np.abs(slacks[weights > 0]).max() <= 1e-14
    assert gap <= 1e-14 and gap == pytest.approx(max(slacks.max(), 0.0), abs=1e-15)


@given(seed=st.integers(0, 2**31 - 1), num_tasks=st.integers(3, 12))
@settings(deadline=None, max_examples=40)
def test_kkt_conditions_are_relative_to_the_gradients_involved(seed, num_tasks) -> None:
    """Affinely independent gradients with norms spread over 12 orders of magnitude (1e-6..1e6):
    every slack is within the rounding floor of the solution's own gradients,
    `8 K eps s (s + ||g_j||)` with `s = sum_i a_i ||g_i||`, not merely of the largest gradient."""
    jacobian = well_posed_jacobian(seed, num_tasks, low=-6.0, high=6.0)
    scaled = unit_scaled(gramian(jacobian))
    weights = min_norm_point(gramian(jacobian)).weights.numpy()
    norms = np.sqrt(np.diagonal(scaled))
    spread = float(norms @ weights)
    assert bool((slack(scaled, weights) <= 8 * num_tasks * EPS * spread * (spread + norms)).all())


@pytest.mark.parametrize("num_tasks", [3, 5, 13, 40])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_smallest_gradient_vertex_across_twelve_orders(num_tasks, dtype) -> None:
    """Row norms 1e-6..1e6, every direction at an acute angle to the smallest gradient's: then
    `g_s . g_j >= ||g_s||^2` for all j, and the min-norm point is the vertex g_s (a solver whose
    tolerance is relative to the largest norm stops at the 1e-3 row, whose squared norm is 1e-18
    of the largest)."""
    generator = torch.Generator().manual_seed(num_tasks)
    directions = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
    directions[:, 0] = directions[:, 0].abs() + 3.0
    directions = directions / directions.norm(dim=1, keepdim=True)
    exponents = torch.linspace(-6.0, 6.0, num_tasks, dtype=F64)
    exponents[1] = -3.0  # the row an absolute tolerance would stop at
    order = torch.randperm(num_tasks, generator=generator)
    jacobian = (directions * 10.0 ** exponents[:, None])[order]
    smallest = int(torch.argmin(exponents[order]))
    gram = gramian(jacobian)
    assert bool((gram[smallest] >= gram[smallest, smallest]).all())  # the vertex is optimal
    solution = min_norm_point(gram.to(dtype))
    expected = torch.zeros(num_tasks, dtype=dtype)
    expected[smallest] = 1.0
    torch.testing.assert_close(solution.weights, expected, rtol=0, atol=0)
    assert solution.squared_norm.item() == pytest.approx(float(gram[smallest, smallest]), rel=1e-6)


@pytest.mark.parametrize("max_iterations", [0, 1, 2, 3, 5, 10, 2000])
def test_termination_within_the_documented_bound(max_iterations) -> None:
    """At most `max_iterations` face solves, always a simplex point, and the objective never
    increases with more solves (the active set only moves to strictly better face minimisers)."""
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(
        40, 10, generator=generator, dtype=F64
    )  # rank deficient: 0 is in the hull
    jacobian[:20] *= 1e3
    gram = gramian(jacobian)
    solution = min_norm_point(gram, max_iterations=max_iterations)
    assert solution.iterations <= max_iterations
    assert bool((solution.weights >= 0).all()) and abs(solution.weights.sum().item() - 1) <= 1e-12
    if max_iterations > 0:
        fewer = min_norm_point(gram, max_iterations=max_iterations - 1)
        assert solution.squared_norm.item() <= fewer.squared_norm.item() + 1e-15 * float(
            gram.diagonal().max()
        )
    if max_iterations == 2000:
        assert solution.kkt_gap.item() <= 1e-15


def test_tolerance_stops_early_and_is_validated() -> None:
    gram = gramian(torch.randn(12, 20, generator=torch.Generator().manual_seed(2), dtype=F64))
    loose, exact = min_norm_point(gram, tolerance=1e-2), min_norm_point(gram)
    assert loose.iterations <= exact.iterations and loose.kkt_gap.item() <= 1e-2
    for bad in (
        {"max_iterations": -1},
        {"max_iterations": 1.5},
        {"tolerance": -1e-3},
        {"tolerance": math.inf},
    ):
        with pytest.raises(InvalidHyperparameterError):
            min_norm_point(gram, **bad)


@pytest.mark.parametrize("num_tasks", [5, 20, 40])
def test_float32_gramian_reaches_a_tiny_gap(num_tasks) -> None:
    """The solve runs in float64 on the float32 Gramian: the solution's KKT gap is at the float64
    rounding floor; the weights returned in float32 keep the gap of their own rounding."""
    generator = torch.Generator().manual_seed(num_tasks)
    jacobian = torch.randn(num_tasks, 3 * num_tasks, generator=generator, dtype=F64)
    jacobian = jacobian * 10.0 ** (2 * torch.rand(num_tasks, 1, generator=generator, dtype=F64) - 1)
    low = gramian(jacobian).float()
    solution = min_norm_point(low)
    assert solution.weights.dtype == torch.float32 and solution.kkt_gap.dtype == torch.float32
    assert solution.kkt_gap.item() <= 1e-14
    returned = solution.weights.double()
    assert slack(unit_scaled(low), (returned / returned.sum()).numpy()).max() <= default_tolerance(
        torch.float32
    )


def test_rank_deficient_float32_gramian_is_solved_to_its_own_rounding() -> None:
    """A float32 Gramian of rank < K is indefinite at ~1e-8 of its largest entry after rounding:
    faces of negative curvature are not entered, and the gap is at that level."""
    jacobian = torch.randn(40, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    solution = min_norm_point(gramian(jacobian).float())
    assert solution.kkt_gap.item() <= default_tolerance(torch.float32)
    assert solution.residual.item() <= 1e-3 * float(jacobian.norm(dim=1).max())


@given(data=st.data(), num_tasks=st.integers(3, 7), batch=st.sampled_from([1, 3, 4, 9, 16, 20]))
@settings(deadline=None, max_examples=30)
def test_batches_agree_with_single_solves(data, num_tasks, batch) -> None:
    """Batches of 4 or more with K <= 4 solve every face at once (`_enumerate_faces`), of 16 or
    more with larger K run the active set in lockstep (`_lockstep_active_set`), the rest element
    by element: all give the min-norm point (the weights where they are unique)."""
    rows = [
        data.draw(
            jacobians(
                min_tasks=num_tasks, max_tasks=num_tasks, max_dim=6, min_exponent=-4, max_exponent=4
            )
        )
        for _ in range(batch)
    ]
    dim = max(row.shape[1] for row in rows)
    jacobian = torch.stack([torch.nn.functional.pad(row, (0, dim - row.shape[1])) for row in rows])
    gram = gramian(jacobian)
    batched = min_norm_point(gram)
    for index in range(batch):
        single = min_norm_point(gram[index])
        largest = float(jacobian[index].norm(dim=1).max()) or 1.0
        torch.testing.assert_close(
            batched.weights[index] @ jacobian[index],
            single.weights @ jacobian[index],
            rtol=0,
            atol=1e-7 * largest,
        )
        assert batched.squared_norm[index].item() == pytest.approx(
            single.squared_norm.item(), abs=1e-14 * largest**2
        )


def test_all_faces_path_matches_the_active_set_on_degenerate_rows() -> None:
    """Zero rows (weight split evenly between them), duplicates and opposite rows, K = 4, batch 6."""
    base = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    base[0, 1] = 0.0
    base[1, [0, 2]] = 0.0
    base[2, 3] = base[2, 0]
    base[3, 3] = -2.0 * base[3, 0]
    base[4] *= torch.tensor([1e-6, 1.0, 1e6, 1e3], dtype=F64)[:, None]
    gram = gramian(base)
    batched = min_norm_point(gram)
    torch.testing.assert_close(batched.weights[0], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(batched.weights[1], torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=F64))
    for index in range(6):
        single = min_norm_point(gram[index])
        largest = float(base[index].norm(dim=1).max())
        torch.testing.assert_close(
            batched.weights[index] @ base[index],
            single.weights @ base[index],
            rtol=0,
            atol=1e-9 * largest,
        )


@pytest.mark.parametrize("num_tasks", [6, 12])
def test_lockstep_path_on_degenerate_rows_and_wide_scales(num_tasks) -> None:
    """Batch 24: zero, duplicate and opposite rows, rank deficiency, norms over 1e-6..1e6; the
    lockstep batch settles them (or hands them to the single solver) with the single solves'
    min-norm points and KKT gaps at the rounding floor."""
    generator = torch.Generator().manual_seed(num_tasks)
    jacobian = torch.randn(24, num_tasks, num_tasks + 2, generator=generator, dtype=F64)
    jacobian[0::4, 0] = 0.0
    jacobian[1::4, 1] = jacobian[1::4, 2]
    jacobian[2::4, 3] = -2.0 * jacobian[2::4, 4]
    jacobian[3::4, :, 3:] = 0.0  # rank 3
    jacobian = jacobian * 10.0 ** (
        12 * torch.rand(24, num_tasks, 1, generator=generator, dtype=F64) - 6
    )
    gram = gramian(jacobian)
    batched = min_norm_point(gram)
    assert float(batched.kkt_gap.max()) <= 1e-15
    for index in range(24):
        single = min_norm_point(gram[index])
        largest = float(jacobian[index].norm(dim=1).max())
        torch.testing.assert_close(
            batched.weights[index] @ jacobian[index],
            single.weights @ jacobian[index],
            rtol=0,
            atol=1e-9 * largest,
        )


def test_found_nearly_collinear_face_is_reduced() -> None:
    """A case the property search found: g_4 is nearly -2.3e6 g_1 and g_2 ~ 1e-6 lies nearly on
    the line through them, so the face {g_1, g_2, g_4} is affinely dependent to rounding. The
    active set moves along the dependency (Caratheodory) and reaches the segment g_1 g_4, whose
    minimum is below the tiny vertex g_2, instead of stopping at g_2's face."""
    jacobian = torch.tensor(
        [
            [-1.40731635732041838e01, -1.00676469538024893e01, -1.05245700474722010e01],
            [-3.77315695632685960e-07, 9.98991490634720889e-07, -1.01292942913726820e-07],
            [-5.83603246394133723e00, -1.91401919880045623e00, -2.31184813045364468e00],
            [3.23762918870075084e07, 2.31613222354835644e07, 2.42125056011578143e07],
        ],
        dtype=F64,
    )
    gram = gramian(jacobian)
    solution = min_norm_point(gram)
    assert solution.weights[0] > 0.99 and solution.weights[3] > 0 and solution.weights[1] == 0
    assert solution.squared_norm.item() < float(gram[1, 1])
    assert solution.kkt_gap.item() <= 1e-20


@given(seed=st.integers(0, 2**31 - 1), size=st.integers(2, 6), mu=st.floats(0.0, 3.0))
@settings(deadline=None, max_examples=40)
def test_face_minimiser_solves_the_faces_kkt_system(seed, size, mu) -> None:
    """On an affinely independent face S: `y + mu z` solves the bordered system
    `[[G_S, 1], [1^T, 0]] [a; -lambda] = [-mu b_S; 1]`, the stationarity of `a^T G a + 2 mu b . a`
    on `sum a = 1` (the min-norm problem of `g_i + mu g_0` on the face)."""
    num_tasks = size + 2
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(num_tasks, num_tasks + 2, generator=generator, dtype=F64)
    gram = gramian(jacobian).numpy()
    linear = gram.mean(axis=1)
    support = np.sort(np.random.default_rng(seed).choice(num_tasks, size=size, replace=False))
    point, direction = solver.face_minimiser(gram, support, linear)
    assert point is not None and abs(point.sum() - 1) <= 1e-12 and abs(direction.sum()) <= 1e-12
    assert not point[np.setdiff1d(np.arange(num_tasks), support)].any()
    bordered = np.zeros((size + 1, size + 1))
    bordered[:size, :size] = gram[np.ix_(support, support)]
    bordered[:size, size] = bordered[size, :size] = 1.0
    expected = np.linalg.solve(bordered, np.append(-mu * linear[support], 1.0))[:size]
    np.testing.assert_allclose(
        (point + mu * direction)[support],
        expected,
        rtol=0,
        atol=1e-9 * max(1.0, np.abs(expected).max()),
    )
    alone, _ = solver.face_minimiser(gram, support)
    np.testing.assert_allclose(alone, point, rtol=0, atol=1e-15)


@given(seed=st.integers(0, 2**31 - 1), num_tasks=st.integers(3, 8), mu=st.floats(0.0, 5.0))
@settings(deadline=None, max_examples=30)
def test_shifted_active_set_is_the_min_norm_point_of_the_shifted_points(
    seed, num_tasks, mu
) -> None:
    """`min_norm_active_set(G, linear=G 1/K, shift=mu)` is the min-norm point of `g_i + mu g_0`."""
    jacobian = torch.randn(num_tasks, 6, generator=torch.Generator().manual_seed(seed), dtype=F64)
    gram = gramian(jacobian).numpy()
    weights, _, support = solver.min_norm_active_set(gram, linear=gram.mean(axis=1), shift=mu)
    shifted = jacobian + mu * jacobian.mean(dim=0)
    expected = min_norm_point(gramian(shifted)).weights
    scale = float(shifted.norm(dim=1).max())
    torch.testing.assert_close(
        torch.from_numpy(weights) @ shifted, expected @ shifted, rtol=0, atol=1e-9 * scale
    )
    np.testing.assert_array_equal(support, np.flatnonzero(weights > 0))


@given(jacobian=jacobians(min_tasks=2, max_tasks=2, max_dim=5))
@settings(deadline=None, max_examples=60)
def test_two_task_closed_form_is_the_general_path(jacobian) -> None:
    """Sener & Koltun's closed form against the active set (K = 2 Gramians at scales 1e-12..1e12,
    with zero, identical and opposite rows): the same min-norm point, and the same weights unless
    the gradients are identical (then the closed form splits them evenly)."""
    gram = gramian(jacobian)
    assume(float(gram.diagonal().max()) > 0)
    closed = min_norm_point(gram)
    general, _, _ = solver.min_norm_active_set(unit_scaled(gram))
    general = torch.from_numpy(general)
    largest = float(jacobian.norm(dim=1).max())
    torch.testing.assert_close(
        closed.weights @ jacobian, general @ jacobian, rtol=0, atol=1e-12 * largest
    )
    if not torch.equal(jacobian[0], jacobian[1]):
        torch.testing.assert_close(closed.weights, general, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([[1.0, 2.0], [0.0, 0.0]], [0.0, 1.0]),  # a zero gradient is the min-norm point
        ([[1.0, 2.0], [1.0, 2.0]], [0.5, 0.5]),  # identical: split evenly
        ([[1.0, 2.0], [3.0, 6.0]], [1.0, 0.0]),  # parallel: the shorter one
        ([[1.0, 2.0], [-3.0, -6.0]], [0.75, 0.25]),  # opposite: 0 on the segment
    ],
)
def test_two_task_degenerate_cases(rows, expected) -> None:
    jacobian = torch.tensor(rows, dtype=F64)
    closed = min_norm_point(gramian(jacobian)).weights
    torch.testing.assert_close(closed, torch.tensor(expected, dtype=F64))
    general, _, _ = solver.min_norm_active_set(unit_scaled(gramian(jacobian)))
    torch.testing.assert_close(
        torch.from_numpy(general) @ jacobian, closed @ jacobian, rtol=0, atol=1e-15
    )
