"""`core.pareto.hvp.HessianVectorProduct` against dense Hessians and finite differences."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidHyperparameterError, MTLInputError
from core.pareto.hvp import HessianVectorProduct

F64 = torch.float64


def small_model(seed: int) -> tuple[list[torch.Tensor], callable]:
    """Two parameter tensors and three nonconvex task losses of them."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 2, generator=generator, dtype=F64, requires_grad=True)
    bias = torch.randn(3, generator=generator, dtype=F64, requires_grad=True)
    inputs = torch.randn(5, 2, generator=generator, dtype=F64)

    def losses(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(inputs @ w.T + b)  # [5, 3]
        return torch.stack(
            [
                hidden[:, 0].pow(2).mean(),
                (hidden[:, 1] - 0.5).pow(2).mean(),
                torch.sin(hidden.sum(dim=1)).mean(),
            ]
        )

    return [weight, bias], losses


@pytest.mark.parametrize("damping", [0.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_dense_hessian(seed, damping) -> None:
    params, losses = small_model(seed)
    alpha = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    operator = HessianVectorProduct(losses(*params), params, weights=alpha, damping=damping)

    def flat_objective(flat: torch.Tensor) -> torch.Tensor:
        return (alpha * losses(flat[:6].reshape(3, 2), flat[6:])).sum()

    point = torch.cat([p.detach().reshape(-1) for p in params])
    dense = torch.autograd.functional.hessian(flat_objective, point) + damping * torch.eye(
        9, dtype=F64
    )
    for column in range(9):
        unit = torch.zeros(9, dtype=F64)
        unit[column] = 1.0
        torch.testing.assert_close(operator(unit), dense[:, column], rtol=1e-12, atol=1e-12)
    vector = torch.randn(9, generator=torch.Generator().manual_seed(seed + 10), dtype=F64)
    torch.testing.assert_close(operator(vector), dense @ vector, rtol=1e-12, atol=1e-12)
    # the gradient of the weighted sum, and a finite difference of it along the vector
    torch.testing.assert_close(operator.gradient, torch.func.grad(flat_objective)(point))
    step = 1e-6
    difference = (
        torch.func.grad(flat_objective)(point + step * vector)
        - torch.func.grad(flat_objective)(point - step * vector)
    ) / (2 * step)
    torch.testing.assert_close(
        operator(vector) - damping * vector, difference, rtol=1e-6, atol=1e-7
    )


def test_unreached_parameters_give_zero_blocks_and_the_graph_is_reused() -> None:
    params, losses = small_model(3)
    unused = torch.zeros(4, dtype=F64, requires_grad=True)
    operator = HessianVectorProduct(losses(*params), [*params, unused])
    vector = torch.randn(13, generator=torch.Generator().manual_seed(0), dtype=F64)
    first = operator(vector)
    assert bool((first[9:] == 0).all()) and operator.dimension == 13
    torch.testing.assert_close(operator(vector), first, rtol=0, atol=0)  # many calls, one graph
    linear = [torch.zeros(2, dtype=F64, requires_grad=True)]
    flat = HessianVectorProduct([linear[0].sum(), 2 * linear[0].sum()], linear, damping=0.5)
    torch.testing.assert_close(flat(torch.ones(2, dtype=F64)), torch.full((2,), 0.5, dtype=F64))


def test_bad_input_is_clear() -> None:
    params, losses = small_model(0)
    with pytest.raises(InvalidHyperparameterError, match="damping"):
        HessianVectorProduct(losses(*params), params, damping=-1.0)
    with pytest.raises(MTLInputError, match="weights"):
        HessianVectorProduct(losses(*params), params, weights=torch.ones(2, dtype=F64))
    with pytest.raises(MTLInputError, match="require grad"):
        HessianVectorProduct(losses(*params), [torch.zeros(2)])
    operator = HessianVectorProduct(losses(*params), params)
    with pytest.raises(MTLInputError, match="shape"):
        operator(torch.zeros(8, dtype=F64))


def test_functional_path_matches_the_double_backward_path() -> None:
    from core.pareto.hvp import FunctionalHessianVectorProduct

    params, losses = small_model(4)
    alpha = torch.tensor([0.6, 0.1, 0.3], dtype=F64)
    point = torch.cat([p.detach().reshape(-1) for p in params])

    def objective(flat: torch.Tensor) -> torch.Tensor:
        return losses(flat[:6].reshape(3, 2), flat[6:])

    functional = FunctionalHessianVectorProduct(objective, point, weights=alpha, damping=0.2)
    graph = HessianVectorProduct(losses(*params), params, weights=alpha, damping=0.2)
    vector = torch.randn(9, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(functional(vector), graph(vector), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(functional.gradient, graph.gradient)
    with pytest.raises(MTLInputError, match="shape"):
        functional(torch.zeros(8, dtype=F64))
