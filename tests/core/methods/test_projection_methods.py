"""PCGrad, CAGrad and IMTL-G on the Gramian, checked against explicit parameter-space versions.

Each method only sees `G = J J^T`; the tests rebuild what the papers describe with the task
gradients themselves (rows of J) and compare updates `d = w^T J`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError
from core.jacobian import gramian
from core.methods import projection
from core.methods.base import HeadGradient
from core.methods.projection import (
    IMTLG,
    CAGrad,
    PCGrad,
    _cagrad_two_tasks,
    _imtlg_weights,
    cagrad_dual,
    pcgrad_coefficients,
)
from tests.jacobian_strategies import jacobians
from tests.strategies import awkward_two_task_jacobians

F64 = torch.float64


@st.composite
def full_rank_jacobians(
    draw, *, min_tasks: int = 1, max_tasks: int = 5, max_exponent: float = 3.0
) -> torch.Tensor:
    """K x D Jacobians (D >= K) with row scales 10^e, |e| <= max_exponent, and well-separated directions."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    dim = draw(st.integers(num_tasks, num_tasks + 3))
    seed = draw(st.integers(0, 2**31 - 1))
    rows = torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    exponents = draw(
        st.lists(st.floats(-max_exponent, max_exponent), min_size=num_tasks, max_size=num_tasks)
    )
    rows = rows * torch.tensor([10.0**e for e in exponents], dtype=F64)[:, None]
    unit = rows / rows.norm(dim=1, keepdim=True)
    assume(float(torch.linalg.svdvals(unit)[-1]) > 0.05)
    return rows


def ones(num_tasks: int) -> torch.Tensor:
    return torch.ones(num_tasks, dtype=F64)


def largest_norm(jacobian: torch.Tensor) -> float:
    return float(jacobian.norm(dim=1).max()) or 1.0


# ---------------------------------------------------------------------------------------------
# PCGrad
# ---------------------------------------------------------------------------------------------


def explicit_pcgrad(jacobian: torch.Tensor, orders: torch.Tensor) -> list[torch.Tensor]:
    """Yu et al. (2020), Alg. 1, on the gradient vectors themselves."""
    projected = []
    for i in range(jacobian.shape[0]):
        vector = jacobian[i].clone()
        for j in orders[i].tolist():
            product, norm_sq = vector @ jacobian[j], jacobian[j] @ jacobian[j]
            if product < 0 and norm_sq > 0:
                vector = vector - product / norm_sq * jacobian[j]
        projected.append(vector)
    return projected


@given(
    jacobian=jacobians(max_tasks=6),
    seed=st.integers(0, 2**32 - 1),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_pcgrad_matches_parameter_space(jacobian, seed, reduction) -> None:
    num_tasks = jacobian.shape[0]
    weights = PCGrad(generator=torch.Generator().manual_seed(seed), reduction=reduction)(
        gramian(jacobian), ones(num_tasks)
    )
    orders = PCGrad(generator=torch.Generator().manual_seed(seed)).projection_orders((), num_tasks)
    expected = torch.stack(explicit_pcgrad(jacobian, orders)).sum(dim=0)
    if reduction == "mean":
        expected = expected / num_tasks
    # projections onto much smaller gradients give large coefficients: compare the updates
    torch.testing.assert_close(
        weights @ jacobian, expected, rtol=0, atol=1e-9 * largest_norm(jacobian)
    )


@given(jacobian=jacobians(min_tasks=2, max_tasks=2, max_dim=6))
def test_pcgrad_two_tasks_removes_every_conflict(jacobian) -> None:
    gram = gramian(jacobian)
    orders = PCGrad().projection_orders((), 2)
    projected = pcgrad_coefficients(gram, orders) @ jacobian
    norms = jacobian.norm(dim=1)
    for i, j in ((0, 1), (1, 0)):
        assert float(projected[i] @ jacobian[j]) >= -1e-9 * float(norms[i] * norms[j])
    if float(jacobian[0] @ jacobian[1]) >= 0:  # no conflict: nothing changes
        torch.testing.assert_close(projected, jacobian, rtol=0, atol=0)


@given(jacobian=full_rank_jacobians(min_tasks=2, max_tasks=6), data=st.data())
def test_pcgrad_permutation_equivariance_given_the_order(jacobian, data) -> None:
    num_tasks = jacobian.shape[0]
    permutation = torch.tensor(data.draw(st.permutations(range(num_tasks))))
    inverse = torch.argsort(permutation)
    orders = PCGrad(
        generator=torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1)))
    ).projection_orders((), num_tasks)
    weights = pcgrad_coefficients(gramian(jacobian), orders).sum(dim=0)
    # task a of the permuted problem is task permutation[a]; its order, renamed
    permuted_orders = inverse[orders[permutation]]
    permuted = pcgrad_coefficients(gramian(jacobian[permutation]), permuted_orders).sum(dim=0)
    torch.testing.assert_close(
        permuted, weights[permutation], rtol=1e-9, atol=1e-12 * float(weights.abs().max())
    )


