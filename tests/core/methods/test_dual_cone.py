"""UPGrad and DualProj: the dual-cone projection QP, its KKT conditions, golden values, TorchJD.

The projection of `J^T u` onto the dual cone `{d : J d >= 0}` has weights `v* = argmin_{v >= u}
v^T G v` (Quinton & Rey 2024, Prop. 1), with KKT conditions `v >= u`, `mu = G v >= 0`,
`mu_i (v_i - u_i) = 0`. The tests check them on drawn Jacobians (ranks, scales 1e-12..1e12,
duplicate, opposite and zero rows) and against an independent oracle that enumerates the active
sets in parameter space.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, MTLInputError
from core.jacobian import gramian
from core.methods.base import HeadGradient
from core.methods.dual_cone import DualProj, UPGrad, _active_set, _two_tasks, project_to_dual_cone
from core.registry import make_method
from tests.jacobian_strategies import jacobians
from tests.strategies import awkward_two_task_jacobians

F64 = torch.float64
EPS = float(torch.finfo(F64).eps)

GOLDEN_J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
GOLDEN_LOSSES = torch.tensor([1.0, 2.0], dtype=F64)


def targets(num_tasks: int):
    """Non-negative targets: exact zeros and values in [1e-3, 2]."""
    return st.lists(
        st.one_of(st.just(0.0), st.floats(1e-3, 2.0)), min_size=num_tasks, max_size=num_tasks
    ).map(lambda values: torch.tensor(values, dtype=F64))


def term_size(weights: torch.Tensor, jacobian: torch.Tensor) -> float:
    """`sum_j |v_j| ||g_j||`, the size of the terms of `J^T v`."""
    return float((weights.abs() * jacobian.norm(dim=-1)).sum())


def oracle_projection(jacobian: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The projection of `x = J^T u` onto `{d : J d >= 0}` by enumerating every active set S:
    `d = x + A^T lambda` with `A d = 0` on the unit rows A of S; the feasible candidate nearest to x
    is the projection (K <= 5: at most 32 sets). Scale-free: x is scaled to `max u = 1`."""
    if not (target > 0).any():
        return jacobian.T @ target
    scale = target.max()
    x = jacobian.T @ (target / scale)
    norms = np.linalg.norm(jacobian, axis=1)
    best_distance, best = math.inf, None
    for size in range(jacobian.shape[0] + 1):
        for subset in itertools.combinations(range(jacobian.shape[0]), size):
            rows = [i for i in subset if norms[i] > 0]
            d = x
            if rows:
                units = jacobian[rows] / norms[rows, None]
                multipliers = np.linalg.lstsq(units @ units.T, -units @ x, rcond=None)[0]
                d = x + units.T @ multipliers
            slack = 1e-9 * norms * (np.linalg.norm(x) + np.linalg.norm(d))
            if (jacobian @ d >= -slack).all() and np.linalg.norm(
                d - x
            ) < best_distance - 1e-12 * np.linalg.norm(x):
                best_distance, best = float(np.linalg.norm(d - x)), d
    assert best is not None
    return best * scale


# -- the projection QP --------------------------------------------------------------------------


@given(jacobian=jacobians(min_tasks=1, max_tasks=6), data=st.data())
def test_projection_satisfies_the_kkt_conditions(jacobian, data) -> None:
    """v >= u, g_i . d >= 0 and (g_i . d)(v_i - u_i) = 0, to the rounding of the terms of d."""
    num_tasks = jacobian.shape[0]
    target = data.draw(targets(num_tasks))
    projection = project_to_dual_cone(gramian(jacobian), target)
    weights = projection.weights[0]
    update = weights @ jacobian
    norms = jacobian.norm(dim=1)
    size = term_size(weights, jacobian)
    floor = 256 * num_tasks * EPS * size  # the rounding of G and of forming d from its terms
    products = jacobian @ update  # mu_i = g_i . d = (G v)_i
    assert bool((weights >= target - 1e-12 * target.abs().max().clamp_min(1e-300)).all()), (
        weights,
        target,
    )
    assert bool((products >= -norms * floor).all()), (products, norms * floor)
    gaps = (weights - target) * norms  # v_i - u_i in the units of the terms of d
    complementarity = torch.minimum(products / torch.where(norms > 0, norms, 1.0), gaps).abs()
    assert bool((complementarity <= floor + 1e-300).all()), (complementarity, floor)
    assert float(projection.kkt_residual) <= 1e-12


