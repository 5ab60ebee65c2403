"""RotoGrad (core/methods/rotograd.py) and the engine's auxiliary loss that trains its rotations.

Golden values on J = [[-4, 1, 1], [6, 1, 1]] with losses [1, 2] (derived in the comments), the
defining conditions on hypothesis inputs (every term of d has the norm C of the convergence-
weighted norms; the rotations stay orthogonal; the alignment loss decreases and reaches its
minimum), the engine on a small two-head MLP whose heads see the rotated features, and numbers
pinned from the reference implementation (adrianjav/rotograd).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import core
from core import errors
from core.methods.rotograd import RotoGrad
from tests.jacobian_strategies import jacobians

F64 = torch.float64
JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
LOSSES = torch.tensor([1.0, 2.0], dtype=F64)
N1, N2 = math.sqrt(18), math.sqrt(38)


def _close(actual: torch.Tensor, expected, *, rtol: float = 1e-12, atol: float = 1e-14) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- golden values ---------------------------------------------------------------------------------


def test_golden_scaling() -> None:
    method = RotoGrad(2)
    # first call: the baseline is the current norms, r = (1, 1), alpha = (1/2, 1/2),
    # C = (N1 + N2) / 2, d = C (g_1 / N1 + g_2 / N2); heads get the raw gradients
    first = method.aggregate(JACOBIAN, LOSSES)
    common = (N1 + N2) / 2
    _close(first.update, common * (JACOBIAN[0] / N1 + JACOBIAN[1] / N2))
    _close(
        first.update, [0.15880897580793985, 2.0706067580626213, 2.0706067580626213]
    )  # the reference's number too
    _close(first.head_weights, [1.0, 1.0])
    _close(first.diagnostics["contribution_norms"], [common, common])
    _close(first.diagnostics["convergence_ratios"], [1.0, 1.0])
    # second call with task 1's gradient doubled: r = (2, 1), alpha = (2/3, 1/3),
    # C = (2/3)(2 N1) + (1/3) N2; the directions are unchanged
    second = method.aggregate(torch.stack([2 * JACOBIAN[0], JACOBIAN[1]]), LOSSES)
    common = (2 / 3) * 2 * N1 + (1 / 3) * N2
    _close(second.diagnostics["convergence_ratios"], [2.0, 1.0])
    _close(second.update, common * (JACOBIAN[0] / N1 + JACOBIAN[1] / N2))


def test_golden_alignment_loss_and_its_gradient() -> None:
    method = RotoGrad(2, rotation_size=3).to(dtype=F64)
    # R = I: h_k = g_k; the mean gradient is (1, 1, 1), so v = sqrt(3) (g_1 / N1 + g_2 / N2) / 2 and
    # L = sum_k ||v - g_k||^2; on A_k (R = expm(A - A^T), at A = 0) the gradient of ||R v - h||^2 is
    # tril(G - G^T) for G = 2 (v - h) v^T, i.e. 2 tril(v g_k^T - g_k v^T)
    v = math.sqrt(3) / 2 * (JACOBIAN[0] / N1 + JACOBIAN[1] / N2)
    loss = method.auxiliary_loss(JACOBIAN, LOSSES)
    _close(loss, sum(float((v - g).square().sum()) for g in JACOBIAN))
    (gradient,) = torch.autograd.grad(loss, method.generators)
    expected = torch.stack([2 * (torch.outer(v, g) - torch.outer(g, v)).tril(-1) for g in JACOBIAN])
    _close(gradient, expected)
    _close(gradient[0, 1, 0], -2.8097574347450833)  # the reference's number


def test_without_rotations_there_is_nothing_to_train() -> None:
    method = RotoGrad(2)
    assert list(method.parameters()) == [] and method.rotations() is None
    features = torch.randn(4, 3, generator=_generator(0))
    assert method.rotate(features, 1) is features
    assert method.auxiliary_loss(JACOBIAN, LOSSES) is None


# -- the defining conditions -------------------------------------------------------------------------


@given(jacobian=jacobians(min_tasks=1, max_tasks=5), burn_in=st.integers(0, 3), data=st.data())
def test_every_term_has_the_convergence_weighted_norm(
    jacobian: torch.Tensor, burn_in: int, data
) -> None:
    """Over a trajectory: `d = sum_k C g_k / ||g_k||` with `C = sum_k alpha_k ||g_k||`,
    `alpha ~ ||g_k|| / ||g_k^0||`, the baseline the first call's norms replaced at call `burn_in`
    (a zero baseline waiting for a nonzero norm); so every nonzero term has the norm C."""
    num_tasks = jacobian.shape[0]
    method = RotoGrad(num_tasks, burn_in_period=burn_in)
    generator = _generator(data.draw(st.integers(0, 2**31 - 1)))
    baseline = torch.zeros(num_tasks, dtype=F64)
    for step in range(5):
        factors = 10.0 ** (2 * torch.rand(num_tasks, 1, generator=generator, dtype=F64) - 1)
        step_jacobian = jacobian * factors + 0.3 * jacobian.norm(
            dim=-1, keepdim=True
        ) * torch.randn(jacobian.shape, generator=generator, dtype=F64)
        result = method.aggregate(step_jacobian, torch.ones(num_tasks, dtype=F64))
        norms = step_jacobian.norm(dim=-1)
        if step in (0, burn_in):
            baseline = norms.clone()
        baseline = torch.where(baseline > 0, baseline, norms)
        ratios = torch.where(norms > 0, norms / torch.where(baseline > 0, baseline, 1.0), 0.0)
        alphas = ratios / ratios.sum() if float(ratios.sum()) > 0 else torch.zeros_like(ratios)
        common = float((alphas * norms).sum())
        terms = common * step_jacobian / torch.where(norms > 0, norms, 1.0)[:, None]
        term_norms = terms.norm(dim=-1)
        _close(
            term_norms[norms > 0],
            torch.full((int((norms > 0).sum()),), common, dtype=F64),
            rtol=1e-12,
            atol=0,
        )
        _close(
            result.diagnostics["contribution_norms"],
            (norms > 0).to(F64) * common,
            rtol=1e-12,
            atol=0,
        )
        _close(method.baseline, baseline, rtol=0, atol=0)
        _close(result.update, terms.sum(0), rtol=0, atol=1e-12 * float(term_norms.sum()) + 1e-300)
        assert (
            min(norms[norms > 0].tolist(), default=0.0) - 1e-12 * common
            <= common
            <= float(norms.max()) * (1 + 1e-12)
        )


@settings(max_examples=20)
@given(size=st.integers(1, 6), scale=st.floats(1e-3, 30.0), seed=st.integers(0, 2**31 - 1))
def test_rotations_are_orthogonal_to_rounding(size: int, scale: float, seed: int) -> None:
    """`expm(A - A^T)` is a rotation for any generator `A` (det 1, `R^T R = I` to float64 rounding),
    also after a hundred Adam steps on the alignment loss."""
    method = RotoGrad(3, rotation_size=size).to(dtype=F64)
    with torch.no_grad():
        method.generators.copy_(
            scale * torch.randn(method.generators.shape, generator=_generator(seed), dtype=F64)
        )
    eye = torch.eye(size, dtype=F64).expand(3, size, size)
    rounding = 1e-13 * (1 + scale * size)
    rotations = method.rotations()
    _close(rotations.mT @ rotations, eye, rtol=0, atol=rounding)
    _close(torch.linalg.det(rotations), torch.ones(3, dtype=F64), rtol=0, atol=rounding)
    optimizer = torch.optim.Adam(method.parameters(), lr=0.1)
    jacobian = torch.randn(3, 2, size, generator=_generator(seed + 1), dtype=F64)
    for _ in range(100):
        optimizer.zero_grad()
        method.auxiliary_loss(jacobian, torch.ones(3, dtype=F64)).backward()
        optimizer.step()
    rotations = method.rotations()
    _close(
        rotations.mT @ rotations,
        eye,
        rtol=0,
        atol=1e-13 * (1 + float(method.generators.abs().max()) * size),
    )


def _alignment_run(heads: torch.Tensor, steps: int, lr: float) -> list[float]:
    """The rotations trained on their alignment loss with the heads' gradients `h` fixed (so
    `J = R_k^T h_k` moves with the rotations); the loss at every step."""
    num_tasks, size = heads.shape[0], heads.shape[-1]
    method = RotoGrad(num_tasks, rotation_size=size).to(dtype=F64)
    optimizer = torch.optim.SGD(method.parameters(), lr=lr)
    values = []
    for _ in range(steps):
        jacobian = heads @ method.rotations()  # per sample n: g_{n,k} = R_k^T h_{n,k}
        loss = method.auxiliary_loss(jacobian, torch.ones(num_tasks, dtype=F64))
        values.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return values


@settings(max_examples=15, deadline=None)
@given(
    num_tasks=st.integers(2, 4),
    size=st.integers(2, 4),
    samples=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_alignment_loss_decreases_towards_its_lower_bound(
    num_tasks: int, size: int, samples: int, seed: int
) -> None:
    """Training the rotations lowers `L = sum_k ||v - g_k||^2` (rotations do not change it), never
    below `sum_k (||g_k|| - mean_j ||g_j||)^2` (the mean minimises the squared distances and
    `||mean_k g_k|| <= mean_k ||g_k||`), which aligned gradients of one sample attain."""
    generator = _generator(seed)
    heads = torch.randn(num_tasks, samples, size, generator=generator, dtype=F64)
    heads = heads * (10.0 ** (torch.rand(num_tasks, 1, 1, generator=generator, dtype=F64) - 0.5))
    norms = heads.flatten(1).norm(dim=1)
    bound = float(((norms - norms.mean()) ** 2).sum())
    values = _alignment_run(heads, 200, 0.1 / float(norms.max()) ** 2)
    assume(values[0] > bound * (1 + 1e-6) + 1e-9)  # not aligned already
    assert values[-1] < values[0]
    assert min(values) >= bound * (1 - 1e-9) - 1e-12


def test_one_sample_aligns_completely() -> None:
    """With one sample per task every gradient can be rotated onto the common direction: the loss
    reaches its lower bound `sum_k (||g_k|| - mean_j ||g_j||)^2`, monotonically here."""
    heads = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, -3.0, 0.0]], [[0.2, 0.1, -0.4]]], dtype=F64)
    values = _alignment_run(heads, 400, 0.05)
    norms = heads.flatten(1).norm(dim=1)
    bound = float(((norms - norms.mean()) ** 2).sum())
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:]))
    assert abs(values[-1] - bound) <= 1e-6 * values[0]


# -- the rotations and the model ---------------------------------------------------------------------


def test_rotate_acts_on_the_leading_entries_of_the_last_dimension() -> None:
    method = RotoGrad(2, rotation_size=2).to(dtype=F64)
    with torch.no_grad():
        method.generators[1, 1, 0] = (
            math.pi / 2
        )  # R_1 = expm([[0, -pi/2], [pi/2, 0]]): a quarter turn
    features = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, -1.0]], dtype=F64, requires_grad=True)
    _close(method.rotate(features, 0), features.detach())
    rotated = method.rotate(features, 1)
    _close(rotated, [[0.0, 1.0, 5.0], [-2.0, 0.0, -1.0]])
    (gradient,) = torch.autograd.grad(rotated[:, 0].sum(), features)  # R^T e_1 for every sample
    _close(gradient, [[0.0, -1.0, 0.0], [0.0, -1.0, 0.0]])
    assert torch.autograd.grad(rotated.sum(), method.generators, allow_unused=True) == (
        None,
    )  # R is detached
    with pytest.raises(errors.MTLInputError, match="rotation_size = 2"):
        method.rotate(torch.ones(3, 1, dtype=F64), 0)
    with pytest.raises(errors.MTLInputError, match="task must be"):
        method.rotate(features, 2)


def test_state_dict_reset_and_hyperparameters() -> None:
    method = RotoGrad(2, rotation_size=3, burn_in_period=1)
    with torch.no_grad():
        method.generators.normal_(generator=_generator(1))
    method.aggregate(JACOBIAN, LOSSES)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = RotoGrad(2, rotation_size=3, burn_in_period=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.generators, method.generators) and torch.equal(
        restored.baseline, method.baseline
    )
    step = torch.stack([JACOBIAN[0], 3 * JACOBIAN[1]])
    assert torch.equal(restored(step, LOSSES), method(step, LOSSES))
    method.reset()
    assert bool((method.generators == 0).all()) and torch.equal(
        method.rotations(), torch.eye(3).expand(2, 3, 3)
    )
    with pytest.raises(errors.MTLInputError, match="rotations"):
        RotoGrad(2).load_state_dict(restored.state_dict())
    for build in (
        lambda: RotoGrad(2, rotation_size=0),
        lambda: RotoGrad(2, rotation_size=2.5),
        lambda: RotoGrad(2, burn_in_period=-1),
    ):
        with pytest.raises(errors.InvalidHyperparameterError):
            build()
    assert core.make_method("rotograd:rotation_size=4", num_tasks=3).generators.shape == (3, 4, 4)


class RotatedHeads(torch.nn.Module):
    """A shared tanh encoder and K linear heads, head k fed `method.rotate(z, k)`."""

    def __init__(self, method: RotoGrad, *, num_tasks: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator = _generator(seed)
        self.method = method
        self.encoder = torch.nn.Linear(3, 4).to(F64)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(4, 1).to(F64) for _ in range(num_tasks))
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator, dtype=F64))
        self.inputs = torch.randn(16, 3, generator=generator, dtype=F64)
        self.targets = torch.stack(
            [torch.sin(self.inputs.sum(1)), 3 * torch.cos(self.inputs[:, 0])], dim=1
        )[:, :num_tasks]

    def forward(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = torch.tanh(self.encoder(self.inputs))
        losses = [
            ((head(self.method.rotate(z, k))[:, 0] - self.targets[:, k]) ** 2).mean()
            for k, head in enumerate(self.heads)
        ]
        return z, losses


def test_engine_trains_the_model_and_the_rotations() -> None:
    """Representation mode on a two-head MLP whose heads see `R_k z`: the encoder receives the
    scaled update backpropagated from z, each head its raw gradient, the rotations exactly the
    gradient of the alignment loss on `J` (from the heads' losses they get nothing); over the steps
    the losses fall, the rotations move and stay orthogonal, and the alignment loss is reported."""
    method = RotoGrad(2, rotation_size=3).to(dtype=F64)
    model = RotatedHeads(method)
    shared, heads = (
        list(model.encoder.parameters()),
        [list(head.parameters()) for head in model.heads],
    )
    optimizer = torch.optim.Adam([*shared, *(p for group in heads for p in group)], lr=0.02)
    rotation_optimizer = torch.optim.Adam(method.parameters(), lr=0.005)  # the leader learns slower
    twin = RotoGrad(2, rotation_size=3).to(dtype=F64)  # the hand computation's copy of the state
    first_losses = None
    for _ in range(40):
        optimizer.zero_grad()
        rotation_optimizer.zero_grad()
        z, losses = model()
        if first_losses is None:
            first_losses = torch.stack(losses).detach()
        # by hand: J on the unrotated z, the scaled update, the raw head gradients, the alignment loss
        jacobian = torch.stack(
            [torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses]
        )
        expected = twin.aggregate(jacobian.reshape(2, -1), torch.stack(losses).detach())
        with torch.no_grad():
            twin.generators.copy_(method.generators)
        (rotation_grad,) = torch.autograd.grad(
            twin.auxiliary_loss(jacobian, torch.stack(losses).detach()), twin.generators
        )
        encoder_grads = torch.autograd.grad(
            z, shared, grad_outputs=expected.update.view_as(z), retain_graph=True
        )
        head_grads = [
            torch.autograd.grad(loss, group, retain_graph=True)
            for loss, group in zip(losses, heads)
        ]
        assert all(
            torch.autograd.grad(loss, method.generators, retain_graph=True, allow_unused=True)
            == (None,)
            for loss in losses
        )
        info = core.mtl_backward(losses, shared, method, task_params=heads, representation=z)
        for param, grad in zip(shared, encoder_grads):
            torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-14)
        for group, grads in zip(heads, head_grads):
            for param, grad in zip(group, grads):
                torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(method.generators.grad, rotation_grad, rtol=1e-12, atol=1e-14)
        assert float(info.diagnostics["auxiliary_loss"]) >= 0 and torch.equal(
            info.weights, torch.ones(2, dtype=F64)
        )
        optimizer.step()
        rotation_optimizer.step()
    _, losses = model()
    assert float(torch.stack(losses).sum()) < 0.7 * float(first_losses.sum())
    rotations = method.rotations()
    assert float((rotations - torch.eye(3, dtype=F64)).abs().max()) > 1e-3
    _close(rotations.mT @ rotations, torch.eye(3, dtype=F64).expand(2, 3, 3), rtol=0, atol=1e-13)


def test_engine_scales_the_auxiliary_gradient_and_refuses_full_mode() -> None:
    """With `loss_scale` s the rotations receive s times the unscaled alignment gradient (as every
    other gradient of the step); full mode is refused with the modes named."""
    grads = []
    for scale in (None, 8.0):
        method = RotoGrad(2, rotation_size=4).to(dtype=F64)
        with torch.no_grad():
            method.generators.normal_(generator=_generator(3))
        model = RotatedHeads(method, seed=1)
        z, losses = model()
        factor = 1.0 if scale is None else scale
        core.mtl_backward(
            [factor * loss for loss in losses],
            list(model.encoder.parameters()),
            method,
            representation=z,
            loss_scale=scale,
        )
        grads.append(method.generators.grad / factor)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
    method = RotoGrad(2, rotation_size=4).to(dtype=F64)
    model = RotatedHeads(method)
    _, losses = model()
    with pytest.raises(
        errors.UnsupportedEngineModeError,
        match=r"RotoGrad supports the engine modes \['representation'\], not 'full'",
    ):
        core.mtl_backward(losses, list(model.encoder.parameters()), method)


# -- the reference implementation -------------------------------------------------------------------

# Numbers pinned from the reference implementation, rotograd 0.1.6.0 from PyPI (identical to
# github.com/adrianjav/rotograd at f924985, `rotograd/rotograd.py`) with geotorch 0.3.0, run in a
# scratch folder in float64: `RotoGrad(nn.Identity(), heads, rotation_size, burn_in_period=...)`
# on a leaf `x` (so `x.grad` is the update d), heads `(z * H_k[t]).sum()` with the fixed `H_k[t]`
# below (the gradients on the rotated features), losses `head + c_k`, `model.backward(losses)`,
# then SGD with lr 0.1 on `x` and on the rotations' unconstrained parameters
# (`parametrizations.rotation_k.original`). geotorch's `orthogonal` starts each rotation at
# `base @ expm(0)` with a random `base`; the runs set `base = I`, our starting point (see
# docs/DECISIONS.md). Recorded per step: `x.grad` and the rotations' parameter gradients.
REFERENCE = {
    "canonical": {  # one sample of 3 features, rotation_size 3, burn_in_period 20, constants c_k
        "heads": [
            [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]],
            [[-2.0, 1.0, 0.0], [6.0, 2.0, 1.0]],
            [[1.0, -3.0, 2.0], [0.5, 0.5, -1.0]],
        ],
        "shape": (1, 3),
        "rotation_size": 3,
        "burn_in_period": 20,
        "updates": [
            [[0.15880897580793985, 2.0706067580626213, 2.0706067580626213]],
            [[-0.4901797626073674, 6.553437684170589, 3.5362162625707825]],
            [[-1.6250090520075382, -0.7981731214959367, -1.1939807835381488]],
        ],
        # the strict lower triangles (entries (1, 0), (2, 0), (2, 1)) of the two tasks' gradients
        "generator_grads": [
            [
                [-2.8097574347450833, -2.8097574347450833, 0.0],
                [4.082482904638632, 4.082482904638632, 0.0],
            ],
            [
                [-6.470061989997324, -3.956225137921721, 1.7819171052477265],
                [19.76241984699664, 10.09392284338085, -2.1093578756955336],
            ],
            [
                [-0.9785497111053679, 0.3084233423506817, 3.036236713506514],
                [0.6441293962400969, -0.30012620031327625, 0.41492866096451797],
            ],
        ],
    },
    "batch": {  # two samples of 4 features, the first 3 rotated, the baseline replaced at call 1
        "heads": [
            [
                [[1.0, -2.0, 0.5, 1.0], [0.0, 1.0, -1.0, 2.0]],
                [[-1.5, 0.5, 2.0, -1.0], [1.0, 1.0, 0.0, 0.5]],
            ],
            [
                [[0.5, -1.0, 1.0, 0.0], [2.0, 0.5, -0.5, 1.0]],
                [[-1.0, 2.0, 1.0, 1.0], [0.5, -0.5, 1.5, 0.0]],
            ],
            [
                [[2.0, 0.0, -1.0, 1.5], [1.0, -1.0, 0.5, 0.5]],
                [[0.0, 1.0, 1.0, -2.0], [-0.5, 2.0, 0.0, 1.0]],
            ],
        ],
        "shape": (2, 4),
        "rotation_size": 3,
        "burn_in_period": 1,
        "updates": [
            [
                [-0.6446015218768218, -1.3619183020408685, 2.593932719435553, -0.11437725271791954],
                [1.060448538317805, 2.0065198239176905, -0.9460712855998855, 2.4223668403586736],
            ],
            [
                [-1.0723120986857462, 0.5653568299751608, 2.9009511241497288, 0.9457779141208642],
                [3.161090351881791, -0.6879300663890494, 1.160856797376487, 1.0608173758294746],
            ],
            [
                [2.348912342066898, -0.62359394679497, 1.743855991453728, -0.3750299983040286],
                [-0.7762477949481501, 0.47816252085141453, 2.597416420495685, 1.4828706705016061],
            ],
        ],
        "generator_grads": [
            [
                [-2.5682978499687, 2.751747696395036, -2.3848480035423645],
                [2.29128784747792, -2.4549512651549152, 2.127624429800926],
            ],
            [
                [-1.6981610553729105, 3.079441195811844, -2.3857837464684337],
                [1.8916850692084741, -3.1902567666075914, 2.994340405854408],
            ],
            [
                [0.4587617698997798, 2.8433457496982752, -2.0717113072153484],
                [0.003172907822721477, -1.6581611488226993, 3.434260390927676],
            ],
        ],
    },
}
CONSTANTS = {"canonical": [[1.0, 2.0], [0.5, 1.5], [0.25, 3.0]], "batch": [[1.0, 1.0]] * 3}


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_matches_the_reference_implementation(case: str) -> None:
    """The same three steps through the engine (the features `z = x`, heads `(R_k z . H_k).sum()`,
    SGD on `x` and the rotations): the reference's updates and rotation gradients to rounding."""
    spec = REFERENCE[case]
    heads = torch.tensor(spec["heads"], dtype=F64).reshape(3, 2, *spec["shape"])
    x = torch.zeros(spec["shape"], dtype=F64, requires_grad=True)
    method = RotoGrad(
        2, rotation_size=spec["rotation_size"], burn_in_period=spec["burn_in_period"]
    ).to(dtype=F64)
    optimizer = torch.optim.SGD([x, *method.parameters()], lr=0.1)
    rows, columns = torch.tril_indices(3, 3, -1)
    for step in range(3):
        optimizer.zero_grad()
        z = x.clone()
        losses = [
            (method.rotate(z, k) * heads[step, k]).sum() + CONSTANTS[case][step][k]
            for k in range(2)
        ]
        core.mtl_backward(losses, [x], method, representation=z)
        _close(x.grad, spec["updates"][step], rtol=1e-12, atol=1e-13)
        _close(
            method.generators.grad[:, rows, columns],
            spec["generator_grads"][step],
            rtol=1e-12,
            atol=1e-13,
        )
        assert bool(
            (method.generators.grad.triu() == 0).all()
        )  # only the strict lower triangle generates R
        optimizer.step()