def test_pcgrad_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    jacobian = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=F64)
    gram = gramian(jacobian)
    state = torch.get_rng_state()
    first = [PCGrad(generator=torch.Generator().manual_seed(11))(gram, ones(5)) for _ in range(2)]
    method = PCGrad(generator=torch.Generator().manual_seed(11))
    sequence = [method(gram, ones(5)) for _ in range(8)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)
    torch.testing.assert_close(sequence[0], first[0], rtol=0, atol=0)
    assert any(
        not torch.equal(sequence[0], later) for later in sequence[1:]
    )  # fresh orders each call


def test_pcgrad_orders_are_uniform_permutations_of_the_other_tasks() -> None:
    num_tasks, draws = 4, 6000
    orders = PCGrad(generator=torch.Generator().manual_seed(0)).projection_orders(
        (draws,), num_tasks
    )
    assert orders.shape == (draws, num_tasks, num_tasks - 1) and orders.dtype == torch.int64
    for i in range(num_tasks):
        others = sorted(set(range(num_tasks)) - {i})
        assert bool((orders[:, i].sort(dim=-1).values == torch.tensor(others)).all())
        _, counts = torch.unique(orders[:, i], dim=0, return_counts=True)
        assert len(counts) == 6  # all (K-1)! orders occur, each with probability 1/6
        assert float((counts / draws - 1 / 6).abs().max()) < 5 * math.sqrt(
            (1 / 6) * (5 / 6) / draws
        )