@given(jacobian=jacobians(min_tasks=1, max_tasks=5), data=st.data())
def test_projection_matches_the_active_set_enumeration(jacobian, data) -> None:
    """The update equals the oracle's (independent: parameter space, every active set)."""
    target = data.draw(targets(jacobian.shape[0]))
    weights = project_to_dual_cone(gramian(jacobian), target).weights[0]
    expected = oracle_projection(jacobian.numpy(), target.numpy())
    scale = max(term_size(weights, jacobian), term_size(target, jacobian))
    assert float(np.linalg.norm((weights @ jacobian).numpy() - expected)) <= 1e-8 * scale


@given(jacobian=jacobians(min_tasks=2, max_tasks=2), data=st.data())
def test_two_task_closed_form_matches_the_active_set(jacobian, data) -> None:
    target = data.draw(targets(2))
    gram = gramian(jacobian)
    norms = gram.diagonal().sqrt()
    if bool((norms == 0).any()):
        return
    cosine = float((gram[0, 1] / norms[0] / norms[1]).clamp(-1, 1))
    bounds = (target * norms).numpy()
    closed = _two_tasks(np.array([[cosine]]), bounds[None, None, :])[0, 0]
    general, _ = _active_set(np.array([[1.0, cosine], [cosine, 1.0]]), bounds)
    unit = np.array([[1.0, cosine], [cosine, 1.0]])
    # the products U y agree (y itself is not unique when the unit gradients are parallel)
    scale = float(np.abs(bounds).sum()) or 1.0
    np.testing.assert_allclose(unit @ closed, unit @ general, rtol=0, atol=1e-12 * scale)


def test_projection_keeps_what_is_already_in_the_cone() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]], dtype=F64)
    target = torch.tensor([0.2, 0.5, 1.0], dtype=F64)
    assert torch.equal(project_to_dual_cone(gramian(jacobian), target).weights[0], target)


def test_projection_is_batched_and_broadcast() -> None:
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(3, 2, 4, 5, generator=generator, dtype=F64)
    target = torch.rand(4, generator=generator, dtype=F64)
    projection = project_to_dual_cone(gramian(jacobian), target)
    assert projection.weights.shape == (3, 2, 1, 4) and projection.kkt_residual.shape == (3, 2)
    for index in itertools.product(range(3), range(2)):
        alone = project_to_dual_cone(gramian(jacobian[index]), target).weights
        torch.testing.assert_close(projection.weights[index], alone, rtol=1e-13, atol=1e-15)


def test_zero_gradient_keeps_its_target_and_constrains_nothing() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.5]], dtype=F64)
    target = torch.tensor([1.0, 0.7, 0.0], dtype=F64)
    weights = project_to_dual_cone(gramian(jacobian), target).weights[0]
    assert weights[1].item() == 0.7
    assert bool((jacobian @ (weights @ jacobian) >= -1e-15).all())


def test_targets_must_be_non_negative_and_match() -> None:
    gram = gramian(GOLDEN_J)
    with pytest.raises(MTLInputError, match="non-negative"):
        project_to_dual_cone(gram, torch.tensor([1.0, -1.0], dtype=F64))
    with pytest.raises(MTLInputError, match="do not match"):
        project_to_dual_cone(gram, torch.ones(3, dtype=F64))


