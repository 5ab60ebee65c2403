"""Aligned-MTL, ConFIG, GradVac and FairGrad: defining conditions, golden values, references.

- Aligned-MTL: the aligned Gramian `B G B` has condition number 1 on its range (every nonzero
  eigenvalue equals the scale s), with s the smallest, median or mean eigenvalue kept.
- ConFIG: where the unit gradients have full row rank, the update has the same cosine with every
  task gradient, and its length is the sum of the gradients' projections.
- GradVac: each correction sets the cosine of `g_i'` with `g_j` to the target exactly; the
  Gramian version equals the parameter-space algorithm; the EMA follows the paper's update.
- FairGrad: the residual of `G w = w^(-1/alpha)` (with the ridge) is at the tolerance; alpha = 1
  is Nash-MTL.
References: TorchJD 0.18 (installed; `pytest.importorskip`), the ConFIG authors' `conflictfree`
package (optional), and numbers pinned from them where an optional backend is needed.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.jacobian import gramian
from core.methods.base import HeadGradient
from core.methods.gradient_alignment import (
    AlignedMTL,
    ConFIG,
    FairGrad,
    GradVac,
    canonical_order,
    gradvac_coefficients,
    jacobi_eigh,
)
from core.methods.nash_mtl import NashMTL
from core.registry import make_method
from tests.jacobian_strategies import jacobians

F64 = torch.float64
EPS = float(torch.finfo(F64).eps)
GOLDEN_J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
N1, N2 = math.sqrt(18), math.sqrt(38)
COSINE = -22 / (N1 * N2)


def ones(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=F64)


@st.composite
def independent_jacobians(
    draw, *, min_tasks: int = 2, max_tasks: int = 5, max_exponent: float = 3.0
) -> torch.Tensor:
    """K x D Jacobians (D >= K) of random directions with row scales 10^e, |e| <= max_exponent,
    whose unit rows are well separated (smallest singular value > 0.05)."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    dim = draw(st.integers(num_tasks, num_tasks + 3))
    rows = torch.randn(
        num_tasks,
        dim,
        generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))),
        dtype=F64,
    )
    exponents = draw(
        st.lists(st.floats(-max_exponent, max_exponent), min_size=num_tasks, max_size=num_tasks)
    )
    rows = rows * torch.tensor([10.0**e for e in exponents], dtype=F64)[:, None]
    assume(float(torch.linalg.svdvals(rows / rows.norm(dim=1, keepdim=True))[-1]) > 0.05)
    return rows


def cosine_eigenvalue(jacobian: torch.Tensor) -> float:
    """The smallest eigenvalue of the unit gradients' Gramian (0 with a zero gradient)."""
    norms = jacobian.norm(dim=1)
    if bool((norms == 0).any()):
        return 0.0
    units = jacobian / norms[:, None]
    return float(torch.linalg.eigvalsh(units @ units.T)[0])


# ---------------------------------------------------------------------------------------------
# Aligned-MTL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@given(jacobian=independent_jacobians(min_tasks=1, max_tasks=6))
def test_aligned_gramian_has_condition_number_one_on_its_range(scale_mode, jacobian) -> None:
    """`B G B = s P_range`: every eigenvalue of the aligned Gramian is s or 0, with s the
    smallest, (lower) median or mean of the kept eigenvalues of G (rank-deficient G: below)."""
    gram = gramian(jacobian)
    method = AlignedMTL(scale_mode=scale_mode)
    balance, rank = method.balance_transformation(gram)
    # reference eigenvalues from the SVD of J (accurate to eps sigma_max / sigma, unlike eigvalsh(G))
    eigenvalues = torch.linalg.svdvals(jacobian).flip(0) ** 2
    kept = eigenvalues[eigenvalues > eigenvalues[-1] * gram.shape[0] * EPS]
    assume(int(rank) == kept.numel() and kept.numel() > 0)  # the same rank decision
    scale = {"min": kept[0], "median": kept[(kept.numel() - 1) // 2], "rmse": kept.mean()}[
        scale_mode
    ]
    aligned = torch.linalg.svdvals(balance @ jacobian) ** 2  # the aligned Gramian's eigenvalues
    on_range = aligned[: int(rank)]
    torch.testing.assert_close(on_range, torch.full_like(on_range, float(scale)), rtol=1e-8, atol=0)
    null = aligned[int(rank) :]
    assert null.numel() == 0 or float(null.max()) <= 1e-8 * float(scale)


def test_aligned_rank_deficient_gramian_is_aligned_on_its_range() -> None:
    """A duplicated and an opposite task: rank 2 of 4; B G B = s P_range with s the smaller of the
    two nonzero eigenvalues, and the update lies in the span of the gradients."""
    base = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=F64)
    jacobian = torch.cat([base, base[:1], -2.0 * base[1:]])
    gram = gramian(jacobian)
    balance, rank = AlignedMTL().balance_transformation(gram)
    assert int(rank) == 2
    singular = torch.linalg.svdvals(jacobian) ** 2
    aligned = torch.linalg.svdvals(balance @ jacobian) ** 2
    torch.testing.assert_close(aligned[:2], singular[1].expand(2), rtol=1e-10, atol=0)
    assert float(aligned[2:].max()) <= 1e-10 * float(singular[1])