def test_pcgrad_batched_rows_use_their_own_orders() -> None:
    jacobian = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    gram = gramian(jacobian)
    weights = PCGrad(generator=torch.Generator().manual_seed(9))(gram, torch.ones(3, 4, dtype=F64))
    orders = PCGrad(generator=torch.Generator().manual_seed(9)).projection_orders((3,), 4)
    for row in range(3):
        expected = torch.stack(explicit_pcgrad(jacobian[row], orders[row])).sum(dim=0)
        torch.testing.assert_close(weights[row] @ jacobian[row], expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# CAGrad
# ---------------------------------------------------------------------------------------------


def cagrad_parts(jacobian: torch.Tensor, c: float) -> tuple[torch.Tensor, float]:
    mean = jacobian.mean(dim=0)
    return mean, c * float(mean.norm())


def dual_objective(jacobian: torch.Tensor, simplex_weights: torch.Tensor, c: float) -> float:
    """F(w) = g_w . g_0 + c ||g_0|| ||g_w||, in parameter space."""
    mean, radius = cagrad_parts(jacobian, c)
    combined = simplex_weights @ jacobian
    return float(combined @ mean) + radius * float(combined.norm())


def explicit_two_task_cagrad(jacobian: torch.Tensor, c: float) -> torch.Tensor:
    """K = 2: w = (t, 1 - t); F'(t) is nondecreasing, so bisect it to machine precision."""
    mean, radius = cagrad_parts(jacobian, c)
    difference = jacobian[0] - jacobian[1]

    def slope(t: float) -> float:
        combined = t * jacobian[0] + (1 - t) * jacobian[1]
        norm = float(combined.norm())
        return float(difference @ mean) + (
            radius * float(combined @ difference) / norm if norm > 0 else 0.0
        )

    low, high = 0.0, 1.0
    if slope(0.0) >= 0:
        high = 0.0
    elif slope(1.0) <= 0:
        low = 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    t = 0.5 * (low + high)
    combined = t * jacobian[0] + (1 - t) * jacobian[1]
    assume(float(combined.norm()) > 1e-6 * largest_norm(jacobian))  # the formula needs g_w* != 0
    return mean + radius / float(combined.norm()) * combined


@given(jacobian=jacobians(max_tasks=6), c=st.sampled_from([0.1, 0.4, 0.5, 0.9, 2.0]))
def test_cagrad_duality_gap_and_constraint(jacobian, c) -> None:
    num_tasks = jacobian.shape[0]
    method = CAGrad(c=c, rescale=0)
    weights, diagnostics = method.weights(gramian(jacobian), ones(num_tasks))
    assert bool(torch.isfinite(weights).all())
    scale = largest_norm(jacobian) ** 2
    # the Gramian resolves squared norms to ~1e-16 of the largest, so F (linear in ||g_w||) of a
    # combination of much smaller gradients is only resolved to ~1e-8 relative: the gap floor
    assert float(diagnostics["dual_gap"]) <= 1e-7
    update = weights @ jacobian
    mean, radius = cagrad_parts(jacobian, c)
    # the CAGrad constraint ||d - g_0|| <= c ||g_0||
    # up to the rounding of ||g_w||^2 = w^T G w, ~1e-16 of the largest squared norm
    assert float((update - mean).norm()) <= radius * (1 + 1e-9) + 1e-7 * math.sqrt(scale)
    # parameter-space certificate: F(w_dual) bounds the optimum from above, min_i g_i . d from below
    dual_weights = diagnostics["dual_weights"]
    assert bool((dual_weights >= 0).all()) and abs(float(dual_weights.sum()) - 1) <= 1e-12
    primal = float((jacobian @ update).min())
    assert dual_objective(jacobian, dual_weights, c) - primal <= 2e-7 * scale


@given(
    jacobian=full_rank_jacobians(max_tasks=6, max_exponent=2.0), c=st.sampled_from([0.1, 0.4, 0.9])
)
def test_cagrad_reaches_a_tight_gap_on_well_posed_input(jacobian, c) -> None:
    diagnostics = CAGrad(c=c).weights(gramian(jacobian), ones(jacobian.shape[0])).diagnostics
    assert float(diagnostics["dual_gap"]) <= 1e-10


@given(
    jacobian=jacobians(min_tasks=2, max_tasks=2, min_exponent=-3, max_exponent=3),
    c=st.floats(0.05, 0.95),
)
def test_cagrad_matches_explicit_two_task_solution(jacobian, c) -> None:
    mean, _ = cagrad_parts(jacobian, c)
    assume(float(mean.norm()) > 1e-6 * largest_norm(jacobian))
    update = CAGrad(c=c, rescale=0)(gramian(jacobian), ones(2)) @ jacobian
    torch.testing.assert_close(
        update, explicit_two_task_cagrad(jacobian, c), rtol=0, atol=1e-7 * largest_norm(jacobian)
    )


@given(jacobian=full_rank_jacobians(min_tasks=2, max_tasks=5, max_exponent=1.0))
@settings(max_examples=15)
def test_cagrad_matches_the_reference_slsqp(jacobian) -> None:
    """The reference code's SLSQP on the dual (with its 1e-8 guards), computed from the vectors."""
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    num_tasks, c = jacobian.shape[0], 0.4
    grads = jacobian.T.numpy()  # D x K, as the reference stores them
    gram = grads.T @ grads
    g0_norm = math.sqrt(gram.mean() + 1e-8)
    start = np.ones(num_tasks) / num_tasks
    radius = c * g0_norm + 1e-8

    def objective(x):
        return float(x @ gram @ start + radius * math.sqrt(x @ gram @ x + 1e-8))

    result = optimize.minimize(
        objective,
        start,
        bounds=[(0, 1)] * num_tasks,
        constraints={"type": "eq", "fun": lambda x: 1 - x.sum()},
    )
    combined = grads @ result.x
    reference = grads.mean(axis=1) + radius / (np.linalg.norm(combined) + 1e-8) * combined
    update = CAGrad(c=c, rescale=0)(gramian(jacobian), ones(num_tasks)) @ jacobian
    # SLSQP stops at ftol 1e-6 on F: compare directions loosely, and the primal values tightly
    torch.testing.assert_close(
        update, torch.from_numpy(reference), rtol=0, atol=2e-3 * largest_norm(jacobian)
    )
    assert (
        float((jacobian @ update).min())
        >= float((jacobian @ torch.from_numpy(reference)).min())
        - 1e-7 * largest_norm(jacobian) ** 2
    )


@given(jacobian=jacobians(max_tasks=6))
def test_cagrad_with_c_zero_is_the_mean_gradient(jacobian) -> None:
    num_tasks = jacobian.shape[0]
    for rescale in (0, 1, 2):
        weights = CAGrad(c=0.0, rescale=rescale)(gramian(jacobian), ones(num_tasks))
        torch.testing.assert_close(
            weights, torch.full((num_tasks,), 1.0 / num_tasks, dtype=F64), rtol=0, atol=0
        )
    summed = CAGrad(c=0.0, reduction="sum")(gramian(jacobian), ones(num_tasks))
    torch.testing.assert_close(summed, torch.ones(num_tasks, dtype=F64), rtol=0, atol=0)


@given(jacobian=full_rank_jacobians(min_tasks=2, max_tasks=6, max_exponent=2.0), data=st.data())
def test_cagrad_permutation_equivariance(jacobian, data) -> None:
    """With linearly independent gradients, `||J^T w||` is strictly convex on the simplex, so the
    dual optimum, and with it the weights, are unique and relabel with the tasks."""
    num_tasks = jacobian.shape[0]
    order = torch.tensor(data.draw(st.permutations(range(num_tasks))))
    weights = CAGrad()(gramian(jacobian), ones(num_tasks))
    permuted = CAGrad()(gramian(jacobian[order]), ones(num_tasks))
    # the dual is solved to a relative gap of 1e-10 (see test_cagrad_reaches_a_tight_gap...)
    torch.testing.assert_close(
        permuted @ jacobian[order], weights @ jacobian, rtol=0, atol=1e-6 * largest_norm(jacobian)
    )


def test_cagrad_rescale_and_reduction_only_scale_the_update() -> None:
    jacobian = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    gram, c = gramian(jacobian), 0.5
    raw = CAGrad(c=c, rescale=0)(gram, ones(4))
    torch.testing.assert_close(CAGrad(c=c)(gram, ones(4)), raw / (1 + c**2))
    torch.testing.assert_close(CAGrad(c=c, rescale=2)(gram, ones(4)), raw / (1 + c))
    torch.testing.assert_close(CAGrad(c=c, rescale=0, reduction="sum")(gram, ones(4)), 4 * raw)


def test_cagrad_batched_matches_single_and_float32() -> None:
    jacobian = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    jacobian[1, 2] = -2 * jacobian[1, 0]  # a strong conflict in one row of the batch
    jacobian[2, 3] = 0.0
    gram = gramian(jacobian)
    batched = CAGrad()(gram, torch.ones(6, 4, dtype=F64))
    for row in range(6):
        torch.testing.assert_close(
            batched[row], CAGrad()(gram[row], ones(4)), rtol=1e-9, atol=1e-12
        )
    low = CAGrad()(gram.float(), torch.ones(6, 4))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, batched.float(), rtol=1e-4, atol=1e-5)


