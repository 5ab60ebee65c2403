"""The engine with Jacobian aggregations (`core.JacobianAggregation`): full and representation
mode against a hand computation on a tiny model, the heads, `StepInfo`, skipping non-finite steps,
loss scaling, errors raised before any `.grad` is written, gradient accumulation and two
data-parallel ranks against one process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import core
from core import errors
from core.methods.base import AggregationResult, HeadGradient, JacobianAggregation
from tests.models import TwoLayerMultiTask


class SignedMax(JacobianAggregation):
    """A test aggregation with a hand-checkable update: per coordinate the entry of largest
    magnitude; head weights `(1, 2, ..., K)`. Not in the registry."""

    name = "signed_max_test"
    paper = "none (a test double)"

    def __init__(self, *, head_gradient: HeadGradient = HeadGradient.WEIGHTED) -> None:
        self.head_gradient = head_gradient
        self.calls = 0

    def _aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, /) -> AggregationResult:
        self.calls += 1
        index = jacobian.abs().argmax(dim=-2, keepdim=True)
        update = jacobian.gather(-2, index).squeeze(-2)
        weights = torch.arange(1, losses.shape[-1] + 1, dtype=losses.dtype).expand(losses.shape)
        return AggregationResult(update, weights, {"calls": torch.tensor(self.calls)})


def per_task_gradients(losses: list[torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    """`J [K, n]` by hand: one `autograd.grad` per task, flattened and concatenated."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(t) if g is None else g).reshape(-1)
                    for t, g in zip(inputs, grads)
                ]
            )
        )
    return torch.stack(rows)


def head_gradients(
    model: TwoLayerMultiTask, losses: list[torch.Tensor], coefficients: list[float]
) -> list[torch.Tensor]:
    grads = []
    for i, head in enumerate(model.heads):
        for param in head.parameters():
            grads.append(
                coefficients[i] * torch.autograd.grad(losses[i], param, retain_graph=True)[0]
            )
    return grads


def expected_step(
    model: TwoLayerMultiTask, method: JacobianAggregation, representation: bool
) -> tuple[list[torch.Tensor], AggregationResult]:
    """The shared and head gradients a correct engine writes, computed by hand on a fresh graph."""
    z = model.representation()
    losses = model.losses_from(z)
    shared = model.shared_params()
    if representation:
        jacobian = per_task_gradients(losses, [z])
        result = method.aggregate(jacobian, torch.stack(losses).detach())
        shared_grads = list(
            torch.autograd.grad(z, shared, grad_outputs=result.update.view_as(z), retain_graph=True)
        )
    else:
        jacobian = per_task_gradients(losses, shared)
        result = method.aggregate(jacobian, torch.stack(losses).detach())
        shared_grads = [
            piece.view_as(p)
            for p, piece in zip(shared, result.update.split([p.numel() for p in shared]))
        ]
    weighted = method.head_gradient is HeadGradient.WEIGHTED
    coefficients = result.head_weights.tolist() if weighted else [1.0] * len(losses)
    return shared_grads + head_gradients(model, losses, coefficients), result


def engine_step(
    model: TwoLayerMultiTask, method, representation: bool, **kwargs
) -> tuple[list[torch.Tensor], core.StepInfo]:
    model.zero_grad_all()
    z = model.representation()
    info = core.mtl_backward(
        model.losses_from(z),
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
        **kwargs,
    )
    params = model.shared_params() + [p for group in model.task_params() for p in group]
    return [p.grad.detach().clone() for p in params], info


FACTORIES = {
    "signed_max": lambda: SignedMax(),
    "signed_max_raw": lambda: SignedMax(head_gradient=HeadGradient.RAW),
    "graddrop": lambda: core.GradDrop(generator=torch.Generator().manual_seed(4)),
    "db_mtl": lambda: core.DBMTL(3),
    "moco": lambda: core.MoCo(3),
    "excess_mtl": lambda: core.ExcessMTL(3),
    "rotograd": lambda: core.RotoGrad(
        3
    ),  # representation only; without rotations the model is unchanged
}