def test_aligned_golden_values_by_hand() -> None:
    """G = [[18, -22], [-22, 38]]: eigenvalues 28 -+ sqrt(584); `G^(-1/2)` from the 2 x 2 square
    root `G^(1/2) = (G + sqrt(det) I) / sqrt(tr + 2 sqrt(det))`, det = 200; w = sqrt(lambda_min) G^(-1/2) 1."""
    root_det = math.sqrt(200.0)
    inverse_root = math.sqrt(56 + 2 * root_det) * torch.linalg.inv(
        gramian(GOLDEN_J) + root_det * torch.eye(2, dtype=F64)
    )
    expected = math.sqrt(28 - math.sqrt(584)) * inverse_root @ ones(2)
    torch.testing.assert_close(
        AlignedMTL()(gramian(GOLDEN_J), ones(2)), expected, rtol=1e-13, atol=0
    )
    # the reference code sums the aligned gradients; TorchJD averages them
    torch.testing.assert_close(
        AlignedMTL(pref_vector=[0.5, 0.5])(gramian(GOLDEN_J), ones(2)),
        expected / 2,
        rtol=1e-13,
        atol=0,
    )


def test_aligned_gradients_are_orthogonal_with_equal_norms() -> None:
    jacobian = torch.randn(
        4, 7, generator=torch.Generator().manual_seed(0), dtype=F64
    ) * torch.tensor([[1.0], [10.0], [0.1], [3.0]], dtype=F64)
    balance, rank = AlignedMTL().balance_transformation(gramian(jacobian))
    aligned = balance @ jacobian
    smallest = float(torch.linalg.eigvalsh(gramian(jacobian))[0])
    torch.testing.assert_close(
        gramian(aligned), smallest * torch.eye(4, dtype=F64), rtol=0, atol=1e-10
    )
    assert int(rank) == 4


def test_aligned_zero_gramian_keeps_the_preferences() -> None:
    weights = AlignedMTL()(torch.zeros(3, 3, dtype=F64), ones(3))
    torch.testing.assert_close(weights, ones(3))


@given(jacobian=jacobians(min_tasks=2, max_tasks=6))
def test_jacobi_eigendecomposition_reconstructs_the_gramian(jacobian) -> None:
    gram = gramian(jacobian)
    eigenvalues, vectors = jacobi_eigh(gram)
    scale = float(gram.diagonal().max())
    torch.testing.assert_close(
        vectors @ torch.diag(eigenvalues) @ vectors.T,
        gram,
        rtol=0,
        atol=64 * EPS * max(scale, 1e-300),
    )
    torch.testing.assert_close(
        vectors.T @ vectors, torch.eye(gram.shape[0], dtype=F64), rtol=0, atol=1e-13
    )
    assert bool((eigenvalues[1:] >= eigenvalues[:-1]).all())


def test_jacobi_resolves_small_eigenvalues_of_graded_gramians() -> None:
    """Rows of norms 1 and 2.4e3 with nearly parallel directions: Jacobi resolves the smallest
    nonzero eigenvalue to 1e-11 relative (against mpmath at 60 digits), eigh only to ~4e-9."""
    jacobian = torch.tensor(
        [
            [-0.8872731610450508, 0.9179683982506831, 1.5823209388814286],
            [-1.1265744257846122, -1.8399399428654646, 1.0976732110925291],
            [0.017664177780619184, 0.8908597530391207, 0.2563433277396397],
            [-2082.988287455658, 2208.7978098856324, 3787.6927076267575],
        ],
        dtype=F64,
    )
    gram = gramian(jacobian)
    mpmath.mp.dps = 60
    exact = sorted(mpmath.eigsy(mpmath.matrix(gram.tolist()))[0])
    second = float(exact[1])
    assert abs(float(jacobi_eigh(gram)[0][1]) - second) <= 1e-10 * second


# ---------------------------------------------------------------------------------------------
# ConFIG
# ---------------------------------------------------------------------------------------------


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5, min_exponent=-4, max_exponent=4, full_rank=True)
)
def test_config_has_equal_cosines_with_every_gradient(jacobian) -> None:
    """Where U has full row rank: `u_i . d` is the same positive number for every task, and
    `d = (sum_i g_i . d_hat) d_hat`."""
    assume(cosine_eigenvalue(jacobian) > 1e-3)
    weights = ConFIG()(gramian(jacobian), ones(jacobian.shape[0]))
    update = weights @ jacobian
    units = jacobian / jacobian.norm(dim=1, keepdim=True)
    projections = units @ update
    assert float(projections.min()) > 0
    torch.testing.assert_close(
        projections, projections.mean().expand_as(projections), rtol=1e-8, atol=0
    )
    direction = update / update.norm()
    torch.testing.assert_close(update.norm(), (jacobian @ direction).sum(), rtol=1e-10, atol=0)


def test_config_golden_values_by_hand() -> None:
    """K = 2: `(U U^T)^-1 1 = 1 / (1 + c)` so `g_u` is along `u_1 + u_2`, `a = (1/N1, 1/N2)` up to a
    factor, `1^T G a = (1 + c)(N1 + N2)`, `a^T G a = 2 (1 + c)`: w = (N1 + N2) / 2 (1/N1, 1/N2)."""
    expected = torch.tensor([(N1 + N2) / (2 * N1), (N1 + N2) / (2 * N2)], dtype=F64)
    torch.testing.assert_close(ConFIG()(gramian(GOLDEN_J), ones(2)), expected, rtol=1e-13, atol=0)


