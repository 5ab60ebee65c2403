"""MoDo and SDMGrad (core/methods/stochastic_weights.py): hand-derived values, the simplex and
the KKT conditions of their fixed points as hypothesis properties, batched state, checkpoints,
and TorchJD's `MoDoWeighting` / `SDMGradWeighting` on the same inputs.

TorchJD's weightings take a K x K matrix (there `J_1 J_2^T` of two batches); both are fed the
same one-batch Gramian `G = J J^T` that ours get.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.jacobian import gramian
from core.methods.base import HeadGradient
from core.methods.stochastic_weights import (
    MoDo,
    SDMGrad,
    ordered_matvec,
    ordered_sum,
    projected_gradient_residual,
    simplex_projection,
)
from core.pareto.stationarity import min_norm_active_set
from tests.jacobian_strategies import jacobians
from tests.models import TwoLayerMultiTask
from tests.strategies import awkward_two_task_jacobians

F64 = torch.float64
JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
GRAM = gramian(JACOBIAN)
LOSSES = torch.tensor([1.0, 2.0], dtype=F64)


def tensor(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def random_gramians(
    num_steps: int,
    *,
    seed: int,
    num_tasks: int = 3,
    batch_shape: tuple[int, ...] = (),
    spread: float = 2.0,
    scale: float = 1.0,
) -> list[torch.Tensor]:
    """`scale` times Gramians of Jacobians whose rows have norms 10^[0, spread], moving 30% per step."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn((*batch_shape, num_tasks, num_tasks + 2), generator=generator, dtype=F64)
    base = base * 10 ** (
        spread * torch.rand((*batch_shape, num_tasks, 1), generator=generator, dtype=F64)
    )
    steps = []
    for _ in range(num_steps):
        noise = torch.randn(base.shape, generator=generator, dtype=F64)
        steps.append(scale * gramian(base + 0.3 * base.norm(dim=-1, keepdim=True) * noise))
    return steps


def run(method, gramians):
    return [method(gram, torch.ones(gram.shape[:-1], dtype=F64)) for gram in gramians]