@pytest.mark.parametrize("representation", [False, True], ids=["full", "representation"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_engine_equals_the_hand_computation(name: str, representation: bool) -> None:
    """Two steps (stateful methods carry their state): the shared parameters receive the update
    (split back into their layout, or backpropagated from the features), the heads
    `head_weights_i grad l_i` (WEIGHTED) or `grad l_i` (RAW); `StepInfo.weights` is the head weights."""
    probe = FACTORIES[name]()
    if ("representation" if representation else "full") not in probe.engine_modes:
        with pytest.raises(errors.UnsupportedEngineModeError):
            engine_step(TwoLayerMultiTask(3), probe, representation)
        return
    model = TwoLayerMultiTask(3)
    engine_method, hand_method = FACTORIES[name](), FACTORIES[name]()
    for _ in range(2):
        grads, info = engine_step(model, engine_method, representation)
        expected, result = expected_step(model, hand_method, representation)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(info.weights, result.head_weights)
        assert info.gramian is None and info.grad_norms is not None and not info.skipped
        assert set(info.diagnostics) == set(result.diagnostics)
        with torch.no_grad():  # move, so the second step sees other gradients
            for param in model.parameters():
                param.sub_(0.1 * param.grad)


def test_grad_norms_are_the_per_task_gradient_norms() -> None:
    model = TwoLayerMultiTask(2)
    _, info = engine_step(model, SignedMax(), representation=False)
    jacobian = per_task_gradients(model.losses(), model.shared_params())
    torch.testing.assert_close(info.grad_norms, jacobian.norm(dim=1))


def test_grad_accumulates_like_backward() -> None:
    model = TwoLayerMultiTask(2)
    first, _ = engine_step(model, SignedMax(), representation=False)
    core.mtl_backward(
        model.losses(), model.shared_params(), SignedMax(), task_params=model.task_params()
    )
    params = model.shared_params() + [p for group in model.task_params() for p in group]
    for param, once in zip(params, first):
        torch.testing.assert_close(param.grad, 2 * once)


@pytest.mark.parametrize("representation", [False, True], ids=["full", "representation"])
def test_loss_scale_is_divided_out_of_j(representation: bool) -> None:
    """With losses multiplied by s and `loss_scale=s` the method sees the unscaled J (MoCo's lambda
    depends on J's scale) and `.grad` receives s times the unscaled step."""
    scale = 1024.0
    method_cls = core.GradDrop if representation else core.MoCo
    build = (
        (lambda: method_cls(generator=torch.Generator().manual_seed(1)))
        if representation
        else (lambda: method_cls(3))
    )
    model = TwoLayerMultiTask(3)
    plain, plain_info = engine_step(model, build(), representation)
    model.zero_grad_all()
    z = model.representation()
    info = core.mtl_backward(
        [scale * loss for loss in model.losses_from(z)],
        model.shared_params(),
        build(),
        task_params=model.task_params(),
        representation=z if representation else None,
        loss_scale=scale,
    )
    params = model.shared_params() + [p for group in model.task_params() for p in group]
    for param, want in zip(params, plain):
        torch.testing.assert_close(param.grad, scale * want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info.weights, plain_info.weights)
    torch.testing.assert_close(info.grad_norms, plain_info.grad_norms)
    torch.testing.assert_close(info.losses, plain_info.losses)
    # without the loss scale MoCo would see s J: another lambda
    if not representation:
        model.zero_grad_all()
        unscaled_info = core.mtl_backward(
            [scale * loss for loss in model.losses()],
            model.shared_params(),
            build(),
            task_params=model.task_params(),
        )
        assert not torch.allclose(unscaled_info.weights, plain_info.weights)


class SelfTrained(SignedMax):
    """SignedMax with a parameter of its own trained by an auxiliary loss: `theta [K]` pulled
    towards the row sums of J, `sum_i (theta_i - sum_j J_ij)^2` (a test double of RotoGrad's
    contract: a graph to the method's parameters only)."""

    def __init__(self, num_tasks: int, *, shape_seen: list | None = None) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float64))
        self.shape_seen = shape_seen

    def parameters(self):
        return iter((self.theta,))

    def auxiliary_loss(self, jacobian: torch.Tensor, losses: torch.Tensor, /) -> torch.Tensor:
        if self.shape_seen is not None:
            self.shape_seen.append(tuple(jacobian.shape))
        return (self.theta - jacobian.reshape(jacobian.shape[0], -1).sum(-1)).square().sum()


