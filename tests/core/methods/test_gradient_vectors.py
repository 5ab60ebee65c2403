"""The Jacobian aggregations of core/methods/gradient_vectors.py: GradDrop, MoCo, DB-MTL, ExcessMTL.

Golden values on J = [[-4, 1, 1], [6, 1, 1]] with losses [1, 2] (derived in the comments), batched
state against separate instances, checkpoints, each method's defining property on hypothesis
inputs, and comparisons with TorchJD 0.18 (GradDrop, ExcessMTLWeighting; skipped without it) and
with numbers pinned from LibMTL's own code (MoCo, DB_MTL, ExcessMTL).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.methods import gradient_vectors
from tests.jacobian_strategies import jacobians, positive_losses
from tests.strategies import awkward_two_task_jacobians

JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
LOSSES = torch.tensor([1.0, 2.0], dtype=torch.float64)
N1, N2 = math.sqrt(18), math.sqrt(38)
EPS = gradient_vectors.HESSIAN_EPSILON

# three steps of K = 2, n = 3 (the first is the canonical one), shared with the LibMTL comparison
STEPS = [
    (JACOBIAN, LOSSES),
    (
        torch.tensor([[-2.0, 1.0, 0.0], [6.0, 2.0, 1.0]], dtype=torch.float64),
        torch.tensor([0.5, 1.5], dtype=torch.float64),
    ),
    (
        torch.tensor([[1.0, -3.0, 2.0], [0.5, 0.5, -1.0]], dtype=torch.float64),
        torch.tensor([0.25, 3.0], dtype=torch.float64),
    ),
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(actual: torch.Tensor, expected, *, rtol: float = 1e-12, atol: float = 1e-15) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol
    )


# -- golden values ---------------------------------------------------------------------------------


def test_golden_graddrop() -> None:
    # coordinate 0: P = (1 + 2 / 10) / 2 = 0.6; coordinates 1, 2: every gradient positive, P = 1,
    # kept whole (2). Seed 0 draws U_0 = 0.9701 > P: the negative entry -4 is kept; seed 3 draws
    # U_0 = 0.0043 < P: the positive entry 6.
    assert float(torch.rand(3, generator=_generator(0), dtype=torch.float64)[0]) > 0.6
    assert float(torch.rand(3, generator=_generator(3), dtype=torch.float64)[0]) < 0.6
    result = core.GradDrop(generator=_generator(0)).aggregate(JACOBIAN, LOSSES)
    _close(result.update, [-4.0, 2.0, 2.0])
    _close(result.head_weights, [1.0, 1.0])
    _close(result.diagnostics["conflict_fraction"], 1 / 3)
    _close(core.GradDrop(generator=_generator(3))(JACOBIAN, LOSSES), [6.0, 2.0, 2.0])
    # leak 1/2: half the plain sum (2, 2, 2) plus half the masked update
    _close(core.GradDrop(leak=0.5, generator=_generator(0))(JACOBIAN, LOSSES), [-1.0, 2.0, 2.0])


def test_golden_moco() -> None:
    method = core.MoCo(2)
    # t = 1: beta_1 = 1/2, y = J / 2, Y Y^T = G / 4 = [[4.5, -5.5], [-5.5, 9.5]], lambda = (1/2, 1/2):
    # lambda - 0.1 Y Y^T lambda = (0.55, 0.3), projected: (0.625, 0.375); d = Y^T lambda
    first = method.aggregate(JACOBIAN, LOSSES)
    _close(first.head_weights, [0.625, 0.375])
    _close(first.update, [-0.125, 0.5, 0.5])
    # t = 2, same J: y = (1/2 + beta_2 / 2) J, beta_2 = 1/(2 sqrt 2); G lambda = (3, 1/2) at lambda = (0.625, 0.375)
    scale = 0.5 + 0.5 / (2 * math.sqrt(2))
    shifted = torch.tensor([0.625, 0.375], dtype=torch.float64) - (
        0.1 / math.sqrt(2)
    ) * scale**2 * torch.tensor([3.0, 0.5], dtype=torch.float64)
    lambdas = shifted + (1 - shifted.sum()) / 2  # both stay positive
    second = method.aggregate(JACOBIAN, LOSSES)
    _close(second.head_weights, lambdas)
    _close(second.update, scale * (lambdas @ JACOBIAN))


def test_golden_db_mtl() -> None:
    method = core.DBMTL(2)
    # m_i = (1 - 0.9) g_i / l_i: norms 0.1 sqrt(18) and 0.1 sqrt(38) / 2; every term rescaled to
    # 0.1 sqrt(18): d = 0.1 ((-4, 1, 1) + sqrt(18 / 38) (6, 1, 1)); heads get 1 / l_i
    result = method.aggregate(JACOBIAN, LOSSES)
    expected = 0.1 * (JACOBIAN[0] + math.sqrt(18 / 38) * JACOBIAN[1])
    _close(result.update, expected)
    _close(result.head_weights, [1.0, 0.5])
    _close(result.diagnostics["contribution_norms"], [0.1 * N1, 0.1 * N1])
    # t = 2, same input: m_i = (0.1 + 0.09) g_i / l_i, the same directions: d scales by 1.9
    _close(method(JACOBIAN, LOSSES), 1.9 * expected)


def test_golden_excess_mtl() -> None:
    method = core.ExcessMTL(2)
    # t = 1: the baseline call, uniform weights: d = (g_1 + g_2) / 2
    first = method.aggregate(JACOBIAN, LOSSES)
    _close(first.update, [1.0, 1.0, 1.0])
    _close(first.head_weights, [0.5, 0.5])
    baseline = torch.tensor(
        [
            16 / math.sqrt(16 + EPS) + 2 / math.sqrt(1 + EPS),
            36 / math.sqrt(36 + EPS) + 2 / math.sqrt(1 + EPS),
        ],
        dtype=torch.float64,
    )
    _close(first.diagnostics["excess_risks"], baseline)
    # t = 2 on J' = [[-2, 1, 0], [6, 2, 1]]: S = J^2 + J'^2, E_i = sum_j J'_ij^2 / sqrt(S_ij + eps),
    # alpha proportional to exp(E_i / E_i^0)
    jacobian = STEPS[1][0]
    excess = torch.tensor(
        [
            4 / math.sqrt(20 + EPS) + 1 / math.sqrt(2 + EPS),
            36 / math.sqrt(72 + EPS) + 4 / math.sqrt(5 + EPS) + 1 / math.sqrt(2 + EPS),
        ],
        dtype=torch.float64,
    )
    weights = torch.softmax(excess / baseline, dim=-1)
    second = method.aggregate(jacobian, STEPS[1][1])
    _close(second.head_weights, weights)
    _close(second.update, weights @ jacobian)


# -- the defining properties -----------------------------------------------------------------------


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5),
    seed=st.integers(0, 2**31 - 1),
    leak=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_graddrop_keeps_each_coordinate_one_sign(
    jacobian: torch.Tensor, seed: int, leak: float
) -> None:
    """Each coordinate of d is the sum of its positive or of its negative entries (leak 0; a leak
    adds `leak` times the plain sum); a coordinate where every task agrees in sign is kept whole."""
    losses = torch.ones(jacobian.shape[0], dtype=torch.float64)
    method = core.GradDrop(leak=leak, generator=_generator(seed))
    uniform = core.GradDrop(generator=_generator(seed)).uniforms(
        (jacobian.shape[1],), jacobian.dtype, jacobian.device
    )
    update = method(jacobian, losses)
    positive, negative = jacobian.clamp_min(0).sum(0), jacobian.clamp_max(0).sum(0)
    total = positive + negative
    masked = (update - leak * total) / (1 - leak) if leak < 1 else None
    agree = (jacobian >= 0).all(0) | (jacobian <= 0).all(0)
    unit = (positive - negative).clamp_min(torch.finfo(torch.float64).tiny)
    purity = torch.where(positive - negative > 0, 0.5 * (1 + total / unit), 0.5)
    tie = purity == uniform  # probability 0: neither side kept
    kept_whole = agree & ~tie
    torch.testing.assert_close(update[kept_whole], total[kept_whole], rtol=1e-12, atol=0)
    if masked is not None:
        size = (positive - negative).clamp_min(1e-300)
        one_side = (
            ((masked - positive).abs() <= 1e-9 * size)
            | ((masked - negative).abs() <= 1e-9 * size)
            | tie
        )
        assert bool(one_side.all()), (update, positive, negative)


def test_graddrop_keeps_the_positive_side_with_probability_purity() -> None:
    """Over many draws the positive entries of a coordinate are kept with frequency P."""
    jacobian = torch.tensor(
        [[3.0, -1.0], [-1.0, -1.0], [1.0, 0.0]], dtype=torch.float64
    )  # P = (0.8, 0)
    method = core.GradDrop(generator=_generator(0))
    jacobians_ = jacobian.expand(20000, 3, 2)
    updates = method(jacobians_, torch.ones(20000, 3, dtype=torch.float64))
    positive_kept = (updates[:, 0] == 4.0).to(torch.float64).mean()
    assert abs(float(positive_kept) - 0.8) < 0.01  # binomial std 0.003
    assert bool((updates[:, 1] == -2.0).all())


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5, min_exponent=-3, max_exponent=3), data=st.data()
)
def test_moco_lambda_stays_on_the_simplex_and_is_the_projection(
    jacobian: torch.Tensor, data
) -> None:
    """lambda is the Euclidean projection of `lambda - gamma_t (Y Y^T + rho I) lambda` onto the
    simplex at every step: on the simplex, and `lambda_i = max(v_i - tau, 0)` for one tau."""
    num_tasks = jacobian.shape[0]
    rho = data.draw(st.sampled_from([0.0, 0.5]))
    method = core.MoCo(num_tasks, rho=rho)
    generator = _generator(data.draw(st.integers(0, 2**31 - 1)))
    for step in range(1, 5):
        previous = method.lambdas
        noisy = jacobian + 0.3 * jacobian.norm(dim=-1, keepdim=True) * torch.randn(
            jacobian.shape, generator=generator, dtype=torch.float64
        )
        method.aggregate(noisy, torch.ones(num_tasks, dtype=torch.float64))
        lambdas, tracked = method.lambdas, method.tracked
        assert bool((lambdas >= 0).all()) and abs(float(lambdas.sum()) - 1) < 1e-12
        step_size = 0.1 / step**0.5
        target = previous - step_size * (
            (tracked @ tracked.T + rho * torch.eye(num_tasks, dtype=torch.float64)) @ previous
        )
        positive = lambdas > 0
        tau = (target - lambdas)[positive]
        scale = 1 + float(target.abs().max())
        assert float(tau.max() - tau.min()) <= 1e-10 * scale  # one threshold on the support
        assert bool(
            (target[~positive] <= tau.mean() + 1e-10 * scale).all()
        )  # and below it off the support


@given(
    gradient=st.lists(
        st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=3
    ),
    beta=st.floats(0.05, 1.0),
    beta_sigma=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_moco_tracks_a_constant_gradient(
    gradient: list[tuple[float, float]], beta: float, beta_sigma: float
) -> None:
    """With a constant gradient g, `y_t - g = prod_{s <= t} (1 - beta_s) (y_0 - g)` and y_0 = 0:
    y_t = (1 - prod_s (1 - beta / s^sigma)) g (exponentially fast for sigma = 0)."""
    g = torch.tensor(gradient, dtype=torch.float64).T  # [2, n]
    method = core.MoCo(2, beta=beta, beta_sigma=beta_sigma)
    remaining = 1.0
    for step in range(1, 8):
        method.aggregate(g, torch.ones(2, dtype=torch.float64))
        remaining *= 1 - beta / step**beta_sigma
        torch.testing.assert_close(
            method.tracked, (1 - remaining) * g, rtol=1e-12, atol=1e-12 * float(g.abs().max())
        )


def test_moco_normalized_gradients_follow_libmtl() -> None:
    """`normalize_gradients=True` tracks `l_i g_i / ||g_i||`; a zero gradient tracks 0."""
    method = core.MoCo(2, normalize_gradients=True)
    assert method.loss_domain == "nonnegative"
    jacobian = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    method.aggregate(jacobian, torch.tensor([2.0, 5.0], dtype=torch.float64))
    _close(method.tracked, 0.5 * torch.tensor([[1.2, 1.6], [0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(LossDomainError):
        core.MoCo(2, normalize_gradients=True).aggregate(
            jacobian, torch.tensor([-1.0, 1.0], dtype=torch.float64)
        )


def _steps(
    jacobian: torch.Tensor, losses: torch.Tensor, count: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = _generator(seed)
    steps = []
    for _ in range(count):
        noise = torch.randn(jacobian.shape, generator=generator, dtype=torch.float64)
        steps.append(
            (
                jacobian + 0.3 * jacobian.norm(dim=-1, keepdim=True) * noise,
                losses * (0.5 + torch.rand(losses.shape, generator=generator, dtype=torch.float64)),
            )
        )
    return steps


@given(jacobian=jacobians(min_tasks=1, max_tasks=5), data=st.data())
def test_db_mtl_terms_have_equal_norms_and_rescaling_changes_nothing(
    jacobian: torch.Tensor, data
) -> None:
    """Every task's term `(max_j ||m_j|| / ||m_i||) m_i` has the norm `max_j ||m_j||` (0 for a zero
    average), and `l_i -> a_i l_i` (constant a_i > 0) leaves every update and the heads' gradients
    `grad l_i / l_i` unchanged."""
    num_tasks = jacobian.shape[0]
    losses = data.draw(positive_losses(num_tasks))
    scales = torch.tensor(
        [10.0 ** data.draw(st.floats(-6, 6)) for _ in range(num_tasks)], dtype=torch.float64
    )
    original, rescaled = core.DBMTL(num_tasks), core.DBMTL(num_tasks)
    for step_jacobian, step_losses in _steps(
        jacobian, losses, 4, data.draw(st.integers(0, 2**31 - 1))
    ):
        result = original.aggregate(step_jacobian, step_losses)
        averages = original.averages
        norms = averages.norm(dim=-1)
        terms = (norms.max() / torch.where(norms > 0, norms, 1.0))[:, None] * averages
        term_norms = terms.norm(dim=-1)
        expected = torch.where(norms > 0, norms.max(), 0.0)
        torch.testing.assert_close(term_norms, expected, rtol=1e-12, atol=0)
        size = float(term_norms.sum())
        torch.testing.assert_close(result.update, terms.sum(0), rtol=0, atol=1e-12 * size + 1e-300)
        other = rescaled.aggregate(scales[:, None] * step_jacobian, scales * step_losses)
        torch.testing.assert_close(other.update, result.update, rtol=0, atol=1e-12 * size + 1e-300)
        torch.testing.assert_close(
            scales * other.head_weights, result.head_weights, rtol=1e-12, atol=0
        )


def test_db_mtl_is_not_monotone_invariant() -> None:
    """`l_1 -> l_1^2` changes the common term norm (`h'(l) ||g|| / h(l)` doubles): the update moves."""
    squared = core.DBMTL(2)(
        torch.stack([2 * LOSSES[0] * JACOBIAN[0], JACOBIAN[1]]),
        torch.stack([LOSSES[0] ** 2, LOSSES[1]]),
    )
    assert not torch.allclose(squared, core.DBMTL(2)(JACOBIAN, LOSSES))


def test_db_mtl_refuses_non_positive_losses() -> None:
    with pytest.raises(LossDomainError, match="log"):
        core.DBMTL(2)(JACOBIAN, torch.tensor([0.0, 1.0], dtype=torch.float64))


@given(
    jacobian=jacobians(min_tasks=1, max_tasks=5, allow_zero_rows=False),
    warmup=st.integers(0, 2),
    data=st.data(),
)
def test_excess_mtl_is_an_exponentiated_gradient_step(
    jacobian: torch.Tensor, warmup: int, data
) -> None:
    """The weights stay uniform through the warm-up and at the baseline call, then
    `log alpha_t - log alpha_{t-1} - eta E_t / E^0` is the same for every task (eq. 9)."""
    num_tasks = jacobian.shape[0]
    eta = data.draw(st.sampled_from([1.0, 0.01]))
    method = core.ExcessMTL(num_tasks, robust_step_size=eta, n_warmup_steps=warmup)
    uniform = torch.full((num_tasks,), 1 / num_tasks, dtype=torch.float64)
    steps = _steps(
        jacobian,
        torch.ones(num_tasks, dtype=torch.float64),
        warmup + 4,
        data.draw(st.integers(0, 2**31 - 1)),
    )
    warmup_risks, previous = [], uniform
    for index, (step_jacobian, step_losses) in enumerate(steps):
        result = method.aggregate(step_jacobian, step_losses)
        excess = result.diagnostics["excess_risks"]
        assert (
            bool((result.head_weights >= 0).all())
            and abs(float(result.head_weights.sum()) - 1) < 1e-12
        )
        if index < warmup:
            warmup_risks.append(excess)
            _close(result.head_weights, uniform)
            continue
        if index == warmup:
            baseline = torch.stack(warmup_risks).mean(0) if warmup else excess
            _close(method.baseline, baseline, rtol=1e-12, atol=0)
            if not warmup:
                _close(result.head_weights, uniform)
        change = (
            torch.log(result.head_weights) - torch.log(previous) - eta * excess / method.baseline
        )
        if bool((result.head_weights > 1e-300).all() and (previous > 1e-300).all()):
            assert float(change.max() - change.min()) <= 1e-9 * (
                1 + float((eta * excess / method.baseline).abs().max())
            )
        _close(
            result.update,
            result.head_weights @ step_jacobian,
            rtol=1e-12,
            atol=1e-12 * float(step_jacobian.norm(dim=-1).max()),
        )
        previous = result.head_weights


def test_excess_mtl_waits_for_a_nonzero_baseline() -> None:
    """A task with a zero gradient at the baseline call takes its first nonzero excess risk as its
    baseline (ratio 1 there), instead of dividing by zero."""
    method = core.ExcessMTL(2)
    zero_first = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    method.aggregate(zero_first, LOSSES)
    assert float(method.baseline[1]) == 0.0
    result = method.aggregate(torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64), LOSSES)
    assert float(method.baseline[1]) == float(result.diagnostics["excess_risks"][1]) > 0
    assert bool(torch.isfinite(result.update).all())


# -- batched state, checkpoints, shapes --------------------------------------------------------------

STATEFUL = [
    lambda: core.MoCo(3),
    lambda: core.MoCo(3, normalize_gradients=True),
    lambda: core.DBMTL(3),
    lambda: core.ExcessMTL(3, n_warmup_steps=1),
]


@pytest.mark.parametrize(
    "factory", STATEFUL, ids=["moco", "moco_normalized", "db_mtl", "excess_mtl"]
)
def test_batched_state_equals_separate_instances(factory) -> None:
    generator = _generator(11)
    steps = [
        (
            torch.randn(2, 2, 3, 5, generator=generator, dtype=torch.float64),
            torch.rand(2, 2, 3, generator=generator, dtype=torch.float64) + 0.1,
        )
        for _ in range(5)
    ]
    batched = factory()
    together = [batched.aggregate(jacobian, losses) for jacobian, losses in steps]
    assert batched.batch_shape == (2, 2) and batched.width == 5
    for i in range(2):
        for j in range(2):
            single = factory()
            for (jacobian, losses), result in zip(steps, together):
                alone = single.aggregate(jacobian[i, j], losses[i, j])
                torch.testing.assert_close(
                    result.update[i, j], alone.update, rtol=1e-12, atol=1e-14
                )
                torch.testing.assert_close(
                    result.head_weights[i, j], alone.head_weights, rtol=1e-12, atol=1e-15
                )


def test_graddrop_batched_rows_are_consecutive_draws() -> None:
    """A batched call draws its rows' uniforms in order from the one generator: row b equals the
    b-th of consecutive unbatched calls on the same seed."""
    jacobians_ = torch.randn(4, 3, 6, generator=_generator(2), dtype=torch.float64)
    losses = torch.ones(4, 3, dtype=torch.float64)
    batched = core.GradDrop(generator=_generator(5))(jacobians_, losses)
    single = core.GradDrop(generator=_generator(5))
    for row in range(4):
        torch.testing.assert_close(
            batched[row], single(jacobians_[row], losses[row]), rtol=0, atol=0
        )


@pytest.mark.parametrize(
    "factory", STATEFUL, ids=["moco", "moco_normalized", "db_mtl", "excess_mtl"]
)
def test_state_dict_round_trips_with_weights_only(factory) -> None:
    steps = _steps(
        torch.randn(3, 4, generator=_generator(3), dtype=torch.float64),
        torch.ones(3, dtype=torch.float64),
        6,
        seed=4,
    )
    original = factory()
    for jacobian, losses in steps[:3]:
        original.aggregate(jacobian, losses)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = factory()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.width == 4
    for jacobian, losses in steps[3:]:
        assert torch.equal(original(jacobian, losses), restored(jacobian, losses))
    with pytest.raises(MTLInputError, match="n = 4"):
        restored(torch.ones(3, 5, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    restored.reset()
    assert restored.width is None and restored(
        torch.ones(3, 5, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ).shape == (5,)


def test_float32_jacobians_give_float32_updates() -> None:
    for method in (
        core.GradDrop(generator=_generator(0)),
        core.MoCo(2),
        core.DBMTL(2),
        core.ExcessMTL(2),
    ):
        result = method.aggregate(JACOBIAN.float(), LOSSES.float())
        assert result.update.dtype == torch.float32 and result.head_weights.dtype == torch.float32


def test_bad_input_and_hyperparameters() -> None:
    with pytest.raises(MTLInputError, match="shape"):
        core.DBMTL(2)(JACOBIAN, torch.ones(3, dtype=torch.float64))
    with pytest.raises(MTLInputError, match="built for 3 tasks"):
        core.MoCo(3)(JACOBIAN, LOSSES)
    for build in (
        lambda: core.GradDrop(leak=1.5),
        lambda: core.MoCo(2, beta=0.0),
        lambda: core.MoCo(2, beta=1.5),
        lambda: core.MoCo(2, normalize_gradients=1),
        lambda: core.DBMTL(2, beta=1.0),
        lambda: core.ExcessMTL(2, robust_step_size=0.0),
        lambda: core.ExcessMTL(2, n_warmup_steps=-1),
        lambda: core.GradDrop(generator=0),
    ):
        with pytest.raises(InvalidHyperparameterError):
            build()
    with pytest.raises(InvalidHyperparameterError, match="num_tasks"):
        core.make_method("moco")


# -- comparisons with other libraries ----------------------------------------------------------------


@pytest.mark.parametrize("leak", [0.0, 0.4])
def test_graddrop_matches_torchjd(leak: float) -> None:
    """TorchJD 0.18's `GradDrop` (lines 10-15 of the paper's Algorithm 1, global RNG) on the same
    Jacobians and the same uniform draws: the same update."""
    torchjd = pytest.importorskip("torchjd")
    generator = _generator(9)
    for trial in range(20):
        num_tasks, dim = 2 + trial % 4, 3 + trial
        jacobian = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
        jacobian[:, ::3] = jacobian[:, ::3].abs()  # some coordinates where every task agrees
        ours = core.GradDrop(leak=leak, generator=_generator(trial))(
            jacobian, torch.ones(num_tasks, dtype=torch.float64)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trial)
            theirs = torchjd.aggregation.GradDrop(
                leak=torch.full((num_tasks,), leak, dtype=torch.float64)
            )(jacobian)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def _excess_trajectory(seed: int) -> list[torch.Tensor]:
    generator = _generator(seed)
    base = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    return [
        base + 0.5 * torch.randn(3, 7, generator=generator, dtype=torch.float64) for _ in range(6)
    ]


def test_excess_mtl_matches_torchjd_after_a_warmup() -> None:
    """With a warm-up both use its mean excess risk as the baseline and step from there: the same
    weights up to TorchJD's `+ 1e-7` in the ratio."""
    torchjd = pytest.importorskip("torchjd")
    for seed in range(3):
        ours, theirs = (
            core.ExcessMTL(3, n_warmup_steps=2),
            torchjd.aggregation.ExcessMTLWeighting(n_warmup_steps=2),
        )
        for jacobian in _excess_trajectory(seed):
            torch.testing.assert_close(
                ours.aggregate(jacobian, torch.ones(3, dtype=torch.float64)).head_weights,
                theirs(jacobian),
                rtol=1e-6,
                atol=0,
            )


