"""The engine writes exactly the gradients the method defines, in both modes, or raises cleanly."""

from __future__ import annotations

import pytest
import torch

import core
from core import errors
from core.jacobian import gramian, task_jacobians
from tests.models import TwoLayerMultiTask

GRADIENT_METHODS = [
    core.DiBSMTL(),
    core.DiBSMTL(steps=5),
    core.NormalizedSum(),
    core.MGDA(),
    core.RandomGradientWeighting(generator=torch.Generator().manual_seed(3)),
    core.NashMTL(),
    core.PCGrad(generator=torch.Generator().manual_seed(3)),
    core.CAGrad(),
    core.CAGrad(c=0.9, rescale=2, reduction="sum"),
    core.IMTLG(),
]
LOSS_METHODS = [
    core.LinearScalarization(),
    core.LinearScalarization(weights=[0.2, 1.5, 3.0], reduction="mean"),
    core.ScaleInvariantLS(),
    core.RandomLossWeighting(generator=torch.Generator().manual_seed(3)),
    core.UncertaintyWeighting(3, initial_log_variance=0.3),
    core.DynamicWeightAverage(3),
    core.FAMO(3),
]


def hand_gradients(
    model: TwoLayerMultiTask, weights: torch.Tensor, *, raw_heads: bool
) -> list[torch.Tensor]:
    """Gradients of sum_i w_i l_i on the shared parameters, then each head's w_i grad l_i (or grad l_i)."""
    losses = model.losses()
    shared = torch.autograd.grad(
        sum(w * loss for w, loss in zip(weights, losses)), model.shared_params(), retain_graph=True
    )
    heads = []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, model.task_params()[i])
        heads.extend(g if raw_heads else weights[i] * g for g in grads)
    return list(shared) + heads