CONVERGENT_RUNS = settings(max_examples=max(10, settings().max_examples // 4))
"""The tests that iterate to convergence (thousands of steps per example) draw a quarter of the
profile's examples (10 with `ci`)."""


def kkt_violation(weights: torch.Tensor, gradient: torch.Tensor, matrix: torch.Tensor) -> float:
    """How far `weights` (on the simplex) are from the KKT conditions of `min_{simplex} f` with
    `gradient = grad f(weights)` (f quadratic with Hessian `matrix`): the gradient equals its
    minimum on the support and is at least that minimum elsewhere (relative to `matrix`)."""
    lowest = float(gradient.min())
    support = weights > 0
    spread = float((gradient[support] - lowest).max())
    return spread / float(matrix.abs().max())


# ---------------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------------


@given(values=st.lists(st.floats(-1e12, 1e12), min_size=1, max_size=8), data=st.data())
def test_ordered_sum_depends_only_on_the_terms(values, data) -> None:
    terms = torch.tensor(values, dtype=F64)
    order = torch.tensor(data.draw(st.permutations(range(len(values)))))
    assert torch.equal(ordered_sum(terms[order]), ordered_sum(terms))
    batch = torch.stack([terms, terms[order], terms.flip(0)])
    assert torch.equal(ordered_sum(batch), ordered_sum(terms).expand(3))
    assert math.isclose(float(ordered_sum(terms)), math.fsum(values), rel_tol=1e-12, abs_tol=1e-3)


@given(values=st.lists(st.floats(-1e24, 1e24), min_size=1, max_size=6))
def test_simplex_projection_is_the_euclidean_projection(values) -> None:
    """On the simplex, and `(v - p) . (u - p) <= 0` for every vertex u (the variational
    inequality of the projection p of v), to the rounding of v's scale."""
    point = torch.tensor(values, dtype=F64)
    projected = simplex_projection(point)
    assert bool((projected >= 0).all()) and math.isclose(float(projected.sum()), 1.0, rel_tol=1e-12)
    residual = point - projected
    vertices = torch.eye(len(values), dtype=F64)
    scale = float(point.abs().max()) + 1.0
    assert float(((vertices - projected) @ residual).max()) <= 1e-12 * scale * len(values)


def test_simplex_projection_of_huge_steps_is_an_exact_vertex() -> None:
    assert torch.equal(simplex_projection(tensor(-1e23, -2e23, -3e23)), tensor(1.0, 0.0, 0.0))
    assert torch.equal(simplex_projection(tensor(0.5, 0.5)), tensor(0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# MoDo
# ---------------------------------------------------------------------------------------------


def test_modo_steps_by_hand() -> None:
    """From lambda = (1/2, 1/2): (G + 0.1 I) lambda = (-1.95, 8.05), the step gives (0.695, -0.305),
    projected to (1, 0); from (1, 0): (G + 0.1 I) lambda = (18.1, -22), the step gives
    (-0.81, 2.2), projected to (0, 1); and so on (gamma = 0.1 overshoots on this G)."""
    method = MoDo()
    assert torch.equal(method(GRAM, LOSSES), tensor(1.0, 0.0))
    assert torch.equal(method(GRAM, LOSSES), tensor(0.0, 1.0))
    small = MoDo(gamma=0.001, rho=0.0)
    torch.testing.assert_close(
        small(GRAM, LOSSES),
        tensor(0.5, 0.5) - 0.001 * (tensor(-2.0, 8.0) - 3.0),
        rtol=1e-14,
        atol=0,
    )


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5),
    gamma=st.floats(1e-3, 1e3),
    rho=st.floats(0.0, 1.0),
)
def test_modo_weights_stay_on_the_simplex(jacobian, gamma, rho) -> None:
    method = MoDo(gamma=gamma, rho=rho)
    gram = gramian(jacobian)
    for _ in range(4):
        weights = method(gram, torch.ones(jacobian.shape[0], dtype=F64))
        assert bool((weights >= 0).all()) and abs(float(weights.sum()) - 1) <= 1e-12


@CONVERGENT_RUNS
@given(num_tasks=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), rho=st.floats(0.05, 1.0))
def test_modo_fixed_points_are_the_kkt_points(num_tasks, seed, rho) -> None:
    """The KKT point of `min_simplex lambda^T (G + rho I) lambda` (the exact active-set solution)
    is left unchanged by a step of any gamma; iterating with gamma = 1 / ||G + rho I|| converges
    to it, and the converged point satisfies the KKT conditions."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(num_tasks, num_tasks + 1, generator=generator, dtype=F64)
    jacobian = jacobian / jacobian.norm(
        dim=1, keepdim=True
    )  # ||G|| <= K: 400 steps of 1 / ||G + rho I|| converge
    gram = gramian(jacobian)
    regularised = gram + rho * torch.eye(num_tasks, dtype=F64)
    exact, _, _ = min_norm_active_set(regularised.numpy())
    exact = torch.from_numpy(exact)
    for gamma in (0.01, 0.1, 10.0):
        method = MoDo(gamma=gamma, rho=rho)
        method.load_state_dict({"batch_shape": [], "calls": 1, "weights": exact})
        result = method.weights(gram, torch.ones(num_tasks, dtype=F64))
        torch.testing.assert_close(result.weights, exact, rtol=0, atol=1e-12)
        assert float(result.diagnostics["kkt_residual"]) <= 1e-12
    gamma = 1.0 / float(torch.linalg.eigvalsh(regularised)[-1])
    method = MoDo(gamma=gamma, rho=rho)
    for _ in range(400):
        method(gram, torch.ones(num_tasks, dtype=F64))
    weights = method.simplex_weights
    assert kkt_violation(weights, method.objective_gradient(gram, weights), regularised) <= 1e-8
    torch.testing.assert_close(weights, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.1, 1e-3])
def test_modo_matches_torchjd(gamma: float) -> None:
    """TorchJD's `MoDoWeighting(gamma, rho)` on the same Gramians, along a trajectory: the same
    weights to rounding (both project exactly; ours shifts by the largest entry first)."""
    torchjd = pytest.importorskip("torchjd.aggregation")
    for seed in range(10):
        ours, theirs = MoDo(gamma=gamma, rho=0.1), torchjd.MoDoWeighting(gamma=gamma, rho=0.1)
        for gram in random_gramians(10, seed=seed, num_tasks=2 + seed % 4):
            torch.testing.assert_close(
                ours(gram, torch.ones(gram.shape[-1], dtype=F64)),
                theirs(gram),
                rtol=1e-10,
                atol=1e-12,
            )


# ---------------------------------------------------------------------------------------------
# SDMGrad
# ---------------------------------------------------------------------------------------------


def test_sdmgrad_direction_weights_by_hand() -> None:
    """`(w + lambda / K) / (1 + lambda)`: w = e_2 (see tests/core/methods/test_golden.py) gives (3, 23) / 26;
    "sum" multiplies by K; lambda = 0 returns w itself."""
    assert torch.equal(SDMGrad().direction_weights(tensor(0.0, 1.0)), tensor(0.15, 1.15) / 1.3)
    assert torch.equal(
        SDMGrad(reduction="sum").direction_weights(tensor(0.0, 1.0)), 2 * tensor(0.15, 1.15) / 1.3
    )
    assert torch.equal(
        SDMGrad(lambda_=0.0).direction_weights(tensor(0.25, 0.75)), tensor(0.25, 0.75)
    )
    torch.testing.assert_close(SDMGrad()(GRAM, LOSSES), tensor(3 / 26, 23 / 26), rtol=1e-14, atol=0)


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5),
    lambda_=st.floats(0.0, 10.0),
    lr=st.floats(1e-3, 100.0),
)
def test_sdmgrad_weights_stay_on_the_simplex(jacobian, lambda_, lr) -> None:
    method = SDMGrad(lambda_=lambda_, lr=lr)
    gram = gramian(jacobian)
    for _ in range(3):
        weights = method(gram, torch.ones(jacobian.shape[0], dtype=F64))
        assert bool((weights >= 0).all()) and abs(float(weights.sum()) - 1) <= 1e-12
        kept = method.simplex_weights
        assert bool((kept >= 0).all()) and abs(float(kept.sum()) - 1) <= 1e-12


def sdmgrad_exact(normalized: torch.Tensor, lambda_: float) -> torch.Tensor:
    """The minimiser of `(w + lambda u)^T A (w + lambda u)` over the simplex: the active set with
    the linear term `b = A u` and shift lambda (`w^T A w + 2 lambda b . w`)."""
    num_tasks = normalized.shape[-1]
    linear = (normalized @ torch.full((num_tasks,), 1.0 / num_tasks, dtype=F64)).numpy()
    weights, _, _ = min_norm_active_set(normalized.numpy(), linear=linear, shift=lambda_)
    return torch.from_numpy(np.asarray(weights))


@CONVERGENT_RUNS
@given(num_tasks=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), lambda_=st.floats(0.0, 3.0))
def test_sdmgrad_fixed_points_are_the_kkt_points(num_tasks, seed, lambda_) -> None:
    """The KKT point of the inner quadratic is left unchanged by the inner step for any lr and
    momentum; with a convergent lr (below 1 / ||A||) the iteration reaches it, and the point
    reached satisfies the KKT conditions. (At the default lr = 10 an interior KKT point is a
    repelling fixed point: rounding errors grow several-fold per inner step, so it is checked
    over one inner step there.)"""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(num_tasks, num_tasks + 1, generator=generator, dtype=F64)
    jacobian = jacobian * 10 ** torch.rand(num_tasks, 1, generator=generator, dtype=F64)
    gram = gramian(jacobian)
    normalized = SDMGrad.normalized_gramian(gram)
    exact = sdmgrad_exact(normalized, lambda_)
    stable = 0.5 / float(torch.linalg.eigvalsh(normalized)[-1].clamp_min(1e-12))
    for lr, momentum, iterations in (
        (10.0, 0.5, 1),
        (1000.0, 0.9, 1),
        (stable, 0.5, 20),
        (0.1 * stable, 0.0, 20),
    ):
        method = SDMGrad(lr=lr, momentum=momentum, lambda_=lambda_, iterations=iterations)
        method.load_state_dict({"batch_shape": [], "calls": 1, "weights": exact})
        result = method.weights(gram, torch.ones(num_tasks, dtype=F64))
        tolerance = 1e-13 * max(lr, 1.0) * float(normalized.abs().max())
        torch.testing.assert_close(method.simplex_weights, exact, rtol=0, atol=tolerance)
        torch.testing.assert_close(
            result.weights, method.direction_weights(exact), rtol=0, atol=tolerance
        )
        assert float(result.diagnostics["kkt_residual"]) <= 1e-11
    method = SDMGrad(lr=stable, momentum=0.5, lambda_=lambda_, iterations=3000)
    method(gram, torch.ones(num_tasks, dtype=F64))
    weights = method.simplex_weights
    assert kkt_violation(weights, method.inner_gradient(normalized, weights), normalized) <= 1e-8
    if float(torch.linalg.eigvalsh(normalized)[0]) > 1e-3:  # strictly convex: a unique minimiser
        torch.testing.assert_close(weights, exact, rtol=0, atol=1e-6)


def test_sdmgrad_without_lambda_converges_to_mgda() -> None:
    """lambda = 0 is MGDA's min-norm problem: with a convergent inner step the update is MGDA's."""
    for seed in range(5):
        jacobian = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed), dtype=F64)
        gram = gramian(jacobian)
        sdmgrad = SDMGrad(lambda_=0.0, lr=0.1, iterations=2000)(gram, torch.ones(3, dtype=F64))
        mgda = core.MGDA()(gram, torch.ones(3, dtype=F64))
        torch.testing.assert_close(sdmgrad @ jacobian, mgda @ jacobian, rtol=0, atol=1e-8)


def test_sdmgrad_ignores_a_common_scale_of_the_gradients() -> None:
    """`A = G / s^2` does not change when every loss is multiplied by one number; TorchJD's
    `A = G / (s^2 + 1e-8)` does once `s^2` is near 1e-8 (gradients of norm ~1e-4 and below)."""
    torchjd = pytest.importorskip("torchjd.aggregation")
    gram = random_gramians(1, seed=1, num_tasks=3, spread=0.5)[0]
    reference = SDMGrad(lr=0.1)(gram, torch.ones(3, dtype=F64))
    for factor in (1e-12, 1e-6, 1e6):
        torch.testing.assert_close(
            SDMGrad(lr=0.1)(factor * gram, torch.ones(3, dtype=F64)),
            reference,
            rtol=1e-12,
            atol=1e-14,
        )
    theirs_large = torchjd.SDMGradWeighting(lr=0.1)(gram)
    theirs_small = torchjd.SDMGradWeighting(lr=0.1)(1e-12 * gram)
    torch.testing.assert_close(theirs_large, reference, rtol=1e-7, atol=1e-9)
    assert float((theirs_small - reference).abs().max()) > 1e-3


@pytest.mark.parametrize("lr", [10.0, 0.1])
def test_sdmgrad_matches_torchjd(lr: float) -> None:
    """TorchJD's `SDMGradWeighting(lr, momentum 0.5, n_iter 20, lambda 0.3)` on the same Gramians.

    One call from TorchJD's own kept weights (loaded into ours) agrees to 1e-9; along a whole
    trajectory at lr = 10 the two separate now and then, since the inner map expands rounding
    differences (and TorchJD's 1e-8 in `s^2`) several-fold per inner step until a face of the
    simplex is hit, so a ~1e-16 difference can pick another face a few hundred inner steps
    later. At a convergent lr (0.1) whole trajectories agree. The gradients have norms 1e4 to
    1e6 at lr = 10, so that TorchJD's 1e-8 is below rounding (see the test above for its effect).
    """
    torchjd = pytest.importorskip("torchjd.aggregation")
    for seed in range(10):
        num_tasks = 2 + seed % 4
        theirs = torchjd.SDMGradWeighting(lr=lr)
        trajectory_ours = SDMGrad(lr=lr)
        for gram in random_gramians(
            10, seed=seed, num_tasks=num_tasks, scale=1.0 if lr < 1 else 1e8
        ):
            kept = getattr(theirs, "_w", None)
            ours = SDMGrad(lr=lr)
            if kept is not None:
                ours.load_state_dict(
                    {"batch_shape": [], "calls": 1, "weights": kept.detach().clone()}
                )
            ones = torch.ones(num_tasks, dtype=F64)
            expected = theirs(gram)
            torch.testing.assert_close(ours(gram, ones), expected, rtol=1e-9, atol=1e-9)
            if lr < 1:
                torch.testing.assert_close(
                    trajectory_ours(gram, ones), expected, rtol=1e-7, atol=1e-9
                )


# ---------------------------------------------------------------------------------------------
# Both: batched state, checkpoints, permutations, the engine, errors
# ---------------------------------------------------------------------------------------------

METHODS = {
    "modo": lambda: MoDo(),
    "modo_small_step": lambda: MoDo(gamma=0.003, rho=0.0),
    "sdmgrad": lambda: SDMGrad(),
    "sdmgrad_sum": lambda: SDMGrad(reduction="sum", lambda_=1.0, momentum=0.0),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batched_state_equals_separate_instances_bit_for_bit(name: str) -> None:
    factory = METHODS[name]
    gramians = random_gramians(10, seed=11, num_tasks=4, batch_shape=(2, 3))
    together = run(factory(), gramians)
    for index in ((0, 0), (1, 2), (0, 1)):
        alone = run(factory(), [gram[index] for gram in gramians])
        for batched, single in zip(together, alone):
            assert torch.equal(batched[index], single)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_relabelling_tasks_relabels_the_weights_bit_for_bit(name: str) -> None:
    factory = METHODS[name]
    for seed in range(5):
        order = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
        gramians = random_gramians(10, seed=seed, num_tasks=5, spread=6.0)
        permuted = [gram[order][:, order] for gram in gramians]
        for original, relabelled in zip(run(factory(), gramians), run(factory(), permuted)):
            assert torch.equal(relabelled, original[order])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_round_trips_through_a_weights_only_checkpoint(name: str) -> None:
    factory = METHODS[name]
    gramians = random_gramians(8, seed=12, batch_shape=(2,))
    original = factory()
    assert original.state_dict() == {"batch_shape": [], "calls": 0, "weights": None}
    run(original, gramians[:4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = factory()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.batch_shape == (2,)
    for expected, got in zip(run(original, gramians[4:]), run(restored, gramians[4:])):
        assert torch.equal(expected, got)


def test_the_engine_in_both_modes() -> None:
    """Through `mtl_backward`: the shared gradient is `sum_i w_i g_i`, the heads get `w_i grad l_i`."""
    for factory in (MoDo, SDMGrad):
        for representation_mode in (False, True):
            model = TwoLayerMultiTask(3)
            representation = model.representation()
            info = core.mtl_backward(
                model.losses_from(representation),
                model.shared_params(),
                factory(),
                task_params=model.task_params(),
                representation=representation if representation_mode else None,
            )
            assert abs(float(info.weights.sum()) - 1) <= 1e-12
            reference = TwoLayerMultiTask(3)
            weighted = (info.weights * torch.stack(reference.losses())).sum()
            expected = torch.autograd.grad(weighted, list(reference.parameters()))
            for param, grad in zip(model.parameters(), expected):
                torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factory", [MoDo, SDMGrad])
def test_refusals_leave_the_state_untouched(factory) -> None:
    method = factory()
    method(GRAM, LOSSES)
    kept = method.simplex_weights.clone()
    with pytest.raises(NonFiniteGradientError):
        method(torch.tensor([[math.inf, 0.0], [0.0, 1.0]], dtype=F64), LOSSES)
    with pytest.raises(MTLInputError, match="reset"):
        method(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(MTLInputError, match=r"reset\(batch_shape"):
        method(GRAM.expand(2, 2, 2), LOSSES.expand(2, 2))
    assert torch.equal(method.simplex_weights, kept)
    method.reset()
    assert method.simplex_weights is None and method(
        torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    ).shape == (3,)


def test_zero_gradients_and_one_task() -> None:
    zero = torch.zeros(3, 3, dtype=F64)
    for method in (MoDo(rho=0.0), SDMGrad()):
        torch.testing.assert_close(
            method(zero, torch.ones(3, dtype=F64)), torch.full((3,), 1 / 3, dtype=F64)
        )
    for method in (MoDo(), SDMGrad(), SDMGrad(reduction="sum")):
        assert torch.equal(
            method(torch.full((1, 1), 4.0, dtype=F64), torch.ones(1, dtype=F64)),
            torch.ones(1, dtype=F64),
        )


def test_float32_gramians_give_float32_weights() -> None:
    for method in (MoDo(), SDMGrad()):
        assert method(GRAM.float(), LOSSES.float()).dtype == torch.float32


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: MoDo(gamma=0.0), "gamma"),
        (lambda: MoDo(rho=-0.1), "rho"),
        (lambda: SDMGrad(lr=0.0), "lr"),
        (lambda: SDMGrad(momentum=1.0), "momentum"),
        (lambda: SDMGrad(momentum=-0.5), "momentum"),
        (lambda: SDMGrad(iterations=0), "iterations"),
        (lambda: SDMGrad(lambda_=-1.0), "lambda_"),
        (lambda: SDMGrad(reduction="max"), "reduction"),
    ],
)
def test_invalid_hyperparameters(factory, message) -> None:
    with pytest.raises(InvalidHyperparameterError, match=message):
        factory()


def test_declarations() -> None:
    for cls in (MoDo, SDMGrad):
        assert cls.claims == {"permutation_equivariant", "simplex_weights"}
        assert cls.stateful and not cls.random and cls.loss_domain == "any"
        assert cls.head_gradient is HeadGradient.WEIGHTED and cls.engine_modes == {
            "full",
            "representation",
        }
    assert SDMGrad(reduction="sum").claims == {"permutation_equivariant"}
    assert core.describe_method("modo").hyperparameters == {"gamma": 0.1, "rho": 0.1}
    assert core.describe_method("sdmgrad").hyperparameters == {
        "lr": 10.0,
        "momentum": 0.5,
        "iterations": 20,
        "lambda_": 0.3,
        "reduction": "mean",
    }


def test_ordered_matvec_is_matmul() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix, vector = (
        torch.randn(2, 4, 4, generator=generator, dtype=F64),
        torch.randn(2, 4, generator=generator, dtype=F64),
    )
    torch.testing.assert_close(
        ordered_matvec(matrix, vector), (matrix @ vector[..., None])[..., 0], rtol=1e-13, atol=1e-14
    )
    assert float(projected_gradient_residual(tensor(1.0, 0.0), tensor(-1.0, 5.0))) == 0.0


def _torch_reference_step(
    method, gram: torch.Tensor, current: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One call of MoDo / SDMGrad written with the public torch helpers (the general path the
    numpy iteration mirrors): the new kept weights, the returned weights and the residual."""
    num_tasks = gram.shape[-1]
    if current is None:
        current = torch.full(gram.shape[:-1], 1.0 / num_tasks, dtype=F64)
    gram = 0.5 * (gram + gram.transpose(-1, -2))
    if isinstance(method, MoDo):
        updated = simplex_projection(
            current - method.gamma * method.objective_gradient(gram, current)
        )
        return (
            updated,
            updated,
            projected_gradient_residual(updated, method.objective_gradient(gram, updated)),
        )
    normalized = method.normalized_gramian(gram)
    weights, velocity = current, torch.zeros_like(current)
    for _ in range(method.iterations):
        velocity = method.momentum * velocity + method.inner_gradient(normalized, weights)
        weights = simplex_projection(weights - method.lr * velocity)
    residual = projected_gradient_residual(weights, method.inner_gradient(normalized, weights))
    return weights, method.direction_weights(weights), residual


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "factory",
    [
        MoDo,
        SDMGrad,
        lambda: SDMGrad(lr=0.3, momentum=0.0, reduction="sum"),
        lambda: MoDo(gamma=50.0),
    ],
)
def test_host_iteration_gives_the_bits_of_the_torch_helpers(factory, num_tasks: int) -> None:
    """The numpy iteration of `_weights` (and its K = 2 projection) against the same steps on
    the torch helpers: batched, unbatched and degenerate Gramians (zero, rank one, duplicated
    and hugely scaled gradients), over several calls, bit for bit."""
    generator = torch.Generator().manual_seed(num_tasks)
    jac = torch.randn(6, num_tasks, 3, dtype=F64, generator=generator)
    jac[1] = 0.0
    jac[2] = jac[2, :1]  # every task the same gradient
    jac[3, -1] = 0.0
    jac[4] *= 1e12
    jac[5, 0] *= 1e-9
    for batch in (jac, jac[0]):
        method, kept = factory(), None
        for call in range(4):
            step = batch * (1.0 + call)
            gram = step @ step.transpose(-1, -2)
            result = method.weights(gram, torch.ones(gram.shape[:-1], dtype=F64))
            kept, expected, residual = _torch_reference_step(method, gram, kept)
            assert torch.equal(method.simplex_weights, kept)
            assert torch.equal(result.weights, expected)
            torch.testing.assert_close(
                result.diagnostics["kkt_residual"], residual, rtol=1e-12, atol=1e-15
            )


def test_ordered_sum_of_two_terms_skips_the_sort_bit_for_bit() -> None:
    """K = 2 adds the two terms without sorting them (addition commutes exactly): the bits of the
    sorted sum, signed zeros, infinities and NaN included."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(200, 2, generator=generator, dtype=F64) * 10 ** torch.randint(
        -20, 20, (200, 2), generator=generator
    )
    special = torch.tensor(
        [
            [0.0, -0.0],
            [-0.0, -0.0],
            [math.inf, 1.0],
            [math.inf, -math.inf],
            [math.nan, 1.0],
            [1e308, 1e308],
        ],
        dtype=F64,
    )
    for batch in (torch.cat([values, special]), values[0]):
        ordered, _ = torch.sort(batch, dim=-1)
        expected = ordered[..., 0] + ordered[..., 1]
        got = ordered_sum(batch)
        assert torch.equal(torch.isnan(got), torch.isnan(expected))
        finite = ~torch.isnan(expected)
        assert torch.equal(got[finite], expected[finite]) and torch.equal(
            torch.signbit(got[finite]), torch.signbit(expected[finite])
        )


def _two_task_gramians(seed: int) -> torch.Tensor:
    """The Gramians `[10, 2, 2]` of `tests.strategies.awkward_two_task_jacobians`."""
    return gramian(awkward_two_task_jacobians(seed))


@pytest.mark.parametrize(
    "options",
    [{}, {"lr": 0.5, "reduction": "sum"}, {"iterations": 3, "momentum": 0.0, "lambda_": 0.0}],
)
def test_sdmgrad_two_task_scalar_path_equals_the_numpy_path(options) -> None:
    # 10 rows take the loop on Python floats, 100 rows the numpy arrays: the same bits, call after call
    small, large = SDMGrad(**options), SDMGrad(**options)
    for seed in range(4):
        gram = _two_task_gramians(seed)
        got = small.weights(gram, torch.ones(10, 2, dtype=torch.float64))
        want = large.weights(gram.repeat(10, 1, 1), torch.ones(100, 2, dtype=torch.float64))
        assert torch.equal(got.weights, want.weights[:10])
        assert torch.equal(got.diagnostics["kkt_residual"], want.diagnostics["kkt_residual"][:10])
        assert torch.equal(small.simplex_weights, large.simplex_weights[:10])