# -- UPGrad and DualProj -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
@given(jacobian=jacobians(min_tasks=1, max_tasks=6))
def test_update_is_in_the_dual_cone_and_weights_dominate_the_preferences(cls, jacobian) -> None:
    num_tasks = jacobian.shape[0]
    method = cls()
    result = method.weights(gramian(jacobian), torch.ones(num_tasks, dtype=F64))
    weights = result.weights
    products = jacobian @ (weights @ jacobian)
    floor = 256 * num_tasks * num_tasks * EPS * term_size(weights, jacobian)
    assert bool((products >= -jacobian.norm(dim=1) * floor).all())
    # v >= u for each projection, so the weights are at least the preferences (1/K)
    assert bool((weights >= 1.0 / num_tasks - 1e-12).all())
    assert float(result.diagnostics["kkt_residual"]) <= 1e-12


@given(jacobian=jacobians(min_tasks=2, max_tasks=5))
def test_upgrad_is_the_sum_of_the_projected_gradients(jacobian) -> None:
    num_tasks = jacobian.shape[0]
    weights = UPGrad()(gramian(jacobian), torch.ones(num_tasks, dtype=F64))
    projected = [
        project_to_dual_cone(
            gramian(jacobian), torch.eye(num_tasks, dtype=F64)[i] / num_tasks
        ).weights[0]
        for i in range(num_tasks)
    ]
    torch.testing.assert_close(weights, torch.stack(projected).sum(dim=0), rtol=1e-12, atol=1e-300)


def test_golden_values_by_hand() -> None:
    """G = [[18, -22], [-22, 38]]: g_1 / 2 projects onto g_2's normal plane, (1/2)(1, 22/38), and
    g_2 / 2 onto g_1's, (1/2)(22/18, 1) (both stay non-conflicting), so UPGrad = (10/9, 15/19)
    (= PCGrad / 2 for K = 2). DualProj: g_0 = (1, 1, 1) conflicts with g_1 (g_1 . g_0 = -2), so
    d = g_0 + (2/18) g_1: (11/18, 1/2)."""
    gram = gramian(GOLDEN_J)
    torch.testing.assert_close(
        UPGrad()(gram, GOLDEN_LOSSES),
        torch.tensor([10 / 9, 15 / 19], dtype=F64),
        rtol=1e-14,
        atol=0,
    )
    torch.testing.assert_close(
        DualProj()(gram, GOLDEN_LOSSES),
        torch.tensor([11 / 18, 1 / 2], dtype=F64),
        rtol=1e-14,
        atol=0,
    )


def test_preferences_scale_the_projections() -> None:
    gram = gramian(GOLDEN_J)
    doubled = UPGrad(pref_vector=[1.0, 1.0])(gram, GOLDEN_LOSSES)
    torch.testing.assert_close(doubled, 2 * UPGrad()(gram, GOLDEN_LOSSES), rtol=1e-14, atol=0)
    # pref (1, 0): only g_1 is projected; DualProj of g_1 alone is the same projection
    torch.testing.assert_close(
        UPGrad(pref_vector=[1, 0])(gram, GOLDEN_LOSSES),
        DualProj(pref_vector=[1, 0])(gram, GOLDEN_LOSSES),
    )
    with pytest.raises(MTLInputError, match="2 tasks"):
        UPGrad(pref_vector=[1, 2, 3])(gram, GOLDEN_LOSSES)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_batched_gramians_give_the_separate_results(cls) -> None:
    generator = torch.Generator().manual_seed(1)
    for num_tasks in (2, 4):
        jacobian = torch.randn(6, num_tasks, 3, generator=generator, dtype=F64)
        losses = torch.ones(6, num_tasks, dtype=F64)
        batched = cls()(gramian(jacobian), losses)
        for row in range(6):
            torch.testing.assert_close(
                batched[row], cls()(gramian(jacobian[row]), losses[row]), rtol=1e-13, atol=1e-15
            )


def test_float32_gramians_give_float32_weights() -> None:
    gram = gramian(GOLDEN_J).float()
    weights = UPGrad()(gram, GOLDEN_LOSSES.float())
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor([10 / 9, 15 / 19]), rtol=1e-6, atol=0)