def unit_scaled(gram: torch.Tensor) -> torch.Tensor:
    return gram / gram.diagonal(dim1=-2, dim2=-1).amax(dim=-1)[..., None, None]


def scaled_dual_objective(gram: torch.Tensor, simplex_weights: torch.Tensor, c: float) -> float:
    """F(w) = g_w . g_0 + c ||g_0|| ||g_w|| from the Gramian, relative to max_i G_ii."""
    gram = unit_scaled(gram.to(F64))
    weights = simplex_weights.to(F64).clamp_min(0)
    weights = weights / weights.sum()
    mean_products = gram.mean(dim=1)
    return float(weights @ mean_products) + c * float(
        mean_products.mean().clamp_min(0).sqrt()
    ) * float((weights @ gram @ weights).clamp_min(0).sqrt())


TWO_TASK_CASES = {
    "zero gradient": [[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]],
    "identical": [[1.0, 2.0, 0.5], [1.0, 2.0, 0.5]],
    "parallel": [[1.0, 2.0, 0.5], [3.0, 6.0, 1.5]],
    "opposite": [[1.0, 2.0, 0.5], [-3.0, -6.0, -1.5]],
    "opposite, equal norms": [[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]],
    "orthogonal": [[1.0, 0.0, 0.0], [0.0, 1e-6, 0.0]],
    "conflicting": [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]],
}


@given(
    jacobian=jacobians(min_tasks=2, max_tasks=2, max_dim=5), c=st.sampled_from([0.1, 0.4, 0.9, 2.0])
)
@settings(max_examples=60)
def test_cagrad_two_task_closed_form_is_the_general_path(jacobian, c) -> None:
    """K = 2: the one-dimensional dual in closed form against the general root-finding solver,
    on random 2-task Gramians at scales 1e-12..1e12 with zero, identical and opposite rows: the
    same dual objective (to rounding), and the same update where the optimum is unique."""
    _check_cagrad_two_tasks(jacobian, c)


@pytest.mark.parametrize("case", sorted(TWO_TASK_CASES))
@pytest.mark.parametrize("c", [0.4, 1.5])
def test_cagrad_two_task_closed_form_on_degenerate_gradients(case, c) -> None:
    _check_cagrad_two_tasks(torch.tensor(TWO_TASK_CASES[case], dtype=F64), c)


def _check_cagrad_two_tasks(jacobian: torch.Tensor, c: float) -> None:
    gram = gramian(jacobian)
    if float(gram.diagonal().max()) == 0:
        return
    scaled = unit_scaled(gram)
    direction, dual_weights, gap = (
        torch.from_numpy(v) for v in _cagrad_two_tasks(scaled[None].numpy(), c)
    )
    general_direction, general_dual, general_gap, _ = cagrad_dual(
        scaled.numpy(), c, tolerance=1e-10, max_iterations=100
    )
    general_direction, general_dual = (
        torch.from_numpy(general_direction),
        torch.from_numpy(general_dual),
    )
    largest = largest_norm(jacobian)
    assert float(gap[0]) <= 1e-7 and general_gap <= 1e-7
    # both certify their dual objective: the same optimum to rounding
    assert scaled_dual_objective(gram, dual_weights[0], c) == pytest.approx(
        scaled_dual_objective(gram, general_dual, c), abs=1e-7
    )
    # the same update (it is unique: the primal maximises a concave function whose maximisers
    # form the optimal face of a ball, a single point unless g_w* = 0, where both take the limit)
    torch.testing.assert_close(
        direction[0] @ jacobian, general_direction @ jacobian, rtol=0, atol=2e-7 * largest
    )
    # and it is what CAGrad returns
    weights = CAGrad(c=c, rescale=0)(gram, ones(2))
    torch.testing.assert_close(weights, direction[0], rtol=1e-12, atol=0)