def test_config_opposite_gradients_give_zero_update() -> None:
    jacobian = torch.tensor([[1.0, 2.0], [-3.0, -6.0], [0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(ConFIG()(gramian(jacobian), ones(3)), torch.zeros(3, dtype=F64))


def test_canonical_order_makes_relabelling_exact() -> None:
    generator = torch.Generator().manual_seed(2)
    jacobian = torch.randn(5, 3, generator=generator, dtype=F64) * torch.tensor(
        [[1e3], [1.0], [1e-2], [5.0], [1.0]], dtype=F64
    )
    gram = gramian(jacobian)
    order = torch.tensor([3, 0, 4, 1, 2])
    permuted = gram[order][:, order]
    for method in (ConFIG(), AlignedMTL()):
        assert torch.equal(method(permuted, ones(5)), method(gram, ones(5))[order])
    assert torch.equal(order[canonical_order(permuted)], canonical_order(gram))


def test_config_matches_the_reference_implementations() -> None:
    """TorchJD's `ConFIG` (installed) and the authors' `conflictfree.ConFIG_update` (optional)."""
    generator = torch.Generator().manual_seed(3)
    checked = 0
    for num_tasks in (2, 3, 5):
        jacobian = torch.randn(num_tasks, 8, generator=generator, dtype=F64)
        expected_updates = []  # (update, relative tolerance)
        aggregation = _optional("torchjd.aggregation")
        if aggregation is not None:
            expected_updates.append((aggregation.ConFIG()(jacobian), 1e-10))
        authors = _optional("conflictfree.grad_operator")
        if authors is not None:  # its default weights are float32 ones: it runs in float32
            expected_updates.append((authors.ConFIG_update(jacobian.float()).double(), 1e-5))
        update = ConFIG()(gramian(jacobian), ones(num_tasks)) @ jacobian
        for expected, rtol in expected_updates:
            torch.testing.assert_close(
                update, expected, rtol=rtol, atol=rtol * float(update.norm())
            )
            checked += 1
    if not checked:
        pytest.skip("neither torchjd nor conflictfree is installed")


CONFIG_PINNED = {
    # torchjd 0.18.0 `ConFIG()(J)` on these Jacobians (the same numbers from conflictfree 0.1.8's
    # `ConFIG_update(J)`); the same inputs as tests/core/methods/test_dual_cone.py's TorchJD comparison
    "golden": (
        [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]],
        [0.15880897580793962, 2.0706067580626217, 2.0706067580626213],
    ),
    "three": (
        [[1.0, 0.0, 0.0], [-0.8, 0.6, 0.0], [-0.3, -0.9, 0.3]],
        [0.01598754889910018, 0.04796264669730057, 0.21290019000677668],
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_PINNED))
def test_config_pinned_reference_updates(case: str) -> None:
    rows, expected = CONFIG_PINNED[case]
    jacobian = torch.tensor(rows, dtype=F64)
    update = ConFIG()(gramian(jacobian), ones(jacobian.shape[0])) @ jacobian
    torch.testing.assert_close(update, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15)


def _optional(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------
# GradVac
# ---------------------------------------------------------------------------------------------


def explicit_gradvac(
    jacobian: torch.Tensor, targets: torch.Tensor, orders: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wang et al. (2021), Alg. 1, on the gradient vectors themselves: the update and the targets."""
    targets = targets.clone()
    corrected = []
    for i in range(jacobian.shape[0]):
        vector = jacobian[i].clone()
        for j in orders[i].tolist():
            norm_i, norm_j = vector.norm(), jacobian[j].norm()
            if norm_i == 0 or norm_j == 0:
                continue
            cosine = float((vector @ jacobian[j] / (norm_i * norm_j)).clamp(-1, 1))
            target = float(targets[i, j])
            if cosine < target and target < 1:
                vector = vector + jacobian[j] * norm_i * (
                    target * math.sqrt(1 - cosine**2) - cosine * math.sqrt(1 - target**2)
                ) / (norm_j * math.sqrt(1 - target**2))
            targets[i, j] = (1 - beta) * target + beta * cosine
        corrected.append(vector)
    return torch.stack(corrected).sum(dim=0), targets


@given(
    jacobian=independent_jacobians(),
    seed=st.integers(0, 2**32 - 1),
    beta=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
    data=st.data(),
)
def test_gradvac_matches_the_parameter_space_algorithm(jacobian, seed, beta, data) -> None:
    """On linearly independent gradients (then no corrected `g_i'` can vanish: on dependent ones
    a correction can cancel `g_i'` exactly, and `||g_i'||^2 = c^T G c` is then known only to
    about `sqrt(eps)` of its terms, so its later cosines are rounding noise, here and in TorchJD)."""
    num_tasks = jacobian.shape[0]
    targets = torch.tensor(
        data.draw(st.lists(st.floats(-0.99, 0.99), min_size=num_tasks**2, max_size=num_tasks**2)),
        dtype=F64,
    )
    targets = targets.reshape(num_tasks, num_tasks)
    orders = GradVac(generator=torch.Generator().manual_seed(seed)).visiting_orders((), num_tasks)
    coefficients, new_targets, _ = gradvac_coefficients(
        gramian(jacobian), targets, orders, beta=beta
    )
    expected_update, expected_targets = explicit_gradvac(jacobian, targets, orders, beta)
    scale = float((coefficients.abs() * jacobian.norm(dim=1)).sum())
    torch.testing.assert_close(
        coefficients.sum(dim=0) @ jacobian, expected_update, rtol=0, atol=1e-9 * max(scale, 1e-300)
    )
    off_diagonal = ~torch.eye(num_tasks, dtype=torch.bool)
    torch.testing.assert_close(
        new_targets[off_diagonal], expected_targets[off_diagonal], rtol=0, atol=1e-9
    )


@given(jacobian=independent_jacobians(min_tasks=2, max_tasks=2), target=st.floats(-0.95, 0.95))
def test_gradvac_correction_reaches_the_target_cosine(jacobian, target) -> None:
    """After the correction, `cos(g_1', g_2)` equals the target exactly (for non-parallel
    gradients; parallel ones span no plane in which to turn `g_1`)."""
    targets = torch.tensor([[0.0, target], [target, 0.0]], dtype=F64)
    orders = GradVac().visiting_orders((), 2)
    coefficients, _, corrections = gradvac_coefficients(
        gramian(jacobian), targets, orders, beta=0.5
    )
    corrected = coefficients[0] @ jacobian
    cosine = float(corrected @ jacobian[1] / (corrected.norm() * jacobian[1].norm()))
    before = float(jacobian[0] @ jacobian[1] / (jacobian[0].norm() * jacobian[1].norm()))
    if before < target:
        assert cosine == pytest.approx(target, abs=1e-9)
    else:
        assert torch.equal(coefficients[0], torch.tensor([1.0, 0.0], dtype=F64))


def test_gradvac_golden_values_by_hand() -> None:
    """First call: targets 0, so each correction is PCGrad's projection, w = (20/9, 30/19); the
    targets become beta c = c / 2. Second call on the same G: `phi = c < c/2`, so
    `C_12 = (N1/N2) k`, `C_21 = (N2/N1) k`, `k = (t sqrt(1 - c^2) - c sqrt(1 - t^2)) / sqrt(1 - t^2)`, t = c/2."""
    method = GradVac(generator=torch.Generator().manual_seed(0))
    gram = gramian(GOLDEN_J)
    torch.testing.assert_close(
        method(gram, ones(2)), torch.tensor([20 / 9, 30 / 19], dtype=F64), rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        method.targets,
        torch.tensor([[0.0, COSINE / 2], [COSINE / 2, 0.0]], dtype=F64),
        rtol=1e-14,
        atol=0,
    )
    target = COSINE / 2
    k = (target * math.sqrt(1 - COSINE**2) - COSINE * math.sqrt(1 - target**2)) / math.sqrt(
        1 - target**2
    )
    expected = torch.tensor([1 + (N2 / N1) * k, 1 + (N1 / N2) * k], dtype=F64)
    torch.testing.assert_close(method(gram, ones(2)), expected, rtol=1e-13, atol=0)


def test_gradvac_batched_state_and_checkpoint() -> None:
    generator = torch.Generator().manual_seed(5)
    steps = [torch.randn(3, 4, 5, generator=generator, dtype=F64) for _ in range(4)]
    batched = GradVac(shuffle=False)
    together = [batched(gramian(j), ones(3, 4)) for j in steps]
    assert batched.targets.shape == (3, 4, 4)
    for row in range(3):
        single = GradVac(shuffle=False)
        for step, expected in zip(steps, together):
            torch.testing.assert_close(
                single(gramian(step[row]), ones(4)), expected[row], rtol=1e-13, atol=1e-15
            )
    state = batched.state_dict()
    restored = GradVac(shuffle=False)
    restored.load_state_dict(state)
    torch.testing.assert_close(
        restored(gramian(steps[0]), ones(3, 4)),
        batched(gramian(steps[0]), ones(3, 4)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(MTLInputError, match="reset"):
        batched(gramian(steps[0][0]), ones(4))
    with pytest.raises(MTLInputError, match="shape"):
        GradVac().load_state_dict({"batch_shape": [2], "targets": torch.zeros(3, 4, 4)})


def test_gradvac_reproducible_with_a_generator_and_global_rng_untouched() -> None:
    generator = torch.Generator().manual_seed(9)
    jacobians_ = [torch.randn(4, 6, generator=generator, dtype=F64) for _ in range(5)]
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        method = GradVac(generator=torch.Generator().manual_seed(11))
        runs.append([method(gramian(j), ones(4)) for j in jacobians_])
    assert torch.equal(torch.get_rng_state(), state)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_gradvac_state_changes_the_weights() -> None:
    jacobian = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    used = GradVac(shuffle=False)
    for _ in range(3):
        used(gramian(jacobian), ones(3))
    assert not torch.equal(
        used(gramian(jacobian), ones(3)), GradVac(shuffle=False)(gramian(jacobian), ones(3))
    )


def test_gradvac_zero_gradient_pairs_are_skipped() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.2]], dtype=F64)
    method = GradVac(shuffle=False)
    weights = method(gramian(jacobian), ones(3))
    assert bool(torch.isfinite(weights).all())
    assert (
        float(method.targets[0, 1]) == 0.0 and float(method.targets[1, 0]) == 0.0
    )  # never measured


def test_gradvac_matches_torchjd() -> None:
    """TorchJD's `GradVacWeighting` (its default eps = 1e-8 here too) over a trajectory, with the
    orders it draws from the global RNG replayed (`torch.randperm` per task)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(7)
    for num_tasks in (2, 3, 4):
        theirs = aggregation.GradVacWeighting(beta=0.5, eps=1e-8)
        targets = torch.zeros(num_tasks, num_tasks, dtype=F64)
        for step in range(5):
            jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
            gram = gramian(jacobian)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(100 + step)
                expected = theirs(gram)
                torch.manual_seed(100 + step)
                orders = []
                for i in range(num_tasks):
                    others = [j for j in range(num_tasks) if j != i]
                    orders.append([others[k] for k in torch.randperm(num_tasks - 1).tolist()])
            coefficients, targets, _ = gradvac_coefficients(
                gram, targets, torch.tensor(orders), beta=0.5, eps=1e-8
            )
            torch.testing.assert_close(coefficients.sum(dim=0), expected, rtol=1e-12, atol=1e-14)


def test_gradvac_hyperparameters() -> None:
    for arguments in (
        {"beta": 1.5},
        {"beta": -0.1},
        {"eps": -1.0},
        {"shuffle": 1},
        {"generator": 3},
    ):
        with pytest.raises(InvalidHyperparameterError):
            GradVac(**arguments)
    method = make_method("gradvac")
    assert (
        method.stateful
        and method.random
        and not method.claims
        and method.head_gradient is HeadGradient.RAW
    )


# ---------------------------------------------------------------------------------------------
# FairGrad
# ---------------------------------------------------------------------------------------------


def fairgrad_residual(
    gram: torch.Tensor, weights: torch.Tensor, alpha: float, ridge: float
) -> torch.Tensor:
    """`w_i^(1/alpha) ((G + ridge diag G) w)_i - 1` over tasks with nonzero gradients."""
    regularised = gram + ridge * torch.diag(gram.diagonal())
    nonzero = gram.diagonal() > 0
    safe = torch.where(nonzero, weights, torch.ones_like(weights))
    return torch.where(
        nonzero, safe ** (1 / alpha) * (regularised @ weights) - 1, torch.zeros_like(weights)
    )


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=6, min_exponent=-4, max_exponent=4),
    alpha=st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0, 20.0]),
)
def test_fairgrad_solves_its_equation(jacobian, alpha) -> None:
    """`w^(1/alpha) (G_r w) = 1` to the tolerance, plus the rounding of `G_r w` relative to its terms."""
    gram = gramian(jacobian)
    method = FairGrad(alpha=alpha)
    result = method.weights(gram, ones(jacobian.shape[0]))
    weights = result.weights
    assert bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())
    nonzero = gram.diagonal() > 0
    assert bool((weights[~nonzero] == 0).all()) and bool((weights[nonzero] > 0).all())
    residual = fairgrad_residual(gram, weights, alpha, method.ridge)
    safe = torch.where(nonzero, weights, torch.ones_like(weights))
    floor = (
        1e3
        * jacobian.shape[0]
        * EPS
        * safe ** (1 / alpha)
        * ((gram.abs() + method.ridge * torch.diag(gram.diagonal())) @ weights)
    )
    assert bool((residual.abs() <= 1e-9 + floor).all()), (residual, floor)


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5, min_exponent=-4, max_exponent=4, full_rank=True)
)
def test_fairgrad_update_serves_every_task(jacobian) -> None:
    """Where the unit Gramian is positive definite: `g_i . d = w_i^(-1/alpha) - ridge G_ii w_i > 0`."""
    assume(cosine_eigenvalue(jacobian) > 1e-3)
    for alpha in (0.5, 2.0):
        method = FairGrad(alpha=alpha)
        weights = method(gramian(jacobian), ones(jacobian.shape[0]))
        products = jacobian @ (weights @ jacobian)
        expected = weights ** (-1 / alpha) - method.ridge * jacobian.norm(dim=1) ** 2 * weights
        norms = jacobian.norm(dim=1)
        floor = (
            64 * jacobian.shape[0] * EPS * norms * float((weights.abs() * norms).sum())
        )  # rounding of g_i . d
        assert bool((products > -floor).all())
        assert bool(((products - expected).abs() <= 1e-8 * expected.abs() + floor).all()), (
            products,
            expected,
            floor,
        )