def test_excess_mtl_differs_from_torchjd_at_the_baseline_call() -> None:
    """Without warm-up TorchJD 0.18 steps with the raw excess risks E^0 at the baseline call
    (`alpha ~ exp(eta E^0)`), where the paper's normalised step `E^0 / E^0 = 1` and the reference
    leave the weights uniform; afterwards both take the same normalised steps, so the two differ by
    that one factor: `alpha_ours ~ alpha_torchjd exp(-eta E^0)` at every step."""
    torchjd = pytest.importorskip("torchjd")
    ours, theirs = core.ExcessMTL(3), torchjd.aggregation.ExcessMTLWeighting()
    first = None
    for jacobian in _excess_trajectory(7):
        result = ours.aggregate(jacobian, torch.ones(3, dtype=torch.float64))
        if first is None:
            first = result.diagnostics["excess_risks"]
        expected = torch.softmax(torch.log(theirs(jacobian)) - first, dim=-1)
        torch.testing.assert_close(result.head_weights, expected, rtol=1e-6, atol=0)


# Numbers pinned from LibMTL's own classes (median-research-group/LibMTL @ 4336804,
# LibMTL/weighting/{DB_MTL,MoCo,ExcessMTL}.py with their AbsWeighting), run in a scratch folder in
# float64 on STEPS (losses l_i = c_i + J_i . theta at theta = 0, so grad l_i = J_i), defaults
# DB_beta 0.9, DB_beta_sigma 0; MoCo_beta 0.5, MoCo_beta_sigma 0.5, MoCo_gamma 0.1,
# MoCo_gamma_sigma 0.5, MoCo_rho 0; robust_step_size 1.0: the update written into .grad, and the
# weights `backward` returns.
LIBMTL = {
    "db_mtl": [
        [0.012948316867805953, 0.16882471388293002, 0.16882471388293002],
        [0.020814859155420917, 0.49782881661581785, 0.22013580437850358],
        [0.9769109625215532, -0.5784974326892545, 1.0176721279535441],
    ],
    "moco": [
        [0.23741921751230305, 0.13962035265710734, 0.13962035265710734],
        [0.3089722181794107, 0.21123311759087565, 0.1303465763708122],
        [0.3931667146891097, 0.2894451799371625, -0.22714582415256435],
    ],
    "moco_weights": [
        [0.5093739014958458, 0.4906260985041541],
        [0.5142701892655893, 0.4857298107344107],
        [0.5199125191032833, 0.48008748089671666],
    ],
    "excess_mtl": [
        [2.0, 2.0, 2.0],
        [6.240142893649176, 3.2800178617061473, 1.280017861706147],
        [1.530435398943652, -2.7130477926055656, 1.1826123936619135],
    ],
    "excess_mtl_weights": [
        [1.0, 1.0],
        [0.719982138293853, 1.280017861706147],
        [1.0608707978873044, 0.9391292021126953],
    ],
}


