"""Seeded families of K-task problems in any dimension: convex quadratics with a known Pareto set,
and random smooth, nonconvex, coercive problems for convergence statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from toy_problems.base import Problem


def _check_sizes(n_var: int, n_obj: int) -> None:
    if not isinstance(n_var, int) or n_var < 1 or not isinstance(n_obj, int) or n_obj < 1:
        raise InvalidHyperparameterError(
            f"n_var and n_obj must be positive integers, got {n_var!r} and {n_obj!r}"
        )


class ConvexQuadratic(Problem):
    """`f_i(x) = 1/2 (x - c_i)^T A_i (x - c_i)` with symmetric positive definite `A_i`.

    Each task is `mu_i`-strongly convex and `L_i`-smooth (`mu_i`, `L_i` the extreme eigenvalues of
    `A_i`). Pareto set: the stationarity condition `sum_i w_i A_i (x - c_i) = 0` with `w` in the
    simplex gives `x(w) = (sum_i w_i A_i)^{-1} sum_i w_i A_i c_i`, and every such point is Pareto
    optimal (the tasks are strictly convex); with `A_i = I` it is the convex hull of the centres.

    Unconstrained (no `project`). Lower bound: every `f_i >= 0`, attained at `c_i`, so the losses
    are >= `lower_bound = 0.0`, not >.

    Args:
        centers: `[K, n]` minimisers `c_i`.
        curvatures: `[K, n, n]` symmetric positive definite `A_i`; None for identities. They are
            stored as `(A_i + A_i^T)/2` (no change for exactly symmetric input; otherwise a
            rounding-level one that makes the gradient `A_i (x - c_i)` exact).
    """

    lower_bound = 0.0

    def __init__(self, centers: Tensor, curvatures: Tensor | None = None) -> None:
        centers = torch.as_tensor(centers, dtype=torch.float64)
        if centers.ndim != 2:
            raise InvalidHyperparameterError(
                f"centers must have shape [K, n], got {tuple(centers.shape)}"
            )
        self.n_obj, self.n_var = centers.shape
        if curvatures is None:
            curvatures = (
                torch.eye(self.n_var, dtype=torch.float64).expand(self.n_obj, -1, -1).clone()
            )
        curvatures = torch.as_tensor(curvatures, dtype=torch.float64)
        if curvatures.shape != (self.n_obj, self.n_var, self.n_var):
            raise InvalidHyperparameterError(
                f"curvatures must have shape {(self.n_obj, self.n_var, self.n_var)}, got {tuple(curvatures.shape)}"
            )
        if not torch.allclose(curvatures, curvatures.transpose(-1, -2)):
            raise InvalidHyperparameterError("curvatures must be symmetric")
        curvatures = 0.5 * (curvatures + curvatures.transpose(-1, -2))
        eigenvalues = torch.linalg.eigvalsh(curvatures)
        if not bool((eigenvalues[..., 0] > 0).all()):
            raise InvalidHyperparameterError(
                "curvatures must be positive definite (smallest eigenvalues: "
                f"{eigenvalues[..., 0].tolist()})"
            )
        self.centers, self.curvatures = centers, curvatures
        self.strong_convexity = eigenvalues[..., 0]  # mu_i
        self.smoothness = eigenvalues[..., -1]  # L_i
        spread = (centers.abs().max() + 1.0).item()
        self.bounds = (-2.0 * spread, 2.0 * spread)

    @classmethod
    def random(
        cls, n_var: int, n_obj: int, /, *, seed: int, condition: float = 10.0
    ) -> ConvexQuadratic:
        """Centres uniform in [-1, 1]^n and `A_i = Q_i diag(lambda) Q_i^T` with random rotations and
        eigenvalues log-uniform in [1, condition]."""
        _check_sizes(n_var, n_obj)
        if not condition >= 1:
            raise InvalidHyperparameterError(f"condition must be >= 1, got {condition!r}")
        generator = torch.Generator().manual_seed(seed)
        centers = 2 * torch.rand(n_obj, n_var, generator=generator, dtype=torch.float64) - 1
        rotations, _ = torch.linalg.qr(
            torch.randn(n_obj, n_var, n_var, generator=generator, dtype=torch.float64)
        )
        spectrum = condition ** torch.rand(n_obj, n_var, generator=generator, dtype=torch.float64)
        curvatures = rotations @ torch.diag_embed(spectrum) @ rotations.transpose(-1, -2)
        return cls(centers, 0.5 * (curvatures + curvatures.transpose(-1, -2)))

    def __call__(self, x: Tensor, /) -> Tensor:
        offsets = x[..., None, :] - self.centers.to(x)  # [..., K, n]
        return (
            0.5 * (offsets[..., None, :] @ self.curvatures.to(x) @ offsets[..., :, None])[..., 0, 0]
        )

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., K]` and gradients `[..., K, n]` in closed form, without an autograd graph:
        `grad f_i = A_i (x - c_i)`, which is the row `(x - c_i)^T A_i` that the values are made
        of (A_i is exactly symmetric). The values are bitwise `__call__`'s; the gradients equal
        autograd's to rounding (autograd averages `(x - c)^T A` and `A (x - c)`, matrix products
        whose sums may be ordered differently). Smooth: no kinks."""
        x = x.detach()
        offsets = x[..., None, :] - self.centers.to(x)  # [..., K, n]
        rows = offsets[..., None, :] @ self.curvatures.to(x)  # [..., K, 1, n]
        return 0.5 * (rows @ offsets[..., :, None])[..., 0, 0], rows[..., 0, :]

    def pareto_point(self, weights: Tensor, /) -> Tensor:
        """`x(w) = (sum_i w_i A_i)^{-1} sum_i w_i A_i c_i` for simplex weights `[..., K]`."""
        weights = weights.to(torch.float64)
        combined = (weights[..., :, None, None] * self.curvatures).sum(dim=-3)
        rhs = (weights[..., :, None] * (self.curvatures @ self.centers[..., None])[..., 0]).sum(
            dim=-2
        )
        return torch.linalg.solve(combined, rhs[..., None])[..., 0]

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`x(w)` for `w` uniform on the simplex (flat Dirichlet); without a generator the draws use
        a fixed seed (deterministic, like the other problems' samplers)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        exponential = -torch.log(
            torch.rand(num_points, self.n_obj, generator=generator, dtype=torch.float64).clamp_min(
                1e-300
            )
        )
        weights = exponential / exponential.sum(dim=-1, keepdim=True)
        return self.pareto_point(weights).to(dtype)


