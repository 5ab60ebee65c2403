"""Pareto MTL and EPO (core/methods/preference.py): their optimality conditions, stages, LP solver.

PMTL: the update is the min-norm point of the hull of the task gradients and the active
constraint gradients (stage 2) or of the active constraint gradients alone (stage 1); checked by
its KKT conditions on the vectors themselves (built here from the reference vectors), not with
the solver it uses. EPO: its LP (rebuilt here from the reference code's rules) against
scipy.optimize.linprog, what a balance and a dominance step guarantee, and numbers pinned from
the reference code (dbmptr/EPOSearch with cvxpy + GLPK; Xi-L/ParetoMTL) run in a scratch folder.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.jacobian import gramian
from core.methods.preference import (
    EPOSearch,
    ParetoMTL,
    epo_linear_programme,
    pmtl_reference_vectors,
    simplex_linear_programme,
)
from tests.claims import Step, assert_permutation_equivariant

F64 = torch.float64
JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
LOSSES = torch.tensor([1.0, 2.0], dtype=F64)


@st.composite
def well_posed(draw, *, min_tasks: int = 1, max_tasks: int = 5, max_exponent: float = 2.0):
    """A K x D Jacobian with row scales 10^e (|e| <= max_exponent) and positive losses."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    dim = draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    rows = torch.randn(num_tasks, dim, generator=generator, dtype=F64)
    exponents = torch.tensor(
        draw(
            st.lists(st.floats(-max_exponent, max_exponent), min_size=num_tasks, max_size=num_tasks)
        ),
        dtype=F64,
    )
    rows = rows * (10.0**exponents)[:, None]
    losses = 10.0 ** (2 * torch.rand(num_tasks, generator=generator, dtype=F64) - 1)
    return rows, losses


# ---------------------------------------------------------------------------------------------
# PMTL
# ---------------------------------------------------------------------------------------------


def test_reference_vectors() -> None:
    """K = 2: the reference code's `circle_points([1], [n])` (cos t, sin t), t = linspace(0, pi/2, n),
    up to rounding, and exactly symmetric under swapping the tasks; K = 3: the simplex lattice
    with n - 1 divisions, normalised (15 vectors for n = 5), a set that relabelling the tasks maps
    to itself."""
    angles = np.linspace(0, 0.5 * np.pi, 5)
    circle = torch.tensor(np.c_[np.cos(angles), np.sin(angles)], dtype=F64)
    vectors = pmtl_reference_vectors(2)
    torch.testing.assert_close(vectors, circle, rtol=0, atol=1e-15)
    assert torch.equal(vectors.flip(0), vectors.flip(1))
    assert torch.equal(vectors[2, 0], vectors[2, 1])
    lattice = pmtl_reference_vectors(3)
    assert lattice.shape == (15, 3) and pmtl_reference_vectors(3, 3).shape == (6, 3)
    torch.testing.assert_close(lattice.norm(dim=1), torch.ones(15, dtype=F64))
    as_set = {tuple(round(v, 12) for v in row) for row in lattice.tolist()}
    assert as_set == {tuple(round(v, 12) for v in row) for row in lattice[:, [2, 0, 1]].tolist()}
    assert pmtl_reference_vectors(1).tolist() == [[1.0]] * 5
    with pytest.raises(InvalidHyperparameterError):
        pmtl_reference_vectors(2, 1)


def _constraint_vectors(
    jacobian: torch.Tensor, losses: torch.Tensor, preference: torch.Tensor, num_preferences: int = 5
) -> torch.Tensor:
    """The gradients `(u_j - u_k)^T J` of the active constraints `(u_j - u_k) . l > 0`."""
    rows = (
        pmtl_reference_vectors(jacobian.shape[0], num_preferences) - preference / preference.norm()
    )
    rows = rows[rows.norm(dim=1) > 1e-9]
    return rows[(rows @ losses) > 0] @ jacobian


def assert_min_norm_point(
    update: torch.Tensor, points: torch.Tensor, *, scale: float | None = None, rtol: float = 1e-9
) -> None:
    """`update` is a positive multiple c d* of the min-norm point d* of conv(points): with
    `c = ||d||^2 / min_v v . d` (the KKT conditions `v . d* >= ||d*||^2`, with equality on the
    support, fix it), `d / c` lies in the hull (non-negative least squares on the points with a
    row of ones), and `c` equals `scale` if given. A zero update: 0 lies in the hull."""
    from scipy.optimize import nnls

    size = float(points.norm(dim=1).max())
    norm = float(update.norm())
    if norm <= 1e-12 * size:
        target = torch.zeros_like(update)
    else:
        products = points @ update
        smallest = float(products.min())
        assert smallest > 0, (
            f"the update conflicts with a point of the hull: v . d = {products.tolist()}"
        )
        factor = norm**2 / smallest
        target = update / factor
        if scale is not None:
            assert math.isclose(factor, scale, rel_tol=1e-8), (factor, scale)
    system = torch.cat([points.T / size, torch.ones(1, points.shape[0], dtype=F64)]).numpy()
    weights, residual = nnls(system, np.concatenate([target.numpy() / size, [1.0]]))
    assert residual <= rtol * math.sqrt(points.shape[0]), (
        f"d / c is not in the hull (residual {residual:.3g})"
    )