@given(jacobian=jacobians(min_tasks=2, max_tasks=2, max_dim=5))
@settings(max_examples=60)
def test_pcgrad_two_task_closed_form_is_the_general_path(jacobian) -> None:
    """K = 2 has one order: the closed form equals `pcgrad_coefficients` with it, to rounding,
    and draws nothing from the generator."""
    gram = gramian(jacobian)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    for reduction, divisor in (("sum", 1.0), ("mean", 2.0)):
        weights = PCGrad(generator=generator, reduction=reduction)(gram, ones(2))
        general = pcgrad_coefficients(gram, torch.tensor([[1], [0]])).sum(dim=-2) / divisor
        torch.testing.assert_close(weights, general, rtol=1e-15, atol=0)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("case", sorted(TWO_TASK_CASES))
def test_pcgrad_and_imtlg_two_task_closed_forms_on_degenerate_gradients(case) -> None:
    jacobian = torch.tensor(TWO_TASK_CASES[case], dtype=F64)
    gram = gramian(jacobian)
    torch.testing.assert_close(
        PCGrad()(gram, ones(2)),
        pcgrad_coefficients(gram, torch.tensor([[1], [0]])).sum(dim=-2),
        rtol=1e-15,
        atol=0,
    )
    general = _imtlg_weights(gram, F64)
    closed, diagnostics = IMTLG().weights(gram, ones(2))
    torch.testing.assert_close(closed, general.weights, rtol=1e-12, atol=1e-15)
    assert not bool(diagnostics["floored"]) and not bool(general.diagnostics["floored"])


@given(jacobian=jacobians(min_tasks=2, max_tasks=2, max_dim=5))
@settings(max_examples=60)
def test_imtlg_two_task_closed_form_is_the_general_path(jacobian) -> None:
    """K = 2: `alpha = (1/||g_1||, 1/||g_2||) / (1/||g_1|| + 1/||g_2||)`, whatever the angle,
    equals the general path (pseudo-inverse of the bordered unit Gramian) to rounding."""
    gram = gramian(jacobian)
    closed = IMTLG()(gram, ones(2))
    torch.testing.assert_close(closed, _imtlg_weights(gram, F64).weights, rtol=1e-12, atol=1e-15)


@given(
    jacobian=full_rank_jacobians(min_tasks=2, max_tasks=8, max_exponent=1.0),
    c=st.sampled_from([0.2, 0.4, 0.8]),
)
@settings(max_examples=15)
def test_cagrad_dual_objective_is_at_most_torchjds(jacobian, c) -> None:
    """Our dual weights reach a value of CAGrad's dual `F` no larger than TorchJD 0.18's CAGrad
    (cvxpy + CLARABEL) on the same Gramian, up to our certified gap."""
    pytest.importorskip("torchjd")
    pytest.importorskip("cvxpy")
    from torchjd.aggregation import CAGradWeighting

    gram = gramian(jacobian)
    num_tasks = gram.shape[0]
    reference = CAGradWeighting(c=c)(gram).to(F64)
    kappa = float(reference.sum()) - 1
    assume(kappa > 1e-9)  # TorchJD returns no direction where ||g_w|| < 1e-4 relative
    reference_dual = (reference - 1 / num_tasks) / kappa
    _, diagnostics = CAGrad(c=c).weights(gram, ones(num_tasks))
    ours = scaled_dual_objective(gram, diagnostics["dual_weights"], c)
    assert (
        ours
        <= scaled_dual_objective(gram, reference_dual, c) + float(diagnostics["dual_gap"]) + 1e-14
    )


@pytest.mark.parametrize("num_tasks", [10, 40, 120])
def test_cagrad_certificate_at_large_k(num_tasks) -> None:
    """The duality gap certificate in parameter space, K up to 120 (the exact face steps
    converge in a few root steps)."""
    generator = torch.Generator().manual_seed(num_tasks)
    jacobian = 0.5 * torch.randn(1, 3 * num_tasks, generator=generator, dtype=F64) + torch.randn(
        num_tasks, 3 * num_tasks, generator=generator, dtype=F64
    )
    jacobian = jacobian * 10.0 ** (2 * torch.rand(num_tasks, 1, generator=generator, dtype=F64) - 1)
    weights, diagnostics = CAGrad(c=0.4, rescale=0).weights(gramian(jacobian), ones(num_tasks))
    assert float(diagnostics["dual_gap"]) <= 1e-10 and int(diagnostics["iterations"]) <= 10
    update = weights @ jacobian
    mean, radius = cagrad_parts(jacobian, 0.4)
    scale = largest_norm(jacobian) ** 2
    assert float((update - mean).norm()) <= radius * (1 + 1e-12)
    primal = float((jacobian @ update).min())
    assert dual_objective(jacobian, diagnostics["dual_weights"], 0.4) - primal <= 1e-10 * scale