class RandomNonconvex(Problem):
    """A seeded random smooth, nonconvex, coercive K-task problem on R^n, with nonnegative losses:

        f_i(x) = a_i/2 ||x - c_i||^2 + sum_{j<M} b_ij (1 + sin(omega_ij . x + phi_ij)).

    The quadratic makes every task coercive (it dominates the bounded sum), so sublevel sets are
    compact and gradient methods stay bounded; the sinusoids (`||omega_ij|| ~ frequency`) make it
    nonconvex with many stationary points whenever `sum_j b_ij ||omega_ij||^2 > a_i`. Every `f_i`
    is smooth with `L_i <= a_i + sum_j b_ij ||omega_ij||^2`. Losses are >= 0 (so log and power
    transforms apply): `lower_bound = 0.0` (0 is reached only if x = c_i while every sine is -1,
    which a random draw almost never allows, or with amplitude 0). Unconstrained (no `project`).
    The Pareto set is not known in closed form.

    Gradient (`values_and_jacobian`, closed form):
    `grad f_i = a_i (x - c_i) + sum_j b_ij cos(omega_ij . x + phi_ij) omega_ij`.

    Args:
        n_var, n_obj: dimension n and number of tasks K.
        seed: the problem's seed (same seed, same problem, on any machine).
        num_waves: M sinusoids per task. amplitude: sum_j b_ij (split at random). frequency:
            scale of omega. curvature: a_i.
    """

    lower_bound = 0.0

    def __init__(
        self,
        n_var: int,
        n_obj: int,
        /,
        *,
        seed: int,
        num_waves: int = 4,
        amplitude: float = 1.0,
        frequency: float = 2.0,
        curvature: float = 0.5,
    ) -> None:
        _check_sizes(n_var, n_obj)
        if not (num_waves >= 1 and amplitude >= 0 and frequency > 0 and curvature > 0):
            raise InvalidHyperparameterError(
                "need num_waves >= 1, amplitude >= 0, frequency > 0 and curvature > 0"
            )
        self.n_var, self.n_obj, self.seed = n_var, n_obj, seed
        self.bounds = (-3.0, 3.0)
        generator = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.centers = 4 * torch.rand(n_obj, n_var, generator=generator, dtype=f64) - 2
        self.curvature = torch.full((n_obj,), float(curvature), dtype=f64)
        shares = torch.rand(n_obj, num_waves, generator=generator, dtype=f64) + 0.1
        self.amplitudes = amplitude * shares / shares.sum(dim=-1, keepdim=True)
        self.frequencies = (
            frequency
            * torch.randn(n_obj, num_waves, n_var, generator=generator, dtype=f64)
            / n_var**0.5
        )
        self.phases = 2 * torch.pi * torch.rand(n_obj, num_waves, generator=generator, dtype=f64)
        self.smoothness = self.curvature + (
            self.amplitudes * self.frequencies.pow(2).sum(dim=-1)
        ).sum(dim=-1)

    def __call__(self, x: Tensor, /) -> Tensor:
        offsets = x[..., None, :] - self.centers.to(x)  # [..., K, n]
        quadratic = 0.5 * self.curvature.to(x) * offsets.pow(2).sum(dim=-1)
        angles = (self.frequencies.to(x) @ x[..., None, :, None])[..., 0] + self.phases.to(
            x
        )  # [..., K, M]
        return quadratic + (self.amplitudes.to(x) * (1 + torch.sin(angles))).sum(dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., K]` and gradients `[..., K, n]` in closed form, without an autograd graph
        (the offsets and angles shared with the values): `grad f_i = a_i (x - c_i) +
        sum_j b_ij cos(angle_ij) omega_ij`, as autograd's `(a_i / 2) (2 (x - c_i))` plus
        `omega_i^T (b_i cos(angle_i))`. Values bitwise `__call__`'s; gradients equal to autograd's
        to rounding (the sum over the waves is a matrix product in both, possibly ordered
        differently). Smooth: no kinks."""
        x = x.detach()
        frequencies, amplitudes = self.frequencies.to(x), self.amplitudes.to(x)
        offsets = x[..., None, :] - self.centers.to(x)  # [..., K, n]
        half_curvature = 0.5 * self.curvature.to(x)  # [K]
        angles = (frequencies @ x[..., None, :, None])[..., 0] + self.phases.to(x)  # [..., K, M]
        values = half_curvature * offsets.pow(2).sum(dim=-1) + (
            amplitudes * (1 + torch.sin(angles))
        ).sum(dim=-1)
        waves = (frequencies.transpose(-1, -2) @ (amplitudes * torch.cos(angles))[..., None])[
            ..., 0
        ]  # [..., K, n]
        return values, half_curvature[:, None] * (2 * offsets) + waves

    def __repr__(self) -> str:
        return f"RandomNonconvex(n_var={self.n_var}, n_obj={self.n_obj}, seed={self.seed})"

    @staticmethod
    def stack_rows(problems: list[RandomNonconvex], num_starts: int, /) -> NonconvexRows:
        """The runner's evaluator of rows `[T, S, n]`, row t of `problems[t]`: one stacked closed
        form, bit for bit each problem's own."""
        if (
            len(
                {
                    (problem.n_var, problem.n_obj, tuple(problem.frequencies.shape))
                    for problem in problems
                }
            )
            != 1
        ):
            raise ValueError(
                "stacked RandomNonconvex rows need problems of one (n_var, n_obj, num_waves)"
            )
        return NonconvexRows(problems, num_starts)


class StackedNonconvex:
    """Several `RandomNonconvex` problems of one (n, K), evaluated together on `x [P, A, B, n]` (row p
    of the leading dimension belongs to problem p; `batch_shape` is (A, B)), with closed-form gradients

        grad f_i(x) = a_i (x - c_i) + sum_j b_ij cos(omega_ij . x + phi_ij) omega_ij.

    The sums over the coordinates (in `omega_ij . x`) and over the waves are products of small
    matrices, one per point, with the frequencies expanded over A x B once rather than copied by
    broadcasting at every call: the products and sums of the problems' own closed form, in the
    same order (bit for bit its values).
    """

    def __init__(self, problems: list[RandomNonconvex], batch_shape: tuple[int, int]) -> None:
        self.problems = problems

        def stack(name: str) -> Tensor:  # [P, 1, 1, ...]: against the batch dimensions A and B of x
            return torch.stack([getattr(problem, name) for problem in problems])[:, None, None]

        self.centers = stack("centers")  # [P, 1, 1, K, n]
        self.curvature = stack("curvature")  # [P, 1, 1, K]
        self.amplitudes = stack("amplitudes")  # [P, 1, 1, K, M]
        self.phases = stack("phases")  # [P, 1, 1, K, M]
        frequencies = stack("frequencies")
        self.shape = (len(problems), *batch_shape, *frequencies.shape[-3:])  # [P, A, B, K, M, n]
        expanded = frequencies.expand(self.shape)
        self.by_coordinate = (
            expanded.flatten(0, 2).flatten(1, 2).transpose(-1, -2).contiguous()
        )  # [P A B, n, K M]
        self.by_wave = expanded.flatten(0, 3).contiguous()  # [P A B K, M, n]

    def _offsets_and_angles(self, x: Tensor) -> tuple[Tensor, Tensor]:
        offsets = x[..., None, :] - self.centers  # [P, A, B, K, n]
        angles = (x.reshape(-1, 1, x.shape[-1]) @ self.by_coordinate).reshape(
            self.shape[:-1]
        ) + self.phases  # [P, A, B, K, M]
        return offsets, angles

    def _jacobian(self, offsets: Tensor, angles: Tensor) -> Tensor:
        weights = (self.amplitudes * torch.cos(angles)).reshape(-1, 1, self.shape[-2])
        waves = (weights @ self.by_wave).reshape(offsets.shape)
        return self.curvature[..., None] * offsets + waves

    def jacobian(self, x: Tensor) -> Tensor:
        """Per-task gradients `[P, A, B, K, n]` at `x [P, A, B, n]` (those of `values_and_jacobian`)."""
        return self._jacobian(*self._offsets_and_angles(x))

    def values_and_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Losses `[P, A, B, K]` and per-task gradients `[P, A, B, K, n]` at `x [P, A, B, n]`."""
        offsets, angles = self._offsets_and_angles(x)
        values = 0.5 * self.curvature * offsets.pow(2).sum(dim=-1) + (
            self.amplitudes * (1 + torch.sin(angles))
        ).sum(dim=-1)
        return values, self._jacobian(offsets, angles)

    def autograd_gap(self, x: Tensor) -> float:
        """Largest difference between the closed form and autograd's (`core.batched_task_gradients`) on every problem."""
        from core import batched_task_gradients

        values, jacobian = self.values_and_jacobian(x)
        gap = 0.0
        for p, problem in enumerate(self.problems):
            reference_values, reference_jacobian = batched_task_gradients(problem, x[p])
            gap = max(
                gap,
                float((values[p] - reference_values).abs().max()),
                float((jacobian[p] - reference_jacobian).abs().max()),
            )
        return gap


class NonconvexRows:
    """Rows `[T, S, n]` of `RandomNonconvex` problems, row t of problem `problems[t]`, evaluated as
    one `StackedNonconvex` (the runner's evaluator for a list of such problems)."""

    def __init__(self, problems: list[RandomNonconvex], num_starts: int) -> None:
        self.stacked = StackedNonconvex(problems, (1, num_starts))

    def values_and_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if (
            x.dtype != self.stacked.centers.dtype or x.device != self.stacked.centers.device
        ):  # each problem's own, converted
            pairs = [
                problem.values_and_jacobian(row) for problem, row in zip(self.stacked.problems, x)
            ]
            return torch.stack([v for v, _ in pairs]), torch.stack([j for _, j in pairs])
        values, jacobian = self.stacked.values_and_jacobian(x[:, None])
        return values[:, 0], jacobian[:, 0]