@given(problem=well_posed(), reduction=st.sampled_from(["mean", "sum"]))
def test_pmtl_stage_two_is_the_min_norm_point_of_tasks_and_active_constraints(
    problem, reduction
) -> None:
    jacobian, losses = problem
    num_tasks = jacobian.shape[0]
    method = ParetoMTL(init_epochs=0, reduction=reduction)
    result = method.weights(gramian(jacobian), losses)
    weights = result.weights
    assert int(result.diagnostics["stage"]) == 2
    torch.testing.assert_close(
        weights.abs().sum(), torch.tensor(num_tasks if reduction == "sum" else 1.0, dtype=F64)
    )
    uniform = torch.full((num_tasks,), 1.0, dtype=F64)
    points = torch.cat([jacobian, _constraint_vectors(jacobian, losses, uniform)])
    assert int(result.diagnostics["active_constraints"]) == points.shape[0] - num_tasks
    assert_min_norm_point(weights @ jacobian, points)


@given(problem=well_posed(min_tasks=2), index=st.integers(0, 4))
def test_pmtl_stage_one_is_the_min_norm_point_of_the_active_constraints(problem, index) -> None:
    jacobian, losses = problem
    num_tasks = jacobian.shape[0]
    method = ParetoMTL(preference=index)
    preference = pmtl_reference_vectors(num_tasks)[index]
    points = _constraint_vectors(jacobian, losses, preference)
    result = method.weights(gramian(jacobian), losses)
    if points.shape[0] == 0:  # feasible: stage 2 at once, and from then on
        assert int(result.diagnostics["stage"]) == 2 and bool(method.stage_two())
        return
    assert int(result.diagnostics["stage"]) == 1 and not bool(method.stage_two())
    # weights = sum_j beta_j (u_j - u_k) / K, beta on the simplex: the update is (1/K) d*
    assert_min_norm_point(result.weights @ jacobian, points, scale=None)
    rows = pmtl_reference_vectors(num_tasks) - preference
    rows = rows[rows.norm(dim=1) > 1e-9]
    active = rows[(rows @ losses) > 0]
    from scipy.optimize import nnls

    system = np.vstack([active.T.numpy(), np.ones((1, active.shape[0]))])
    beta, residual = nnls(system, np.concatenate([(num_tasks * result.weights).numpy(), [1.0]]))
    assert residual <= 1e-9, (beta, residual)


def test_pmtl_stage_one_decreases_every_violated_constraint_first_order() -> None:
    """Stage 1's direction d* satisfies `v_j . d* >= ||d*||^2 > 0` for the active constraint
    gradients v_j, so a step `-eta d` lowers every violated `G_j = (u_j - u_k) . l`."""
    generator = torch.Generator().manual_seed(5)
    for _ in range(20):
        jacobian = torch.randn(3, 4, generator=generator, dtype=F64)
        losses = torch.rand(3, generator=generator, dtype=F64) + 0.1
        result = ParetoMTL(preference=0).weights(gramian(jacobian), losses)
        if int(result.diagnostics["stage"]) == 1:
            points = _constraint_vectors(jacobian, losses, pmtl_reference_vectors(3)[0])
            assert bool((points @ (result.weights @ jacobian) > 0).all())


def test_pmtl_stage_switch() -> None:
    """Stage 1 until a call finds no active constraint (then stage 2 for good), or until
    `end_epoch()` has been called `init_epochs` times; `init_epochs=None`: feasibility only."""
    gram = gramian(JACOBIAN)
    infeasible, feasible = (
        LOSSES,
        torch.tensor([1.0, 1.0], dtype=F64),
    )  # 63.4 deg: u_3 active; 45 deg: none
    method = ParetoMTL()
    assert int(method.weights(gram, infeasible).diagnostics["stage"]) == 1
    assert int(method.weights(gram, feasible).diagnostics["stage"]) == 2
    assert int(method.weights(gram, infeasible).diagnostics["stage"]) == 2  # no way back
    for init_epochs, stages in [(2, [1, 1, 2, 2]), (0, [2, 2, 2, 2]), (None, [1, 1, 1, 1])]:
        method = ParetoMTL(init_epochs=init_epochs)
        seen = []
        for _ in range(4):
            seen.append(int(method.weights(gram, infeasible).diagnostics["stage"]))
            method.end_epoch()
        assert seen == stages, (init_epochs, seen)
    assert not ParetoMTL(init_epochs=0).stateful and ParetoMTL().stateful


