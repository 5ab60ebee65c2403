"""A first-order continuous parameterisation of the local Pareto set around a stationary point.

Ma, Du & Matusik (2020) say their method "reconstructs a first-order accurate continuous
approximation" of the local Pareto set but publish no construction (spec pareto_exploration.md
§5.4). This one follows from the tangent system: near a regular Pareto-stationary `x*` with
weights `alpha > 0` the stationary points form a manifold of dimension K - 1, and moving the
weights by `-beta` (`1^T beta = 0`) moves the point by `v(beta) = H^{-1} G^T beta` to first order.
With an orthonormal basis `B` `[K, K-1]` of `{beta : 1^T beta = 0}` and trade-off coordinates
`t in R^{K-1}`:

    x(t) = x* + V t,            V = H^{-1} G^T B   (K - 1 MINRES solves),
    f(x(t)) ~ f(x*) + M t,      M = G V = G H^{-1} G^T B,

both with errors O(|t|^2). Queries by a desired change of the objectives `delta` take the
least-squares coordinates `t = M^+ delta` (the front is (K-1)-dimensional, so only changes in the
range of M are reachable). docs/DECISIONS.md records the choice. The construction needs a regular
point (`alpha > 0`, tangent systems solved); `regular` says whether it is one: at a vertex of the
front (a task at its own minimum, alpha on the simplex boundary) the predictions are not
first-order accurate. Where H is nearly singular on the tangent space (e.g. near the ends of the
ZDT2 variant's front, where both gradients vanish) V is large and the first-order region small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.errors import MTLInputError
from core.pareto.tangent import tangent_directions


def simplex_tangent_basis(num_tasks: int, /, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """An orthonormal basis `[K, K-1]` of `{beta in R^K : sum beta = 0}` (Householder-free: QR of
    the differences `e_i - e_K`)."""
    if num_tasks < 2:
        raise MTLInputError(f"a local Pareto set needs at least 2 tasks, got {num_tasks}")
    differences = (
        torch.eye(num_tasks, dtype=dtype)[:, :-1] - torch.eye(num_tasks, dtype=dtype)[:, -1:]
    )
    basis, _ = torch.linalg.qr(differences)
    return basis


class LocalParetoSet:
    """First-order local Pareto set `x(t) = x* + V t` and front `f* + M t` around a stationary point.

    Args:
        losses: K scalar losses at `x*`, built from `params` with autograd.
        params: the parameters (vectors `x` are their concatenation).
        weights, correct_gradients, damping, maxiter, rtol: as in `tangent_directions`
            (defaults here solve the K - 1 systems tightly: maxiter 200, rtol 1e-10).
    """

    def __init__(
        self,
        losses: Tensor | Sequence[Tensor],
        params: Sequence[Tensor],
        /,
        *,
        weights: Tensor | None = None,
        correct_gradients: bool = True,
        damping: float = 0.0,
        maxiter: int = 200,
        rtol: float = 1e-10,
    ) -> None:
        losses = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses.reshape(-1)
        self.center = torch.cat([p.detach().reshape(-1) for p in params])
        self.center_values = losses.detach().to(torch.float64)
        basis = simplex_tangent_basis(losses.numel(), dtype=self.center.dtype)
        solved = tangent_directions(
            losses,
            params,
            basis.T,
            weights=weights,
            correct_gradients=correct_gradients,
            damping=damping,
            maxiter=maxiter,
            rtol=rtol,
        )
        self.basis = basis
        self.weights = solved.weights
        self.stationarity_residual = solved.residual
        self.directions = solved.raw.T  # V [n, K-1]
        self.front_directions = (solved.jacobian @ self.directions).to(torch.float64)  # M [K, K-1]
        self.solves = solved.solves
        # the manifold argument needs alpha > 0 (a regular point): at a vertex of the front, where a
        # task is at its minimum and alpha sits on the simplex boundary, V is not a tangent
        self.regular = bool(self.weights.min() > 1e-6) and all(
            solve.converged for solve in self.solves
        )

    @property
    def dimension(self) -> int:
        """K - 1, the number of trade-off coordinates."""
        return self.directions.shape[1]

    def _check(self, coordinates: Tensor) -> Tensor:
        coordinates = torch.as_tensor(coordinates)
        if coordinates.shape[-1:] != (self.dimension,):
            raise MTLInputError(
                f"trade-off coordinates must have shape [..., {self.dimension}], got {tuple(coordinates.shape)}"
            )
        return coordinates

    def point(self, coordinates: Tensor, /) -> Tensor:
        """Parameters `x* + V t` `[..., n]` for coordinates `t` `[..., K-1]`."""
        coordinates = self._check(coordinates).to(self.directions)
        return self.center + coordinates @ self.directions.T

    def predicted_values(self, coordinates: Tensor, /) -> Tensor:
        """First-order objective values `f* + M t` `[..., K]`."""
        coordinates = self._check(coordinates).to(torch.float64)
        return self.center_values + coordinates @ self.front_directions.T

    def coordinates_for(self, change: Tensor, /) -> Tensor:
        """Least-squares coordinates `t = M^+ delta` `[..., K-1]` for a desired objective change
        `delta` `[..., K]` (e.g. `[-0.1, +0.05]`: trade task 2 for task 1)."""
        change = torch.as_tensor(change, dtype=torch.float64)
        if change.shape[-1:] != (self.front_directions.shape[0],):
            raise MTLInputError(
                f"the objective change must have shape [..., {self.front_directions.shape[0]}], got {tuple(change.shape)}"
            )
        return change @ torch.linalg.pinv(self.front_directions).T