@pytest.mark.parametrize("representation", [False, True], ids=["full", "representation"])
@pytest.mark.parametrize("scale", [None, 64.0])
def test_auxiliary_loss_trains_the_method_parameters_only(
    representation: bool, scale: float | None
) -> None:
    """The engine writes the gradient of `auxiliary_loss` (on the unscaled J, in the layout it was
    taken in) into the method's parameters, times the loss scale, and nothing else changes: the
    model's gradients equal those of the same method without one; the value is in the diagnostics."""
    model = TwoLayerMultiTask(3)
    plain, _ = engine_step(model, SignedMax(), representation)
    shapes: list = []
    method = SelfTrained(3, shape_seen=shapes)
    model.zero_grad_all()
    z = model.representation()
    factor = 1.0 if scale is None else scale
    info = core.mtl_backward(
        [factor * loss for loss in model.losses_from(z)],
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
        loss_scale=scale,
    )
    params = model.shared_params() + [p for group in model.task_params() for p in group]
    for param, want in zip(params, plain):
        torch.testing.assert_close(param.grad, factor * want, rtol=1e-12, atol=1e-12)
    z = model.representation()
    losses = model.losses_from(z)
    jacobian = per_task_gradients(losses, [z] if representation else model.shared_params())
    expected = -2 * jacobian.sum(-1)  # d/dtheta at theta = 0
    torch.testing.assert_close(method.theta.grad, factor * expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        info.diagnostics["auxiliary_loss"], expected.square().sum() / 4, rtol=1e-12, atol=1e-12
    )
    assert shapes == [(3, *z.shape)] if representation else shapes == [(3, jacobian.shape[1])]


def test_an_auxiliary_loss_without_a_graph_is_a_defect() -> None:
    class Detached(SelfTrained):
        def auxiliary_loss(self, jacobian: torch.Tensor, losses: torch.Tensor, /) -> torch.Tensor:
            return super().auxiliary_loss(jacobian, losses).detach()

    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    with pytest.raises(errors.MTLInputError, match="auxiliary_loss must return"):
        core.mtl_backward(
            model.losses(), model.shared_params(), Detached(2), task_params=model.task_params()
        )
    assert_untouched(model, sentinel)


# -- errors and skipped steps ----------------------------------------------------------------------


def with_sentinel_grads(model: TwoLayerMultiTask) -> list[torch.Tensor]:
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    return [p.grad.clone() for p in model.parameters()]


def assert_untouched(model: TwoLayerMultiTask, sentinel: list[torch.Tensor]) -> None:
    for param, before in zip(model.parameters(), sentinel):
        assert torch.equal(param.grad, before)


@pytest.mark.parametrize("representation", [False, True], ids=["full", "representation"])
@pytest.mark.parametrize("corrupt", ["nan_loss", "inf_gradient", "inf_head_gradient"])
def test_skip_leaves_grad_and_method_state_untouched(corrupt: str, representation: bool) -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    z = model.representation()
    losses = model.losses_from(z)
    if corrupt == "nan_loss":
        losses[1] = losses[1] * float("nan")
    elif corrupt == "inf_gradient":  # finite loss, infinite derivative through the shared features
        losses[1] = losses[1] + torch.sqrt(z[0, 0] - z[0, 0].detach())
    else:  # finite loss, infinite derivative on task 1's head only
        bias = model.heads[1].bias
        with torch.no_grad():
            bias.zero_()
        losses[1] = losses[1] + torch.sqrt(bias.abs()).sum()
    method = SignedMax()

    def call(on_nonfinite: str) -> core.StepInfo:
        return core.mtl_backward(
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
    assert info.skipped and torch.isnan(info.weights).all() and info.grad_norms is None
    assert_untouched(model, sentinel)
    # a non-finite loss or per-task gradient is found before the method runs; a head's only after
    assert method.calls == (2 if corrupt == "inf_head_gradient" else 0)


def test_the_infinite_task_is_named() -> None:
    x = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(errors.NonFiniteGradientError, match="task 1 contains infinity"):
        core.mtl_backward([x.sum(), torch.sqrt(x[0]) + 1.0], [x], core.DBMTL(2))
    assert x.grad is None


class Broken(SignedMax):
    def __init__(self, defect: str) -> None:
        super().__init__()
        self.defect = defect

    def _aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, /) -> AggregationResult:
        result = super()._aggregate(jacobian, losses)
        if self.defect == "nan":
            return AggregationResult(result.update * float("nan"), result.head_weights, {})
        return AggregationResult(result.update[..., :-1], result.head_weights, {})


@pytest.mark.parametrize("defect", ["nan", "shape"])
def test_a_defective_aggregation_always_raises_before_writing(defect: str) -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    error = errors.NonFiniteGradientError if defect == "nan" else errors.MTLInputError
    with pytest.raises(error, match="defect|shape"):
        core.mtl_backward(
            model.losses(),
            model.shared_params(),
            Broken(defect),
            task_params=model.task_params(),
            on_nonfinite="skip",
        )
    assert_untouched(model, sentinel)