def test_pmtl_batched_state_equals_separate_runs_through_both_stages() -> None:
    generator = torch.Generator().manual_seed(1)
    batch, steps = 6, 5
    jacobians = torch.randn(steps, batch, 2, 3, generator=generator, dtype=F64)
    losses = torch.rand(steps, batch, 2, generator=generator, dtype=F64) + 0.05
    batched = ParetoMTL(init_epochs=3)
    together = []
    for step in range(steps):
        together.append(batched.weights(gramian(jacobians[step]), losses[step]))
        batched.end_epoch()
    stages = torch.stack([result.diagnostics["stage"] for result in together])
    assert bool((stages == 1).any()) and bool((stages == 2).any())
    for row in range(batch):
        single = ParetoMTL(init_epochs=3)
        for step in range(steps):
            alone = single.weights(gramian(jacobians[step, row]), losses[step, row])
            single.end_epoch()
            torch.testing.assert_close(
                together[step].weights[row], alone.weights, rtol=1e-12, atol=1e-15
            )
            assert int(together[step].diagnostics["stage"][row]) == int(alone.diagnostics["stage"])


def test_pmtl_state_dict_round_trip() -> None:
    gram = gramian(JACOBIAN)
    method = ParetoMTL()
    method.weights(gram, LOSSES)
    method.end_epoch()
    state = method.state_dict()
    restored = ParetoMTL()
    restored.load_state_dict(state)
    assert restored.batch_shape == () and not bool(restored.stage_two())
    restored.end_epoch()
    assert int(restored.weights(gram, LOSSES).diagnostics["stage"]) == 2


def test_pmtl_index_preference_is_not_permutation_equivariant() -> None:
    """An index names a reference vector by position: relabelling the tasks does not relabel it
    (for K = 2, index 1 is 22.5 deg, which the swap turns into index 3): no claim; the uniform
    default is equivariant (the registry-wide test checks it)."""
    step = Step(JACOBIAN, torch.tensor([1.0, 2.0], dtype=F64))
    assert ParetoMTL(preference=1).claims == frozenset()
    with pytest.raises(AssertionError):
        assert_permutation_equivariant(lambda: ParetoMTL(preference=1), [step], [1, 0])
    weights = ParetoMTL(preference=1)(gramian(JACOBIAN), LOSSES)
    swapped = ParetoMTL(preference=3)(gramian(JACOBIAN[[1, 0]]), LOSSES[[1, 0]])
    torch.testing.assert_close(swapped, weights[[1, 0]], rtol=1e-12, atol=1e-15)
    assert (
        ParetoMTL(preference=[1.0, 1.0]).claims
        == ParetoMTL().claims
        == frozenset({"permutation_equivariant"})
    )
    assert ParetoMTL(init_epochs=0).claims == frozenset(
        {"permutation_equivariant", "non_conflicting"}
    )


def test_pmtl_against_the_reference_code_pinned() -> None:
    """Xi-L/ParetoMTL `synthetic_example/run_synthetic_example.py` (`get_d_paretomtl_init`,
    `get_d_paretomtl` with its numpy MinNormSolver), `circle_points([1], [5])`, preference index
    i, on J and l = (1, 2), run in a scratch folder; stage 2 scaled by 2 / sum|w| as its
    multiMNIST `train.py` does. Its Frank-Wolfe solver stops at 1e-6, hence the tolerance.
    Index 3 is feasible there (the reference's init returns its flag; ours goes to stage 2)."""
    stage_one = {
        0: [-0.07612071105122724, 0.38268379688215176],
        1: [-0.2167730318762198, 0.32442353627996384],
        2: [-0.32442334882145774, 0.21677275132473928],
        4: [0.38300785571391127, -0.076337240240038],
    }
    stage_two = {
        0: [1.1579772216230675, 0.8420227783769327],
        1: [1.1476138705111059, 0.8523861294888943],
        2: [1.1328526694639023, 0.8671473305360978],
        3: [1.2, 0.8],
        4: [1.234726300275328, 0.7652736997246721],
    }
    gram = gramian(JACOBIAN)
    vectors = pmtl_reference_vectors(2)
    for index, expected in stage_one.items():
        weights = ParetoMTL(preference=index, reduction="sum")(gram, LOSSES)
        if index == 4:
            # two active constraints whose min-norm point is the vertex u_3 - u_4 (ours); the
            # reference's two-point solver clips to [0.001, 0.999] and keeps 0.1% on u_2 - u_4
            torch.testing.assert_close(weights, vectors[3] - vectors[4], rtol=0, atol=1e-15)
            weights = 0.999 * weights + 0.001 * (vectors[2] - vectors[4])
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-6)
    for index, expected in stage_two.items():
        weights = ParetoMTL(preference=index, init_epochs=0, reduction="sum")(gram, LOSSES)
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-6)
    assert int(ParetoMTL(preference=3).weights(gram, LOSSES).diagnostics["stage"]) == 2