def test_facts_and_narrowed_claims() -> None:
    for name in ("upgrad", "dualproj"):
        method = make_method(name)
        assert method.claims == {"permutation_equivariant", "non_conflicting"}
        assert (
            method.head_gradient is HeadGradient.RAW and not method.stateful and not method.random
        )
        assert make_method(f"{name}:norm_eps=0.0001:reg_eps=0.0001").claims == {
            "permutation_equivariant"
        }
        assert make_method(f"{name}:pref_vector=[1,2]").claims == {"non_conflicting"}
        assert make_method(f"{name}:pref_vector=[2,2]").claims == {
            "permutation_equivariant",
            "non_conflicting",
        }
    assert isinstance(core.UPGrad(), core.GradientWeighting) and isinstance(
        core.DualProj(), core.GradientWeighting
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"pref_vector": [1.0, -1.0]},
        {"pref_vector": [0.0, 0.0]},
        {"pref_vector": []},
        {"pref_vector": [[1.0]]},
        {"pref_vector": math.inf},
        {"pref_vector": "uniform"},
        {"norm_eps": -1.0},
        {"reg_eps": math.nan},
    ],
)
def test_invalid_hyperparameters_are_refused(arguments) -> None:
    for cls in (UPGrad, DualProj):
        with pytest.raises(InvalidHyperparameterError):
            cls(**arguments)


# -- TorchJD -------------------------------------------------------------------------------------

TORCHJD_INPUTS = {
    "golden": [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]],
    "three": [[1.0, 0.0, 0.0], [-0.8, 0.6, 0.0], [-0.3, -0.9, 0.3]],
    "four": [
        [2.0, 1.0, 0.0, -1.0],
        [-1.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 1.0, 1.0],
        [1.0, 1.0, -3.0, 0.5],
    ],
}
TORCHJD_WEIGHTS = {
    # torchjd 0.18.0 UPGradWeighting() / DualProjWeighting() (quadprog 0.1.14, qpsolvers 4.13.0),
    # run on these Jacobians' Gramians outside the repository (/tmp, quadprog is not a dependency)
    ("upgrad", "golden"): [1.1109210467854445, 0.7894310312164523],
    ("dualproj", "golden"): [0.6109210467854445, 0.5],
    ("upgrad", "three"): [1.1591262935832845, 1.1591262935832845, 0.7331354200196605],
    ("dualproj", "three"): [0.4992536158443126, 0.4992536158443126, 0.3333333333333333],
    ("upgrad", "four"): [
        0.6190759224129754,
        1.6244254525991366,
        0.916229079631535,
        0.7609329858574303,
    ],
    ("dualproj", "four"): [0.24999999999999997, 0.5549266386983641, 0.3123672439213334, 0.25],
}


