"""GradNorm, IMTL-L and IMTL (core/methods/learned_weights.py): hand-derived values, the
defining conditions as hypothesis properties, batched state, checkpoints and the engine.

The canonical input is J = [[-4, 1, 1], [6, 1, 1]] (G = [[18, -22], [-22, 38]]) with losses [1, 2].
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import core
from core.errors import (
    InvalidHyperparameterError,
    LossDomainError,
    MTLInputError,
    NonFiniteGradientError,
)
from core.jacobian import gramian
from core.methods import learned_weights
from core.methods.base import HeadGradient
from core.methods.learned_weights import (
    IMTL,
    IMTLL,
    GradNorm,
    gradnorm_loss,
    gradnorm_subgradient,
    gradnorm_targets,
    renormalize,
)
from core.methods.projection import IMTLG
from tests.claims import Step, cosine_eigenvalue
from tests.jacobian_strategies import jacobians
from tests.models import TwoLayerMultiTask
from tests.strategies import awkward_two_task_jacobians

F64 = torch.float64
JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
GRAM = gramian(JACOBIAN)
LOSSES = torch.tensor([1.0, 2.0], dtype=F64)
N1, N2 = math.sqrt(18), math.sqrt(38)


def tensor(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def trajectory(
    num_steps: int, *, seed: int, num_tasks: int = 3, batch_shape: tuple[int, ...] = ()
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(Gramian, positive losses) pairs from random Jacobians."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(num_steps):
        jacobian = torch.randn((*batch_shape, num_tasks, 4), generator=generator, dtype=F64)
        losses = torch.rand((*batch_shape, num_tasks), generator=generator, dtype=F64) + 0.1
        steps.append((gramian(jacobian), losses))
    return steps


positive_losses = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=5).map(
    lambda values: torch.tensor(values, dtype=F64)
)


# ---------------------------------------------------------------------------------------------
# GradNorm
# ---------------------------------------------------------------------------------------------


def test_gradnorm_second_step_by_hand() -> None:
    """Step 1 uses w(0) = 1. Then r = 1 (the losses are l(0)), the targets are the mean weighted
    norm (N1 + N2) / 2, task 1 is below it and task 2 above: w = (1 + lr N1, 1 - lr N2), renormalised
    to sum 2. Its GradNorm loss is |N1 - T| + |N2 - T| = N2 - N1."""
    method, lr = GradNorm(), 1e-3
    first = method.weights(GRAM, LOSSES)
    torch.testing.assert_close(first.weights, tensor(1.0, 1.0))
    torch.testing.assert_close(first.diagnostics["gradnorm_loss"], torch.tensor(N2 - N1, dtype=F64))
    stepped = tensor(1 + lr * N1, 1 - lr * N2)
    torch.testing.assert_close(
        method(GRAM, LOSSES), 2 * stepped / stepped.sum(), rtol=1e-14, atol=0
    )


def test_gradnorm_targets_follow_the_training_rates() -> None:
    """With alpha = 1 and equal weighted norms, the task whose loss fell least (largest
    l / l(0)) gets the largest target and gains weight."""
    method = GradNorm(alpha=1.0, lr=0.01)
    gram = torch.eye(2, dtype=F64)
    method(gram, tensor(1.0, 1.0))
    weights = method(
        gram, tensor(0.9, 0.3)
    )  # after the first step: unchanged (norms equal the mean)
    torch.testing.assert_close(weights, tensor(1.0, 1.0))
    ratios = tensor(0.9, 0.3)
    targets = gradnorm_targets(tensor(1.0, 1.0), tensor(1.0, 1.0), ratios, 1.0)
    torch.testing.assert_close(targets, ratios / ratios.mean())
    following = method(gram, tensor(0.9, 0.3))
    assert float(following[0]) > 1 > float(following[1])


@given(
    weights=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=5),
    data=st.data(),
    alpha=st.floats(0.0, 3.0),
)
def test_gradnorm_subgradient_step_decreases_its_loss(weights, data, alpha) -> None:
    """The defining step: with the targets held constant, a step of lr below every
    `|w_i ||g_i|| - T_i| / ||g_i||^2` decreases `L_grad` by exactly `lr sum_i ||g_i||^2` over the
    tasks off their kink; the renormalised weights are non-negative and sum to K."""
    num_tasks = len(weights)
    w = torch.tensor(weights, dtype=F64)
    norms = torch.tensor(
        data.draw(st.lists(st.floats(0.0, 1e3), min_size=num_tasks, max_size=num_tasks)), dtype=F64
    )
    ratios = torch.tensor(
        data.draw(st.lists(st.floats(1e-3, 1e3), min_size=num_tasks, max_size=num_tasks)), dtype=F64
    )
    targets = gradnorm_targets(w, norms, ratios, alpha)
    gaps = (w * norms - targets).abs()
    moving = (norms > 0) & (gaps > 0)
    assume(bool(moving.any()))
    assume(
        bool((gaps[moving] > 1e-6 * (w * norms + targets)[moving]).all())
    )  # no term at its kink to rounding
    lr = 0.5 * float((gaps[moving] / norms[moving] ** 2).min())
    subgradient = gradnorm_subgradient(w, norms, targets)
    torch.testing.assert_close(subgradient.abs(), torch.where(gaps > 0, norms, 0.0))
    before, after = (
        gradnorm_loss(w, norms, targets),
        gradnorm_loss(w - lr * subgradient, norms, targets),
    )
    decrease = lr * float((subgradient**2).sum())
    assert float(after) < float(before)
    assert math.isclose(float(before - after), decrease, rel_tol=1e-6, abs_tol=1e-9 * float(before))
    renormalised = renormalize((w - lr * subgradient).clamp_min(0))
    assert bool((renormalised >= 0).all())
    assert math.isclose(float(renormalised.sum()), num_tasks, rel_tol=1e-12)


def test_gradnorm_subgradient_is_autograd_of_the_loss_with_detached_targets() -> None:
    """LibMTL's and the DiBS-MTL repository's formulation: autograd of `sum_i |w_i ||g_i|| - T_i|`
    in w with the targets detached gives the closed-form subgradient."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        w = (torch.rand(4, generator=generator, dtype=F64) * 2).requires_grad_(True)
        norms = torch.rand(4, generator=generator, dtype=F64) * 5
        ratios = torch.rand(4, generator=generator, dtype=F64) + 0.1
        weighted = w * norms
        targets = (weighted.mean() * (ratios / ratios.mean()) ** 1.5).detach()
        (weighted - targets).abs().sum().backward()
        expected = gradnorm_subgradient(
            w.detach(), norms, gradnorm_targets(w.detach(), norms, ratios, 1.5)
        )
        torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-12)