def test_pmtl_hyperparameters_and_domain() -> None:
    for arguments in (
        {"num_preferences": 1},
        {"preference": -1},
        {"preference": [0.0, 0.0]},
        {"preference": math.inf},
        {"init_epochs": -1},
        {"reduction": "max"},
        {"preference": True},
    ):
        with pytest.raises(InvalidHyperparameterError):
            ParetoMTL(**arguments)
    with pytest.raises(InvalidHyperparameterError, match="indexes 5 reference vectors"):
        ParetoMTL(preference=5)(gramian(JACOBIAN), LOSSES)
    with pytest.raises(MTLInputError):
        ParetoMTL(preference=[1.0, 2.0, 3.0])(gramian(JACOBIAN), LOSSES)
    with pytest.raises(LossDomainError):
        ParetoMTL()(gramian(JACOBIAN), torch.tensor([1.0, -1.0], dtype=F64))
    # any K at the defaults, K = 1 included; zero losses: no constraint is active
    assert ParetoMTL()(torch.ones(1, 1, dtype=F64), torch.ones(1, dtype=F64)).tolist() == [1.0]
    weights = ParetoMTL()(gramian(torch.randn(3, 6, 4, dtype=F64)), torch.rand(3, 6, dtype=F64))
    assert weights.shape == (3, 6) and bool(torch.isfinite(weights).all())
    assert (
        int(ParetoMTL().weights(gramian(JACOBIAN), torch.zeros(2, dtype=F64)).diagnostics["stage"])
        == 2
    )


# ---------------------------------------------------------------------------------------------
# The LP solver
# ---------------------------------------------------------------------------------------------


def _linprog(objective: torch.Tensor, rows: torch.Tensor, bounds: torch.Tensor):
    from scipy.optimize import linprog

    on = torch.isfinite(bounds)
    num_tasks = objective.shape[-1]
    return linprog(
        -objective.numpy(),
        A_ub=-rows[on].numpy() if bool(on.any()) else None,
        b_ub=-bounds[on].numpy() if bool(on.any()) else None,
        A_eq=np.ones((1, num_tasks)),
        b_eq=[1.0],
        bounds=[(0, None)] * num_tasks,
        method="highs",
    )


@st.composite
def linear_programmes(draw, *, min_tasks: int = 1, max_tasks: int = 7):
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    num_rows = draw(st.integers(0, num_tasks + 1))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    objective = torch.randn(num_tasks, generator=generator, dtype=F64)
    rows = torch.randn(num_rows, num_tasks, generator=generator, dtype=F64)
    bounds = torch.randn(num_rows, generator=generator, dtype=F64) * draw(
        st.sampled_from([0.0, 0.3, 1.0])
    )
    off = torch.rand(num_rows, generator=generator) < 0.2
    return objective, rows, torch.where(off, -torch.inf, bounds)


@given(programme=linear_programmes())
def test_lp_solver_matches_scipy_linprog(programme) -> None:
    """The optimum value equals HiGHS's, the solution is feasible and on the simplex; an
    infeasible programme is reported as such (K <= 5: basic solutions; K = 6, 7: dense simplex)."""
    objective, rows, bounds = programme
    reference = _linprog(objective, rows, bounds)
    assume(reference.status in (0, 2))
    solution = simplex_linear_programme(objective, rows, bounds)
    if reference.status == 2:
        assert not bool(solution.feasible)
        return
    assert bool(solution.feasible)
    weights = solution.weights
    assert bool((weights >= 0).all()) and abs(float(weights.sum()) - 1) <= 1e-12
    on = torch.isfinite(bounds)
    slack = rows[on] @ weights - bounds[on]
    assert bool((slack >= -1e-8 * (1 + rows[on].abs().amax(dim=-1))).all()), slack
    assert math.isclose(
        float(solution.value),
        -reference.fun,
        rel_tol=1e-8,
        abs_tol=1e-8 * float(objective.abs().max()),
    )


@given(programme=linear_programmes(min_tasks=2, max_tasks=5))
def test_lp_enumeration_and_dense_simplex_agree(programme) -> None:
    from core.methods import preference as module

    objective, rows, bounds = programme
    enumerated = simplex_linear_programme(objective, rows, bounds)
    on = torch.isfinite(bounds)
    simplex = module._dense_simplex(
        objective.numpy(), rows[on].numpy(), bounds[on].numpy(), np.ones(objective.shape[0]), 1.0
    )
    assert (simplex is not None) == bool(enumerated.feasible)
    if simplex is not None:
        assert math.isclose(
            float(objective @ torch.from_numpy(simplex)),
            float(enumerated.value),
            rel_tol=1e-8,
            abs_tol=1e-9,
        )


