"""Nash-MTL: optimality `G alpha = 1/alpha`, equivariances, golden values, degenerate input, state.

Notation: `n_i = ||g_i||`, `b_i = alpha_i n_i` (the solver's variable on the unit-diagonal
Gramian). Where 0 is (nearly) in the convex hull of the gradients, `b` grows to about
`ridge^-1/2 = 1e5` and float64 rounding is amplified by about `b^2`; the tolerances below say so.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.jacobian import gramian
from core.methods.base import HeadGradient
from core.methods.nash_mtl import NashMTL, nash_residual
from tests.jacobian_strategies import jacobians

F64 = torch.float64


def solve(jacobian: torch.Tensor, method: NashMTL | None = None) -> torch.Tensor:
    return solve_with_diagnostics(jacobian, method)[0]


def solve_with_diagnostics(
    jacobian: torch.Tensor, method: NashMTL | None = None
) -> tuple[torch.Tensor, dict]:
    method = NashMTL() if method is None else method
    return method.weights(gramian(jacobian), torch.ones(jacobian.shape[:-1], dtype=jacobian.dtype))


def amplification(jacobian: torch.Tensor, weights: torch.Tensor) -> float:
    """`max_i b_i^2`: how much the rounding of G is amplified in the relative error of alpha."""
    return float((weights * jacobian.norm(dim=-1)).max()) ** 2


def unit_gramian_min_eigenvalue(jacobian: torch.Tensor) -> float:
    units = jacobian / jacobian.norm(dim=1, keepdim=True)
    return float(torch.linalg.eigvalsh(units @ units.T)[0])


@given(jacobian=jacobians(allow_zero_rows=False))
def test_solves_the_regularised_nash_system(jacobian) -> None:
    """alpha_i ((G + ridge diag G) alpha)_i = 1 to the tolerance (plus the rounding floor), always."""
    method = NashMTL()
    weights, diagnostics = solve_with_diagnostics(jacobian, method)
    gram = gramian(jacobian)
    regularised = gram + method.ridge * torch.diag_embed(gram.diagonal())
    floor = 1e-15 * amplification(jacobian, weights) * jacobian.shape[0]  # rounding of G, amplified
    assert nash_residual(regularised, weights).item() <= 1e-9 + floor
    assert diagnostics["residual"].item() == pytest.approx(
        nash_residual(gram, weights).item(), abs=1e-12 + floor
    )


@given(jacobian=jacobians(min_tasks=1, max_tasks=5, full_rank=True))
def test_nash_optimality_and_non_conflict_on_well_posed_jacobians(jacobian) -> None:
    """G alpha = 1/alpha, d . g_i = 1/alpha_i > 0 and ||d||^2 = K where the unit Gramian is PD.

    With lambda_min(U) >= 1e-4: b^T U b = K bounds ||b||^2 <= K / 1e-4, so the ridge moves each
    alpha_i (G alpha)_i by at most ridge ||b||^2 <= 5e-6.
    """
    assume(jacobian.shape[0] <= jacobian.shape[1] and unit_gramian_min_eigenvalue(jacobian) >= 1e-4)
    weights, diagnostics = solve_with_diagnostics(jacobian)
    assert diagnostics["residual"].item() <= 1e-9 + 5e-6
    direction = weights @ jacobian
    products = jacobian @ direction  # d . g_i
    assert bool((products > 0).all())
    torch.testing.assert_close(products * weights, torch.ones_like(weights), rtol=0, atol=1e-5)
    assert float(weights @ gramian(jacobian) @ weights) == pytest.approx(
        jacobian.shape[0], rel=1e-5
    )


@given(jacobian=jacobians(), data=st.data())
def test_permutation_equivariance(jacobian, data) -> None:
    permutation = torch.tensor(data.draw(st.permutations(range(jacobian.shape[0]))))
    weights = solve(jacobian)
    permuted = solve(jacobian[permutation])
    rtol = 1e-10 + 1e-15 * amplification(jacobian, weights)
    torch.testing.assert_close(permuted, weights[permutation], rtol=rtol, atol=0)


@given(jacobian=jacobians(min_tasks=2), data=st.data())
def test_per_task_rescaling_maps_alpha_to_alpha_over_c(jacobian, data) -> None:
    """g_i -> c_i g_i gives alpha_i -> alpha_i / c_i and the same update, c_i in [1e-3, 1e3].

    Exact in exact arithmetic (the solver runs on the unit-diagonal Gramian); measured rounding is
    1e-12 relative on well-posed draws and a few 1e-16 * max b^2 near Pareto stationarity.
    """
    num_tasks = jacobian.shape[0]
    factors = torch.tensor(
        data.draw(st.lists(st.floats(1e-3, 1e3), min_size=num_tasks, max_size=num_tasks)), dtype=F64
    )
    weights = solve(jacobian)
    scaled = factors[:, None] * jacobian
    scaled_weights = solve(scaled)
    rtol = 1e-10 + 1e-15 * amplification(jacobian, weights)
    torch.testing.assert_close(scaled_weights * factors, weights, rtol=rtol, atol=0)
    # the update: its error is bounded by rtol * sum_i alpha_i ||g_i|| = rtol * sum_i b_i
    bound = rtol * float((weights * jacobian.norm(dim=1)).sum()) * 1.01
    assert float((scaled_weights @ scaled - weights @ jacobian).norm()) <= bound


def test_golden_values() -> None:
    """J = [[-4, 1, 1], [6, 1, 1]], losses [1, 2]: G = [[18, -22], [-22, 38]].

    alpha_1 (18 alpha_1 - 22 alpha_2) = 1 and alpha_2 (38 alpha_2 - 22 alpha_1) = 1. Subtracting:
    18 alpha_1^2 = 38 alpha_2^2, so alpha_1 sqrt(18) = alpha_2 sqrt(38) = b (equal b_i: for K = 2
    the unit Gramian is symmetric under the swap). Then b^2 (1 + cos) = 1 with
    cos = -22 / sqrt(18 * 38): alpha_2^2 = 3 / (114 - 22 sqrt(19)), alpha_1 = alpha_2 sqrt(19) / 3,
    i.e. alpha = (0.59146115222936777725, 0.40707148288388537368) (sympy, 20 digits). The solver
    solves the ridge-regularised system (U + ridge I) b = 1/b: b^2 (1 + ridge + cos) = 1.
    """
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    losses = torch.tensor([1.0, 2.0], dtype=F64)
    exact = torch.tensor([0.59146115222936777725, 0.40707148288388537368], dtype=F64)
    alpha_2 = math.sqrt(3 / (114 - 22 * math.sqrt(19)))
    torch.testing.assert_close(
        exact, torch.tensor([alpha_2 * math.sqrt(19) / 3, alpha_2], dtype=F64), rtol=1e-15, atol=0
    )
    cosine = -22 / math.sqrt(18 * 38)
    b = 1 / math.sqrt(1 + 1e-10 + cosine)
    expected = torch.tensor([b / math.sqrt(18), b / math.sqrt(38)], dtype=F64)
    weights = NashMTL()(gramian(jacobian), losses)
    torch.testing.assert_close(weights, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(weights, exact, rtol=1e-9, atol=0)  # the ridge moves it by ~3e-10
    single = NashMTL()(gramian(jacobian).float(), losses.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, exact.float(), rtol=1e-6, atol=0)


@given(jacobian=jacobians(min_exponent=-12, max_exponent=12), single=st.booleans())
def test_degenerate_inputs_give_finite_non_negative_weights(jacobian, single) -> None:
    """Zero, duplicate, conflicting and rank-deficient rows, scales 1e-12..1e12, float32/64."""
    if single:
        jacobian = jacobian.float()
    weights = solve(jacobian)
    assert weights.dtype == jacobian.dtype
    assert bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())
    zero = gramian(jacobian).diagonal() == 0
    assert bool((weights[zero] == 0).all()) and bool((weights[~zero] > 0).all())


def test_documented_degenerate_cases() -> None:
    ones = torch.ones(3, dtype=F64)
    # all gradients zero: no task has a finite Nash weight
    assert bool((NashMTL()(torch.zeros(3, 3, dtype=F64), ones) == 0).all())
    # one task: alpha ||g|| = 1 (up to the ridge)
    torch.testing.assert_close(
        NashMTL()(torch.tensor([[4.0]], dtype=F64), ones[:1]),
        torch.tensor([0.5], dtype=F64),
        rtol=1e-9,
        atol=0,
    )
    # a zero row is dropped; the others are solved as if it were absent
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=F64)
    weights = solve(jacobian)
    assert weights[1].item() == 0
    torch.testing.assert_close(weights[[0, 2]], solve(jacobian[[0, 2]]), rtol=1e-12, atol=0)
    # duplicate rows share the weight of one row: b_1 = b_2 and 2 b^2 = 1 with b_3 decoupled
    duplicate = torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, -1.0]], dtype=F64)
    weights = solve(duplicate)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(
        weights * duplicate.norm(dim=1),
        torch.tensor([0.5**0.5, 0.5**0.5, 1.0], dtype=F64),
        rtol=1e-9,
        atol=0,
    )
    # opposite gradients (Pareto stationary): no solution; weights ~ ridge^-1/2 / ||g||, update 0
    opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=F64)
    weights, diagnostics = solve_with_diagnostics(opposite)
    torch.testing.assert_close(
        weights * opposite.norm(dim=1), torch.full((2,), 1e5, dtype=F64), rtol=1e-6, atol=0
    )
    assert float((weights @ opposite).norm()) <= 1e-6
    assert diagnostics["residual"].item() == pytest.approx(1.0, abs=1e-6)
    # extreme scales in float32: alpha ~ 1/||g||
    extreme = torch.tensor([[1e-12, 0.0], [0.0, 1e12]])
    torch.testing.assert_close(solve(extreme), torch.tensor([1e12, 1e-12]), rtol=1e-6, atol=0)
    # an indefinite "Gramian" (not from any J) is shifted to PD: still finite and positive
    weights = NashMTL()(torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=F64), ones[:2])
    assert bool(torch.isfinite(weights).all()) and bool((weights > 0).all())


def test_bad_input_and_hyperparameters() -> None:
    with pytest.raises(NonFiniteGradientError):
        NashMTL()(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), torch.ones(2))
    for options in (
        {"update_weights_every": 0},
        {"tolerance": 0.0},
        {"max_iterations": 0},
        {"ridge": 0.0},
        {"ridge": 1.0},
    ):
        with pytest.raises(InvalidHyperparameterError):
            NashMTL(**options)
    assert NashMTL.head_gradient is HeadGradient.WEIGHTED


def test_termination_is_guaranteed() -> None:
    jacobian = torch.randn(
        12, 2, generator=torch.Generator().manual_seed(0), dtype=F64
    )  # 0 in the hull
    weights, diagnostics = solve_with_diagnostics(
        jacobian, NashMTL(max_iterations=3, tolerance=1e-15)
    )
    assert diagnostics["iterations"].item() <= 3
    assert bool(torch.isfinite(weights).all()) and bool((weights > 0).all())


def test_warm_start_reset_and_update_every() -> None:
    generator = torch.Generator().manual_seed(3)
    jacobian = torch.randn(5, 12, generator=generator, dtype=F64)
    nearby = jacobian + 1e-3 * torch.randn(5, 12, generator=generator, dtype=F64)
    cold_iterations = solve_with_diagnostics(nearby)[1]["iterations"].item()
    warm = NashMTL()
    solve(jacobian, warm)
    warm_weights, diagnostics = solve_with_diagnostics(nearby, warm)
    assert diagnostics["iterations"].item() < cold_iterations
    torch.testing.assert_close(warm_weights, solve(nearby), rtol=1e-8, atol=0)
    warm.reset()
    assert solve_with_diagnostics(nearby, warm)[1]["iterations"].item() == cold_iterations
    no_warm = NashMTL(warm_start=False)
    assert not no_warm.stateful
    solve(jacobian, no_warm)
    assert solve_with_diagnostics(nearby, no_warm)[1]["iterations"].item() == cold_iterations

    every = NashMTL(update_weights_every=3)
    sequence = [torch.randn(5, 12, generator=generator, dtype=F64) for _ in range(5)]
    calls = [solve_with_diagnostics(j, every) for j in sequence[:3]]
    outputs = [weights for weights, _ in calls]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)  # reused as in the reference
    torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)
    last = calls[2][1]
    assert last["reused"].item() and last["iterations"].item() == 0
    # the residual reported for a reused alpha is that on the current Gramian
    assert last["residual"].item() == pytest.approx(
        nash_residual(gramian(sequence[2]), outputs[0]).item()
    )
    fourth, diagnostics = solve_with_diagnostics(sequence[3], every)
    assert not diagnostics["reused"].item()
    torch.testing.assert_close(fourth, solve(sequence[3]), rtol=1e-8, atol=0)
    # a different number of tasks needs a reset; reset restarts the counter
    with pytest.raises(MTLInputError, match="reset"):
        solve(torch.randn(3, 12, generator=generator, dtype=F64), every)
    every.reset()
    assert not solve_with_diagnostics(sequence[4], every)[1]["reused"].item()
    assert solve_with_diagnostics(sequence[0], every)[1]["reused"].item()


def test_state_dict_round_trip_continues_the_warm_start() -> None:
    generator = torch.Generator().manual_seed(4)
    sequence = [
        torch.randn(2, 4, 9, generator=generator, dtype=F64) for _ in range(3)
    ]  # batch of 2 runs
    original = NashMTL(update_weights_every=2)
    solve(sequence[0], original)
    copy = NashMTL(update_weights_every=2)
    copy.load_state_dict(original.state_dict())
    for jacobian in sequence[1:]:
        torch.testing.assert_close(solve(jacobian, copy), solve(jacobian, original), rtol=0, atol=0)


@given(num_tasks=st.integers(1, 5), data=st.data())
def test_batched_equals_one_by_one(num_tasks, data) -> None:
    batch = data.draw(st.integers(1, 4))
    drawn = [
        data.draw(jacobians(min_tasks=num_tasks, max_tasks=num_tasks, max_dim=6))
        for _ in range(batch)
    ]
    method = NashMTL()
    gramians = torch.stack([gramian(j) for j in drawn]).reshape(
        batch, 1, num_tasks, num_tasks
    )  # batch shape [B, 1]
    batched, diagnostics = method.weights(gramians, torch.ones(gramians.shape[:-1], dtype=F64))
    assert batched.shape == (batch, 1, num_tasks) and diagnostics["residual"].shape == (batch, 1)
    for jacobian, weights in zip(drawn, batched[:, 0]):
        single = solve(jacobian)
        rtol = 1e-10 + 1e-15 * amplification(jacobian, single)
        torch.testing.assert_close(weights, single, rtol=rtol, atol=0)


def test_engine_copies_the_diagnostics_and_weights_the_heads() -> None:
    from core.engine import mtl_backward

    generator = torch.Generator().manual_seed(0)
    shared = torch.nn.Parameter(torch.randn(4, dtype=F64, generator=generator))
    heads = [torch.nn.Parameter(torch.randn(4, dtype=F64, generator=generator)) for _ in range(3)]
    losses = [((shared * head).sum() - i) ** 2 for i, head in enumerate(heads)]
    method = NashMTL()
    info = mtl_backward(
        losses, [shared], method, task_params=[[head] for head in heads], retain_graph=True
    )
    assert set(info.diagnostics) == {"residual", "iterations", "reused"}
    assert info.diagnostics["residual"].item() <= 1e-8
    expected_head = info.weights[1] * torch.autograd.grad(losses[1], heads[1], retain_graph=True)[0]
    torch.testing.assert_close(heads[1].grad, expected_head)