def test_gradnorm_renormalisation_can_raise_the_loss() -> None:
    """Documented: the step decreases L_grad, the renormalisation to sum K can raise it again
    (w = (1.9, 0.1), norms (10, 1), r = (1.6, 0.4), alpha = 1.5: both tasks below target)."""
    w, norms, ratios = tensor(1.9, 0.1), tensor(10.0, 1.0), tensor(1.6, 0.4)
    targets = gradnorm_targets(w, norms, ratios, 1.5)
    stepped = w - 1e-3 * gradnorm_subgradient(w, norms, targets)
    before = float(gradnorm_loss(w, norms, targets))
    assert (
        float(gradnorm_loss(stepped, norms, targets))
        < before
        < float(gradnorm_loss(renormalize(stepped), norms, targets))
    )


def test_gradnorm_keeps_weights_summing_to_k_and_clips_at_zero() -> None:
    method = GradNorm(lr=10.0)  # steps far larger than the weights
    for gram, losses in trajectory(20, seed=1):
        weights = method(gram, losses)
        assert bool((weights >= 0).all()) and math.isclose(float(weights.sum()), 3.0, rel_tol=1e-12)
    zero = GradNorm()
    for _ in range(3):  # zero gradients: no step, weights stay 1
        torch.testing.assert_close(zero(torch.zeros(2, 2, dtype=F64), LOSSES), tensor(1.0, 1.0))