@given(jacobian=jacobians(min_tasks=1, max_tasks=5))
def test_fairgrad_with_alpha_one_is_nash_mtl(jacobian) -> None:
    gram = gramian(jacobian)
    ours = FairGrad()(gram, ones(jacobian.shape[0]))
    nash = NashMTL(warm_start=False)(gram, ones(jacobian.shape[0]))
    scale = float((ours.abs() * jacobian.norm(dim=1)).sum())
    amplification = (
        float((ours * jacobian.norm(dim=1)).max()) ** 2
    )  # b^2: Nash's rounding amplification
    tolerance = (1e-7 + 1e-14 * amplification) * max(scale, 1e-300)
    assert float((ours @ jacobian - nash @ jacobian).norm()) <= tolerance


def test_fairgrad_golden_values() -> None:
    """alpha = 1: `b_1 = b_2 = (1 + ridge + c)^(-1/2)`, `w_i = b_i / ||g_i||` (as Nash-MTL's golden
    values). alpha = 2: the root of `(G + 1e-10 diag G) w = w^(-1/2)` by mpmath.findroot at 40
    digits: (0.471362922127597028, 0.319454228049985735) (without the ridge: 0.47136292232353749844,
    0.31945422818549523899)."""
    gram = gramian(GOLDEN_J)
    b = (1 + 1e-10 + COSINE) ** -0.5
    torch.testing.assert_close(
        FairGrad()(gram, ones(2)), torch.tensor([b / N1, b / N2], dtype=F64), rtol=1e-13, atol=0
    )
    expected = torch.tensor([0.471362922127597028, 0.319454228049985735], dtype=F64)
    torch.testing.assert_close(FairGrad(alpha=2.0)(gram, ones(2)), expected, rtol=1e-13, atol=0)