def test_lp_ties_give_the_mean_of_the_optimal_vertices() -> None:
    """A flat objective over the whole simplex: every vertex is optimal, the mean is uniform."""
    solution = simplex_linear_programme(
        torch.ones(3, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64)
    )
    torch.testing.assert_close(solution.weights, torch.full((3,), 1 / 3, dtype=F64))
    solution = simplex_linear_programme(
        torch.tensor([1.0, 1.0, 0.0], dtype=F64),
        torch.zeros(0, 3, dtype=F64),
        torch.zeros(0, dtype=F64),
    )
    torch.testing.assert_close(solution.weights, torch.tensor([0.5, 0.5, 0.0], dtype=F64))
    batched = simplex_linear_programme(
        torch.randn(4, 3, 3, dtype=F64),
        torch.randn(4, 3, 2, 3, dtype=F64),
        torch.zeros(4, 3, 2, dtype=F64),
    )
    assert batched.weights.shape == (4, 3, 3) and batched.value.shape == (4, 3)


# ---------------------------------------------------------------------------------------------
# EPO
# ---------------------------------------------------------------------------------------------


def reference_programme(gram: np.ndarray, losses: np.ndarray, r: np.ndarray, eps: float = 1e-4):
    """dbmptr/EPOSearch `EPO_LP.get_alpha`, rewritten for scipy: (objective, rows, bounds, balance)."""
    rl = r * losses
    l_hat = rl / rl.sum()
    kept = l_hat[l_hat > np.finfo(np.float64).eps]
    mu = float(np.sum(kept * np.log(kept * len(losses))))
    a = r * (np.log(l_hat * len(losses)) - mu)
    ca = gram @ a
    if mu > eps:
        increasing = ca > 0
        if increasing.any():
            rhs = ca.copy()
            rhs[increasing] = -np.inf
            rhs[np.where(rl == rl.max())[0]] = 0
        else:
            rhs = np.zeros_like(ca)
        return ca, gram, rhs, True, a, mu
    rows = np.vstack([gram, ca[None]])
    bounds = np.concatenate([np.zeros(len(losses)), [-max(-ca.max(), 0.0)]])
    return gram.sum(axis=0), rows, bounds, False, a, mu


@given(problem=well_posed(max_tasks=5), near_ray=st.booleans(), unequal=st.booleans())
def test_epo_solves_the_reference_lp(problem, near_ray, unequal) -> None:
    """The weights maximise the reference LP (HiGHS's optimum value) and satisfy its constraints;
    where it is infeasible, the weights are r / sum(r)."""
    jacobian, losses = problem
    num_tasks = jacobian.shape[0]
    r = (
        torch.linspace(1.0, 2.0, num_tasks, dtype=F64)
        if unequal
        else torch.ones(num_tasks, dtype=F64)
    )
    if near_ray:  # r l ~ 1: a dominance step
        losses = (
            1 + 1e-4 * torch.randn(num_tasks, generator=torch.Generator().manual_seed(0), dtype=F64)
        ) / r
    gram = gramian(jacobian)
    method = EPOSearch(preference=r.tolist())
    result = method.weights(gram, losses)
    objective, rows, bounds, balance, _, _ = reference_programme(
        gram.numpy(), losses.numpy(), r.numpy()
    )
    assert bool(result.diagnostics["balance"]) == balance
    reference = _linprog(
        torch.from_numpy(objective), torch.from_numpy(np.atleast_2d(rows)), torch.from_numpy(bounds)
    )
    assume(reference.status in (0, 2))
    if reference.status == 2:
        assert bool(result.diagnostics["fallback"])
        torch.testing.assert_close(result.weights, r / r.sum())
        return
    alpha = result.weights.numpy()
    scale = float(np.abs(objective).max())
    assert math.isclose(
        float(objective @ alpha), -reference.fun, rel_tol=1e-7, abs_tol=1e-9 * scale
    )
    on = np.isfinite(bounds)
    assert (rows[on] @ alpha - bounds[on] >= -1e-8 * np.abs(rows[on]).max(axis=1)).all()


@given(problem=well_posed(min_tasks=2, max_tasks=4))
def test_epo_balance_step_lowers_the_non_uniformity_and_spares_the_worst_task(problem) -> None:
    """A balance step maximises `alpha . C a`, the first-order decrease rate of mu_r
    (`grad_l mu_r = a / (r . l)`), subject to not increasing the task with the largest `r_i l_i`
    (`(C alpha)_j >= 0` for j in J*): the worst task does not increase at first order, and
    wherever a single task j with `(C a)_j > 0` is a feasible choice, the rate is at least
    `(C a)_j > 0`, so mu_r decreases at first order."""
    jacobian, losses = problem
    num_tasks = jacobian.shape[0]
    r = torch.full((num_tasks,), 1 / math.sqrt(num_tasks), dtype=F64)
    gram = gramian(jacobian)
    result = EPOSearch().weights(gram, losses)
    assume(bool(result.diagnostics["balance"]) and not bool(result.diagnostics["fallback"]))
    alpha = result.weights
    programme = epo_linear_programme(gram, losses, r)
    scale = float(gram.diagonal().max()) * float(programme.adjustments.abs().max())
    top = (r * losses) == (r * losses).max()
    assert bool(((gram @ alpha)[top] >= -1e-9 * float(gram.diagonal().max())).all())
    rate = float(alpha @ programme.objective)  # alpha . C a
    on = torch.isfinite(programme.bounds)
    for j in torch.nonzero(programme.objective > 0).flatten().tolist():
        vertex = torch.nn.functional.one_hot(torch.tensor(j), num_tasks).to(F64)
        if bool((programme.rows[on] @ vertex >= programme.bounds[on]).all()):
            assert rate >= float(programme.objective[j]) - 1e-9 * scale and rate > 0