def test_loss_domains() -> None:
    with pytest.raises(LossDomainError, match="positive"):
        GradNorm()(GRAM, tensor(1.0, 0.0))
    for method in (IMTL(), IMTLL(2)):
        with pytest.raises(LossDomainError, match="non-negative"):
            method(GRAM, tensor(1.0, -1.0)) if isinstance(method, IMTL) else method(
                tensor(1.0, -1.0)
            )
    method = IMTL()
    for _ in range(3):  # a zero loss: finite weights, its scale rises by lr per step
        assert bool(torch.isfinite(method(GRAM, tensor(0.0, 2.0))).all())
    torch.testing.assert_close(method.log_scales[0], torch.tensor(0.075, dtype=F64))


# ---------------------------------------------------------------------------------------------
# IMTL-L
# ---------------------------------------------------------------------------------------------


@given(losses=positive_losses)
def test_imtl_l_optimum_is_minus_log_loss(losses) -> None:
    """`e^s l - s` is minimised at s = -log l: there its derivative `e^s l - 1` vanishes, the scaled
    losses are 1 and the weights are 1 / l; gradient steps on it converge there."""
    method = IMTLL(len(losses)).to(dtype=F64)
    with torch.no_grad():
        method.log_scales.copy_(-torch.log(losses))
    weights = method(losses)
    objective = (weights * losses).sum() + method.penalty()
    (gradient,) = torch.autograd.grad(objective, method.log_scales)
    torch.testing.assert_close(gradient, torch.zeros_like(losses), atol=1e-12, rtol=0)
    torch.testing.assert_close(weights.detach(), 1 / losses, rtol=1e-12, atol=0)
    for shift in (-1.0, 1.0):  # strictly larger away from the optimum (convex in s)
        with torch.no_grad():
            method.log_scales.copy_(-torch.log(losses) + shift)
        shifted = (method(losses) * losses).sum() + method.penalty()
        assert float(shifted.detach()) > float(objective.detach())


def test_imtl_l_through_the_engine_trains_its_scales_to_minus_log_loss() -> None:
    model = TwoLayerMultiTask(2)
    method = IMTLL(2).to(dtype=F64)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.2)
    values = torch.stack(model.losses()).detach()
    for _ in range(300):
        optimizer.zero_grad()
        model.zero_grad_all()
        info = core.mtl_backward(
            model.losses(), model.shared_params(), method, task_params=model.task_params()
        )
        optimizer.step()
    torch.testing.assert_close(method.log_scales.detach(), -torch.log(values), rtol=0, atol=1e-8)
    torch.testing.assert_close(info.weights.double(), 1 / values, rtol=1e-7, atol=0)
    assert method.head_gradient is HeadGradient.WEIGHTED


def test_imtl_l_batched_scales_and_reset() -> None:
    method = IMTLL(2, initial_scale=0.5)
    assert method(torch.ones(3, 2)).shape == (3, 2)
    assert method.log_scales.shape == (3, 2)
    method.reset()
    assert torch.equal(method.log_scales.detach(), torch.full((2,), 0.5))
    with pytest.raises(MTLInputError, match="num_tasks"):
        method(torch.ones(3))


# ---------------------------------------------------------------------------------------------
# IMTL
# ---------------------------------------------------------------------------------------------


def imtl_at(log_scales: torch.Tensor) -> IMTL:
    method = IMTL()
    method.load_state_dict({"batch_shape": [], "calls": 1, "log_scales": log_scales})
    return method


