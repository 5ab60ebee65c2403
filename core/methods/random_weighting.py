"""Random loss weighting (RLW) and random gradient weighting (RGW).

Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022. Every step draws `lambda~ ~ p` and maps it to the simplex with
`f`; the weights are redrawn per step (not per sample) and carry no graph. The five
distributions of the paper (section 5.3):

| distribution            | draw lambda~                        | f to the simplex              |
|-------------------------|-------------------------------------|-------------------------------|
| "normal" (default)      | N(0, 1) i.i.d.                      | softmax                       |
| "uniform"               | U(0, 1) i.i.d.                      | softmax                       |
| "dirichlet"             | Dir(1): Exp(1) = -log U draws       | divided by their sum          |
| "bernoulli"             | Bernoulli(1/2), redrawn if all zero | divided by their sum          |
| "constrained_bernoulli" | one task uniformly, weight 1        | identity (already one-hot)    |

Every distribution is exchangeable across tasks and lands on the simplex, so `E[lambda] = 1/K`:
RLW is an unbiased, 1/K-scaled stochastic version of equal weighting. Older reference code
left the Bernoulli weights un-normalised and applied a softmax on top of the Dirichlet draw; we
follow the paper's table (see docs/DECISIONS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    LossWeighting,
    check_generator,
    generator_state,
    load_generator_state,
)

DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli")


class _RandomSimplexSampler:
    """Draws weights on the simplex from one of `DISTRIBUTIONS`, using only `generator`.

    With a generator, every random number comes from it (on its device), so a seeded run is
    reproducible and the global RNG is left untouched; `generator=None` uses the global RNG.
    """

    def __init__(self, distribution: str, generator: torch.Generator | None) -> None:
        if distribution not in DISTRIBUTIONS:
            raise InvalidHyperparameterError(
                f"unknown distribution {distribution!r} for random weighting; choose one of: {', '.join(DISTRIBUTIONS)}"
            )
        check_generator(generator)
        self.distribution = distribution
        self.generator = generator

    def sample(self, like: Tensor) -> Tensor:
        """Weights with the shape, dtype and device of `like` (`[..., K]`), each row on the simplex."""
        device = self.generator.device if self.generator is not None else like.device
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        # half precisions draw in float32 (U = 0 is common in bfloat16 and would give 0/0 rows)
        draw_dtype = torch.float32 if torch.finfo(dtype).bits < 32 else dtype
        draw = getattr(self, f"_{self.distribution}")
        return draw(tuple(like.shape), draw_dtype, device).to(device=like.device, dtype=dtype)

    def _normal(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.softmax(
            torch.randn(shape, generator=self.generator, dtype=dtype, device=device), dim=-1
        )

    def _uniform(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.softmax(
            torch.rand(shape, generator=self.generator, dtype=dtype, device=device), dim=-1
        )

    def _dirichlet(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        # 1 - U lies in (0, 1], so the Exp(1) draws are finite; their normalised sum is Dir(1).
        uniform = torch.rand(shape, generator=self.generator, dtype=dtype, device=device)
        gamma = -torch.log1p(-uniform)
        return gamma / gamma.sum(dim=-1, keepdim=True)

    def _bernoulli(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        draws = torch.rand(shape, generator=self.generator, device=device) < 0.5
        while True:  # redraw the all-zero rows (probability 2^-K each): terminates almost surely
            empty = ~draws.any(dim=-1)
            if not bool(empty.any()):
                break
            redraw = torch.rand(shape, generator=self.generator, device=device) < 0.5
            draws = torch.where(empty.unsqueeze(-1), redraw, draws)
        ones = draws.to(dtype)
        return ones / ones.sum(dim=-1, keepdim=True)

    def _constrained_bernoulli(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        chosen = torch.randint(shape[-1], shape[:-1], generator=self.generator, device=device)
        return torch.nn.functional.one_hot(chosen, shape[-1]).to(dtype)


class _RandomWeights:
    """The constructor and state shared by RLW and RGW: a distribution name and a generator.

    Batched calls draw every row at once from the one generator: the rows are independent draws,
    distributed as separate instances' draws (not bitwise equal to instances seeded apart).
    """

    random = True
    paper = "Lin, Ye, Zhang, Tsang, Reasonable Effectiveness of Random Weighting (TMLR 2022)"
    claims = frozenset({"simplex_weights"})

    def __init__(
        self, *, distribution: str = "normal", generator: torch.Generator | None = None
    ) -> None:
        self._sampler = _RandomSimplexSampler(distribution, generator)
        self.distribution = distribution

    @property
    def generator(self) -> torch.Generator | None:
        return self._sampler.generator

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self.generator)

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        load_generator_state(self.generator, state, type(self).__name__)


class RandomLossWeighting(_RandomWeights, LossWeighting):
    """RLW: backpropagate `sum_i lambda_i l_i` with fresh random simplex weights every step.

    Args:
        distribution: one of "normal" (N(0,1) + softmax, the paper's default), "uniform",
            "dirichlet", "bernoulli", "constrained_bernoulli" (table in the module docstring).
        generator: the source of all randomness (seed it for reproducible runs); None uses the
            global RNG.

    Weights sum to 1 (the paper's convention), so the expected update is the mean of the task
    gradients, 1/K times linear scalarisation's default sum. Heads receive `lambda_i grad l_i`.
    """

    name = "rlw"

    def _weights(self, losses: Tensor, /) -> Tensor:
        return self._sampler.sample(losses.detach())


class RandomGradientWeighting(_RandomWeights, GradientWeighting):
    """RGW: the shared update `sum_i lambda_i g_i` of the raw task gradients, random simplex weights.

    Same distributions and generator as `RandomLossWeighting`; the gradients are not normalised.
    Heads receive the plain `grad l_i` (the paper's Algorithm 2 weights only the shared part).
    The Gramian is not used: RGW differs from RLW only in what the heads receive and in needing
    K backward passes.
    """

    name = "rgw"
    head_gradient = HeadGradient.RAW

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        return self._sampler.sample(torch.diagonal(gramian.detach(), dim1=-2, dim2=-1))