def test_cagrad_degenerate_optimum_returns_an_optimal_direction() -> None:
    """0 lies in the hull and the ball reaches the non-conflict cone: the dual optimum has g_w = 0.

    g_1 = (1, 0), g_2 = (-1, 0), g_3 = (0.1, 3): g_0 = (0.1/3, 1), and every d in the ball with
    d_x = 0 is optimal (value 0); the limit direction is (0, 1).
    """
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.1, 3.0]], dtype=F64)
    method = CAGrad(rescale=0)
    update = method(gramian(jacobian), ones(3)) @ jacobian
    assert float((jacobian @ update).min()) >= -1e-12
    mean, radius = cagrad_parts(jacobian, 0.4)
    assert float((update - mean).norm()) <= radius * (1 + 1e-12)
    torch.testing.assert_close(update, torch.tensor([0.0, 1.0], dtype=F64), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# IMTL-G
# ---------------------------------------------------------------------------------------------


def explicit_imtlg(jacobian: torch.Tensor) -> torch.Tensor:
    """The paper's closed form alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:K}."""
    unit = jacobian / jacobian.norm(dim=1, keepdim=True)
    differences, unit_differences = jacobian[:1] - jacobian[1:], unit[:1] - unit[1:]
    rest = jacobian[0] @ unit_differences.T @ torch.linalg.inv(differences @ unit_differences.T)
    return torch.cat([1 - rest.sum().reshape(1), rest])


@given(jacobian=full_rank_jacobians(max_tasks=6))
def test_imtlg_equal_projections_on_unit_gradients(jacobian) -> None:
    num_tasks = jacobian.shape[0]
    alpha = IMTLG()(gramian(jacobian), ones(num_tasks))
    assert abs(float(alpha.sum()) - 1) <= 1e-9
    update = alpha @ jacobian
    projections = jacobian @ update / jacobian.norm(dim=1)
    torch.testing.assert_close(
        projections, projections.mean().expand(num_tasks), rtol=0, atol=1e-9 * float(update.norm())
    )


@given(jacobian=full_rank_jacobians(min_tasks=2, max_tasks=5, max_exponent=1.5))
def test_imtlg_matches_the_papers_closed_form(jacobian) -> None:
    alpha = IMTLG()(gramian(jacobian), ones(jacobian.shape[0]))
    torch.testing.assert_close(alpha, explicit_imtlg(jacobian), rtol=1e-7, atol=1e-9)


@given(jacobian=full_rank_jacobians(max_tasks=6), data=st.data())
def test_imtlg_permutation_equivariance(jacobian, data) -> None:
    num_tasks = jacobian.shape[0]
    permutation = torch.tensor(data.draw(st.permutations(range(num_tasks))))
    alpha = IMTLG()(gramian(jacobian), ones(num_tasks))
    permuted = IMTLG()(gramian(jacobian[permutation]), ones(num_tasks))
    torch.testing.assert_close(permuted, alpha[permutation], rtol=1e-9, atol=1e-12)


@given(jacobian=full_rank_jacobians(max_tasks=5), data=st.data())
def test_imtlg_update_line_ignores_per_task_scale(jacobian, data) -> None:
    num_tasks = jacobian.shape[0]
    factors = torch.tensor(
        data.draw(st.lists(st.floats(1e-3, 1e3), min_size=num_tasks, max_size=num_tasks)), dtype=F64
    )
    update = IMTLG()(gramian(jacobian), ones(num_tasks)) @ jacobian
    scaled = factors[:, None] * jacobian
    other = IMTLG()(gramian(scaled), ones(num_tasks)) @ scaled
    # the line is invariant; the sign follows that of s = sum_i beta_i / ||g_i||, which can flip
    cosine = float(update @ other) / float(update.norm() * other.norm())
    assert abs(cosine) >= 1 - 1e-9


def test_imtlg_degenerate_cases() -> None:
    # opposite gradients g_2 = -a g_1: alpha = (a, 1) / (1 + a), and the update is 0
    g = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    alpha = IMTLG()(gramian(torch.cat([g, -3 * g])), ones(2))
    torch.testing.assert_close(alpha, torch.tensor([0.75, 0.25], dtype=F64))
    # duplicated direction: the pair shares its weight, the update is the equal-projection one
    jacobian = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=F64)
    alpha = IMTLG()(gramian(jacobian), ones(3))
    update = alpha @ jacobian
    torch.testing.assert_close(update / update[0], torch.tensor([1.0, 1.0], dtype=F64))
    torch.testing.assert_close(
        alpha[0] * 1.0, alpha[1] * 2.0
    )  # beta split equally: alpha_i ||g_i|| equal
    # a zero gradient gets weight 0; all zero: uniform; K = 1: 1
    alpha = IMTLG()(gramian(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=F64)), ones(3))
    torch.testing.assert_close(alpha, torch.tensor([2 / 3, 0.0, 1 / 3], dtype=F64))
    torch.testing.assert_close(
        IMTLG()(torch.zeros(3, 3, dtype=F64), ones(3)), torch.full((3,), 1 / 3, dtype=F64)
    )
    torch.testing.assert_close(
        IMTLG()(torch.tensor([[4.0]], dtype=F64), ones(1)), torch.ones(1, dtype=F64)
    )