@given(jacobian=jacobians(min_tasks=2, max_tasks=5), data=st.data())
def test_imtl_equal_projections_at_any_scales(jacobian, data) -> None:
    """With s fixed, the update `d = sum_i alpha_i e^{s_i} g_i` is IMTL-G's on the scaled
    gradients (alpha sums to 1) and has equal projections onto every unit gradient."""
    num_tasks = jacobian.shape[0]
    norms = jacobian.norm(dim=1)
    assume(bool((norms > 0).all()))
    log_scales = torch.tensor(
        data.draw(st.lists(st.floats(-5, 5), min_size=num_tasks, max_size=num_tasks)), dtype=F64
    )
    result = imtl_at(log_scales).weights(gramian(jacobian), torch.ones(num_tasks, dtype=F64))
    scaled = jacobian * torch.exp(log_scales)[:, None]
    alpha = IMTLG().weights(gramian(scaled), torch.ones(num_tasks, dtype=F64))
    assume(not bool(alpha.diagnostics["floored"]))
    if (
        float(cosine_eigenvalue(Step(jacobian, torch.ones(num_tasks, dtype=F64)))) > 1e-6
    ):  # weights determined
        torch.testing.assert_close(
            result.weights / torch.exp(log_scales), alpha.weights, rtol=1e-9, atol=1e-12
        )
    torch.testing.assert_close(result.diagnostics["log_scales"], log_scales)
    update = result.weights @ jacobian
    projections = (jacobian / norms[:, None]) @ update
    size = float((result.weights.abs() * norms).sum())
    assert float(projections.max() - projections.min()) <= 1e-8 * size


def test_imtl_matches_the_papers_closed_form_on_scaled_gradients() -> None:
    """The hybrid of LibMTL's IMTL: `alpha_{2:K} = g_1 U^T (D U^T)^{-1}` on the scaled gradients
    `e^{s_i} g_i` (D, U the differences of the scaled and unit gradients), weights alpha e^s."""
    generator = torch.Generator().manual_seed(5)
    for num_tasks in (2, 3, 4):
        jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=F64)
        log_scales = torch.randn(num_tasks, generator=generator, dtype=F64)
        scaled = jacobian * torch.exp(log_scales)[:, None]
        units = scaled / scaled.norm(dim=1, keepdim=True)
        differences, unit_differences = scaled[:1] - scaled[1:], units[:1] - units[1:]
        tail = scaled[0] @ unit_differences.T @ torch.linalg.inv(differences @ unit_differences.T)
        alpha = torch.cat([1 - tail.sum(0, keepdim=True), tail])
        torch.testing.assert_close(
            imtl_at(log_scales)(gramian(jacobian), torch.ones(num_tasks, dtype=F64)),
            alpha * torch.exp(log_scales),
            rtol=1e-9,
            atol=1e-12,
        )


def test_imtl_scale_update_and_its_fixed_point() -> None:
    """`s <- s - lr (e^s l - 1)`: from s = 0 with l = (1, 2), s = (0, -lr); at s = -log l it stays."""
    method = IMTL()
    first = method(GRAM, LOSSES)
    torch.testing.assert_close(first, tensor(N2 / (N1 + N2), N1 / (N1 + N2)))
    torch.testing.assert_close(method.log_scales, tensor(0.0, -0.025))
    # IMTL-G on diag(1, e^-0.025) g: alpha proportional to (1 / N1, e^0.025 / N2); w = alpha e^s
    expected = tensor(1 / N1, 1 / N2) / (1 / N1 + math.exp(0.025) / N2)
    torch.testing.assert_close(method(GRAM, LOSSES), expected, rtol=1e-14, atol=0)
    optimum = imtl_at(-torch.log(LOSSES))
    optimum(GRAM, LOSSES)
    torch.testing.assert_close(optimum.log_scales, -torch.log(LOSSES), rtol=0, atol=1e-15)


def test_imtl_extreme_scales_stay_finite() -> None:
    """The common factor e^{max s} is divided out before IMTL-G: s = (400, 390) (e^{2 s} beyond
    float64 in the Gramian D G D) still gives IMTL-G's alpha on the scaled gradients."""
    scales = tensor(400.0, 390.0)
    result = imtl_at(scales).weights(GRAM, LOSSES)
    alpha = result.weights * torch.exp(-scales)
    expected = tensor(1 / N1, math.exp(10) / N2)  # alpha_i proportional to 1 / (e^{s_i} ||g_i||)
    torch.testing.assert_close(alpha, expected / expected.sum(), rtol=1e-12, atol=0)