def test_structural_errors_are_raised_before_any_grad() -> None:
    model = TwoLayerMultiTask(2)
    sentinel = with_sentinel_grads(model)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    method = SignedMax()
    with pytest.raises(errors.UnreachedParameterError):
        core.mtl_backward(
            model.losses(),
            [*model.shared_params(), unused],
            method,
            task_params=model.task_params(),
        )
    with pytest.raises(errors.UnsupportedEngineModeError, match="full"):
        z = model.representation()
        core.mtl_backward(
            model.losses_from(z), model.shared_params(), core.MoCo(2), representation=z
        )
    with pytest.raises(
        errors.MTLInputError, match="representation mode"
    ):  # refused before any collective
        z = model.representation()
        core.mtl_backward(
            model.losses_from(z),
            model.shared_params(),
            method,
            representation=z,
            process_group=object(),
        )
    moco = core.MoCo(2)
    core.mtl_backward(model.losses(), model.shared_params(), moco)
    sentinel = with_sentinel_grads(model)
    with pytest.raises(
        errors.MTLInputError, match="n = 25"
    ):  # 5 x 4 weights + 5 biases, then the weight alone
        core.mtl_backward(model.losses(), [model.encoder.weight], moco)
    assert method.calls == 0
    assert_untouched(model, sentinel)


def test_not_a_method_names_the_three_kinds() -> None:
    model = TwoLayerMultiTask(2)
    with pytest.raises(
        errors.MTLInputError, match="GradientWeighting or LossWeighting .* JacobianAggregation"
    ):
        core.mtl_backward(model.losses(), model.shared_params(), lambda j, l: j)  # type: ignore[arg-type]


# -- accumulation and data parallelism -------------------------------------------------------------


def test_accumulation_equals_one_engine_call() -> None:
    """`TaskGradientAccumulator` over two micro-batches equals `mtl_backward` on the whole batch
    (the engine's `combine_full` serves Jacobian aggregations too)."""
    model = TwoLayerMultiTask(2)
    whole, info = engine_step(model, core.DBMTL(2), representation=False)
    model.zero_grad_all()
    accumulator = core.TaskGradientAccumulator(
        model.shared_params(), task_params=model.task_params()
    )
    for inputs, targets in zip(model.inputs.chunk(2), model.targets.chunk(2)):
        z = torch.tanh(model.encoder(inputs))
        losses = [
            ((head(z)[:, 0] - targets[:, i]) ** 2).mean() for i, head in enumerate(model.heads)
        ]
        accumulator.add(losses, weight=0.5)
    accumulated = accumulator.backward(core.DBMTL(2))
    params = model.shared_params() + [p for group in model.task_params() for p in group]
    for param, want in zip(params, whole):
        torch.testing.assert_close(param.grad, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(accumulated.weights, info.weights)


WORLD = 2


def _train(method_name: str, x: torch.Tensor, y: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Three SGD steps in full mode; with `group`, on this rank's shard only."""
    model = TwoLayerMultiTask(3, seed=2)
    method = (
        core.GradDrop(generator=torch.Generator().manual_seed(5))
        if method_name == "graddrop"
        else core.make_method(method_name, num_tasks=3)
    )
    for _ in range(3):
        model.zero_grad_all()
        z = torch.tanh(model.encoder(x))
        losses = [((head(z)[:, 0] - y[:, i]) ** 2).mean() for i, head in enumerate(model.heads)]
        core.mtl_backward(
            losses,
            model.shared_params(),
            method,
            task_params=model.task_params(),
            process_group=group,
        )
        with torch.no_grad():
            for param in model.parameters():
                param.sub_(0.1 * param.grad)
    return [p.detach().clone() for p in model.parameters()]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.randn(
        8, 3, generator=generator, dtype=torch.float64
    )


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        shard = slice(rank * 4, (rank + 1) * 4)
        results = {
            name: _train(name, x[shard], y[shard], dist.group.WORLD)
            for name in ("graddrop", "db_mtl", "moco")
        }
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_in_full_mode_match_one_process(tmp_path) -> None:
    """J is all-reduced before the method runs, so every rank aggregates the whole batch's J
    (GradDrop with the same seed on every rank draws the same masks) and equals one process."""
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    x, y = _data()
    for name in ("graddrop", "db_mtl", "moco"):
        alone = _train(name, x, y)
        for result in ranks:
            for got, want in zip(result[name], alone):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