def _non_uniformity(losses: torch.Tensor, r: torch.Tensor) -> float:
    l_hat = r * losses / (r * losses).sum()
    return float((l_hat * torch.log(l_hat * losses.shape[0])).sum())


def test_epo_on_the_ray_descends_every_task_and_keeps_the_non_uniformity_at_first_order() -> None:
    """On the ray (r_i l_i equal) mu_r = 0 and its gradient vanishes, so any update leaves it
    unchanged at first order (mu_r(l - t C alpha) = O(t^2)); the dominance step's `C alpha >= 0`
    makes it a descent direction for every task. The losses themselves do leave the ray at first
    order (r * C alpha is not proportional to 1): the LP keeps the *non-uniformity* from
    growing, not the losses on the ray (checked here on J of the golden test)."""
    generator = torch.Generator().manual_seed(2)
    for num_tasks in (2, 3, 4):
        jacobian = torch.randn(num_tasks, 5, generator=generator, dtype=F64)
        r = torch.rand(num_tasks, generator=generator, dtype=F64) + 0.5
        losses = 0.7 / r
        gram = gramian(jacobian)
        result = EPOSearch(preference=r.tolist()).weights(gram, losses)
        assert not bool(result.diagnostics["balance"]) and float(
            result.diagnostics["non_uniformity"]
        ) == pytest.approx(0, abs=1e-15)
        if bool(result.diagnostics["fallback"]):
            continue
        change = gram @ result.weights  # first-order decrease of each loss along -d
        assert bool((change >= -1e-12 * float(gram.diagonal().max())).all())
        for t in (1e-3, 1e-4):
            assert _non_uniformity(losses - t * change, r) <= 10 * t**2 * float(
                change.abs().max() ** 2 / losses.min() ** 2
            )
    r = torch.tensor([1.0, 1.0], dtype=F64)
    gram = gramian(JACOBIAN)
    change = gram @ EPOSearch(preference=[1.0, 1.0])(gram, torch.ones(2, dtype=F64))
    assert abs(float(change[0] - change[1])) > 1e-3  # r * (C alpha) not proportional to 1


def test_epo_against_the_reference_code_pinned() -> None:
    """dbmptr/EPOSearch `multiMNIST/epo_lp.py` (`EPO_LP(m, n, r).get_alpha(l, G, C=True)`, cvxpy
    1.9 with GLPK), run in a scratch folder on G of the golden J and on a K = 3 problem."""
    gram = gramian(JACOBIAN)
    for r, expected in [
        ([1.0, 1.0], [0.21497886272935965, 0.7850211372706402]),
        ([0.5, 0.5], [0.38248943136467994, 0.6175105686353202]),
        ([1.0, 3.0], [0.0, 0.9999999999999999]),
        ([3.0, 1.0], [0.965814721982028, 0.03418527801797192]),
    ]:
        torch.testing.assert_close(
            EPOSearch(preference=r)(gram, LOSSES),
            torch.tensor(expected, dtype=F64),
            rtol=1e-10,
            atol=1e-12,
        )
    jacobian = torch.tensor(
        [[1.0, -2.0, 0.5, 0.0], [0.5, 1.0, -1.0, 2.0], [-1.0, 0.5, 1.5, -0.5]], dtype=F64
    )
    gram = gramian(jacobian)
    for losses, r, expected in [
        (
            [1.0, 2.0, 0.5],
            [1.0, 1.0, 1.0],
            [0.12220875307784462, 0.8777912469221554, 0.0],
        ),  # balance
        (
            [0.3, 0.3, 0.3],
            [1.0, 1.0, 1.0],
            [0.4230769230769232, 0.26153846153846155, 0.3153846153846154],
        ),  # dominance
        ([1.0, 2.0, 0.5], [0.5, 1.0, 2.0], [0.0, 1.0, 0.0]),
    ]:
        weights = EPOSearch(preference=r)(gram, torch.tensor(losses, dtype=F64))
        torch.testing.assert_close(
            weights, torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12
        )


