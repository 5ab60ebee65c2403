"""Properties every method claims, checked across all of them on hypothesis-drawn Jacobians."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import core
from core.jacobian import gramian
from core.registry import available_methods, make_method
from tests.jacobian_strategies import jacobians, positive_losses

DETERMINISTIC_GRADIENT_WEIGHTINGS = {
    "dibsmtl": lambda: core.DiBSMTL(),
    "dibsmtl_5": lambda: core.DiBSMTL(steps=5),
    "dibsmtl_big_radius": lambda: core.DiBSMTL(steps=8, radius=1.0, inner_step=0.3),
    "normalized_sum": lambda: core.NormalizedSum(),
    "mgda": lambda: core.MGDA(),
    "mgda_l2": lambda: core.MGDA(normalization="l2"),
    "mgda_loss+": lambda: core.MGDA(normalization="loss+", apply_to="normalized"),
}

NONNEGATIVE_GRADIENT_WEIGHTINGS = DETERMINISTIC_GRADIENT_WEIGHTINGS | {
    "nashmtl": lambda: core.NashMTL(warm_start=False),  # alpha > 0, 0 for zero gradients
    "cagrad": lambda: core.CAGrad(),  # 1/K + (dual weights >= 0) * (coefficient >= 0)
    "cagrad_sum_c09": lambda: core.CAGrad(c=0.9, rescale=2, reduction="sum"),
}
"""Gradient weightings whose papers give non-negative weights (IMTL-G's and RGW's can be negative;
PCGrad's are checked with their random orders in tests/core/methods/test_projection_methods.py)."""


@pytest.mark.parametrize("name", sorted(DETERMINISTIC_GRADIENT_WEIGHTINGS))
@given(jacobian=jacobians(min_tasks=2, min_exponent=-4, max_exponent=4), data=st.data())
def test_permutation_equivariance(name, jacobian, data) -> None:
    """Relabelling the tasks relabels the weights: w(P G P^T, P l) = P w(G, l).

    MGDA's weights are unique only where the (normalised) Gramian it minimises over is
    nonsingular; elsewhere the min-norm value is what is unique, so MGDA is checked on the
    value, and on the weights when that Gramian is well conditioned.
    """
    method = DETERMINISTIC_GRADIENT_WEIGHTINGS[name]()
    losses = data.draw(positive_losses(jacobian.shape[0]))
    order = torch.tensor(data.draw(st.permutations(range(jacobian.shape[0]))))
    weights, diagnostics = method.weights(gramian(jacobian), losses)
    permuted, permuted_diagnostics = method.weights(gramian(jacobian[order]), losses[order])
    if not name.startswith("mgda"):
        torch.testing.assert_close(permuted, weights[order], rtol=1e-9, atol=0)
        return
    value = permuted_diagnostics["min_norm"].item() ** 2
    reference = diagnostics["min_norm"].item() ** 2
    norms = gramian(jacobian).diagonal().sqrt()
    solved_scale = {
        "none": torch.ones_like(norms),
        "l2": norms,
        "loss": losses,
        "loss+": losses * norms,
    }[method.normalization]
    safe_scale = torch.where(
        solved_scale > 0, solved_scale, 1.0
    )  # MGDA leaves zero gradients as they are
    solved = gramian(jacobian / safe_scale[:, None])  # the Gramian MGDA actually minimises over
    # the solver's KKT tolerance is 1e-12 relative to the largest diagonal entry of that Gramian
    assert abs(value - reference) <= 1e-10 * max(solved.diagonal().max().item(), 1e-300)
    if torch.linalg.cond(solved).item() < 1e6:
        torch.testing.assert_close(
            permuted, weights[order], rtol=0, atol=1e-6 * weights.abs().max().item()
        )


@pytest.mark.parametrize("name", sorted(NONNEGATIVE_GRADIENT_WEIGHTINGS))
@given(jacobian=jacobians(min_tasks=1, max_tasks=5, min_exponent=-12, max_exponent=12))
def test_weights_are_finite_and_nonnegative(name, jacobian) -> None:
    """Zero rows, rank deficiency and scales from 1e-12 to 1e12 give finite, non-negative weights."""
    losses = torch.ones(jacobian.shape[0], dtype=jacobian.dtype)
    weights = NONNEGATIVE_GRADIENT_WEIGHTINGS[name]()(gramian(jacobian), losses)
    assert weights.shape == losses.shape
    assert bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())


def test_zero_gradient_weights_are_documented_values() -> None:
    jacobian = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    losses = torch.ones(2, dtype=torch.float64)
    assert core.DiBSMTL()(gramian(jacobian), losses)[1].item() == 0.0  # zero direction, zero weight
    assert core.NormalizedSum()(gramian(jacobian), losses)[1].item() == 0.0
    torch.testing.assert_close(
        core.MGDA()(gramian(jacobian), losses), torch.tensor([0.0, 1.0], dtype=torch.float64)
    )


@given(jacobian=jacobians(min_tasks=2, max_tasks=5, min_exponent=-3, max_exponent=3))
def test_rgw_ignores_the_gramian(jacobian) -> None:
    """RGW's weights depend only on its generator; with exchangeable draws (tests of RLW) this
    makes it permutation equivariant in distribution."""
    losses = torch.ones(jacobian.shape[0], dtype=jacobian.dtype)
    first = core.RandomGradientWeighting(generator=torch.Generator().manual_seed(11))(
        gramian(jacobian), losses
    )
    other = core.RandomGradientWeighting(generator=torch.Generator().manual_seed(11))(
        torch.eye(jacobian.shape[0], dtype=jacobian.dtype), losses
    )
    torch.testing.assert_close(first, other)


