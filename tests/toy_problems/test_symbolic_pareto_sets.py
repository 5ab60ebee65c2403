"""Pareto sets derived symbolically (sympy) from the stationarity condition
`exists w in the simplex: sum_i w_i grad f_i(x) = 0`, and checked against toy_problems.

(a) The convex quadratic family `f_i = 1/2 (x - c_i)^T A_i (x - c_i)`: solving the linear
    stationarity system gives `x(w) = (sum_i w_i A_i)^{-1} sum_i w_i A_i c_i` (the convex hull of
    the centres when A_i = I), compared with `ConvexQuadratic.pareto_point`.
(b) The ZDT2 variant of Ma, Du and Matusik (spec pareto_exploration.md §7.1): stationarity off the
    extremes of u1 forces sin(s) = 0; of those sheets, cos(s) = -1 gives g = 1 and the front
    `f2 = 1 - f1^2`, cos(s) = +1 gives g = 10 and a dominated curve.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.jacobian import batched_task_gradients
from toy_problems import ConvexQuadratic, ZDT2Variant

F64 = torch.float64


def is_zero(expression) -> bool:
    return sp.simplify(expression) == 0


def matrix_is_zero(matrix: sp.Matrix) -> bool:
    return all(is_zero(entry) for entry in matrix)


def solve_stationarity(
    curvatures: list[sp.Matrix], centers: list[sp.Matrix], weights: list
) -> sp.Matrix:
    """The x solving `sum_i w_i A_i (x - c_i) = 0` (sympy's linear solve, no formula assumed)."""
    n = centers[0].shape[0]
    x = sp.Matrix(sp.symbols(f"x0:{n}", real=True))
    gradients = [curvature * (x - center) for curvature, center in zip(curvatures, centers)]
    condition = sum(
        (weight * gradient for weight, gradient in zip(weights, gradients)), sp.zeros(n, 1)
    )
    (solution,) = sp.solve(list(condition), list(x), dict=True)
    return x.subs(solution)


def closed_form(curvatures: list[sp.Matrix], centers: list[sp.Matrix], weights: list) -> sp.Matrix:
    combined = sum((w * a for w, a in zip(weights, curvatures)), sp.zeros(*curvatures[0].shape))
    right = sum(
        (w * a * c for w, a, c in zip(weights, curvatures, centers)), sp.zeros(*centers[0].shape)
    )
    return combined.inv() * right


def as_tensor(matrices: list[sp.Matrix]) -> torch.Tensor:
    return torch.tensor(
        [[[float(v) for v in row] for row in m.tolist()] for m in matrices], dtype=F64
    )


# --- (a) the quadratic family ------------------------------------------------------------------


def test_two_task_symbolic_quadratics_give_the_closed_form() -> None:
    a, b, d, e, f, h = sp.symbols("a b d e f h", real=True)
    curvatures = [sp.Matrix([[a, b], [b, d]]), sp.Matrix([[e, f], [f, h]])]
    centers = [sp.Matrix(sp.symbols("p0:2", real=True)), sp.Matrix(sp.symbols("q0:2", real=True))]
    w = sp.Symbol("w", real=True)
    weights = [w, 1 - w]
    derived = solve_stationarity(curvatures, centers, weights)
    assert matrix_is_zero(derived - closed_form(curvatures, centers, weights))
    assert not matrix_is_zero(
        derived - (w * centers[0] + (1 - w) * centers[1])
    )  # not the hull in general
    identity = {a: 1, b: 0, d: 1, e: 1, f: 0, h: 1}
    assert matrix_is_zero(derived.subs(identity) - (w * centers[0] + (1 - w) * centers[1]))


RATIONAL_CURVATURES = [
    sp.Matrix([[2, sp.Rational(1, 2)], [sp.Rational(1, 2), 1]]),
    sp.Matrix([[1, -sp.Rational(1, 3)], [-sp.Rational(1, 3), 3]]),
    sp.Matrix([[sp.Rational(5, 4), 0], [0, sp.Rational(1, 2)]]),
]
RATIONAL_CENTERS = [
    sp.Matrix([1, 0]),
    sp.Matrix([-sp.Rational(1, 2), 2]),
    sp.Matrix([sp.Rational(3, 4), -1]),
]
W1, W2 = sp.symbols("w1 w2", real=True)
THREE_WEIGHTS = [W1, W2, 1 - W1 - W2]


@functools.cache
def three_task_solution() -> sp.Matrix:
    return solve_stationarity(RATIONAL_CURVATURES, RATIONAL_CENTERS, THREE_WEIGHTS)


def test_three_task_rational_quadratics_give_the_closed_form() -> None:
    derived = three_task_solution()
    assert matrix_is_zero(
        derived - closed_form(RATIONAL_CURVATURES, RATIONAL_CENTERS, THREE_WEIGHTS)
    )
    vertex = derived.subs({W1: 1, W2: 0})
    assert vertex == RATIONAL_CENTERS[0]  # a one-task weighting gives that task's minimiser


weight_pairs = st.tuples(
    st.fractions(0, 1, max_denominator=50), st.fractions(0, 1, max_denominator=50)
).filter(lambda pair: pair[0] + pair[1] <= 1)


@given(weight_pairs)
def test_convex_quadratic_pareto_point_matches_the_symbolic_set(
    pair: tuple[Fraction, Fraction],
) -> None:
    first, second = (sp.Rational(v.numerator, v.denominator) for v in pair)
    exact = three_task_solution().subs({W1: first, W2: second})
    problem = ConvexQuadratic(as_tensor(RATIONAL_CENTERS)[..., 0], as_tensor(RATIONAL_CURVATURES))
    weights = torch.tensor([float(first), float(second), float(1 - first - second)], dtype=F64)
    computed = problem.pareto_point(weights)
    torch.testing.assert_close(
        computed, torch.tensor([float(v) for v in exact], dtype=F64), rtol=1e-12, atol=1e-12
    )
    _, jacobian = batched_task_gradients(problem, computed)
    torch.testing.assert_close(weights @ jacobian, torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)


def test_identity_curvatures_give_the_convex_hull_of_the_centres() -> None:
    centers = [sp.Matrix(sp.symbols(f"c{i}_0:2", real=True)) for i in range(3)]
    derived = solve_stationarity([sp.eye(2)] * 3, centers, THREE_WEIGHTS)
    hull_point = sum((w * c for w, c in zip(THREE_WEIGHTS, centers)), sp.zeros(2, 1))
    assert matrix_is_zero(derived - hull_point)
    rational = [sp.Matrix([0, 0]), sp.Matrix([2, 0]), sp.Matrix([0, 3])]
    problem = ConvexQuadratic(as_tensor(rational)[..., 0])
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    expected = hull_point.subs({W1: sp.Rational(1, 5), W2: sp.Rational(3, 10)}).subs(
        {s: v for c, r in zip(centers, rational) for s, v in zip(c, r)}
    )
    torch.testing.assert_close(
        problem.pareto_point(weights), torch.tensor([float(v) for v in expected], dtype=F64)
    )


# --- (b) the ZDT2 variant ----------------------------------------------------------------------

X1, X2, X3 = sp.symbols("x1 x2 x3", real=True)
W, S = sp.symbols("w s", real=True)
SQUARED_RADIUS = X2**2 + X3**2
U1 = sp.sin(X1 + SQUARED_RADIUS) / 2 + sp.Rational(1, 2)
U23 = sp.cos(SQUARED_RADIUS) / 2 + sp.Rational(1, 2)
G = 1 + sp.Rational(9, 2) * (U23 + U23)
F1, F2 = U1, G * (1 - (U1 / G) ** 2)  # standard ZDT2 with n = 3 on u (spec §7.1)
VARIABLES = [X1, X2, X3]
NORMAL = sp.Matrix([1, 2 * X2, 2 * X3])  # gradient of x1 + s
RADIAL = sp.Matrix([0, 2 * X2, 2 * X3])  # gradient of s


def gradient(expression) -> sp.Matrix:
    return sp.Matrix([sp.diff(expression, v) for v in VARIABLES])


def test_zdt2_variant_gradients_decompose_on_the_normal_and_radial_directions() -> None:
    grad_first, grad_second = gradient(F1), gradient(F2)
    assert matrix_is_zero(grad_first - sp.cos(X1 + SQUARED_RADIUS) / 2 * NORMAL)
    along_normal = grad_second[0]  # RADIAL has no x1 component
    along_radial = sp.simplify((grad_second[1] - along_normal * 2 * X2) / (2 * X2))
    assert matrix_is_zero(grad_second - along_normal * NORMAL - along_radial * RADIAL)
    # The radial coefficient is -9/2 sin(s) (1 + u1^2/g^2): zero exactly when sin(s) = 0.
    assert is_zero(along_radial + sp.Rational(9, 2) * sp.sin(SQUARED_RADIUS) * (1 + U1**2 / G**2))
    assert is_zero(along_normal + 2 * U1 / G * sp.cos(X1 + SQUARED_RADIUS) / 2)


def test_zdt2_variant_stationarity_forces_sin_s_zero_and_the_odd_sheets_give_the_front() -> None:
    combined = W * gradient(F1) + (1 - W) * gradient(F2)
    normal_part = combined[0]
    radial_part = sp.simplify((combined[1] - normal_part * 2 * X2) / (2 * X2))
    assert matrix_is_zero(combined - normal_part * NORMAL - radial_part * RADIAL)
    # NORMAL and RADIAL are independent when (x2, x3) != 0, so both coefficients must vanish.
    # Radial: (1 - w) * (negative) * sin(s) = 0, so w = 1 (then cos(x1 + s) = 0: the extremes of
    # u1) or sin(s) = 0.
    radial_in_s = sp.simplify(radial_part.subs(X3, sp.sqrt(S - X2**2)))
    factor = sp.simplify(radial_in_s / ((1 - W) * sp.sin(S)))
    u1_in_s, g_in_s = (
        sp.sin(X1 + S) / 2 + sp.Rational(1, 2),
        1 + sp.Rational(9, 2) * (1 + sp.cos(S)),
    )
    assert is_zero(factor + sp.Rational(9, 2) * (1 + u1_in_s**2 / g_in_s**2))  # <= -9/2, never 0
    assert sp.solveset(sp.sin(S), S, sp.Interval(0, 4 * sp.pi)) == sp.FiniteSet(
        0, sp.pi, 2 * sp.pi, 3 * sp.pi, 4 * sp.pi
    )
    assert is_zero(G.subs(X3, sp.sqrt(S - X2**2)) - g_in_s)
    first_in_s = F1.subs(X3, sp.sqrt(S - X2**2))
    second_in_s = sp.simplify(F2.subs(X3, sp.sqrt(S - X2**2)))
    f = sp.Symbol("f1", real=True)
    for sheet in (1, 3):  # cos(s) = -1: g = 1 and the concave front
        assert sp.simplify(g_in_s.subs(S, sheet * sp.pi)) == 1
        assert is_zero(
            second_in_s.subs(S, sheet * sp.pi) - (1 - first_in_s.subs(S, sheet * sp.pi) ** 2)
        )
    for sheet in (0, 2):  # cos(s) = +1: g = 10, f2 = 10 - f1^2/10 > 1 - f1^2
        assert sp.simplify(g_in_s.subs(S, sheet * sp.pi)) == 10
        assert is_zero(
            second_in_s.subs(S, sheet * sp.pi) - (10 - first_in_s.subs(S, sheet * sp.pi) ** 2 / 10)
        )
    assert is_zero(
        (10 - f**2 / 10) - (1 - f**2) - (9 + sp.Rational(9, 10) * f**2)
    )  # dominated by g = 1
    # Normal coefficient on g = 1: w cos/2 - (1 - w) 2 u1 cos/2 = 0 gives w = 2 u1 / (1 + 2 u1) in [0, 1].
    normal_on_front = sp.simplify(normal_part.subs(X3, sp.sqrt(sp.pi - X2**2)))
    (weight,) = sp.solve(normal_on_front / sp.cos(X1 + sp.pi), W)
    u = U1.subs(X3, sp.sqrt(sp.pi - X2**2))
    assert is_zero(weight - 2 * u / (1 + 2 * u))
    # Larger g only raises f2 at fixed f1: d/dg (g - f1^2/g) = 1 + f1^2/g^2 >= 1.
    g = sp.Symbol("g", positive=True)
    assert is_zero(sp.diff(g - f**2 / g, g) - (1 + f**2 / g**2))


def test_zdt2_variant_matches_the_symbolic_formulas_and_gradients() -> None:
    values = sp.lambdify(VARIABLES, [F1, F2], "math")
    gradients = sp.lambdify(VARIABLES, [list(gradient(F1)), list(gradient(F2))], "math")
    points = ZDT2Variant().starts(16, generator=torch.Generator().manual_seed(0), dtype=F64)
    computed_values, computed_jacobian = batched_task_gradients(ZDT2Variant(), points)
    expected_values = torch.tensor([values(*p) for p in points.tolist()], dtype=F64)
    expected_jacobian = torch.tensor([gradients(*p) for p in points.tolist()], dtype=F64)
    torch.testing.assert_close(computed_values, expected_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(computed_jacobian, expected_jacobian, rtol=1e-10, atol=1e-10)