def test_fairgrad_single_task_and_zero_gradients() -> None:
    for alpha in (0.5, 1.0, 3.0):
        weights = FairGrad(alpha=alpha)(torch.tensor([[4.0]], dtype=F64), ones(1))
        assert float(weights) == pytest.approx(
            (4.0 * (1 + 1e-10)) ** (-alpha / (1 + alpha)), rel=1e-14
        )
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.3, 1.0]], dtype=F64)
    weights = FairGrad(alpha=2.0)(gramian(jacobian), ones(3))
    assert weights[1] == 0 and bool((weights[[0, 2]] > 0).all())
    assert bool((FairGrad()(torch.zeros(2, 2, dtype=F64), ones(2)) == 0).all())


def test_fairgrad_batched_equals_separate() -> None:
    generator = torch.Generator().manual_seed(8)
    for num_tasks in (2, 4):
        jacobian = torch.randn(5, num_tasks, 3, generator=generator, dtype=F64)
        batched = FairGrad(alpha=2.0)(gramian(jacobian), ones(5, num_tasks))
        for row in range(5):
            torch.testing.assert_close(
                batched[row],
                FairGrad(alpha=2.0)(gramian(jacobian[row]), ones(num_tasks)),
                rtol=1e-12,
                atol=0,
            )


FAIRGRAD_PINNED = {
    # torchjd 0.18.0 `FairGradWeighting(alpha)(G)` (scipy.optimize.least_squares from w = 1/K)
    (1.0, "three"): [9.034998041297307, 9.034998041297307, 5.65439632681558],
    (2.0, "three"): [17.960734359516152, 17.960734359515023, 11.187290357213943],
    (1.0, "four"): [1.3582825288477622, 3.7093461352429076, 2.054344923679647, 1.7254330624540468],
    (2.0, "four"): [1.7211220792624875, 4.821960275547184, 2.637261786119529, 2.2320950219447817],
}
FAIRGRAD_INPUTS = {
    "three": [[1.0, 0.0, 0.0], [-0.8, 0.6, 0.0], [-0.3, -0.9, 0.3]],
    "four": [
        [2.0, 1.0, 0.0, -1.0],
        [-1.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 1.0, 1.0],
        [1.0, 1.0, -3.0, 0.5],
    ],
}