@pytest.mark.parametrize("name", sorted(NONNEGATIVE_GRADIENT_WEIGHTINGS | {"imtl_g": core.IMTLG}))
def test_batched_gramians_equal_separate_calls(name) -> None:
    generator = torch.Generator().manual_seed(5)
    batch = torch.randn(3, 2, 4, 6, generator=generator, dtype=torch.float64)
    losses = torch.rand(3, 2, 4, generator=generator, dtype=torch.float64) + 0.1
    method = (NONNEGATIVE_GRADIENT_WEIGHTINGS | {"imtl_g": core.IMTLG})[name]()
    batched = method(gramian(batch), losses)
    assert batched.shape == (3, 2, 4)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(
                batched[i, j], method(gramian(batch[i, j]), losses[i, j]), rtol=1e-9, atol=1e-12
            )


def test_registry_builds_every_method_and_rejects_unknown_names() -> None:
    for name in available_methods():
        assert isinstance(make_method(name, num_tasks=2), core.Method)
    with pytest.warns(DeprecationWarning, match="dibsmtl:steps=5"):
        assert make_method("dibsmtl_multi_step").steps == 5
    with pytest.raises(core.errors.UnknownMethodError, match="choose one of: .*dibsmtl"):
        make_method("dibs-mtl")
    with pytest.raises(core.errors.InvalidHyperparameterError, match="num_tasks"):
        make_method("famo")
    assert make_method("uw", num_tasks=4).log_variances.shape == (4,)


def test_every_public_name_is_importable_from_core() -> None:
    for name in core.__all__:
        assert getattr(core, name) is not None


def extreme_losses(num_tasks: int):
    """Loss vectors with entries 0 or 10^e, e in [-12, 12]: zeros are outside some methods' domain."""
    entry = st.one_of(st.just(0.0), st.floats(-12, 12).map(lambda e: 10.0**e))
    return st.lists(entry, min_size=num_tasks, max_size=num_tasks).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )


def run_method(
    method: core.Method, jacobian: torch.Tensor, loss_sequence: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Weights of a few consecutive steps through the lifecycle: after each step `after_step` with
    the next step's losses (FAMO's logit update) and `end_epoch` (DWA: every step an epoch)."""
    outputs = []
    for step, losses in enumerate(loss_sequence):
        if isinstance(method, core.GradientWeighting):
            outputs.append(method(gramian(jacobian), losses))
        elif isinstance(method, core.JacobianAggregation):  # the update must be finite too
            result = method.aggregate(jacobian, losses)
            assert bool(torch.isfinite(result.update).all()), (method, result.update)
            outputs.append(result.head_weights)
        else:
            outputs.append(method(losses))
        if step + 1 < len(loss_sequence):
            method.after_step(loss_sequence[step + 1])
        method.end_epoch()
    return outputs


@pytest.mark.parametrize("name", available_methods())
@given(jacobian=jacobians(min_tasks=2, max_tasks=5), data=st.data())
def test_every_method_gives_finite_weights_or_a_documented_error(name, jacobian, data) -> None:
    """Zero, duplicate, opposite and rank-deficient gradients at scales 1e-12..1e12 and losses that
    are 0 or span 1e-12..1e12, over four steps: weights are finite, or the method raises one of
    the documented input errors (e.g. FAMO and DWA on zero losses) -- never NaN."""
    num_tasks = jacobian.shape[0]
    method = make_method(name, num_tasks=num_tasks)
    loss_sequence = [data.draw(extreme_losses(num_tasks)) for _ in range(4)]
    try:
        outputs = run_method(method, jacobian, loss_sequence)
    except core.errors.MTLInputError as error:
        assert isinstance(error, core.errors.LossDomainError), (
            f"{name}: unexpected {type(error).__name__}: {error}"
        )
        # only a method that declares a loss domain may refuse losses, and only zero ones here
        assert method.loss_domain != "any" and bool((torch.stack(loss_sequence) == 0).any()), (
            f"{name}: {error}"
        )
        return
    for weights in outputs:
        assert weights.shape == (num_tasks,) and bool(torch.isfinite(weights).all()), (
            name,
            weights,
        )


LOSS_WEIGHTINGS = ["uw", "dwa", "famo", "ls", "scaleinvls"]


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
@given(num_tasks=st.integers(2, 5), data=st.data())
def test_loss_weightings_are_permutation_equivariant(name, num_tasks, data) -> None:
    """Relabelling the tasks in every step relabels the weights of every step (the methods' state
    -- DWA's epoch history, FAMO's logits and Adam moments -- is per task)."""
    loss_sequence = [data.draw(positive_losses(num_tasks)) for _ in range(5)]
    order = torch.tensor(data.draw(st.permutations(range(num_tasks))))
    jacobian = torch.zeros(num_tasks, 1, dtype=torch.float64)  # unused by loss weightings
    original = run_method(make_method(name, num_tasks=num_tasks), jacobian, loss_sequence)
    relabelled = run_method(
        make_method(name, num_tasks=num_tasks),
        jacobian,
        [losses[order] for losses in loss_sequence],
    )
    for weights, permuted in zip(original, relabelled):
        torch.testing.assert_close(permuted, weights[order], rtol=1e-12, atol=0)