def test_imtl_heads_receive_the_weighted_gradient_through_the_engine() -> None:
    for representation_mode in (False, True):
        model = TwoLayerMultiTask(3)
        method = IMTL()
        representation = model.representation()
        losses = model.losses_from(representation)
        info = core.mtl_backward(
            losses,
            model.shared_params(),
            method,
            task_params=model.task_params(),
            representation=representation if representation_mode else None,
        )
        for i, head in enumerate(model.heads):
            reference = TwoLayerMultiTask(3)
            expected = torch.autograd.grad(
                reference.losses()[i], list(reference.heads[i].parameters())
            )
            for param, grad in zip(head.parameters(), expected):
                torch.testing.assert_close(
                    param.grad, info.weights[i] * grad, rtol=1e-12, atol=1e-14
                )


# ---------------------------------------------------------------------------------------------
# All three: batched state, checkpoints, permutations, errors
# ---------------------------------------------------------------------------------------------

GRADIENT_WEIGHTINGS = {
    "gradnorm": lambda: GradNorm(),
    "gradnorm_alpha0": lambda: GradNorm(alpha=0.0, lr=0.05),
    "imtl": lambda: IMTL(lr=0.2),
}


def run(method, steps):
    return [method(gram, losses) for gram, losses in steps]


@pytest.mark.parametrize("name", sorted(GRADIENT_WEIGHTINGS))
def test_batched_state_equals_separate_instances_bit_for_bit(name: str) -> None:
    factory = GRADIENT_WEIGHTINGS[name]
    steps = trajectory(8, seed=7, batch_shape=(2, 3))
    together = run(factory(), steps)
    for index in ((0, 0), (1, 2), (0, 1)):
        alone = run(factory(), [(gram[index], losses[index]) for gram, losses in steps])
        for batched, single in zip(together, alone):
            if name.startswith("imtl"):  # IMTL-G's batched pseudo-inverse agrees to rounding
                torch.testing.assert_close(batched[index], single, rtol=1e-12, atol=0)
            else:
                assert torch.equal(batched[index], single)


@pytest.mark.parametrize("name", sorted(GRADIENT_WEIGHTINGS))
def test_relabelling_tasks_relabels_the_weights_bit_for_bit(name: str) -> None:
    factory = GRADIENT_WEIGHTINGS[name]
    order = torch.tensor([2, 0, 3, 1])
    steps = trajectory(8, seed=8, num_tasks=4)
    permuted = [(gram[order][:, order], losses[order]) for gram, losses in steps]
    for original, relabelled in zip(run(factory(), steps), run(factory(), permuted)):
        if name.startswith("imtl"):  # IMTL-G's pseudo-inverse is equivariant up to rounding
            torch.testing.assert_close(relabelled, original[order], rtol=1e-10, atol=0)
        else:
            assert torch.equal(relabelled, original[order])


@pytest.mark.parametrize("name", sorted(GRADIENT_WEIGHTINGS))
def test_state_dict_round_trips_through_a_weights_only_checkpoint(name: str) -> None:
    factory = GRADIENT_WEIGHTINGS[name]
    steps = trajectory(8, seed=9, batch_shape=(2,))
    original = factory()
    assert original.state_dict()["calls"] == 0
    run(original, steps[:4])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = factory()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for expected, got in zip(run(original, steps[4:]), run(restored, steps[4:])):
        assert torch.equal(expected, got)
    fresh = factory()
    fresh.load_state_dict(factory().state_dict())  # an unused state loads as unused
    assert run(fresh, steps[:1])[0].shape == (2, 3)


def test_imtl_l_state_dict_round_trip() -> None:
    method = IMTLL(3)
    with torch.no_grad():
        method.log_scales.copy_(torch.tensor([0.5, -1.0, 2.0]))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = IMTLL(3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored(torch.ones(3)), method(torch.ones(3)))