@pytest.mark.parametrize(("alpha", "case"), sorted(FAIRGRAD_PINNED))
def test_fairgrad_against_torchjd_pinned(alpha: float, case: str) -> None:
    """TorchJD's weights agree to ~1e-8 relative. Residuals of the un-regularised equation:
    ours 3e-9..8e-9 (the ridge: `ridge h_i^2`; the regularised one is solved to 1e-11..1e-14),
    TorchJD's least_squares 1e-14 (alpha = 1) and 3e-10..1.6e-9 (alpha = 2) on these well-posed
    inputs (docs/DECISIONS.md: where it fails)."""
    jacobian = torch.tensor(FAIRGRAD_INPUTS[case], dtype=F64)
    gram = gramian(jacobian)
    theirs = torch.tensor(FAIRGRAD_PINNED[(alpha, case)], dtype=F64)
    method = FairGrad(alpha=alpha)
    ours = method(gram, ones(jacobian.shape[0]))
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=0)
    assert float(fairgrad_residual(gram, ours, alpha, method.ridge).abs().max()) <= method.tolerance
    assert float(fairgrad_residual(gram, ours, alpha, 0.0).abs().max()) <= 1e-8
    assert float(fairgrad_residual(gram, theirs, alpha, 0.0).abs().max()) <= 1e-8


def test_fairgrad_against_torchjd_live() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("scipy.optimize")
    generator = torch.Generator().manual_seed(10)
    for num_tasks in (2, 3, 5):
        jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
        gram = gramian(jacobian)
        for alpha in (0.5, 1.0, 2.0):
            expected = aggregation.FairGradWeighting(alpha=alpha)(gram)
            torch.testing.assert_close(
                FairGrad(alpha=alpha)(gram, ones(num_tasks)), expected, rtol=1e-6, atol=0
            )


def test_aligned_mtl_against_torchjd_live() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(12)
    for num_tasks in (2, 3, 5):
        jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
        gram = gramian(jacobian)
        for mode in ("min", "median", "rmse"):
            expected = aggregation.AlignedMTLWeighting(scale_mode=mode)(gram)
            got = AlignedMTL(scale_mode=mode, pref_vector=[1 / num_tasks] * num_tasks)(
                gram, ones(num_tasks)
            )
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Facts and validation
# ---------------------------------------------------------------------------------------------


def test_facts_and_narrowed_claims() -> None:
    assert make_method("fairgrad").claims == {
        "monotone_invariant",
        "rescaling_invariant",
        "permutation_equivariant",
        "non_conflicting",
    }
    assert make_method("fairgrad:alpha=2").claims == {"permutation_equivariant", "non_conflicting"}
    assert make_method("aligned_mtl").claims == {"permutation_equivariant"}
    assert make_method("aligned_mtl:pref_vector=[1,2]").claims == frozenset()
    assert make_method("config").claims == {"permutation_equivariant"}
    for name in ("aligned_mtl", "config", "fairgrad", "gradvac"):
        assert make_method(name).head_gradient is HeadGradient.RAW
    for cls in (core.AlignedMTL, core.ConFIG, core.GradVac, core.FairGrad):
        assert issubclass(cls, core.GradientWeighting)