@pytest.mark.parametrize(("name", "case"), sorted(TORCHJD_WEIGHTS))
def test_torchjd_regularisation_reproduces_torchjd(name: str, case: str) -> None:
    """With TorchJD's `norm_eps = reg_eps = 1e-4` the exact solver gives TorchJD's weights (quadprog
    solves the regularised, positive definite QP exactly too)."""
    jacobian = torch.tensor(TORCHJD_INPUTS[case], dtype=F64)
    method = make_method(f"{name}:norm_eps=0.0001:reg_eps=0.0001")
    weights = method(gramian(jacobian), torch.ones(jacobian.shape[0], dtype=F64))
    torch.testing.assert_close(
        weights, torch.tensor(TORCHJD_WEIGHTS[(name, case)], dtype=F64), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("case", sorted(TORCHJD_INPUTS))
def test_torchjd_defaults_conflict_where_the_exact_projection_does_not(case: str) -> None:
    """The disagreement (docs/DECISIONS.md): TorchJD's regularised DualProj update conflicts with a
    task (`g_1 . d = -0.0034` on the golden J), ours satisfies `g_i . d >= 0` to rounding; both
    weights differ by about `K reg_eps` relative (at most 1.4e-3 here)."""
    jacobian = torch.tensor(TORCHJD_INPUTS[case], dtype=F64)
    num_tasks = jacobian.shape[0]
    theirs = torch.tensor(TORCHJD_WEIGHTS[("dualproj", case)], dtype=F64)
    ours = DualProj()(gramian(jacobian), torch.ones(num_tasks, dtype=F64))
    assert float((jacobian @ (theirs @ jacobian)).min()) < -1e-4
    assert float((jacobian @ (ours @ jacobian)).min()) >= -1e-14
    assert float((ours - theirs).abs().max()) <= 2e-3 * float(ours.abs().max())


def test_torchjd_live_comparison() -> None:
    """The same comparison against an installed TorchJD (needs its optional quadprog backend)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("qpsolvers")
    pytest.importorskip("quadprog")
    generator = torch.Generator().manual_seed(4)
    for num_tasks in (2, 3, 5):
        jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
        gram = gramian(jacobian)
        ones = torch.ones(num_tasks, dtype=F64)
        for ours, theirs in (
            (UPGrad, aggregation.UPGradWeighting),
            (DualProj, aggregation.DualProjWeighting),
        ):
            expected = theirs()(gram)
            got = ours(norm_eps=1e-4, reg_eps=1e-4)(gram, ones)
            torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4])
@pytest.mark.parametrize("factory", [UPGrad, DualProj])
@pytest.mark.parametrize("weighted", [False, True])
def test_host_path_gives_the_bits_of_project_to_dual_cone(
    factory, num_tasks: int, weighted: bool
) -> None:
    """The methods call the solver on numpy arrays directly (no checks, cached targets): the
    weights and residual are those of `project_to_dual_cone(G, targets)`, bit for bit, batched and
    alone, on random and degenerate Gramians (zero, parallel, anti-parallel, tiny, huge), and
    every call after the first (the cached targets) gives the same."""
    generator = torch.Generator().manual_seed(num_tasks)
    jac = torch.randn(10, num_tasks, 5, generator=generator, dtype=F64)
    jac[0] = 0.0
    jac[1] = jac[1, :1]
    jac[2, -1] = -2.0 * jac[2, 0]
    jac[3, 0] *= 1e-9
    jac[4] *= 1e9
    gram = gramian(jac)
    method = factory(pref_vector=[float(i + 1) for i in range(num_tasks)] if weighted else None)
    for batch in (slice(None), 0, 1, 2, 3, 4, slice(2, 8), slice(None)):
        result = method.weights(gram[batch], torch.ones(gram[batch].shape[:-1], dtype=F64))
        expected = project_to_dual_cone(gram[batch], method._targets(num_tasks))
        assert torch.equal(result.weights, expected.weights.sum(dim=-2))
        assert torch.equal(result.diagnostics["kkt_residual"], expected.kkt_residual)
        assert int(result.diagnostics["iterations"]) == expected.iterations


def _two_task_gramians(seed: int) -> torch.Tensor:
    """The Gramians `[10, 2, 2]` of `tests.strategies.awkward_two_task_jacobians`."""
    return gramian(awkward_two_task_jacobians(seed))


@pytest.mark.parametrize(
    "method",
    [UPGrad(), UPGrad(pref_vector=[0.3, 2.0]), DualProj(), DualProj(pref_vector=[1.0, 0.0])],
)
def test_two_task_scalar_path_equals_the_numpy_path(method) -> None:
    # 10 rows take the K = 2 projection on Python floats, 100 rows the numpy arrays: the same bits
    for seed in range(5):
        gram = _two_task_gramians(seed)
        got = method.weights(gram, torch.ones(10, 2, dtype=torch.float64))
        want = method.weights(gram.repeat(10, 1, 1), torch.ones(100, 2, dtype=torch.float64))
        assert torch.equal(got.weights, want.weights[:10])
        assert torch.equal(got.diagnostics["kkt_residual"], want.diagnostics["kkt_residual"][:10])