def test_epo_falls_back_to_the_preference_where_the_lp_is_infeasible() -> None:
    """A restricted dominance step with no feasible point (the reference's GLPK reports
    "infeasible" on the same input, and its training loop then uses r / sum(r))."""
    jacobian = torch.tensor(
        [
            [0.2327888769828129, -0.8201415877606197, -0.6790193170266179],
            [1.4250833603472224, 1.9647489653080052, 0.7678397866869353],
            [1.9899093324688415, 0.7182522836815314, -0.4966665173255886],
        ],
        dtype=F64,
    )
    losses = torch.tensor([1.0065501446228702, 1.0019777843207407, 1.0004473970587822], dtype=F64)
    result = EPOSearch().weights(gramian(jacobian), losses)
    assert bool(result.diagnostics["fallback"]) and not bool(result.diagnostics["balance"])
    torch.testing.assert_close(result.weights, torch.full((3,), 1 / 3, dtype=F64))
    torch.testing.assert_close(
        EPOSearch(reduction="sum")(gramian(jacobian), losses), torch.ones(3, dtype=F64)
    )


def test_epo_preference_is_not_relabelled_with_the_tasks() -> None:
    """An unequal preference does not follow a relabelling of the tasks: no permutation claim;
    permuting r with the tasks permutes the weights."""
    step = Step(JACOBIAN, LOSSES)
    assert EPOSearch(preference=[1.0, 3.0]).claims == frozenset({"simplex_weights"})
    with pytest.raises(AssertionError):
        assert_permutation_equivariant(lambda: EPOSearch(preference=[1.0, 3.0]), [step], [1, 0])
    weights = EPOSearch(preference=[1.0, 3.0])(gramian(JACOBIAN), LOSSES)
    swapped = EPOSearch(preference=[3.0, 1.0])(gramian(JACOBIAN[[1, 0]]), LOSSES[[1, 0]])
    torch.testing.assert_close(swapped, weights[[1, 0]], rtol=1e-12, atol=1e-15)
    assert EPOSearch().claims == frozenset({"permutation_equivariant", "simplex_weights"})
    assert EPOSearch(reduction="sum").claims == frozenset({"permutation_equivariant"})


def test_epo_batched_and_defaults() -> None:
    generator = torch.Generator().manual_seed(4)
    jacobians = torch.randn(50, 2, 2, generator=generator, dtype=F64)
    losses = torch.rand(50, 2, generator=generator, dtype=F64) + 0.1
    batched = EPOSearch()(gramian(jacobians), losses)
    for row in range(0, 50, 7):
        torch.testing.assert_close(
            batched[row], EPOSearch()(gramian(jacobians[row]), losses[row]), rtol=1e-12, atol=1e-15
        )
    assert EPOSearch()(torch.ones(1, 1, dtype=F64), torch.ones(1, dtype=F64)).tolist() == [1.0]
    weights = EPOSearch()(
        gramian(torch.randn(7, 9, dtype=F64)), torch.rand(7, dtype=F64) + 0.1
    )  # dense simplex path
    assert abs(float(weights.sum()) - 1) < 1e-12 and bool((weights >= 0).all())
    for arguments in (
        {"preference": [1.0, 0.0]},
        {"preference": [1.0, math.nan]},
        {"balance_threshold": -1.0},
        {"reduction": "x"},
    ):
        with pytest.raises(InvalidHyperparameterError):
            EPOSearch(**arguments)
    with pytest.raises(LossDomainError):
        EPOSearch()(gramian(JACOBIAN), torch.tensor([1.0, 0.0], dtype=F64))


