"""MINRES for symmetric, possibly indefinite or singular operators, in torch (no host round trips).

Paige & Saunders (1975), in the formulation of Choi, Paige & Saunders ("MINRES-QLP", SIAM J. Sci.
Comput. 2011, Algorithm 1): Lanczos tridiagonalisation of A on the Krylov space of the initial
residual, a QR factorisation of the tridiagonal matrix by Givens rotations updated one column per
iteration, and the iterate updated by a three-term recurrence of search directions. Each
iteration costs one matvec and O(n) vector work; memory is a handful of vectors. The iterate
minimises `||b - A x||` over `x0 + K_k(A, r0)`, so the residual norm never increases; it is
tracked without extra matvecs (`phi_k = s_k phi_{k-1}`), as is `||A r_k||`, which goes to 0 also
for inconsistent singular systems (least-squares solutions).

This is the solver of `H v = G^T beta` in Ma, Du & Matusik (2020), where the Hessian H is
symmetric but indefinite or singular, so conjugate gradients do not apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError


@dataclass(frozen=True)
class MinresResult:
    """`solution` (b's shape and dtype), `iterations` (matvecs after the initial residual),
    `residual_norms` `[iterations + 1]` (the estimate `||b - A x_k||`, float64 on the CPU),
    `reason` why it stopped ("converged", "least_squares", "max_iterations", "exact_breakdown"
    when the Krylov space became A-invariant, "zero_rhs")."""

    solution: Tensor
    iterations: int
    residual_norms: Tensor
    reason: str
    normal_residual: float = field(default=0.0)
    """The estimate of `||A r_k||` at the last iterate (0 where not defined)."""

    @property
    def converged(self) -> bool:
        return self.reason in ("converged", "least_squares", "exact_breakdown", "zero_rhs")


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)).real)


def minres(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    /,
    *,
    x0: Tensor | None = None,
    rtol: float = 1e-5,
    maxiter: int | None = None,
) -> MinresResult:
    """Solve `A x = b` for a symmetric operator given as `matvec(v) = A v` (any tensor shape).

    Stops when `||b - A x_k|| <= rtol ||b||` ("converged"), when `||A r_k|| <= rtol ||A|| ||r_k||`
    with `||A||` estimated from the Lanczos coefficients ("least_squares": b is not in the range
    of a singular A, and x_k is a least-squares solution), at an exact Lanczos breakdown, or after
    `maxiter` iterations (default `5 n`, as SciPy). With `x0 = 0` and a consistent system the
    iterates stay in the range of A, so for a singular A the solution has no null-space component
    (the minimum-norm solution, up to rounding). For an inconsistent system the least-squares
    solution returned may have a null-space component (MINRES-QLP would remove it); in floating
    point a null eigenvalue is ~1e-16 rather than 0, so the least-squares test needs an `rtol`
    above the rounding level (1e-8 in float64). `rtol` is relative to `||b||` as in SciPy.
    """
    if not rtol >= 0:
        raise InvalidHyperparameterError(f"rtol must be >= 0, got {rtol!r}")
    if maxiter is None:
        maxiter = 5 * b.numel()
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise InvalidHyperparameterError(f"maxiter must be a non-negative integer, got {maxiter!r}")
    x = torch.zeros_like(b) if x0 is None else x0.detach().clone()
    if x.shape != b.shape:
        raise MTLInputError(f"x0 has shape {tuple(x.shape)} but b has shape {tuple(b.shape)}")
    b_norm = math.sqrt(_dot(b, b))
    if not math.isfinite(b_norm):
        raise MTLInputError("the right-hand side b contains NaN or infinite entries")
    residual = b if x0 is None else b - matvec(x)
    beta = math.sqrt(_dot(residual, residual))  # beta_1
    norms = [beta]
    if b_norm == 0:
        return MinresResult(
            torch.zeros_like(b), 0, torch.tensor(norms, dtype=torch.float64), "zero_rhs"
        )
    if beta <= rtol * b_norm:
        return MinresResult(x, 0, torch.tensor(norms, dtype=torch.float64), "converged")

    v_previous = torch.zeros_like(b)
    v = residual / beta
    phi = beta  # ||r_k||
    c_previous, s_previous = -1.0, 0.0  # the rotation of the previous step (c_0 = -1, s_0 = 0)
    delta_first = 0.0  # delta_k^(1): what the earlier rotations left in row k-1 of column k
    epsilon_first = 0.0  # epsilon_k^(1)
    d_previous = torch.zeros_like(b)  # d_{k-1}
    d_before = torch.zeros_like(b)  # d_{k-2}
    operator_norm_sq = 0.0  # ||T_k||_F^2 >= ||A||^2 restricted to the Krylov space
    reason, normal_residual = "max_iterations", 0.0
    iterations = 0
    for iterations in range(1, maxiter + 1):
        # Lanczos step: A v_k = beta_k v_{k-1} + alpha_k v_k + beta_{k+1} v_{k+1}
        p = matvec(v)
        alpha = _dot(v, p)
        p = p.sub(v, alpha=alpha).sub_(v_previous, alpha=beta)  # our own copy from here: in place
        beta_next = math.sqrt(_dot(p, p))
        operator_norm_sq += alpha**2 + beta**2 + beta_next**2
        # apply the previous rotation to column k of the tridiagonal matrix
        delta_second = c_previous * delta_first + s_previous * alpha  # delta_k^(2)
        gamma_first = s_previous * delta_first - c_previous * alpha  # gamma_k^(1)
        epsilon_next = s_previous * beta_next  # epsilon_{k+1}^(1)
        delta_next = -c_previous * beta_next  # delta_{k+1}^(1)
        if iterations > 1:
            # ||A r_{k-1}|| = phi_{k-1} ||(gamma_k^(1), delta_{k+1}^(1))|| (Choi et al. 2011, eq. 3.4):
            # small relative to ||A|| ||r_{k-1}|| means a least-squares solution of an inconsistent system
            normal_residual = phi * math.hypot(gamma_first, delta_next)
            if normal_residual <= rtol * math.sqrt(operator_norm_sq) * phi:
                reason = "least_squares"
                break
        # the new rotation annihilates beta_{k+1} below gamma_k^(1)
        gamma = math.hypot(gamma_first, beta_next)  # gamma_k^(2)
        if gamma == 0:  # A v_k = 0 on the remaining space: the Krylov space is A-invariant
            reason = "exact_breakdown"
            break
        c, s = gamma_first / gamma, beta_next / gamma
        tau = c * phi
        phi = s * phi
        # d_k = (v_k - delta_k^(2) d_{k-1} - epsilon_k^(1) d_{k-2}) / gamma, built in d_{k-2}'s storage
        d = d_before.mul_(-epsilon_first).add_(v).sub_(d_previous, alpha=delta_second).div_(gamma)
        x.add_(d, alpha=tau)
        norms.append(phi)
        if phi <= rtol * b_norm:
            reason = "converged"
            break
        if beta_next == 0:  # the Krylov space is A-invariant and x_k solves the system on it
            reason = "exact_breakdown"
            break
        v_previous, v, beta = v, p.div_(beta_next), beta_next
        d_before, d_previous = d_previous, d
        c_previous, s_previous = c, s
        delta_first, epsilon_first = delta_next, epsilon_next
    return MinresResult(
        x, iterations, torch.tensor(norms, dtype=torch.float64), reason, normal_residual
    )