@pytest.mark.parametrize(
    ("cls", "arguments"),
    [
        (AlignedMTL, {"scale_mode": "max"}),
        (AlignedMTL, {"pref_vector": [-1.0, 1.0]}),
        (ConFIG, {"pref_vector": [0.0]}),
        (FairGrad, {"alpha": 0.0}),
        (FairGrad, {"alpha": -1.0}),
        (FairGrad, {"ridge": 1.0}),
        (FairGrad, {"tolerance": 0.0}),
        (FairGrad, {"max_iterations": 0}),
    ],
)
def test_invalid_hyperparameters_are_refused(cls, arguments) -> None:
    with pytest.raises(InvalidHyperparameterError):
        cls(**arguments)


@pytest.mark.parametrize(
    "name", ["aligned_mtl", "config", "gradvac", "fairgrad", "upgrad", "dualproj"]
)
def test_non_finite_gramians_raise(name: str) -> None:
    gram = torch.tensor([[1.0, math.nan], [math.nan, 1.0]], dtype=F64)
    with pytest.raises(NonFiniteGradientError):
        make_method(name)(gram, ones(2))


@pytest.mark.parametrize(
    "name", ["aligned_mtl", "config", "gradvac", "fairgrad", "upgrad", "dualproj"]
)
def test_toy_sized_batches(name: str) -> None:
    """The toy experiment's input: float64 Gramians [B, 2, 2], some conflicting, one zero row."""
    generator = torch.Generator().manual_seed(13)
    jacobian = torch.randn(64, 2, 2, generator=generator, dtype=F64)
    jacobian[0, 1] = 0.0
    jacobian[1, 1] = -3.0 * jacobian[1, 0]
    weights = make_method(name, generator=torch.Generator().manual_seed(0))(
        gramian(jacobian), ones(64, 2)
    )
    assert weights.shape == (64, 2) and weights.dtype == F64 and bool(torch.isfinite(weights).all())
    assert float(np.abs(weights.numpy()).max()) < 1e6


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_gradvac_host_coefficients_match_the_torch_ones(num_tasks: int, eps: float) -> None:
    """`GradVac` runs `gradvac_coefficients` on numpy arrays (`_gradvac_coefficients_np`): the
    same coefficients, targets and corrections to rounding, batched and alone, on random and
    degenerate Gramians (zero, parallel, anti-parallel gradients, norms decades apart) and
    targets (including +-1, where no correction is finite)."""
    from core.methods.gradient_alignment import _gradvac_coefficients_np, _gradvac_two_tasks_np

    generator = torch.Generator().manual_seed(10 * num_tasks + int(eps > 0))
    jac = torch.randn(12, num_tasks, 5, generator=generator, dtype=F64)
    jac[0] = 0.0
    jac[1, -1] = 0.0
    jac[2, -1] = 2.0 * jac[2, 0]
    jac[3, -1] = -jac[3, 0]
    jac[4, 0] *= 1e-7
    jac[5] *= 1e9
    gram = gramian(jac)
    targets = torch.rand(12, num_tasks, num_tasks, generator=generator, dtype=F64) * 2 - 1
    targets[6] = 1.0
    targets[7] = -1.0
    targets[8] = 0.0
    keys = torch.rand(
        12, num_tasks, num_tasks, generator=generator, dtype=F64
    ) + 2.0 * num_tasks * torch.eye(num_tasks, dtype=F64)
    orders = keys.argsort(dim=-1)[..., : num_tasks - 1]
    for batch in (slice(None), 0, 3, 5, 6, slice(2, 9)):
        expected = gradvac_coefficients(
            gram[batch], targets[batch], orders[batch], beta=0.3, eps=eps
        )
        got = _gradvac_coefficients_np(
            gram[batch].numpy(), targets[batch].numpy(), orders[batch].numpy(), 0.3, eps
        )
        for have, want in zip(got, expected, strict=True):
            torch.testing.assert_close(
                torch.from_numpy(np.asarray(have)), want, rtol=1e-10, atol=1e-12
            )
        if num_tasks == 2:  # the written-out K = 2 step (no orders: each task meets the other)
            weights, new_targets, corrections = _gradvac_two_tasks_np(
                gram[batch].numpy(), targets[batch].numpy(), 0.3, eps
            )
            torch.testing.assert_close(
                torch.from_numpy(np.asarray(weights)),
                expected[0].sum(dim=-2),
                rtol=1e-10,
                atol=1e-12,
            )
            torch.testing.assert_close(
                torch.from_numpy(new_targets), expected[1], rtol=1e-10, atol=1e-12
            )
            assert torch.equal(torch.from_numpy(np.asarray(corrections)), expected[2])


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4])
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_host_path_matches_the_balance_transformation(
    num_tasks: int, scale_mode: str
) -> None:
    """`AlignedMTL` runs on numpy arrays (`_balance_np`, ordered sums): its weights are
    `balance_transformation(G) p` (the torch path) to rounding, and its rank the same, batched
    and alone, on random and degenerate Gramians (zero, rank one, norms decades apart)."""
    generator = torch.Generator().manual_seed(num_tasks)
    jac = torch.randn(10, num_tasks, 5, generator=generator, dtype=F64)
    jac[0] = 0.0
    jac[1] = jac[1, :1]
    jac[2, -1] = 3.0 * jac[2, 0]
    jac[3, 0] *= 1e-6
    jac[4] *= 1e8
    gram = gramian(jac)
    for pref_vector in (None, [float(i + 1) for i in range(num_tasks)]):
        method = AlignedMTL(scale_mode=scale_mode, pref_vector=pref_vector)
        preference = (
            torch.ones(num_tasks, dtype=F64)
            if pref_vector is None
            else torch.tensor(pref_vector, dtype=F64)
        )
        for batch in (slice(None), 0, 1, 4, 5, slice(2, 7)):
            result = method.weights(gram[batch], ones(*gram[batch].shape[:-1]))
            balance, rank = method.balance_transformation(gram[batch])
            expected = (balance @ preference[:, None])[..., 0]
            size = (
                torch.linalg.matrix_norm(balance, ord=2).clamp_min(1)[..., None]
                * preference.abs().max()
            )
            torch.testing.assert_close(
                result.weights, expected, rtol=0, atol=1e-12 * float(size.max())
            )
            assert torch.equal(result.diagnostics["rank"], rank)


