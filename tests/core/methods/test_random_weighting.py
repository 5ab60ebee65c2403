"""RLW and RGW (Lin et al. 2022): simplex weights, reproducibility, E[lambda] = 1/K, each distribution."""

from __future__ import annotations

import math

import pytest
import torch

import core
from core.methods.random_weighting import DISTRIBUTIONS

NUM_SAMPLES = 20_000
FAILURE_RATE = 1e-6
"""Total false-failure probability of the statistical checks for an arbitrary seed (the tests
use fixed seeds, so they are deterministic; the bound says the seeds were not cherry-picked)."""


def draw(
    distribution: str, num_tasks: int, *, seed: int = 0, num_samples: int = NUM_SAMPLES
) -> torch.Tensor:
    """`num_samples` independent RLW draws, as one batched call of shape [num_samples, K]."""
    method = core.RandomLossWeighting(
        distribution=distribution, generator=torch.Generator().manual_seed(seed)
    )
    return method(torch.ones(num_samples, num_tasks, dtype=torch.float64))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("num_tasks", [1, 2, 5])
def test_weights_lie_on_the_simplex(distribution, num_tasks) -> None:
    weights = draw(distribution, num_tasks, num_samples=500)
    assert weights.shape == (500, num_tasks)
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(500, dtype=torch.float64))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_seeded_generator_reproduces_and_leaves_global_rng_alone(distribution) -> None:
    global_state = torch.get_rng_state()
    first = draw(distribution, 4, seed=5, num_samples=50)
    second = draw(distribution, 4, seed=5, num_samples=50)
    other = draw(distribution, 4, seed=6, num_samples=50)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mean_weight_is_one_over_k(distribution) -> None:
    """Each weight lies in [0, 1], so Hoeffding gives P(|mean - 1/K| >= t) <= 2 exp(-2 n t^2);
    a union bound over the K tasks and the 5 distributions makes the total rate FAILURE_RATE."""
    num_tasks = 3
    tolerance = math.sqrt(
        math.log(2 * num_tasks * len(DISTRIBUTIONS) / FAILURE_RATE) / (2 * NUM_SAMPLES)
    )
    mean = draw(distribution, num_tasks, seed=11).mean(dim=0)
    assert torch.all((mean - 1 / num_tasks).abs() < tolerance), (mean, tolerance)


def test_dirichlet_for_two_tasks_is_uniform() -> None:
    """For K = 2, Dir(1, 1) makes w_0 ~ U(0, 1). Dvoretzky-Kiefer-Wolfowitz:
    P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2), eps chosen for the rate FAILURE_RATE."""
    first = draw("dirichlet", 2, seed=3)[:, 0].sort().values
    empirical_above = torch.arange(1, NUM_SAMPLES + 1, dtype=torch.float64) / NUM_SAMPLES
    distance = torch.maximum(
        empirical_above - first, first - (empirical_above - 1 / NUM_SAMPLES)
    ).max()
    assert float(distance) < math.sqrt(math.log(2 / FAILURE_RATE) / (2 * NUM_SAMPLES))


def test_normal_softmax_is_not_uniform_on_the_simplex() -> None:
    """The default is N(0, 1) + softmax, not Dir(1): for K = 2, w_0 = sigmoid(z_0 - z_1) with
    z_0 - z_1 ~ N(0, 2), so P(w_0 < 0.25) = Phi(-log(3) / sqrt(2)) = 0.2192 instead of 0.25."""
    first = draw("normal", 2, seed=4)[:, 0]
    expected = 0.5 * math.erfc(math.log(3) / 2)
    tolerance = math.sqrt(math.log(2 / FAILURE_RATE) / (2 * NUM_SAMPLES))
    assert abs(float((first < 0.25).double().mean()) - expected) < tolerance


def test_bernoulli_weights_are_one_over_the_number_drawn() -> None:
    weights = draw("bernoulli", 4, seed=2, num_samples=2000)
    chosen = weights > 0
    assert bool(chosen.any(dim=-1).all()), "an all-zero draw was not redrawn"
    expected = chosen.double() / chosen.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights, expected)


def test_constrained_bernoulli_is_one_hot() -> None:
    weights = draw("constrained_bernoulli", 5, seed=2, num_samples=2000)
    assert bool(((weights == 0) | (weights == 1)).all())
    assert bool((weights.sum(dim=-1) == 1).all())


def test_default_is_normal_softmax_of_the_generator_draw() -> None:
    losses = torch.tensor([0.3, 2.0, 7.0])
    weights = core.RandomLossWeighting(generator=torch.Generator().manual_seed(9))(losses)
    expected = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(9)), dim=0)
    torch.testing.assert_close(weights, expected)
    assert weights.dtype == losses.dtype and not weights.requires_grad


def test_rgw_ignores_gradient_scale_and_gives_heads_raw_gradients() -> None:
    rgw = core.RandomGradientWeighting(generator=torch.Generator().manual_seed(1))
    assert rgw.head_gradient is core.HeadGradient.RAW
    gramian = torch.diag(torch.tensor([1e-6, 1.0, 1e6], dtype=torch.float64))
    weights = rgw(gramian, torch.ones(3, dtype=torch.float64))
    expected = torch.softmax(
        torch.randn(3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=0
    )
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("cls", [core.RandomLossWeighting, core.RandomGradientWeighting])
def test_bad_hyperparameters_are_named(cls) -> None:
    with pytest.raises(core.errors.InvalidHyperparameterError, match="gaussian.*choose one of"):
        cls(distribution="gaussian")
    with pytest.raises(core.errors.InvalidHyperparameterError, match="generator"):
        cls(generator=42)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_draws_are_finite(dtype) -> None:
    """Half precisions draw in float32 and round at the end: no 0/0 rows from U = 0."""
    for distribution in DISTRIBUTIONS:
        method = core.RandomLossWeighting(
            distribution=distribution, generator=torch.Generator().manual_seed(0)
        )
        weights = method(torch.ones(100_000, 1, dtype=dtype))
        assert weights.dtype == dtype and bool(torch.isfinite(weights).all())