def test_db_mtl_matches_libmtl() -> None:
    """The same update up to LibMTL's `log(l + 1e-8)` and `||m_i|| + 1e-8` (relative 1e-6)."""
    method = core.DBMTL(2)
    for (jacobian, losses), expected in zip(STEPS, LIBMTL["db_mtl"]):
        update = method(jacobian, losses)
        torch.testing.assert_close(
            update,
            torch.tensor(expected, dtype=torch.float64),
            rtol=0,
            atol=1e-6 * float(update.norm()),
        )


def test_excess_mtl_matches_libmtl_up_to_the_sum_of_weights() -> None:
    """LibMTL's (and the reference's) weights sum to K: K times ours, and so is the update."""
    method = core.ExcessMTL(2)
    for (jacobian, losses), update, weights in zip(
        STEPS, LIBMTL["excess_mtl"], LIBMTL["excess_mtl_weights"]
    ):
        result = method.aggregate(jacobian, losses)
        torch.testing.assert_close(
            2 * result.update, torch.tensor(update, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            2 * result.head_weights,
            torch.tensor(weights, dtype=torch.float64),
            rtol=1e-12,
            atol=1e-12,
        )


def test_moco_differs_from_libmtl_only_by_its_softmax(monkeypatch) -> None:
    """LibMTL applies a softmax where the paper projects onto the simplex. With the softmax put in
    place of the projection, ours (normalize_gradients=True, as LibMTL) gives LibMTL's numbers up
    to its `||g|| + 1e-8`; with the projection, lambda satisfies the projection's optimality
    condition (one threshold) and LibMTL's does not."""
    monkeypatch.setattr(
        gradient_vectors, "project_to_simplex", lambda values: torch.softmax(values, dim=-1)
    )
    softmax = core.MoCo(2, normalize_gradients=True)
    for (jacobian, losses), update, weights in zip(STEPS, LIBMTL["moco"], LIBMTL["moco_weights"]):
        result = softmax.aggregate(jacobian, losses)
        torch.testing.assert_close(
            result.update, torch.tensor(update, dtype=torch.float64), rtol=1e-7, atol=1e-8
        )
        torch.testing.assert_close(
            result.head_weights, torch.tensor(weights, dtype=torch.float64), rtol=1e-7, atol=1e-8
        )
    monkeypatch.undo()
    projected = core.MoCo(2, normalize_gradients=True)
    jacobian, losses = STEPS[0]
    lambdas = projected.aggregate(jacobian, losses).head_weights
    tracked = projected.tracked
    target = 0.5 - 0.1 * (tracked @ tracked.T) @ torch.tensor([0.5, 0.5], dtype=torch.float64)
    shift = target - lambdas
    assert abs(float(shift[0] - shift[1])) < 1e-15  # both positive: one common threshold
    libmtl_shift = target - torch.tensor(LIBMTL["moco_weights"][0], dtype=torch.float64)
    assert abs(float(libmtl_shift[0] - libmtl_shift[1])) > 1e-2  # the softmax is not the projection


def _two_task_jacobians(seed: int, width: int) -> torch.Tensor:
    return awkward_two_task_jacobians(seed, width)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: core.GradDrop(generator=torch.Generator().manual_seed(3)),
        lambda: core.GradDrop(leak=0.3, generator=torch.Generator().manual_seed(3)),
        lambda: core.MoCo(num_tasks=2),
        lambda: core.MoCo(num_tasks=2, rho=0.3, gamma=5.0, beta=1.0, beta_sigma=0.0),
    ],
)
@pytest.mark.parametrize(("rows", "width"), [(10, 2), (10, 3), (3, 5), (None, 2)])
def test_two_task_scalar_paths_equal_the_general_path(factory, rows, width, monkeypatch) -> None:
    # call after call on Python floats and, with the row limit at 0, on the torch path: the same
    # bits, the same state and the same draws from the generator
    def run() -> list:
        method, results = factory(), []
        for call in range(4):
            jacobian = _two_task_jacobians(call, width)
            jacobian = jacobian[call] if rows is None else jacobian[:rows]
            losses = torch.ones(jacobian.shape[:-1], dtype=torch.float64)
            result = method.aggregate(jacobian, losses)
            drawn = (
                torch.rand(3, generator=method.generator)
                if hasattr(method, "generator") and method.generator is not None
                else None
            )
            results.append((result, method.state_dict(), drawn))
        return results

    fast = run()
    monkeypatch.setattr(gradient_vectors, "_SCALAR_ROWS", 0)
    for (got, state, drawn), (want, want_state, want_drawn) in zip(fast, run()):
        assert torch.equal(got.update, want.update) and torch.equal(
            got.head_weights, want.head_weights
        )
        assert set(got.diagnostics) == set(want.diagnostics)
        assert all(
            torch.equal(got.diagnostics[key], want.diagnostics[key]) for key in want.diagnostics
        )
        for key, value in want_state.items():
            assert (
                torch.equal(state[key], value)
                if isinstance(value, torch.Tensor)
                else state[key] == value
            )
        assert (drawn is None and want_drawn is None) or torch.equal(drawn, want_drawn)