def engine_gradients(model: TwoLayerMultiTask) -> list[torch.Tensor]:
    return [p.grad for p in model.shared_params()] + [
        p.grad for group in model.task_params() for p in group
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", GRADIENT_METHODS + LOSS_METHODS, ids=repr)
def test_full_mode_grad_equals_weighted_loss_gradient(method, dtype) -> None:
    model = TwoLayerMultiTask(3, dtype=dtype)
    info = core.mtl_backward(
        model.losses(), model.shared_params(), method, task_params=model.task_params()
    )
    expected = hand_gradients(
        model, info.weights, raw_heads=method.head_gradient is core.HeadGradient.RAW
    )
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for got, want in zip(engine_gradients(model), expected):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=repr)
def test_gradient_weighting_sees_the_gramian_of_shared_gradients(method) -> None:
    model = TwoLayerMultiTask(3)
    losses = model.losses()
    rows = [
        torch.cat(
            [
                g.reshape(-1)
                for g in torch.autograd.grad(loss, model.shared_params(), retain_graph=True)
            ]
        )
        for loss in losses
    ]
    expected_gramian = gramian(torch.stack(rows))
    info = core.mtl_backward(losses, model.shared_params(), method, task_params=model.task_params())
    torch.testing.assert_close(info.gramian, expected_gramian)
    torch.testing.assert_close(info.grad_norms, torch.stack(rows).norm(dim=1))
    torch.testing.assert_close(info.losses, torch.stack(losses).detach())


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=repr)
def test_representation_mode(method) -> None:
    model = TwoLayerMultiTask(3)
    representation = model.representation()
    losses = model.losses_from(representation)
    rep_rows = torch.stack(
        [
            torch.autograd.grad(loss, representation, retain_graph=True)[0].reshape(-1)
            for loss in losses
        ]
    )
    info = core.mtl_backward(
        losses,
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=representation,
    )
    torch.testing.assert_close(info.gramian, gramian(rep_rows))
    expected = hand_gradients(
        model, info.weights, raw_heads=method.head_gradient is core.HeadGradient.RAW
    )
    for got, want in zip(engine_gradients(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_grad_accumulates_like_backward() -> None:
    model = TwoLayerMultiTask(2)
    core.mtl_backward(
        model.losses(), model.shared_params(), core.NormalizedSum(), task_params=model.task_params()
    )
    once = [g.clone() for g in engine_gradients(model)]
    core.mtl_backward(
        model.losses(), model.shared_params(), core.NormalizedSum(), task_params=model.task_params()
    )
    for got, first in zip(engine_gradients(model), once):
        torch.testing.assert_close(got, 2 * first)


def test_parameters_in_neither_set_get_nothing() -> None:
    model = TwoLayerMultiTask(2)
    core.mtl_backward(model.losses(), model.shared_params(), core.MGDA())
    assert all(p.grad is None for group in model.task_params() for p in group)
    assert all(p.grad is not None for p in model.shared_params())


@pytest.mark.parametrize(
    "method",
    [core.DiBSMTL(), core.MGDA(), core.LinearScalarization(), core.RandomLossWeighting()],
    ids=repr,
)
def test_single_task(method) -> None:
    model = TwoLayerMultiTask(1)
    info = core.mtl_backward(
        model.losses(), model.shared_params(), method, task_params=model.task_params()
    )
    assert info.weights.shape == (1,)
    assert torch.isfinite(info.weights).all()


def test_zero_task_gradient_gets_a_finite_weight() -> None:
    model = TwoLayerMultiTask(2)
    losses = model.losses()
    constant_reaching = losses[0] + 0.0 * sum(
        p.sum() for p in model.shared_params()
    )  # zero gradient, in the graph
    for method in GRADIENT_METHODS:
        method.reset()  # the instances are shared with the 3-task tests above
        model.zero_grad_all()
        info = core.mtl_backward(
            [constant_reaching, losses[1]], model.shared_params(), method, retain_graph=True
        )
        assert torch.isfinite(info.weights).all()
        assert all(torch.isfinite(p.grad).all() for p in model.shared_params())


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_jacobian_strategies_agree(strategy) -> None:
    model = TwoLayerMultiTask(4)
    losses = torch.stack(model.losses())
    reference = task_jacobians(losses, model.shared_params(), strategy="loop")
    result = task_jacobians(losses, model.shared_params(), strategy=strategy)
    for got, want in zip(result, reference):
        torch.testing.assert_close(got, want)


# ---- bad input: a clear core.errors exception and untouched .grad -------------------------


def assert_untouched(model: TwoLayerMultiTask, sentinel: list[torch.Tensor]) -> None:
    for param, before in zip(model.parameters(), sentinel):
        assert param.grad is not None and torch.equal(param.grad, before)


def with_sentinel_grads(model: TwoLayerMultiTask) -> list[torch.Tensor]:
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    return [param.grad.clone() for param in model.parameters()]


@pytest.mark.parametrize("method", [core.DiBSMTL(), core.LinearScalarization()], ids=repr)
@pytest.mark.parametrize(
    "corrupt, error, words",
    [
        (
            lambda losses, model: [losses[0], losses[1] * float("nan")],
            errors.NonFiniteLossError,
            "task 1",
        ),
        (
            lambda losses, model: [losses[0] + float("inf"), losses[1]],
            errors.NonFiniteLossError,
            "task 0",
        ),
        (
            lambda losses, model: [losses[0], torch.stack([losses[1], losses[1]])],
            errors.LossShapeError,
            "task 1",
        ),
        (lambda losses, model: [], errors.NoTasksError, "K = 0"),
        (
            lambda losses, model: [losses[0], losses[1].float()],
            errors.DtypeMismatchError,
            "float32",
        ),
        (lambda losses, model: torch.stack(losses)[None], errors.LossShapeError, "shape [K]"),
    ],
)
def test_bad_losses_raise_and_leave_grad_untouched(method, corrupt, error, words) -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        core.mtl_backward(
            corrupt(model.losses(), model),
            model.shared_params(),
            method,
            task_params=model.task_params(),
        )
    assert_untouched(model, sentinel)


@pytest.mark.parametrize("method", [core.DiBSMTL(), core.LinearScalarization()], ids=repr)
def test_unreached_shared_parameter(method) -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    stray = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    stray.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(errors.UnreachedParameterError, match=r"shared_params\[2\]"):
        core.mtl_backward(
            model.losses(), model.shared_params() + [stray], method, task_params=model.task_params()
        )
    assert_untouched(model, sentinel)
    assert torch.equal(stray.grad, torch.ones(3, dtype=torch.float64))


def test_unreached_representation_and_mismatched_groups() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    unrelated = torch.zeros(8, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(errors.UnreachedParameterError, match="representation"):
        core.mtl_backward(
            model.losses(), model.shared_params(), core.MGDA(), representation=unrelated
        )
    with pytest.raises(errors.MTLInputError, match="3 groups but there are 2 losses"):
        core.mtl_backward(
            model.losses(),
            model.shared_params(),
            core.MGDA(),
            task_params=model.task_params() + [[]],
        )
    assert_untouched(model, sentinel)


def test_mixed_parameter_dtype() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    other = torch.nn.Parameter(torch.zeros(2, dtype=torch.float32))
    with pytest.raises(errors.DtypeMismatchError):
        core.mtl_backward(model.losses(), model.shared_params() + [other], core.DiBSMTL())
    assert_untouched(model, sentinel)


def test_mixed_devices() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    on_meta = torch.zeros((), dtype=torch.float64, device="meta", requires_grad=True)
    with pytest.raises(errors.DeviceMismatchError, match="meta"):
        core.mtl_backward([model.losses()[0], on_meta], model.shared_params(), core.DiBSMTL())
    assert_untouched(model, sentinel)


def test_nonfinite_gradient_is_named() -> None:
    x = torch.nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))
    losses = [x.sum(), torch.sqrt(x[0]) + 1.0]  # d sqrt(x)/dx at 0 is infinite
    with pytest.raises(errors.NonFiniteGradientError, match="task 1"):
        core.mtl_backward(losses, [x], core.DiBSMTL())
    assert x.grad is None


def test_not_a_method() -> None:
    model = TwoLayerMultiTask(2)
    with pytest.raises(errors.MTLInputError, match="GradientWeighting or LossWeighting"):
        core.mtl_backward(model.losses(), model.shared_params(), lambda g, l: g)  # type: ignore[arg-type]


def test_a_parameter_in_two_sets_is_refused() -> None:
    model = TwoLayerMultiTask(2)
    heads = model.task_params()
    with pytest.raises(
        errors.MTLInputError, match=r"task_params\[1\]\[0\] is also in shared_params"
    ):
        core.mtl_backward(
            model.losses(), model.shared_params() + [heads[1][0]], core.DiBSMTL(), task_params=heads
        )
    assert all(p.grad is None for p in model.parameters())


def test_nonfinite_head_gradient_is_refused_on_the_gradient_path() -> None:
    model = TwoLayerMultiTask(2)
    losses = model.losses()
    bias = model.heads[1].bias
    with torch.no_grad():
        bias.zero_()
    losses[1] = losses[1] + torch.sqrt(bias.abs()).sum()  # d sqrt|b| / db is infinite at 0
    with pytest.raises(errors.NonFiniteGradientError, match="non-finite gradient"):
        core.mtl_backward(
            losses, model.shared_params(), core.DiBSMTL(), task_params=model.task_params()
        )
    assert all(p.grad is None for p in model.parameters())


def test_float32_gramian_overflow_is_named() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    losses = [x.sum() * 3e19, x.sum()]  # gradient norms fit float32, their squares do not
    with pytest.raises(errors.NonFiniteGradientError, match="overflow"):
        core.mtl_backward(losses, [x], core.DiBSMTL())
    assert x.grad is None


def test_representation_and_strategy_are_validated() -> None:
    model = TwoLayerMultiTask(2)
    with pytest.raises(errors.MTLInputError, match="representation must be"):
        core.mtl_backward(
            model.losses(), model.shared_params(), core.MGDA(), representation=torch.zeros(3)
        )
    with pytest.raises(errors.MTLInputError, match="jacobian_strategy"):
        core.mtl_backward(
            model.losses(), model.shared_params(), core.MGDA(), jacobian_strategy="batch"
        )


def test_a_refused_call_leaves_the_method_state_alone() -> None:
    model = TwoLayerMultiTask(2)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    unreached = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    with pytest.raises(errors.UnreachedParameterError):
        core.mtl_backward(
            model.losses(),
            model.shared_params(),
            core.RandomGradientWeighting(generator=generator),
            task_params=[model.task_params()[0], [unreached]],
        )
    assert torch.equal(generator.get_state(), state)


# ---- heads: one vector-Jacobian product after the weights ----------------------------------


@pytest.mark.parametrize("representation", [False, True])
@pytest.mark.parametrize(
    "method", [core.MGDA(), core.PCGrad(generator=torch.Generator().manual_seed(1))], ids=repr
)
def test_a_head_reached_by_two_losses_receives_both_terms(method, representation) -> None:
    """The documented contract: heads get the gradient of sum_i c_i l_i, so a parameter listed as
    task 0's but also reached by task 1's loss adds task 1's term c_1 grad l_1."""
    model = TwoLayerMultiTask(2)
    z = model.representation()
    losses = model.losses_from(z)
    extra = model.heads[0].bias
    losses[1] = losses[1] + (extra**2).sum()
    info = core.mtl_backward(
        losses,
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
        retain_graph=True,
    )
    raw = method.head_gradient is core.HeadGradient.RAW
    c = torch.ones(2, dtype=torch.float64) if raw else info.weights
    expected = sum(
        c[i] * torch.autograd.grad(losses[i], extra, retain_graph=True)[0] for i in range(2)
    )
    torch.testing.assert_close(extra.grad, expected)


def test_losses_given_as_one_stacked_tensor_match_a_list() -> None:
    model = TwoLayerMultiTask(3)
    info = core.mtl_backward(
        torch.stack(model.losses()),
        model.shared_params(),
        core.DiBSMTL(),
        task_params=model.task_params(),
    )
    expected = hand_gradients(model, info.weights, raw_heads=False)
    for got, want in zip(engine_gradients(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---- reductions: one strategy object -----------------------------------------------------


def test_the_local_reduction_is_the_identity() -> None:
    from core.distributed import LocalReduction, reduction_for

    reduction = reduction_for(None)
    assert isinstance(reduction, LocalReduction)
    jacobian = torch.randn(3, 5, dtype=torch.float64)
    losses = jacobian[0]
    assert reduction.losses(losses) is losses
    assert reduction.jacobian([jacobian])[0] is jacobian
    assert reduction.gradients([jacobian])[0] is jacobian
    gramian, norms = reduction.representation_gramian(jacobian)
    torch.testing.assert_close(gramian, jacobian @ jacobian.T)
    torch.testing.assert_close(norms, jacobian.norm(dim=1))


# ---- the graph ----------------------------------------------------------------------------


@pytest.mark.parametrize("representation", [False, True])
@pytest.mark.parametrize(
    "method", [core.DiBSMTL(), core.PCGrad(), core.LinearScalarization()], ids=repr
)
def test_the_graph_is_freed_like_backward_unless_retained(method, representation) -> None:
    """As `loss.backward()`: the call's last backward pass frees the saved activations (memory is
    released before the next forward pass), and `retain_graph=True` keeps them."""
    for retain in (False, True):
        model = TwoLayerMultiTask(2)
        z = model.representation()
        losses = model.losses_from(z)
        core.mtl_backward(
            losses,
            model.shared_params(),
            method,
            task_params=model.task_params(),
            representation=z if representation else None,
            retain_graph=retain,
        )
        if retain:
            torch.autograd.grad(losses[0], model.shared_params()[0], retain_graph=True)
        else:
            with pytest.raises(RuntimeError, match="backward through the graph a second time"):
                torch.autograd.grad(losses[0] + losses[1], model.shared_params()[0])


# ---- on_nonfinite="skip" -----------------------------------------------------------------


@pytest.mark.parametrize("representation", [False, True])
@pytest.mark.parametrize(
    "method", [core.DiBSMTL(), core.MGDA(), core.LinearScalarization()], ids=repr
)
@pytest.mark.parametrize("corrupt", ["nan_loss", "inf_loss", "inf_gradient", "inf_head_gradient"])
def test_skip_leaves_grad_untouched(method, corrupt, representation) -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    z = model.representation()
    losses = model.losses_from(z)
    if corrupt == "nan_loss":
        losses[1] = losses[1] * float("nan")
    elif corrupt == "inf_loss":
        losses[0] = losses[0] + float("inf")
    elif corrupt == "inf_gradient":  # finite loss, infinite derivative through the shared features
        losses[1] = losses[1] + torch.sqrt(z[0, 0] - z[0, 0].detach())
    else:  # finite loss, infinite derivative on task 1's head only
        bias = model.heads[1].bias
        with torch.no_grad():
            bias.zero_()
        losses[1] = losses[1] + torch.sqrt(bias.abs()).sum()
    call = lambda on_nonfinite: core.mtl_backward(  # noqa: E731
        losses,
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
        on_nonfinite=on_nonfinite,
        retain_graph=True,
    )
    with pytest.raises((errors.NonFiniteLossError, errors.NonFiniteGradientError)):
        call("raise")
    info = call("skip")
    assert info.skipped
    assert info.weights.shape == (2,) and torch.isnan(info.weights).all()
    assert info.gramian is None and info.grad_norms is None and info.diagnostics == {}
    torch.testing.assert_close(info.losses, torch.stack(losses).detach(), equal_nan=True)
    assert_untouched(model, sentinel)


def test_a_finite_step_is_not_skipped_and_on_nonfinite_is_validated() -> None:
    model = TwoLayerMultiTask(2)
    info = core.mtl_backward(
        model.losses(), model.shared_params(), core.MGDA(), on_nonfinite="skip"
    )
    assert not info.skipped and torch.isfinite(info.weights).all()
    with pytest.raises(errors.MTLInputError, match="on_nonfinite"):
        core.mtl_backward(model.losses(), model.shared_params(), core.MGDA(), on_nonfinite="ignore")


# ---- clear errors, before any .grad is written ---------------------------------------------


@pytest.mark.parametrize(
    "method", [core.DiBSMTL(), core.MGDA(), core.LinearScalarization()], ids=repr
)
def test_a_detached_task_is_named(method) -> None:
    model = TwoLayerMultiTask(3)
    sentinel = with_sentinel_grads(model)
    losses = model.losses()
    losses[1] = losses[1].detach()
    with pytest.raises(errors.UnreachedTaskError, match="task 1 does not reach") as raised:
        core.mtl_backward(losses, model.shared_params(), method)
    assert isinstance(
        raised.value, errors.UnreachedParameterError
    )  # old except clauses still catch it
    with pytest.raises(errors.UnreachedTaskError, match="task 1 does not reach"):
        core.mtl_backward(torch.stack(losses), model.shared_params(), method)
    assert_untouched(model, sentinel)


def test_a_task_computed_from_other_features_is_named_in_representation_mode() -> None:
    model = TwoLayerMultiTask(3)
    sentinel = with_sentinel_grads(model)
    z = model.representation()
    other = model.representation()  # a second forward pass: another graph
    losses = model.losses_from(z)
    losses[2] = model.losses_from(other)[2]
    with pytest.raises(errors.UnreachedTaskError, match="task 2 does not reach the representation"):
        core.mtl_backward(
            losses,
            model.shared_params(),
            core.MGDA(),
            task_params=model.task_params(),
            representation=z,
        )
    assert_untouched(model, sentinel)


def test_a_task_reaching_no_shared_parameter_is_named() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    losses = model.losses()
    head_only = (model.heads[1].weight ** 2).sum()
    with pytest.raises(
        errors.UnreachedTaskError, match="task 1 does not reach any of shared_params"
    ):
        core.mtl_backward(
            [losses[0], head_only],
            model.shared_params(),
            core.DiBSMTL(),
            task_params=model.task_params(),
        )
    assert_untouched(model, sentinel)


@pytest.mark.parametrize("method", GRADIENT_METHODS + LOSS_METHODS, ids=repr)
def test_empty_shared_params_are_refused_for_every_method(method) -> None:
    model = TwoLayerMultiTask(3)
    sentinel = with_sentinel_grads(model)
    with pytest.raises(errors.NoSharedParametersError, match="shared_params is empty"):
        core.mtl_backward(model.losses(), [], method, task_params=model.task_params())
    consumed = model.encoder.parameters()
    list(consumed)
    with pytest.raises(errors.NoSharedParametersError, match="generator"):
        core.mtl_backward(model.losses(), consumed, method, task_params=model.task_params())
    assert_untouched(model, sentinel)


@pytest.mark.parametrize("method", [core.DiBSMTL(), core.LinearScalarization()], ids=repr)
def test_the_meta_device_is_refused(method) -> None:
    with torch.device("meta"):
        model = TwoLayerMultiTask.__new__(TwoLayerMultiTask)
        torch.nn.Module.__init__(model)
        model.encoder = torch.nn.Linear(4, 5)
        model.heads = torch.nn.ModuleList(torch.nn.Linear(5, 1) for _ in range(2))
        model.inputs, model.targets = torch.zeros(8, 4), torch.zeros(8, 2)
    with pytest.raises(errors.MetaDeviceError, match="meta device"):
        core.mtl_backward(
            model.losses(), model.shared_params(), method, task_params=model.task_params()
        )
    assert all(p.grad is None for p in model.parameters())


class FullModeMGDA(core.MGDA):
    engine_modes = frozenset({"full"})

    def _weights(self, gramian, losses):
        self.calls = getattr(self, "calls", 0) + 1
        return super()._weights(gramian, losses)


def test_a_method_used_in_a_mode_it_does_not_support_is_refused() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    method = FullModeMGDA()
    z = model.representation()
    with pytest.raises(errors.UnsupportedEngineModeError, match="'representation'"):
        core.mtl_backward(model.losses_from(z), model.shared_params(), method, representation=z)
    assert_untouched(model, sentinel)
    assert getattr(method, "calls", 0) == 0
    core.mtl_backward(model.losses(), model.shared_params(), method)  # full mode: supported
    assert method.calls == 1
