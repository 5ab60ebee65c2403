"""Tchebycheff, PBI, smooth Tchebycheff (STCH) and GLS as loss weightings (core/methods/scalarization.py).

Each method's weights are the gradient of its scalarisation with respect to the losses: checked
against autograd of the scalarisation written here from the papers' equations, batched, with the
claims each declares (or not) and numbers pinned from the reference code where it differs.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.methods.scalarization import (
    GeometricLossStrategy,
    PenaltyBoundaryIntersection,
    SmoothTchebycheff,
    Tchebycheff,
)
from tests.claims import Step, assert_permutation_equivariant, assert_rescaling_invariant

F64 = torch.float64


@st.composite
def problems(draw, *, positive: bool = False, batch: bool = True):
    """Losses `[B, K]` (or `[K]`), a preference (None or K positive numbers) and an ideal point."""
    num_tasks = draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 4)), num_tasks) if batch and draw(st.booleans()) else (num_tasks,)
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** draw(st.floats(-3, 3))
    losses = scale * (torch.rand(shape, generator=generator, dtype=F64) + 0.05)
    if not positive:
        losses = losses - scale * 0.5 * draw(st.booleans())
    if draw(st.booleans()):  # exact ties: one loss copied
        losses[..., -1] = losses[..., 0]
    preference = (
        None
        if draw(st.booleans())
        else draw(st.lists(st.floats(0.05, 1.0), min_size=num_tasks, max_size=num_tasks))
    )
    ideal = (
        0.0
        if draw(st.booleans())
        else draw(st.lists(st.floats(-1.0, 0.5), min_size=num_tasks, max_size=num_tasks))
    )
    return losses, preference, ideal


def _p_z(losses: torch.Tensor, preference, ideal) -> tuple[torch.Tensor, torch.Tensor]:
    num_tasks = losses.shape[-1]
    p = (
        torch.full((num_tasks,), 1.0 / num_tasks, dtype=F64)
        if preference is None
        else torch.tensor(preference, dtype=F64)
    )
    z = (
        torch.full((num_tasks,), float(ideal), dtype=F64)
        if isinstance(ideal, float)
        else torch.tensor(ideal, dtype=F64)
    )
    return p, z


def autograd_weights(scalarisation, losses: torch.Tensor) -> torch.Tensor:
    """`dS/dl`, row by row, by autograd."""
    values = losses.clone().requires_grad_(True)
    scalarisation(values).sum().backward()
    return values.grad


# -- weights are the gradient of the scalarisation ---------------------------------------------------


@given(problem=problems())
def test_tchebycheff_weights_are_the_subgradient_with_ties_shared(problem) -> None:
    losses, preference, ideal = problem
    p, z = _p_z(losses, preference, ideal)
    weights = Tchebycheff(preference=preference, ideal=ideal)(losses)
    # torch.amax's backward shares the gradient evenly between maxima: the same tie rule
    expected = autograd_weights(lambda l: (p * (l - z)).amax(dim=-1), losses)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-15)
    terms = p * (losses - z)
    maximisers = terms == terms.amax(dim=-1, keepdim=True)
    assert bool((weights[~maximisers] == 0).all()) and bool((weights >= 0).all())
    torch.testing.assert_close(
        weights.sum(dim=-1),
        (p * maximisers).sum(dim=-1) / maximisers.sum(dim=-1),
        rtol=1e-12,
        atol=0,
    )


@given(problem=problems(), mu=st.sampled_from([0.01, 0.1, 0.5, 1.0, 10.0]))
def test_stch_weights_are_the_gradient(problem, mu) -> None:
    losses, preference, ideal = problem
    p, z = _p_z(losses, preference, ideal)
    result = SmoothTchebycheff(preference=preference, ideal=ideal, mu=mu).weights(losses)
    expected = autograd_weights(lambda l: mu * torch.logsumexp(p * (l - z) / mu, dim=-1), losses)
    torch.testing.assert_close(result.weights, expected, rtol=1e-10, atol=1e-14)
    value = mu * torch.logsumexp(p * (losses - z) / mu, dim=-1)
    torch.testing.assert_close(result.diagnostics["value"], value, rtol=1e-12, atol=1e-12)
    # max_i p_i (l_i - z_i) <= S <= max + mu log K (the paper's eq. 10)
    top = (p * (losses - z)).amax(dim=-1)
    assert bool((value >= top - 1e-12 * top.abs()).all()) and bool(
        (value <= top + mu * math.log(losses.shape[-1]) + 1e-9).all()
    )


@given(problem=problems(positive=True), mu=st.sampled_from([0.1, 1.0]))
def test_stch_on_log_losses_is_the_gradient_of_stch_of_log_l(problem, mu) -> None:
    losses, preference, ideal = problem
    p, z = _p_z(losses, preference, ideal)
    weights = SmoothTchebycheff(preference=preference, ideal=ideal, mu=mu, log_losses=True)(losses)
    expected = autograd_weights(
        lambda l: mu * torch.logsumexp(p * (torch.log(l) - z) / mu, dim=-1), losses
    )
    torch.testing.assert_close(weights, expected, rtol=1e-10, atol=1e-14)


@given(problem=problems(), theta=st.sampled_from([0.0, 1.0, 5.0, 20.0]))
def test_pbi_weights_are_the_gradient(problem, theta) -> None:
    losses, preference, ideal = problem
    p, z = _p_z(losses, preference, ideal)
    u = p / p.norm()

    def pbi(values: torch.Tensor) -> torch.Tensor:
        shifted = values - z
        along = (shifted * u).sum(dim=-1, keepdim=True)
        return along[..., 0] + theta * (shifted - along * u).norm(dim=-1)

    off = (losses - z) - ((losses - z) * u).sum(dim=-1, keepdim=True) * u
    assume(
        bool((off.norm(dim=-1) > 1e-6 * (losses - z).norm(dim=-1)).all())
    )  # off the ray: differentiable
    result = PenaltyBoundaryIntersection(preference=preference, ideal=ideal, theta=theta).weights(
        losses
    )
    torch.testing.assert_close(
        result.weights, autograd_weights(pbi, losses), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(result.diagnostics["value"], pbi(losses), rtol=1e-12, atol=1e-12)


def test_pbi_on_the_ray_takes_the_preference_direction() -> None:
    """d_2 is not differentiable on the ray; the subgradient taken is u (d_2's part 0), also when
    rounding leaves the losses a few ulps off the ray (l = (1, 1) with u = (1, 1)/sqrt 2)."""
    u = torch.tensor([1.0, 1.0], dtype=F64) / math.sqrt(2)
    for losses in ([1.0, 1.0], [3.0, 3.0], [[2.0, 2.0], [5.0, 5.0]]):
        weights = PenaltyBoundaryIntersection()(torch.tensor(losses, dtype=F64))
        torch.testing.assert_close(weights, u.expand_as(weights), rtol=1e-15, atol=0)
    weights = PenaltyBoundaryIntersection(preference=[1.0, 3.0], ideal=[1.0, -1.0])(
        torch.tensor([2.0, 2.0], dtype=F64)
    )
    torch.testing.assert_close(
        weights, torch.tensor([1.0, 3.0], dtype=F64) / math.sqrt(10), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("theta", [0.5, 1.0, 5.0])
def test_pbi_with_two_tasks_off_the_ray_weights_the_tasks_one_plus_and_one_minus_theta(
    theta,
) -> None:
    """With K = 2 and the uniform preference the weights off the ray are (1 +- theta) / sqrt 2:
    the task above the ray gets 1 + theta, the one below 1 - theta, so theta > 1 (MOEA/D's 5)
    ascends the smaller loss at every step off the ray (RESULTS.md §2.1), theta = 1
    (LibMOON's gradient-based default) switches one task off, theta < 1 keeps both positive."""
    method = PenaltyBoundaryIntersection(theta=theta)
    above_left = method(torch.tensor([2.3, 2.2], dtype=F64))
    above_right = method(torch.tensor([0.4, 1.9], dtype=F64))
    big, small = (1 + theta) / math.sqrt(2), (1 - theta) / math.sqrt(2)
    torch.testing.assert_close(
        above_left, torch.tensor([big, small], dtype=F64), rtol=1e-13, atol=1e-13
    )
    torch.testing.assert_close(
        above_right, torch.tensor([small, big], dtype=F64), rtol=1e-13, atol=1e-13
    )
    assert bool((above_left < 0).any()) == (theta > 1)


@given(problem=problems(positive=True))
def test_gls_weights_are_the_gradient_of_the_geometric_mean(problem) -> None:
    losses, _, _ = problem
    num_tasks = losses.shape[-1]
    result = GeometricLossStrategy().weights(losses)
    expected = autograd_weights(lambda l: l.prod(dim=-1) ** (1.0 / num_tasks), losses)
    torch.testing.assert_close(result.weights, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        result.diagnostics["value"], losses.prod(dim=-1) ** (1.0 / num_tasks), rtol=1e-12, atol=0
    )


def test_gls_survives_losses_whose_product_overflows() -> None:
    losses = torch.tensor([1e200, 1e200, 1e-100], dtype=F64)  # l_1 l_2 overflows; S = 1e100
    weights = GeometricLossStrategy()(losses)
    assert bool(torch.isfinite(weights).all())
    torch.testing.assert_close(
        weights * losses, torch.full((3,), 1e100 / 3, dtype=F64), rtol=1e-10, atol=0
    )


# -- STCH tends to Tchebycheff ------------------------------------------------------------------------


@given(problem=problems())
def test_stch_tends_to_tchebycheff_as_mu_goes_to_zero(problem) -> None:
    losses, preference, ideal = problem
    p, z = _p_z(losses, preference, ideal)
    terms = p * (losses - z)
    ordered = terms.sort(dim=-1, descending=True).values
    # the margin between the largest term and the next distinct one sets how small mu must be
    gaps = ordered[..., :1] - ordered
    distinct = torch.where(
        gaps > 1e-9 * ordered[..., :1].abs().clamp_min(1e-300), gaps, torch.inf
    ).amin(dim=-1)
    assume(bool((distinct > 1e-6 * terms.abs().amax(dim=-1)).all()))
    hard = Tchebycheff(preference=preference, ideal=ideal).weights(losses)
    mu = min(
        float(distinct.min()) / 800, 1.0
    )  # exp(-800) underflows to 0: the shares of non-maxima vanish
    smooth = SmoothTchebycheff(preference=preference, ideal=ideal, mu=mu).weights(losses)
    torch.testing.assert_close(smooth.weights, hard.weights, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(
        smooth.diagnostics["value"],
        hard.diagnostics["value"],
        rtol=1e-9,
        atol=mu * math.log(losses.shape[-1]),
    )
    # and monotonically closer in value as mu shrinks
    values = [
        float(
            SmoothTchebycheff(preference=preference, ideal=ideal, mu=m)
            .weights(losses)
            .diagnostics["value"]
            .sum()
        )
        for m in (1.0, 0.1, 0.01)
    ]
    assert values[0] >= values[1] >= values[2] >= float(hard.diagnostics["value"].sum()) - 1e-9


# -- claims -------------------------------------------------------------------------------------------


def _step(losses: list[float]) -> Step:
    return Step(torch.eye(len(losses), dtype=F64), torch.tensor(losses, dtype=F64))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Tchebycheff(preference=[0.2, 0.8]),
        lambda: SmoothTchebycheff(preference=[0.2, 0.8]),
        lambda: PenaltyBoundaryIntersection(preference=[0.2, 0.8]),
        lambda: Tchebycheff(ideal=[0.0, 1.0]),
        lambda: PenaltyBoundaryIntersection(ideal=[0.0, 1.0]),
    ],
)
def test_a_preference_or_ideal_point_that_is_not_permuted_breaks_equivariance(factory) -> None:
    """Relabelling the tasks without permuting the preference changes the scalarisation: no claim."""
    assert "permutation_equivariant" not in factory().claims
    with pytest.raises(AssertionError):
        assert_permutation_equivariant(factory, [_step([2.0, 1.5])], [1, 0])


@pytest.mark.parametrize("cls", [Tchebycheff, SmoothTchebycheff, PenaltyBoundaryIntersection])
def test_permuting_the_preference_with_the_tasks_permutes_the_weights(cls) -> None:
    losses = torch.tensor([2.0, 1.5, 0.7], dtype=F64)
    preference, ideal = [0.2, 0.5, 0.3], [0.1, -0.2, 0.0]
    order = [2, 0, 1]
    weights = cls(preference=preference, ideal=ideal)(losses)
    permuted = cls(preference=[preference[i] for i in order], ideal=[ideal[i] for i in order])(
        losses[order]
    )
    torch.testing.assert_close(permuted, weights[order], rtol=1e-14, atol=0)


def test_gls_update_keeps_its_direction_under_rescaling_but_not_its_length() -> None:
    """GLS is not `rescaling_invariant` (the claim is about the update): with l_i -> a_i l_i (and
    g_i -> a_i g_i) the update `(S / K) sum_i g_i / l_i` is multiplied by `(prod_i a_i)^(1/K)`."""
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(3, 4, generator=generator, dtype=F64)
    losses = torch.rand(3, generator=generator, dtype=F64) + 0.1
    scales = torch.tensor([2.0, 0.5, 9.0], dtype=F64)
    method = GeometricLossStrategy()
    update = method(losses) @ jacobian
    rescaled = method(scales * losses) @ (scales[:, None] * jacobian)
    torch.testing.assert_close(rescaled, scales.prod() ** (1 / 3) * update, rtol=1e-12, atol=0)
    assert "rescaling_invariant" not in method.claims
    with pytest.raises(AssertionError):
        assert_rescaling_invariant(GeometricLossStrategy, [_step([1.0, 1.0])], [2.0, 1.0])
    assert_rescaling_invariant(
        GeometricLossStrategy, [_step([1.0, 1.0])], [2.0, 0.5]
    )  # prod a = 1: unchanged


def test_defaults_and_facts() -> None:
    assert SmoothTchebycheff().mu == 0.1 and PenaltyBoundaryIntersection().theta == 5.0
    for cls in (Tchebycheff, SmoothTchebycheff, PenaltyBoundaryIntersection, GeometricLossStrategy):
        assert (
            cls.claims == frozenset({"permutation_equivariant"})
            and not cls.stateful
            and not cls.random
        )
    assert GeometricLossStrategy.loss_domain == "positive" and Tchebycheff.loss_domain == "any"
    assert SmoothTchebycheff(log_losses=True).loss_domain == "positive"
    with pytest.raises(LossDomainError):
        GeometricLossStrategy()(torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(LossDomainError):
        SmoothTchebycheff(log_losses=True)(torch.tensor([1.0, -1.0], dtype=F64))
    # any K by default (uniform preference): weights of K = 1 and batched K = 7
    assert Tchebycheff()(torch.tensor([3.0], dtype=F64)).tolist() == [1.0]
    assert SmoothTchebycheff()(torch.rand(4, 7, dtype=F64)).shape == (4, 7)
    # float32 losses give float32 weights
    assert PenaltyBoundaryIntersection()(torch.tensor([1.0, 2.0])).dtype == torch.float32


@pytest.mark.parametrize(
    ("cls", "arguments"),
    [
        (SmoothTchebycheff, {"mu": 0.0}),
        (SmoothTchebycheff, {"mu": math.nan}),
        (SmoothTchebycheff, {"log_losses": 1}),
        (PenaltyBoundaryIntersection, {"theta": -1.0}),
        (Tchebycheff, {"preference": [0.0, 0.0]}),
        (Tchebycheff, {"preference": [1.0, -1.0]}),
        (Tchebycheff, {"preference": 0.5}),
        (Tchebycheff, {"preference": []}),
        (Tchebycheff, {"ideal": [0.0, math.inf]}),
        (Tchebycheff, {"ideal": "zero"}),
    ],
)
def test_bad_hyperparameters_are_refused(cls, arguments) -> None:
    with pytest.raises(InvalidHyperparameterError):
        cls(**arguments)


def test_a_preference_of_another_length_is_refused_at_the_call() -> None:
    with pytest.raises(MTLInputError, match="2 preference entries but there are 3 losses"):
        Tchebycheff(preference=[1.0, 2.0])(torch.ones(3, dtype=F64))


# -- reference code, pinned ---------------------------------------------------------------------------

LOSSES = torch.tensor([1.0, 2.0], dtype=F64)


def test_against_libmoon_pinned() -> None:
    """LibMOON (xzhang2523/libmoon, libmoon/util/scalarization.py), autograd of its functions on
    l = (1, 2), w = (1/2, 1/2) and l = (3, 1.5), w = (0.2, 0.8), run in a scratch folder:
    `soft_tche` (mu = 0.1 and 1) equals STCH; `pbi` (coeff 1 and 5; it ignores z) equals PBI;
    `tche` returns the unweighted l_i at the argmax, so its gradient is e_i where ours is p_i e_i."""
    second, preference = torch.tensor([3.0, 1.5], dtype=F64), [0.2, 0.8]
    pinned = {
        (0.1, 0): [0.0033464254621424273, 0.4966535745378575],
        (1.0, 0): [0.1887703343990727, 0.3112296656009273],
        (0.1, 1): [0.0004945246313269547, 0.7980219014746925],
        (1.0, 1): [0.0708687387548409, 0.5165250449806363],
    }
    for (mu, case), expected in pinned.items():
        losses, p = (LOSSES, None) if case == 0 else (second, preference)
        torch.testing.assert_close(
            SmoothTchebycheff(mu=mu, preference=p)(losses),
            torch.tensor(expected, dtype=F64),
            rtol=1e-12,
            atol=1e-15,
        )
    for theta, case, expected in [
        (1.0, 0, [0.0, 1.414213562373095]),
        (5.0, 0, [-2.82842712474619, 4.242640687119285]),
        (1.0, 1, [1.212678125181665, 0.7276068751089989]),
        (5.0, 1, [5.093248125762993, -0.24253562503633308]),
    ]:
        losses, p = (LOSSES, None) if case == 0 else (second, preference)
        torch.testing.assert_close(
            PenaltyBoundaryIntersection(theta=theta, preference=p)(losses),
            torch.tensor(expected, dtype=F64),
            rtol=1e-12,
            atol=1e-15,
        )
    # tche: LibMOON's gradient (0, 1) at both inputs; ours is p_2 e_2
    assert Tchebycheff()(LOSSES).tolist() == [0.0, 0.5]
    assert Tchebycheff(preference=preference)(second).tolist() == [0.0, 0.8]


def test_against_the_stch_mtl_code_pinned() -> None:
    """Xi-L/STCH `STCH_MTL/LibMTL/weighting/STCH.py` after its warm-up (epoch > STCH_warmup_epoch),
    nadir vector n = (2, 1/2), l = (1, 2), run in a scratch folder: the gradient of
    `K mu logsumexp(log(l / n) / mu)` is (2/9, 8/9) for mu = 1 and (0.030769..., 0.984615...) for
    mu = 1/2. Ours: `log_losses=True`, preference (1, 1), ideal log n, times K."""
    ideal = [math.log(2.0), math.log(0.5)]
    for mu, expected in [
        (1.0, [0.22222222222222227, 0.8888888888888888]),
        (0.5, [0.030769230769230785, 0.9846153846153847]),
    ]:
        weights = 2 * SmoothTchebycheff(log_losses=True, mu=mu, preference=[1.0, 1.0], ideal=ideal)(
            LOSSES
        )
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def test_against_libmtl_gls_pinned() -> None:
    """LibMTL `GLS.backward` on l = (1, 2, 1/4), run in a scratch folder: autograd gives
    (0.2645668..., 0.1322834..., 1.0582673...), which ours equals; the `batch_weight` it returns
    for logging, `l / (K prod l)` = (2/3, 4/3, 1/6), is not that gradient."""
    weights = GeometricLossStrategy()(torch.tensor([1.0, 2.0, 0.25], dtype=F64))
    expected = [0.26456684199469993, 0.13228342099734997, 1.0582673679787997]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


# -- TorchJD ------------------------------------------------------------------------------------------


def test_against_torchjd_scalarizers() -> None:
    """TorchJD's STCH, PBI and GeometricMean scalarizers, differentiated by autograd: the same
    weights (PBI: TorchJD adds 1e-12 under d_2's square root, a relative difference ~1e-12 / d_2^2)."""
    scalarization = pytest.importorskip("torchjd.scalarization")
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        losses = torch.rand(4, generator=generator, dtype=F64) * 3 + 0.1
        preference = torch.rand(4, generator=generator, dtype=F64) + 0.1
        ideal = -torch.rand(4, generator=generator, dtype=F64)
        for mu in (0.1, 1.0):
            expected = autograd_weights(
                scalarization.STCH(mu, weights=preference, reference=ideal), losses
            )
            got = SmoothTchebycheff(mu=mu, preference=preference.tolist(), ideal=ideal.tolist())(
                losses
            )
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
        expected = autograd_weights(scalarization.STCH(0.1), losses)  # its default: uniform 1/K
        torch.testing.assert_close(SmoothTchebycheff()(losses), expected, rtol=1e-12, atol=1e-15)
        expected = autograd_weights(
            scalarization.PBI(5.0, weights=preference, reference=ideal), losses
        )
        got = PenaltyBoundaryIntersection(preference=preference.tolist(), ideal=ideal.tolist())(
            losses
        )
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        expected = autograd_weights(scalarization.GeometricMean(), losses)
        torch.testing.assert_close(GeometricLossStrategy()(losses), expected, rtol=1e-12, atol=0)


def test_gls_weights_beyond_the_losses_dtype_are_refused_with_the_reason() -> None:
    """GLS weighs task i by `(prod_j l_j)^(1/K) / (K l_i)`: finite in float64 for float32 losses
    [1e-30, 1e30, 1e30], but 3e19 times beyond float32's range; the call says so instead of
    returning infinite weights (the fuzz found it)."""
    from core.errors import MTLInputError
    from core.registry import make_method

    with pytest.raises(MTLInputError, match="beyond the range of torch.float32"):
        make_method("gls")(torch.tensor([1e-30, 1e30, 1e30]))
    assert torch.isfinite(
        make_method("gls")(torch.tensor([1e-30, 1e30, 1e30], dtype=torch.float64))
    ).all()