def test_imtlg_without_solution_is_floored() -> None:
    """g_3 = g_1 + g_2 - ... chosen so that sum_i beta_i / ||g_i|| = 0: D U^T is singular."""
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=F64)
    # beta (affine min-norm point of the unit vectors) has mixed signs; choose norms with s = 0
    method = IMTLG()
    beta_probe = method(gramian(unit), ones(3))  # with unit norms alpha is proportional to beta
    norms = torch.ones(3, dtype=F64)
    negative = int(torch.argmin(beta_probe))
    positive = [i for i in range(3) if i != negative]
    # s = sum beta_i / n_i = 0  <=>  n_negative = -beta_negative / sum_{positive} beta_i
    norms[negative] = -beta_probe[negative] / beta_probe[positive].sum()
    alpha, diagnostics = method.weights(gramian(norms[:, None] * unit), ones(3))
    assert bool(diagnostics["floored"])
    assert bool(torch.isfinite(alpha).all())


# ---------------------------------------------------------------------------------------------
# All three: golden values, degenerate input, contract
# ---------------------------------------------------------------------------------------------

JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
LOSSES = torch.tensor([1.0, 2.0], dtype=F64)
N1, N2 = math.sqrt(18), math.sqrt(38)
# G = [[18, -22], [-22, 38]].
# PCGrad (K = 2, one order): g_1 . g_2 = -22 < 0, so g_1^PC = g_1 + (22/38) g_2 = g_1 + (11/19) g_2
# and g_2^PC = g_2 + (22/18) g_1 = g_2 + (11/9) g_1; sum: w = (1 + 11/9, 1 + 11/19) = (20/9, 30/19).
# CAGrad (c = 0.4): g_0 = (1, 1, 1), ||g_0||^2 = mean(G) = 3, sqrt(phi) = 0.4 sqrt(3),
# b = G (1/2, 1/2) = (-2, 8). With w = (t, 1 - t) and s = 6 - 10 t: g_w = (s, 1, 1) and
# F = 8 - 10 t + sqrt(phi) sqrt(s^2 + 2) = 2 + s + sqrt(phi) sqrt(s^2 + 2), whose s-derivative is
# >= 1 - sqrt(phi) = 1 - 0.693 > 0: the minimum is at s = -4, t = 1, g_w* = g_1. So
# d* = g_0 + (0.4 sqrt(3) / sqrt(18)) g_1 = (1/2 + 0.4/sqrt(6)) g_1 + (1/2) g_2, divided by 1.16.
# IMTL-G (K = 2): alpha_2 = g_1 (u_1 - u_2) / ((g_1 - g_2)(u_1 - u_2))
# = (n_1 + 22/n_2) / (n_1 + n_2 + 22/n_1 + 22/n_2) = n_1 / (n_1 + n_2), alpha_1 = n_2 / (n_1 + n_2).
GOLDEN = {
    "pcgrad": (PCGrad(), [20 / 9, 30 / 19]),
    "pcgrad_mean": (PCGrad(reduction="mean"), [10 / 9, 15 / 19]),
    "cagrad": (CAGrad(), [(0.5 + 0.4 / math.sqrt(6)) / 1.16, 0.5 / 1.16]),
    "cagrad_no_rescale": (CAGrad(rescale=0), [0.5 + 0.4 / math.sqrt(6), 0.5]),
    "cagrad_sum_c05": (
        CAGrad(c=0.5, reduction="sum"),
        [2 * (0.5 + 0.5 / math.sqrt(6)) / 1.25, 2 * 0.5 / 1.25],
    ),
    "imtlg": (IMTLG(), [N2 / (N1 + N2), N1 / (N1 + N2)]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    method, expected = GOLDEN[name]
    weights = method(gramian(JACOBIAN), LOSSES)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15)


def test_golden_imtlg_update_has_equal_projections() -> None:
    update = IMTLG()(gramian(JACOBIAN), LOSSES) @ JACOBIAN
    projections = JACOBIAN @ update / torch.tensor([N1, N2], dtype=F64)
    torch.testing.assert_close(projections[0], projections[1])


METHODS = [
    PCGrad(generator=torch.Generator().manual_seed(0)),
    CAGrad(),
    CAGrad(c=0.9, rescale=2),
    IMTLG(),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda method: type(method).__name__)
@given(jacobian=jacobians(max_tasks=6), dtype=st.sampled_from([torch.float64, torch.float32]))
@settings(max_examples=20)
def test_degenerate_inputs_give_finite_weights(method, jacobian, dtype) -> None:
    gram = gramian(jacobian).to(dtype)
    weights = method(gram, torch.ones(jacobian.shape[0], dtype=dtype))
    assert weights.dtype == dtype and weights.shape == (jacobian.shape[0],)
    assert bool(torch.isfinite(weights).all())


@pytest.mark.parametrize("method", METHODS, ids=lambda method: type(method).__name__)
def test_hand_made_degenerate_inputs(method) -> None:
    base = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.5, 2.0]], dtype=F64)
    cases = [
        torch.zeros(3, 3, dtype=F64),
        torch.cat([base, torch.zeros(1, 3, dtype=F64)]),
        torch.cat([base, base[:1]]),  # duplicate
        torch.cat([base, -2 * base[:1]]),  # opposite
        torch.tensor([[1.0, 0.0], [1e-12, 1e-12], [-1e12, 1e12]], dtype=F64),  # scales
        torch.tensor([[1.0, 1.0], [2.0, 2.0], [-3.0, -3.0], [1e-12, 1e-12]], dtype=F64),  # rank 1
    ]
    for jacobian in cases:
        weights = method(gramian(jacobian), ones(jacobian.shape[0]))
        assert bool(torch.isfinite(weights).all()), (jacobian, weights)
    single = method(torch.tensor([[2.0]], dtype=F64), ones(1))
    assert bool(torch.isfinite(single).all())


