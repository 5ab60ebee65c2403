"""`core.pareto.minres` against dense linear algebra on symmetric indefinite and singular systems."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidHyperparameterError, MTLInputError
from core.pareto.minres import minres

F64 = torch.float64


def symmetric(n: int, *, seed: int, null: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetric indefinite matrix with `null` exactly zero eigenvalues, and an
    orthonormal basis of its null space (columns)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    spectrum = torch.randn(n, generator=generator, dtype=F64)
    spectrum = spectrum + 0.3 * spectrum.sign()  # |eigenvalues| >= 0.3 apart from the null space
    spectrum[:null] = 0
    range_basis = basis[:, null:]
    return (range_basis * spectrum[null:]) @ range_basis.T, basis[:, :null]


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol passed to minres, accepted relative error)."""
    return (1e-12, 1e-8) if dtype == F64 else (1e-6, 2e-3)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@given(n=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_matches_a_dense_solve_on_indefinite_systems(dtype, n, seed) -> None:
    matrix, _ = symmetric(n, seed=seed)
    rhs = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    rtol, accepted = tolerance(dtype)
    result = minres(lambda v: matrix.to(dtype) @ v, rhs.to(dtype), rtol=rtol)
    expected = torch.linalg.solve(matrix, rhs)
    assert result.converged and result.solution.dtype == dtype
    assert (
        float((result.solution.double() - expected).norm())
        <= accepted * float(expected.norm()) * 10
    )
    # the residual estimate is the true residual, and it never increases
    true_residual = float((rhs - matrix @ result.solution.double()).norm())
    assert abs(float(result.residual_norms[-1]) - true_residual) <= accepted * float(rhs.norm())
    assert bool((result.residual_norms[1:] <= result.residual_norms[:-1] * (1 + 1e-12)).all())


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@given(n=st.integers(3, 25), null=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_singular_consistent_systems_give_the_minimum_norm_solution(dtype, n, null, seed) -> None:
    """From x0 = 0 the Krylov space lies in range(A), so the solution is pinv(A) b."""
    matrix, null_basis = symmetric(n, seed=seed, null=null)
    rhs = matrix @ torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    rtol, accepted = tolerance(dtype)
    result = minres(lambda v: matrix.to(dtype) @ v, rhs.to(dtype), rtol=rtol)
    expected = torch.linalg.pinv(matrix, hermitian=True) @ rhs
    assert result.converged
    scale = float(expected.norm()) + 1e-30
    assert float((result.solution.double() - expected).norm()) <= 10 * accepted * scale
    assert float((null_basis.T @ result.solution.double()).norm()) <= 10 * accepted * scale


@given(n=st.integers(3, 25), seed=st.integers(0, 2**31 - 1))
def test_inconsistent_singular_systems_reach_a_least_squares_solution(n, seed) -> None:
    """b with a null-space component: no solution; MINRES satisfies the normal equations A r = 0
    (a least-squares solution, not necessarily the minimum-norm one). In floating point the null
    eigenvalue is ~1e-16, not 0, so past the least-squares point MINRES would go on to solve that
    nearly singular system: the test on `||A r||` must be looser than the rounding level (1e-8)."""
    matrix, null_basis = symmetric(n, seed=seed, null=1)
    rhs = (
        torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
        + null_basis[:, 0]
    )
    result = minres(lambda v: matrix @ v, rhs, rtol=1e-8, maxiter=10 * n)
    assert result.reason in ("least_squares", "exact_breakdown")
    residual = rhs - matrix @ result.solution
    assert float((matrix @ residual).norm()) <= 1e-6 * float(
        torch.linalg.matrix_norm(matrix, 2)
    ) * float(rhs.norm())
    # the least-squares residual is the null-space part of b
    torch.testing.assert_close(residual.norm(), (null_basis.T @ rhs).norm(), rtol=1e-6, atol=0)


def test_zero_rhs_initial_guess_shapes_and_iteration_cap() -> None:
    matrix, _ = symmetric(6, seed=3)
    zero = minres(lambda v: matrix @ v, torch.zeros(6, dtype=F64))
    assert zero.reason == "zero_rhs" and zero.iterations == 0 and bool((zero.solution == 0).all())
    rhs = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=F64)
    exact = torch.linalg.solve(matrix, rhs)
    started = minres(lambda v: matrix @ v, rhs, x0=exact.clone(), rtol=1e-10)
    assert started.iterations == 0 and started.reason == "converged"
    nearby = minres(lambda v: matrix @ v, rhs, x0=exact + 1e-3, rtol=1e-12)
    torch.testing.assert_close(nearby.solution, exact, rtol=1e-9, atol=1e-12)
    # any tensor shape: the operator acts on [2, 3] tensors
    shaped = minres(lambda v: (matrix @ v.reshape(-1)).reshape(2, 3), rhs.reshape(2, 3), rtol=1e-12)
    torch.testing.assert_close(shaped.solution.reshape(-1), exact, rtol=1e-9, atol=1e-12)
    capped = minres(lambda v: matrix @ v, rhs, maxiter=2)
    assert capped.iterations == 2 and capped.reason == "max_iterations" and not capped.converged
    assert capped.residual_norms.shape == (3,)


def test_two_iterations_on_a_two_dimensional_krylov_space() -> None:
    """The ZDT2-variant situation (spec §4.3): b in an A-invariant 2-D subspace; 2 iterations solve it."""
    matrix = torch.diag(torch.tensor([0.0, -0.5, 40.0], dtype=F64))
    rhs = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    result = minres(lambda v: matrix @ v, rhs, rtol=1e-14, maxiter=2)
    torch.testing.assert_close(
        result.solution, torch.tensor([0.0, -2.0, 0.05], dtype=F64), rtol=1e-12, atol=1e-14
    )


def test_bad_arguments_are_clear() -> None:
    matrix, _ = symmetric(4, seed=0)
    with pytest.raises(InvalidHyperparameterError, match="rtol"):
        minres(lambda v: matrix @ v, torch.ones(4, dtype=F64), rtol=-1.0)
    with pytest.raises(InvalidHyperparameterError, match="maxiter"):
        minres(lambda v: matrix @ v, torch.ones(4, dtype=F64), maxiter=-1)
    with pytest.raises(MTLInputError, match="shape"):
        minres(lambda v: matrix @ v, torch.ones(4, dtype=F64), x0=torch.zeros(3, dtype=F64))
    with pytest.raises(MTLInputError, match="NaN"):
        minres(lambda v: matrix @ v, torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=F64))