def _config_torch_reference(gram: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """ConFIG's weights by the module's torch helpers and `torch.linalg.eigh` (the general
    torch formulation of what `ConFIG._weights` computes on numpy arrays)."""
    from core.methods.gradient_alignment import _cosines, _reorder, _restore

    gram = 0.5 * (gram + gram.transpose(-1, -2))
    order = canonical_order(gram)
    gram = _reorder(gram, order)
    preference = preference[order]
    cosine, norms, nonzero = _cosines(gram)
    eigenvalues, vectors = torch.linalg.eigh(cosine)
    kept = eigenvalues > 1e-10 * eigenvalues[..., -1:].clamp_min(0)
    inverse = torch.where(
        kept,
        1.0 / torch.where(kept, eigenvalues, torch.ones_like(eigenvalues)),
        torch.zeros_like(eigenvalues),
    )
    coordinates = vectors.transpose(-1, -2) @ preference[..., None]
    beta = (vectors @ (inverse[..., None] * coordinates))[..., 0]
    squared = (coordinates[..., 0] ** 2 * inverse).sum(dim=-1)
    projected = (vectors @ (kept[..., None] * coordinates))[..., 0]
    coefficients = torch.where(
        nonzero, beta / torch.where(nonzero, norms, torch.ones_like(norms)), torch.zeros_like(beta)
    )
    length = (norms * projected).sum(dim=-1)
    usable = squared > 0
    factor = torch.where(
        usable,
        length / torch.where(usable, squared, torch.ones_like(squared)),
        torch.zeros_like(squared),
    )
    return _restore(coefficients * factor[..., None], order)


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4])
def test_config_host_path_matches_the_torch_formulation(num_tasks: int) -> None:
    """`ConFIG` runs on numpy arrays (`np.linalg.eigh`, ordered sums): the torch formulation's
    weights to rounding, batched and alone, on random and degenerate Gramians (zero, parallel,
    anti-parallel gradients, norms decades apart)."""
    from core.methods.gradient_alignment import ConFIG

    generator = torch.Generator().manual_seed(num_tasks)
    jac = torch.randn(10, num_tasks, 5, generator=generator, dtype=F64)
    jac[0] = 0.0
    jac[1] = jac[1, :1]
    jac[2, -1] = -3.0 * jac[2, 0]
    jac[3, 0] *= 1e-6
    jac[4] *= 1e8
    gram = gramian(jac)
    for pref_vector in (None, [float(i + 1) for i in range(num_tasks)]):
        preference = (
            torch.ones(num_tasks, dtype=F64)
            if pref_vector is None
            else torch.tensor(pref_vector, dtype=F64)
        )
        for batch in (slice(None), 0, 1, 2, 4, slice(2, 7)):
            got = ConFIG(pref_vector=pref_vector)(gram[batch], ones(*gram[batch].shape[:-1]))
            expected = _config_torch_reference(gram[batch], preference)
            norms = torch.diagonal(gram[batch], dim1=-2, dim2=-1).sqrt()
            # compare the updates' contributions w_i ||g_i||, to rounding of the largest
            scale = (
                (
                    norms.sum(dim=-1, keepdim=True)
                    * (expected * norms).abs().amax(dim=-1, keepdim=True)
                )
                .sqrt()
                .clamp_min(1e-300)
            )
            torch.testing.assert_close(
                got * norms, expected * norms, rtol=1e-9, atol=float((1e-9 * scale).max())
            )


def test_fairgrad_two_tasks_at_alpha_one_is_the_closed_form_without_iterations() -> None:
    """K = 2, alpha = 1: `G_r w = 1/w` has the solution `w_i = 1 / (n_i sqrt(1 + ridge + cos))`, the
    solver's start; it is returned without Newton iterations, also next to Pareto stationarity
    (cos = -1 + 1e-9), where the residual cannot reach the tolerance in float64."""
    from core.methods.gradient_alignment import FairGrad

    method = FairGrad()
    for cos in (0.3, -0.9, -1 + 1e-9):
        norms = torch.tensor([2.0, 0.5], dtype=torch.float64)
        gramian = torch.tensor([[4.0, cos], [cos, 0.25]], dtype=torch.float64)
        weights, _, iterations = method.solve(gramian)
        expected = 1 / (norms * math.sqrt(1 + method.ridge + cos))
        assert iterations == 0
        torch.testing.assert_close(weights, expected, rtol=1e-5, atol=0)
    three = torch.tensor([[1.0, -0.5, 0.2], [-0.5, 2.0, 0.1], [0.2, 0.1, 0.5]], dtype=torch.float64)
    assert method.solve(three)[2] > 0  # K = 3 still solves by Newton
