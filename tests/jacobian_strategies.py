"""Hypothesis strategies for Jacobians with controlled structure (rank, scale, conflict, zeros)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def jacobians(
    draw,
    *,
    min_tasks: int = 1,
    max_tasks: int = 6,
    max_dim: int = 8,
    min_exponent: float = -12.0,
    max_exponent: float = 12.0,
    allow_zero_rows: bool = True,
    full_rank: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A K x D Jacobian: random directions, per-row scales 10^e, optional low rank, zero or duplicate rows.

    Structure drawn: rank below min(K, D) (rows from a low-dimensional subspace), strongly
    conflicting pairs (a row replaced by a negative multiple of another), duplicate rows and,
    if allowed, exact zero rows. With `full_rank`, none of these: K independent random rows in
    D >= K dimensions, for properties that hold where the Gramian is positive definite (drawing
    those by filtering the general strategy rejects most draws).
    """
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    dim = draw(st.integers(num_tasks if full_rank else 1, max(max_dim, num_tasks)))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    rank = num_tasks if full_rank else draw(st.integers(1, min(num_tasks, dim)))
    basis = torch.randn(rank, dim, generator=generator, dtype=torch.float64)
    rows = torch.randn(num_tasks, rank, generator=generator, dtype=torch.float64) @ basis
    if num_tasks >= 2 and not full_rank and draw(st.booleans()):
        i, j = draw(st.permutations(range(num_tasks)))[:2]
        rows[i] = -draw(st.floats(0.1, 10.0)) * rows[j] if draw(st.booleans()) else rows[j]
    exponents = draw(
        st.lists(st.floats(min_exponent, max_exponent), min_size=num_tasks, max_size=num_tasks)
    )
    rows = rows * torch.tensor([10.0**e for e in exponents], dtype=torch.float64)[:, None]
    if allow_zero_rows and not full_rank and num_tasks >= 2 and draw(st.booleans()):
        rows[draw(st.integers(0, num_tasks - 1))] = 0.0
    return rows.to(dtype)


def positive_losses(num_tasks: int):
    """Strictly positive loss vectors of length `num_tasks`."""
    return st.lists(st.floats(1e-3, 1e3), min_size=num_tasks, max_size=num_tasks).map(
        lambda values: torch.tensor(values, dtype=torch.float64)
    )
