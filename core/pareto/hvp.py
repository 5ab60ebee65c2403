"""Hessian-vector products of a weighted sum of task losses, by double backward.

For losses `f_i(x)` and fixed weights `alpha` (the Pareto-stationarity weights), the tangent system
of Ma, Du & Matusik (2020) needs `H u = sum_i alpha_i grad^2 f_i(x) u` for many `u`: the
first-order graph `w = grad_x sum_i alpha_i f_i` is built once (with `create_graph=True`) and
every product is one backward pass through it, `H u = grad_x (u . w)` (spec
pareto_exploration.md §4.1). Parameters that the losses do not reach contribute zero blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError


class HessianVectorProduct:
    """`u -> (H + damping I) u` with `H` the Hessian of `sum_i alpha_i f_i` over `params`, flattened.

    Args:
        losses: K scalar losses (a `[K]` tensor or a sequence), built from `params` with autograd.
        params: the parameters (tensors with `requires_grad`); vectors `u` are their
            concatenation, in this order (`dimension` entries).
        weights: `alpha` `[K]` (held constant); None for all ones.
        damping: `lambda >= 0` added on the diagonal (the reference uses 0.1 on networks).

    The graph of the first derivatives is kept alive by this object; calling it costs one backward
    pass. `gradient` is the flattened `w = grad sum_i alpha_i f_i` (detached).
    """

    def __init__(
        self,
        losses: Tensor | Sequence[Tensor],
        params: Sequence[Tensor],
        /,
        *,
        weights: Tensor | None = None,
        damping: float = 0.0,
    ) -> None:
        losses = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses.reshape(-1)
        self.params = list(params)
        if not self.params or not all(p.requires_grad for p in self.params):
            raise MTLInputError("params must be a non-empty sequence of tensors that require grad")
        if not damping >= 0:
            raise InvalidHyperparameterError(f"damping must be >= 0, got {damping!r}")
        if weights is None:
            weights = torch.ones_like(losses)
        weights = weights.detach().to(losses)
        if weights.shape != losses.shape:
            raise MTLInputError(
                f"weights of shape {tuple(weights.shape)} do not match the {losses.numel()} losses"
            )
        self.damping = float(damping)
        combined = (weights * losses).sum()
        grads = torch.autograd.grad(combined, self.params, create_graph=True, allow_unused=True)
        self._grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        self._reached = [g is not None and g.requires_grad for g in grads]
        self.dimension = sum(p.numel() for p in self.params)
        self.gradient = torch.cat([g.detach().reshape(-1) for g in self._grads])

    def __call__(self, vector: Tensor, /) -> Tensor:
        if vector.shape != (self.dimension,):
            raise MTLInputError(
                f"expected a vector of shape ({self.dimension},), got {tuple(vector.shape)}"
            )
        pieces = list(torch.split(vector.to(self.gradient), [p.numel() for p in self.params]))
        outputs = [g for g, reached in zip(self._grads, self._reached) if reached]
        products: list[Tensor | None] = [None] * len(self.params)
        if outputs:
            grad_outputs = [
                piece.reshape(g.shape)
                for piece, g, reached in zip(pieces, self._grads, self._reached)
                if reached
            ]
            second = torch.autograd.grad(
                outputs,
                self.params,
                grad_outputs=grad_outputs,
                retain_graph=True,
                allow_unused=True,
            )
            products = list(second)
        flat = torch.cat(
            [
                torch.zeros(p.numel(), dtype=self.gradient.dtype, device=self.gradient.device)
                if h is None
                else h.reshape(-1)
                for p, h in zip(self.params, products)
            ]
        )
        return flat + self.damping * vector.to(flat) if self.damping else flat


class FunctionalHessianVectorProduct:
    """The same product through `torch.func`: `H u = jvp(grad(sum_i alpha_i f_i), (x,), (u,))`
    (forward-over-reverse), for an objective given as a function of a flat point `x` `[n] -> [K]`.

    No graph is kept between calls: each product re-runs the forward and backward passes with
    forward-mode tangents, so it needs less memory than `HessianVectorProduct` (which holds the
    first-order graph) and costs more per call (`python -m benchmarks perf-tangent` measures it).
    """

    def __init__(
        self,
        objective: Callable[[Tensor], Tensor],
        point: Tensor,
        /,
        *,
        weights: Tensor | None = None,
        damping: float = 0.0,
    ) -> None:
        if not damping >= 0:
            raise InvalidHyperparameterError(f"damping must be >= 0, got {damping!r}")
        self.point = point.detach()
        values = objective(self.point)
        weights = torch.ones_like(values) if weights is None else weights.detach().to(values)
        if weights.shape != values.shape:
            raise MTLInputError(
                f"weights of shape {tuple(weights.shape)} do not match the {values.numel()} losses"
            )
        self.damping = float(damping)
        self.dimension = self.point.numel()
        self._gradient_function = torch.func.grad(lambda x: (weights * objective(x)).sum())
        self.gradient = self._gradient_function(self.point).detach()

    def __call__(self, vector: Tensor, /) -> Tensor:
        if vector.shape != self.point.shape:
            raise MTLInputError(
                f"expected a vector of shape {tuple(self.point.shape)}, got {tuple(vector.shape)}"
            )
        product: Tensor = torch.func.jvp(
            self._gradient_function, (self.point,), (vector.to(self.point),)
        )[1]  # (gradient, product)
        return product + self.damping * vector.to(product) if self.damping else product