@pytest.mark.parametrize("factory", [GradNorm, IMTL])
def test_refusals_leave_the_state_untouched(factory) -> None:
    method = factory()
    method(GRAM, LOSSES)
    state = method.state_dict()
    with pytest.raises(NonFiniteGradientError):
        method(torch.tensor([[math.nan, 0.0], [0.0, 1.0]], dtype=F64), LOSSES)
    with pytest.raises(MTLInputError, match="reset"):
        method(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(MTLInputError, match=r"reset\(batch_shape"):
        method(GRAM.expand(2, 2, 2), LOSSES.expand(2, 2))
    after = method.state_dict()
    assert all(
        torch.equal(after[key], state[key]) for key in state if isinstance(state[key], torch.Tensor)
    )


def test_float32_gramians_give_float32_weights() -> None:
    for method in (GradNorm(), IMTL()):
        weights = method(GRAM.float(), LOSSES.float())
        assert weights.dtype == torch.float32


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GradNorm(alpha=-1.0), "alpha"),
        (lambda: GradNorm(lr=0.0), "lr"),
        (lambda: IMTL(lr=-0.1), "lr"),
        (lambda: IMTL(initial_scale=math.inf), "initial_scale"),
        (lambda: IMTLL(2, initial_scale=math.nan), "initial_scale"),
        (lambda: IMTLL(), "num_tasks"),
    ],
)
def test_invalid_hyperparameters(factory, message) -> None:
    with pytest.raises(InvalidHyperparameterError, match=message):
        factory()


def test_declarations() -> None:
    assert GradNorm.claims == {"permutation_equivariant"} and GradNorm.stateful
    assert IMTL.claims == {"permutation_equivariant", "equal_projections"}
    assert IMTLL.claims == {"permutation_equivariant"} and IMTLL.requires_num_tasks
    assert (
        GradNorm.loss_domain == "positive"
        and IMTL.loss_domain == IMTLL.loss_domain == "nonnegative"
    )
    for cls in (GradNorm, IMTL, IMTLL):
        assert cls.head_gradient is HeadGradient.WEIGHTED
    assert core.describe_method("gradnorm").hyperparameters == {"alpha": 1.5, "lr": 1e-3}
    assert core.describe_method("imtl_l").hyperparameters == {"initial_scale": 0.0}


def _two_task_gramians(seed: int) -> torch.Tensor:
    """The Gramians `[10, 2, 2]` of `tests.strategies.awkward_two_task_jacobians`."""
    return gramian(awkward_two_task_jacobians(seed))


@pytest.mark.parametrize(
    "factory",
    [GradNorm, lambda: GradNorm(alpha=0.0, lr=0.5), IMTL, lambda: IMTL(lr=2.0, initial_scale=3.0)],
)
@pytest.mark.parametrize("rows", [10, 3, None])
def test_two_task_scalar_paths_equal_the_general_path(factory, rows, monkeypatch) -> None:
    # call after call on Python floats and, with the row limit at 0, on the torch path: the same bits and state
    def run() -> list:
        method, results = factory(), []
        for call in range(4):
            gram = _two_task_gramians(call)
            gram = gram[call] if rows is None else gram[:rows]
            losses = torch.linspace(
                0.5, 3.0, 2 * gram[..., 0, 0].numel(), dtype=torch.float64
            ).reshape(gram.shape[:-1]) * (1 + call)
            result = method.weights(gram, losses)
            results.append((result.weights, result.diagnostics, method.state_dict()))
        return results

    fast = run()
    monkeypatch.setattr(learned_weights, "_SCALAR_ROWS", 0)
    for (weights, diagnostics, state), (want, want_diagnostics, want_state) in zip(fast, run()):
        assert torch.equal(weights, want)
        assert set(diagnostics) == set(want_diagnostics) and all(
            torch.equal(diagnostics[k], want_diagnostics[k]) for k in want_diagnostics
        )
        for key, value in want_state.items():
            assert (
                torch.equal(state[key], value)
                if isinstance(value, torch.Tensor)
                else state[key] == value
            )