def test_declarations_and_diagnostics() -> None:
    assert PCGrad.head_gradient is HeadGradient.RAW
    assert CAGrad.head_gradient is HeadGradient.RAW
    assert IMTLG.head_gradient is HeadGradient.WEIGHTED
    gram = gramian(torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64))
    for method, keys in (
        (PCGrad(), {"projections"}),
        (CAGrad(), {"dual_gap", "dual_weights", "iterations"}),
        (IMTLG(), {"floored"}),
    ):
        assert set(method.weights(gram, ones(4)).diagnostics) == keys
    assert "c=0.4" in repr(CAGrad())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: PCGrad(generator=5), "generator"),
        (lambda: PCGrad(reduction="avg"), "reduction"),
        (lambda: CAGrad(c=-0.1), "c "),
        (lambda: CAGrad(c=float("nan")), "c "),
        (lambda: CAGrad(c=float("inf")), "c "),
        (lambda: CAGrad(rescale=3), "rescale"),
        (lambda: CAGrad(reduction="max"), "reduction"),
        (lambda: CAGrad(tolerance=0.0), "tolerance"),
        (lambda: CAGrad(max_iterations=0), "max_iterations"),
    ],
)
def test_invalid_hyperparameters(factory, message) -> None:
    with pytest.raises(InvalidHyperparameterError, match=message):
        factory()


def _two_task_gramians(seed: int) -> torch.Tensor:
    """The Gramians `[10, 2, 2]` of `tests.strategies.awkward_two_task_jacobians`."""
    return gramian(awkward_two_task_jacobians(seed))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pcgrad_two_task_scalar_path_equals_the_tensor_path(reduction, dtype) -> None:
    # 10 rows take the closed form on Python floats, 100 rows the torch one: the same bits
    method = PCGrad(reduction=reduction)
    for seed in range(5):
        gram = _two_task_gramians(seed)[:6].to(
            dtype
        )  # float32 cannot hold the rows scaled by 1e140
        got = method.weights(gram, torch.ones(6, 2, dtype=dtype))
        want = method.weights(gram.repeat(20, 1, 1), torch.ones(120, 2, dtype=dtype))
        assert got.weights.dtype == want.weights.dtype == dtype
        assert torch.equal(got.weights, want.weights[:6])
        assert torch.equal(got.diagnostics["projections"], want.diagnostics["projections"][:6])


def _same_weights(got, want) -> bool:
    return (
        torch.equal(got.weights, want.weights)
        and set(got.diagnostics) == set(want.diagnostics)
        and all(
            torch.equal(got.diagnostics[key], want.diagnostics[key]) for key in want.diagnostics
        )
    )


@pytest.mark.parametrize(
    "factory",
    [
        CAGrad,
        lambda: CAGrad(c=0.9, rescale=2, reduction="sum"),
        lambda: CAGrad(c=5.0, rescale=0),
        lambda: CAGrad(c=0.0),
        IMTLG,
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cagrad_and_imtlg_two_task_scalar_paths_equal_the_general_path(
    factory, dtype, monkeypatch
) -> None:
    # the same Gramians on Python floats and, with the row limit at 0, on the numpy/torch path: the same bits
    rows = 10 if dtype == torch.float64 else 6  # float32 cannot hold the rows scaled by 1e140
    cases = []
    for seed in range(5):
        gram = _two_task_gramians(seed)[:rows].to(dtype)
        cases += [gram, gram[seed % rows], gram[:3]]
    fast = [factory().weights(gram, torch.ones(gram.shape[:-1], dtype=dtype)) for gram in cases]
    monkeypatch.setattr(projection, "_SCALAR_ROWS", 0)
    general = [factory().weights(gram, torch.ones(gram.shape[:-1], dtype=dtype)) for gram in cases]
    for got, want in zip(fast, general):
        assert got.weights.dtype == want.weights.dtype == dtype
        assert _same_weights(got, want)