def _two_task_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gramians `[N, 2, 2]` and losses `[N, 2]`: random ones, and degenerate ones (a zero
    gradient, parallel and anti-parallel gradients, nearly parallel ones, norms decades apart)."""
    generator = torch.Generator().manual_seed(seed)
    jac = torch.randn(40, 2, 3, dtype=F64, generator=generator)
    jac[0] = 0.0
    jac[1, 1] = 0.0
    jac[2, 1] = 3.0 * jac[2, 0]
    jac[3, 1] = -0.5 * jac[3, 0]
    jac[4, 1] = jac[4, 0] + 1e-5 * jac[4, 1]
    jac[5, 0] *= 1e-6
    jac[6] *= 1e8
    jac[9, 1] = -0.7 * jac[9, 0] + 1e-5 * jac[9, 1]  # nearly anti-parallel: det ~ 1e-10 G_11 G_22
    jac[10, 1] = -2.0 * jac[10, 0] + 1e-3 * jac[10, 1]
    losses = (
        torch.rand(40, 2, dtype=F64, generator=generator)
        * torch.rand(40, 1, dtype=F64, generator=generator)
        * 4
    )
    losses[7] = torch.tensor([1.0, 1.0], dtype=F64)
    losses[8] = 0.0
    return gramian(jac), losses


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"init_epochs": 0},
        {"preference": 0},
        {"preference": 3, "reduction": "sum"},
        {"preference": [0.2, 1.0]},
        {"init_epochs": None, "num_preferences": 9},
    ],
)
def test_pmtl_two_task_closed_form_matches_the_general_solver(options, monkeypatch) -> None:
    """K = 2 takes a closed form (`_two_task_min_norm`) where the Gramian is well conditioned; it
    gives the general path's weights to rounding, batched and one element at a time, in both
    stages, and it does serve the well-conditioned elements."""
    import core.methods.preference as preference

    gram, losses = _two_task_batch(len(str(options)))
    served = preference._two_task_min_norm
    calls = []

    def spy(*args):
        handled, parts = served(*args)
        calls.append(int(handled.sum()))
        return handled, parts

    monkeypatch.setattr(preference, "_two_task_min_norm", spy)
    for batch in (slice(None), 3, 12, 20):
        fast = ParetoMTL(**options).weights(gram[batch], losses[batch])
        with monkeypatch.context() as general:
            general.setattr(preference, "_CONDITION_FLOOR", math.inf)
            slow = ParetoMTL(**options).weights(gram[batch], losses[batch])
        # the updates agree to rounding everywhere; the weights where G is non-singular (on a
        # singular one they are not unique, and the general solver's choice depends on the batch)
        diff, g = fast.weights - slow.weights, gram[batch]
        distance = torch.einsum("...i,...ij,...j->...", diff, g, diff).clamp_min(0).sqrt()
        largest = torch.diagonal(g, dim1=-2, dim2=-1).amax(dim=-1).sqrt()
        assert bool((distance <= 1e-9 * largest + 1e-300).all()), distance / largest
        g11, g22, g12 = g[..., 0, 0], g[..., 1, 1], g[..., 0, 1]
        regular = g11 * g22 - g12 * g12 > 1e-6 * g11 * g22
        torch.testing.assert_close(
            fast.weights[regular], slow.weights[regular], rtol=1e-9, atol=1e-12
        )
        assert torch.equal(fast.diagnostics["stage"], slow.diagnostics["stage"])
        assert bool((fast.diagnostics["kkt_gap"] <= 1e-10).all())
        # both bounds are at the rounding level of the largest gradient norm (here up to ~1e8 x 3)
        assert bool(
            (
                fast.diagnostics["update_bound"]
                <= slow.diagnostics["update_bound"] + 1e-7 * (1 + largest)
            ).all()
        )
    assert calls[0] > 25  # most of the batch took the closed form


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4, 5])
def test_epo_host_programme_matches_the_torch_one(num_tasks: int) -> None:
    """`_epo_on_host` (EPO's per-step path: numpy, the torch LAPACK calls) against
    `epo_linear_programme` + `simplex_linear_programme`: random, batched, unbatched and degenerate
    inputs (zero, parallel and duplicated gradients, losses on the ray, norms decades apart),
    in both steps, with the uniform and a non-uniform preference."""
    from core.methods.preference import _epo_on_host, epo_linear_programme, simplex_linear_programme

    generator = torch.Generator().manual_seed(num_tasks)
    jac = torch.randn(30, num_tasks, 4, dtype=F64, generator=generator)
    jac[0] = 0.0
    jac[1, -1] = 0.0
    jac[2, -1] = 2.0 * jac[2, 0]
    jac[3] = jac[3, :1]
    jac[4] *= 1e6
    jac[5, 0] *= 1e-6
    losses = torch.rand(30, num_tasks, dtype=F64, generator=generator) + 0.01
    losses[6:12] = 1.0
    losses[12, 0] = 1e-20
    gram = gramian(jac)
    for preference in (
        torch.full((num_tasks,), num_tasks**-0.5, dtype=F64),
        torch.linspace(0.5, 2.0, num_tasks, dtype=F64),
    ):
        for batch in (slice(None), 0, 2, 7, 12, slice(3, 9)):
            programme, solution = _epo_on_host(gram[batch], losses[batch], preference, 1e-4)
            expected = epo_linear_programme(gram[batch], losses[batch], preference)
            reference = simplex_linear_programme(expected.objective, expected.rows, expected.bounds)
            assert torch.equal(programme.balance, expected.balance)
            for got, want in zip(programme, expected, strict=True):
                torch.testing.assert_close(
                    got, want, rtol=1e-12, atol=1e-12 * float(gram[batch].abs().max().clamp_min(1))
                )
            assert torch.equal(solution.feasible, reference.feasible)
            torch.testing.assert_close(
                solution.weights, reference.weights, rtol=1e-9, atol=1e-12, equal_nan=True
            )
            torch.testing.assert_close(
                solution.value, reference.value, rtol=1e-9, atol=1e-9, equal_nan=True
            )
            torch.testing.assert_close(
                solution.error, reference.error, rtol=1e-6, atol=1e-15, equal_nan=True
            )
