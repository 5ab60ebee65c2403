"""MGDA and the shared min-norm solver: KKT conditions, brute force, non-conflict, normalisations."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core import MGDA, min_norm_point
from core.errors import InvalidHyperparameterError, LossDomainError
from core.jacobian import gramian
from core.methods import mgda
from core.pareto import project_to_simplex
from tests.jacobian_strategies import jacobians, positive_losses
from tests.strategies import awkward_two_task_jacobians


def brute_force_min_norm(gram: torch.Tensor) -> float:
    """min a^T G a over the simplex by enumerating every support and solving its KKT system."""
    num_tasks, best = gram.shape[0], float("inf")
    for size in range(1, num_tasks + 1):
        for support in itertools.combinations(range(num_tasks), size):
            index = list(support)
            bordered = torch.zeros(size + 1, size + 1, dtype=gram.dtype)
            bordered[:size, :size] = gram[index][:, index]
            bordered[:size, size] = bordered[size, :size] = 1
            rhs = torch.zeros(size + 1, 1, dtype=gram.dtype)
            rhs[size] = 1
            weights = (torch.linalg.pinv(bordered) @ rhs)[:size, 0]
            if bool((weights >= -1e-12).all()):
                full = torch.zeros(num_tasks, dtype=gram.dtype)
                full[index] = weights.clamp_min(0) / weights.clamp_min(0).sum()
                best = min(best, float(full @ gram @ full))
    return best


@given(jacobian=jacobians(max_tasks=7))
@settings(deadline=None)
def test_kkt_conditions_and_non_conflict(jacobian) -> None:
    gram = gramian(jacobian)
    solution = min_norm_point(gram)
    weights = solution.weights
    scale = gram.diagonal().max().item() or 1.0
    assert bool((weights >= 0).all()) and abs(weights.sum().item() - 1) < 1e-12
    product = gram @ weights
    objective = weights @ product
    # stationarity: (G a)_i >= a^T G a everywhere, with equality on the support
    assert bool((product >= objective - 1e-7 * scale).all())
    assert solution.kkt_gap.item() <= 1e-7
    on_support = weights > 1e-6
    torch.testing.assert_close(
        product[on_support], objective.expand(int(on_support.sum())), rtol=0, atol=1e-7 * scale
    )
    # non-conflict: the combined direction d = J^T a has d . g_i >= ||d||^2 >= 0 for every task
    direction = weights @ jacobian
    assert bool((jacobian @ direction >= direction @ direction - 1e-7 * scale).all())


@given(jacobian=jacobians(min_tasks=2, max_tasks=5, min_exponent=-3, max_exponent=3))
@settings(deadline=None, max_examples=60)
def test_matches_brute_force(jacobian) -> None:
    gram = gramian(jacobian)
    scale = gram.diagonal().max().item() or 1.0
    assert min_norm_point(gram).squared_norm.item() == pytest.approx(
        brute_force_min_norm(gram), abs=1e-10 * scale
    )


@given(
    jacobian=jacobians(
        min_tasks=3, max_tasks=6, min_exponent=-2, max_exponent=2, allow_zero_rows=False
    )
)
@settings(deadline=None, max_examples=40)
def test_float32_is_close_to_float64(jacobian) -> None:
    gram = gramian(jacobian)
    scale = gram.diagonal().max().item()
    low = min_norm_point(gram.float())
    assert low.weights.dtype == torch.float32
    assert low.squared_norm.item() == pytest.approx(
        min_norm_point(gram).squared_norm.item(), abs=1e-5 * scale
    )


def test_two_task_closed_form() -> None:
    jacobian = torch.tensor([[-4.0, 1, 1], [6, 1, 1]], dtype=torch.float64)
    solution = min_norm_point(gramian(jacobian))
    torch.testing.assert_close(solution.weights, torch.tensor([0.6, 0.4], dtype=torch.float64))
    assert solution.squared_norm.item() == pytest.approx(2.0)
    identical = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        min_norm_point(gramian(identical)).weights, torch.tensor([0.5, 0.5], dtype=torch.float64)
    )


def test_termination_is_guaranteed() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(12, 3, generator=generator, dtype=torch.float64)  # 0 is inside the hull
    solution = min_norm_point(gramian(jacobian), max_iterations=10, tolerance=0.0)
    assert solution.iterations <= 10  # face solves of the active set
    assert abs(solution.weights.sum().item() - 1) < 1e-12 and bool((solution.weights >= 0).all())


def test_all_zero_gradients_give_uniform_weights() -> None:
    torch.testing.assert_close(min_norm_point(torch.zeros(4, 4)).weights, torch.full((4,), 0.25))


@given(values=st.lists(st.floats(-50, 50), min_size=1, max_size=8))
def test_simplex_projection_is_the_closest_point(values) -> None:
    point = torch.tensor(values, dtype=torch.float64)
    projected = project_to_simplex(point)
    assert bool((projected >= 0).all()) and abs(projected.sum().item() - 1) < 1e-9
    # optimality: <point - projected, y - projected> <= 0 for the simplex vertices y
    for vertex in torch.eye(len(values), dtype=torch.float64):
        assert float((point - projected) @ (vertex - projected)) <= 1e-9


@given(jacobian=jacobians(min_tasks=2, allow_zero_rows=False), data=st.data())
@settings(deadline=None)
def test_l2_normalization_ignores_gradient_scale(jacobian, data) -> None:
    num_tasks = jacobian.shape[0]
    factors = torch.tensor(
        data.draw(st.lists(st.floats(1e-3, 1e3), min_size=num_tasks, max_size=num_tasks)),
        dtype=torch.float64,
    )
    losses = torch.ones(num_tasks, dtype=torch.float64)
    method = MGDA(normalization="l2", apply_to="normalized")
    update = method(gramian(jacobian), losses) @ jacobian
    scaled = factors[:, None] * jacobian
    # the update is a convex combination of unit vectors: an absolute tolerance fits
    torch.testing.assert_close(
        method(gramian(scaled), losses) @ scaled, update, rtol=1e-6, atol=1e-9
    )


@given(
    jacobian=jacobians(
        min_tasks=2, max_tasks=4, min_exponent=-2, max_exponent=2, allow_zero_rows=False
    ),
    data=st.data(),
)
@settings(deadline=None)
def test_normalizations_scale_the_gradients(jacobian, data) -> None:
    losses = data.draw(positive_losses(jacobian.shape[0]))
    norms = jacobian.norm(dim=1)
    for name, scales in {
        "none": torch.ones_like(norms),
        "l2": norms,
        "loss": losses,
        "loss+": losses * norms,
    }.items():
        scaled = jacobian / scales[:, None]
        weights = MGDA(normalization=name)(gramian(jacobian), losses)
        # the min-norm point of the scaled gradients is unique (its weights need not be, and the
        # scaled Gramian can be ill-conditioned): compare points, relative to the largest row
        expected = min_norm_point(gramian(scaled)).weights @ scaled
        largest = float(scaled.norm(dim=1).max())
        tolerance = 1e-7 * largest
        torch.testing.assert_close(weights @ scaled, expected, rtol=0, atol=tolerance)
        applied = MGDA(normalization=name, apply_to="normalized")(gramian(jacobian), losses)
        torch.testing.assert_close(
            applied @ jacobian, weights @ scaled, rtol=1e-12, atol=1e-12 * largest
        )


def test_loss_normalization_needs_positive_losses() -> None:
    gram = torch.eye(2, dtype=torch.float64)
    with pytest.raises(LossDomainError, match="positive"):
        MGDA(normalization="loss")(gram, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(InvalidHyperparameterError, match="normalization"):
        MGDA(normalization="l1")  # type: ignore[arg-type]


def test_reports_its_kkt_gap() -> None:
    diagnostics = (
        MGDA()
        .weights(
            gramian(torch.randn(5, 9, dtype=torch.float64)), torch.ones(5, dtype=torch.float64)
        )
        .diagnostics
    )
    assert set(diagnostics) == {"kkt_gap", "min_norm"}
    assert diagnostics["kkt_gap"].item() <= 1e-12


def test_ill_conditioned_gramian_reaches_the_optimum() -> None:
    """A case the thorough profile found: after scaling, eigenvalues span 1e-6..1 and the optimal
    support is not the one projected gradient steps reach in 2,000 iterations."""
    jacobian = torch.tensor(
        [
            [51.421, 11.890, 33.343, -23.417, 3.2573],
            [-2.8488, 12.758, -26.950, 12.595, 44.990],
            [1.1148, 0.48247, -1.1514, 1.9092, -1.8181],
            [-2.5775, -0.17731, 0.36672, -2.9216, 3.5832],
            [74.999, -197.06, 55.372, -172.44, 117.40],
            [6.3510, 3.3754, 2.6420, 0.36744, -1.5931],
        ],
        dtype=torch.float64,
    )
    gram = gramian(jacobian)
    solution = min_norm_point(gram)
    assert solution.squared_norm.item() == pytest.approx(brute_force_min_norm(gram), rel=1e-9)
    assert solution.kkt_gap.item() <= 1e-12


def test_solver_limits_are_validated() -> None:
    from core.errors import InvalidHyperparameterError as Invalid

    gram = torch.eye(3, dtype=torch.float64)
    with pytest.raises(Invalid, match="tolerance"):
        min_norm_point(gram, tolerance=-1.0)
    with pytest.raises(Invalid, match="max_iterations"):
        min_norm_point(gram, max_iterations=-1)
    with pytest.raises(Invalid, match="max_iterations"):
        MGDA(max_iterations=0)


def _two_task_gramians(seed: int) -> torch.Tensor:
    """The Gramians `[10, 2, 2]` of `tests.strategies.awkward_two_task_jacobians`."""
    return gramian(awkward_two_task_jacobians(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_two_task_scalar_path_equals_min_norm_point(dtype, monkeypatch) -> None:
    # on Python floats and, with the row limit at 0, through min_norm_point: the same bits
    rows = 10 if dtype == torch.float64 else 6  # float32 cannot hold the rows scaled by 1e140
    cases = []
    for seed in range(5):
        gram = _two_task_gramians(seed)[:rows].to(dtype)
        cases += [gram, gram[seed % rows], gram[:3]]
    fast = [MGDA().weights(gram, torch.ones(gram.shape[:-1], dtype=dtype)) for gram in cases]
    monkeypatch.setattr(mgda, "_SCALAR_ROWS", 0)
    for gram, got in zip(cases, fast):
        want = MGDA().weights(gram, torch.ones(gram.shape[:-1], dtype=dtype))
        assert got.weights.dtype == want.weights.dtype == dtype
        assert torch.equal(got.weights, want.weights)
        assert set(got.diagnostics) == set(want.diagnostics)
        assert all(
            torch.equal(got.diagnostics[key], want.diagnostics[key]) for key in want.diagnostics
        )
