"""Stochastic multi-objective weightings with simplex weights kept across steps: MoDo and SDMGrad.

Both were designed for stochastic gradients: they keep weights `lambda` on the simplex and move
them by a few projected gradient steps per training step on a quadratic in `lambda` built from
task-gradient inner products, instead of solving the min-norm problem exactly each step as MGDA
does. Both papers estimate the inner products from two independent mini-batches
(`G = J_1 J_2^T`, "double sampling"), so that `G` is an unbiased estimate of `J J^T`, and take the
parameter step on a third batch (or on the mean of the two). This project's contract gives a
gradient weighting one Gramian `G = J J^T` of one batch: both methods run on it, which is the
single-batch variant (docs/DECISIONS.md). With two Gramians the loop could call the method
on the cross Gramian `J_1 J_2^T` itself; the contract checks symmetric Gramians only.

The weights live on the host in float64 with shape `[*batch_shape, K]`. Every sum over tasks is
taken in ascending order of its terms (`ordered_sum`), so the iterates depend only on the multiset
of terms: relabelling the tasks relabels the iterates bit for bit, and a batch row gives the bits
a separate instance gives. The projected steps are sensitive to rounding (SDMGrad's default step
of 10 expands errors several-fold per inner iteration until a bound is hit), so this exactness is
what makes those two properties hold beyond rounding noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    Reduction,
    WeightsResult,
    check_integer,
    check_number,
    check_reduction,
    state_tensor,
    weights_in_dtype,
)
from core.pareto.stationarity import project_to_simplex


def ordered_sum(values: Tensor, /) -> Tensor:
    """The sum over the last dimension, adding the terms one at a time in ascending order.

    The result depends only on the multiset of terms (not on their order or on the batch shape
    around them), so permuting the tasks, or running one row of a batch alone, gives the same
    bits. K is small: the loop over it costs nothing next to the Gramian.
    """
    if values.shape[-1] == 2:  # a + b == b + a bit for bit: the sort changes nothing
        return values[..., 0] + values[..., 1]
    ordered, _ = torch.sort(values, dim=-1)
    total = ordered[..., 0]
    for index in range(1, ordered.shape[-1]):
        total = total + ordered[..., index]
    return total


def ordered_matvec(matrix: Tensor, vector: Tensor, /) -> Tensor:
    """`matrix @ vector` for `[..., K, K]` and `[..., K]`, each row summed with `ordered_sum`."""
    return ordered_sum(matrix * vector[..., None, :])


def simplex_projection(values: Tensor, /) -> Tensor:
    """Euclidean projection of each row `[..., K]` onto the probability simplex.

    The projection commutes with adding a constant to every entry, so each row is first shifted
    by its largest entry: a step of 1e23 (a Gramian of 1e24 times gamma) then gives the exact
    vertex instead of `1e23 - (1e23 - 1)`, which rounds to 0 or to a multiple of 2^24.
    """
    return project_to_simplex(values - values.amax(dim=-1, keepdim=True))


def projected_gradient_residual(weights: Tensor, gradient: Tensor, /) -> Tensor:
    """`||w - Proj(w - grad)||`, zero exactly at the KKT points of `min_{w in simplex} f` with
    `grad = grad f(w)` (for every step size; batch-shaped)."""
    return (weights - simplex_projection(weights - gradient)).norm(dim=-1)


# -- the same arithmetic on numpy arrays --------------------------------------------------------
# The iterations below run on the host in float64 on `[..., K]` arrays of a few entries, where a
# torch call costs several times the arithmetic. These mirror `ordered_sum`, `ordered_matvec`,
# `simplex_projection` and `projected_gradient_residual` operation for operation (elementwise
# IEEE operations, a sort, a sequential cumulative sum), so they give the same bits.


def _ordered_sum_np(values: np.ndarray, /) -> np.ndarray:
    if values.shape[-1] == 2:  # a + b == b + a bit for bit: no sort needed
        return values[..., 0] + values[..., 1]
    ordered = np.sort(values, axis=-1)
    total = ordered[..., 0]
    for index in range(1, ordered.shape[-1]):
        total = total + ordered[..., index]
    return total


def _ordered_matvec_np(matrix: np.ndarray, vector: np.ndarray, /) -> np.ndarray:
    return _ordered_sum_np(matrix * vector[..., None, :])


def _simplex_projection_np(values: np.ndarray, /) -> np.ndarray:
    shifted = values - values.max(axis=-1, keepdims=True)
    num_tasks = shifted.shape[-1]
    if num_tasks == 2:
        # the sorted shifted row is (0, e), its cumulative sums minus 1 are (-1, e - 1): the
        # support is 2 where e - (e - 1) / 2 > 0, and the threshold (e - 1) / 2 there, else -1
        lowest = shifted.min(axis=-1, keepdims=True)
        half = (lowest - 1) / 2.0
        return np.maximum(shifted - np.where(lowest - half > 0, half, -1.0), 0.0)
    sorted_desc = -np.sort(-shifted, axis=-1)
    cumulative = np.cumsum(sorted_desc, axis=-1) - 1
    index = np.arange(1, num_tasks + 1, dtype=shifted.dtype)
    support = np.maximum((sorted_desc - cumulative / index > 0).sum(axis=-1, keepdims=True), 1)
    threshold = np.take_along_axis(cumulative, support - 1, axis=-1) / support.astype(shifted.dtype)
    return np.maximum(shifted - threshold, 0.0)


def _simplex_projection_pair(y0: float, y1: float, /) -> tuple[float, float]:
    """`_simplex_projection_np` of one row of 2 on Python floats (the same operations)."""
    top = y0 if y0 >= y1 else y1
    s0, s1 = y0 - top, y1 - top
    lowest = s0 if s0 <= s1 else s1
    half = (lowest - 1) / 2.0
    threshold = half if lowest - half > 0 else -1.0
    d0, d1 = s0 - threshold, s1 - threshold
    return (0.0 if d0 <= 0.0 else d0), (0.0 if d1 <= 0.0 else d1)  # NaN stays, as with np.maximum


_SCALAR_ROWS = 64
"""Up to this many 2 x 2 Gramians SDMGrad's inner loop runs on Python floats, row by row."""


def _residual_np(weights: np.ndarray, gradient: np.ndarray, /) -> Tensor:
    return torch.from_numpy(weights - _simplex_projection_np(weights - gradient)).norm(dim=-1)


def _host_gramian_np(gramian: Tensor, method: str) -> np.ndarray:
    gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(gram).all():
        raise NonFiniteGradientError(f"{method}: the Gramian contains NaN or infinite entries")
    return 0.5 * (gram + np.swapaxes(gram, -1, -2))


def _host_gramian(gramian: Tensor, method: str) -> Tensor:
    gram = gramian.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(gram).all()):
        raise NonFiniteGradientError(f"{method}: the Gramian contains NaN or infinite entries")
    return 0.5 * (gram + gram.transpose(-1, -2))


class _SimplexState(GradientWeighting):
    """Shared bookkeeping of MoDo and SDMGrad: weights on the simplex `[*batch_shape, K]`
    (float64, host), created at the first call as `1/K` (the K of that call), and a call count."""

    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._lambda: Tensor | None = None
        self._calls = 0

    @property
    def simplex_weights(self) -> Tensor | None:
        """The weights kept on the simplex, `[*batch_shape, K]` (None before the first call)."""
        return self._lambda

    def state_dict(self) -> dict[str, Any]:
        weights = None if self._lambda is None else self._lambda.clone()
        return {"batch_shape": list(self.batch_shape), "calls": self._calls, "weights": weights}

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        method = type(self).__name__
        self.reset(tuple(state["batch_shape"]))
        weights = state.get("weights")
        if weights is not None:
            weights = torch.as_tensor(weights)
            shape = (*self.batch_shape, weights.shape[-1] if weights.ndim else 0)
            self._lambda = state_tensor(state, "weights", shape, method).to(torch.float64).clone()
        self._calls = int(state["calls"])
        self._pristine = self._calls == 0

    def _current(self, gram: Tensor | np.ndarray) -> Tensor:
        """The kept weights for this call's Gramian (created as 1/K at the first call)."""
        self._match_batch_shape(tuple(gram.shape[:-2]))
        self._used()
        num_tasks = gram.shape[-1]
        if self._lambda is None:
            self._lambda = torch.full(
                (*self.batch_shape, num_tasks), 1.0 / num_tasks, dtype=torch.float64
            )
        elif self._lambda.shape[-1] != num_tasks:
            raise MTLInputError(
                f"{type(self).__name__} holds weights of {self._lambda.shape[-1]} tasks, got a Gramian of "
                f"{num_tasks}; call reset() to start runs with another number of tasks"
            )
        return self._lambda


class MoDo(_SimplexState):
    """MoDo, multi-objective gradient with double sampling (Chen, Fernando, Ying, Chen, "Three-Way
    Trade-Off in Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance",
    NeurIPS 2023 / JMLR 2024, Algorithm 1).

    Keeps `lambda` on the simplex (initially `1/K`) and, at every step, takes one projected
    gradient step on the regularised min-norm objective `(1/2) lambda^T (G + rho I) lambda`:

        lambda_{t+1} = Proj_simplex(lambda_t - gamma (G lambda_t + rho lambda_t)),

    then returns `lambda_{t+1}`: the paper's parameter step `x_{t+1} = x_t - alpha J^T lambda_{t+1}`
    uses the updated weights (as the official code, LibMTL and TorchJD's `MoDoWeighting`).
    The weights are on the simplex (`simplex_weights`); the shared update is `sum_i lambda_i g_i`
    at the scale of one task gradient, and heads receive `lambda_i grad l_i` (the paper updates
    all parameters with `lambda`; LibMTL gives the heads their plain gradients averaged over the
    three batches).

    A fixed point of the step is a KKT point of `min_{lambda in simplex} lambda^T (G + rho I) lambda`
    (the min-norm problem with a ridge), for every `gamma > 0`: `(G + rho I) lambda` is equal to
    its minimum on the support of lambda and at least that minimum elsewhere.

    Deviations (docs/DECISIONS.md): the paper's `G` is `J_1 J_2^T` from two independent batches
    (unbiased for `J J^T`); here it is the one-batch Gramian `J J^T`, the only Gramian the
    contract gives. The losses are not used. `G` is not normalised (as in every reference), so
    `gamma` is in units of 1 / gradient norm squared. The projection shifts each row by its
    largest entry first (exact vertices for large steps, see `simplex_projection`).

    Args:
        gamma: the step size of the weights, 0.1 (the official code's config and TorchJD;
            LibMTL's docstring says 0.001).
        rho: the ridge on the weights, 0.1 (official code, LibMTL, TorchJD); >= 0.

    Diagnostics: `"kkt_residual"` (batch shape), `||lambda - Proj(lambda - (G + rho I) lambda)||` at
    the returned weights, zero exactly at a fixed point.
    """

    name = "modo"
    paper = (
        "Chen, Fernando, Ying, Chen, Three-Way Trade-Off in Multi-Objective Learning: Optimization, "
        "Generalization and Conflict-Avoidance (NeurIPS 2023, JMLR 2024)"
    )
    claims = frozenset({"permutation_equivariant", "simplex_weights"})

    def __init__(self, *, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma = check_number("gamma", gamma, minimum=0.0, strict=True)
        self.rho = check_number("rho", rho, minimum=0.0)
        self.reset()

    def objective_gradient(self, gramian: Tensor, weights: Tensor, /) -> Tensor:
        """`(G + rho I) lambda`, the gradient of `(1/2) lambda^T (G + rho I) lambda` (float64)."""
        return ordered_matvec(gramian, weights) + self.rho * weights

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        gram = _host_gramian_np(gramian, "MoDo")
        current = self._current(gram).numpy()
        rho = self.rho
        # objective_gradient and simplex_projection on numpy arrays (the same bits)
        updated = _simplex_projection_np(
            current - self.gamma * (_ordered_matvec_np(gram, current) + rho * current)
        )
        self._lambda = torch.from_numpy(updated)
        self._calls += 1
        residual = _residual_np(updated, _ordered_matvec_np(gram, updated) + rho * updated)
        weights = weights_in_dtype(self._lambda, gramian.dtype, "MoDo").to(gramian.device)
        return WeightsResult(weights, {"kkt_residual": residual})


class SDMGrad(_SimplexState):
    """SDMGrad, stochastic direction-oriented multi-objective gradient descent (Xiao, Ban, Ji,
    "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
    NeurIPS 2023, Algorithm 1).

    The direction is `d = (g_w + lambda g_0) / (1 + lambda)` with `g_0` the mean gradient
    (`g_0 = sum_i g_i / K`) and `w` on the simplex minimising

        (1/2) ||g_w + lambda g_0||^2 = (1/2) (w + lambda u)^T G (w + lambda u),   u = 1/K,

    which pulls the MGDA direction towards `g_0` (lambda = 0: MGDA; lambda -> inf: the mean). The
    weights `w` are kept across steps and moved, at every call, by `iterations` steps of projected
    gradient descent with heavy-ball momentum (velocity restarted at 0 each call, as the official
    code's fresh `torch.optim.SGD`): with `A = G / s^2`, `s = mean_i ||g_i||` (the references'
    normalisation, "section 6.1"),

        v <- momentum v + A (w + lambda u),   w <- Proj_simplex(w - lr v).

    The weights returned are those of `d`, `(w + lambda u) / (1 + lambda)`: on the simplex
    (`simplex_weights`) with `reduction="mean"` (default: TorchJD, LibMTL, the paper's `d`);
    `"sum"` multiplies them by K, as the official code does "to match the sum loss". Heads
    receive `weight_i grad l_i` (the paper's step on all parameters; TorchJD; the official code
    gives the heads the plain gradients of its three batches).

    A fixed point of the inner step is a KKT point of the quadratic above for every `lr > 0` and
    `momentum in [0, 1)`: `A (w + lambda u)` equals its minimum on the support of w and is at
    least that minimum elsewhere; such a point is left unchanged by a call. The default step
    `lr = 10` is far above `2 / ||A||` (A's diagonal averages about 1), so the inner iteration
    does not converge in general: it jumps between faces of the simplex (as in the references);
    `lr` below `1 / ||A||` makes it a convergent solver of the quadratic.

    Deviations (docs/DECISIONS.md): the paper estimates `G` from two independent batches
    (`J_xi J_xi'^T`) and `g_w`, `g_0` from a third; here `G = J J^T` of one batch and the same
    gradients. `s^2` is used as it is (the official code adds 1e-4 to each `G_ii` inside the
    square root, LibMTL and TorchJD add 1e-8 to `s^2`); an all-zero Gramian leaves `w` unchanged.
    The preference direction is the mean gradient (TorchJD's `pref_vector` is not offered).

    Args:
        lr: the inner step size, 10 (official code, TorchJD; LibMTL uses 5).
        momentum: the inner momentum, 0.5 (official code, LibMTL, TorchJD), in [0, 1).
        iterations: inner steps per call, 20 (official code `niter`, LibMTL, TorchJD).
        lambda_: the pull towards the mean gradient, 0.3 (the official experiments' `--lamda`,
            LibMTL, TorchJD; the official class default is 0.6); >= 0.
        reduction: "mean" (default) or "sum" (x K, the official code's output scale).

    Diagnostics: `"kkt_residual"` (batch shape), `||w - Proj(w - A (w + lambda u))||` at the kept
    `w`, zero exactly at a KKT point of the inner problem.
    """

    name = "sdmgrad"
    paper = (
        "Xiao, Ban, Ji, Direction-oriented Multi-objective Learning: Simple and Provable Stochastic "
        "Algorithms (NeurIPS 2023)"
    )
    claims = frozenset({"permutation_equivariant", "simplex_weights"})

    def __init__(
        self,
        *,
        lr: float = 10.0,
        momentum: float = 0.5,
        iterations: int = 20,
        lambda_: float = 0.3,
        reduction: Reduction = "mean",
    ) -> None:
        self.lr = check_number("lr", lr, minimum=0.0, strict=True)
        self.momentum = check_number("momentum", momentum, minimum=0.0)
        if self.momentum >= 1:
            raise InvalidHyperparameterError(
                f"momentum must be < 1 (heavy-ball momentum in [0, 1)), got {momentum!r}"
            )
        self.iterations = check_integer("iterations", iterations)
        self.lambda_ = check_number("lambda_", lambda_, minimum=0.0)
        check_reduction(reduction)
        self.reduction = reduction
        if reduction == "sum":
            self.claims = frozenset({"permutation_equivariant"})  # the weights sum to K
        self.reset()

    @staticmethod
    def normalized_gramian(gramian: Tensor, /) -> Tensor:
        """`A = G / s^2` with `s` the mean gradient norm (`G` itself where every gradient is 0)."""
        norms = torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        scale = ordered_sum(norms) / gramian.shape[-1]
        square = (scale * scale)[..., None, None]
        return gramian / torch.where(square > 0, square, torch.ones_like(square))

    def inner_gradient(self, normalized: Tensor, weights: Tensor, /) -> Tensor:
        """`A (w + lambda u)`, the gradient in w of `(1/2) (w + lambda u)^T A (w + lambda u)`."""
        return ordered_matvec(normalized, weights + self.lambda_ / weights.shape[-1])

    def direction_weights(self, weights: Tensor, /) -> Tensor:
        """The weights of `d = (g_w + lambda g_0) / (1 + lambda)` (times K for "sum")."""
        num_tasks = weights.shape[-1]
        combined = (weights + self.lambda_ / num_tasks) / (1 + self.lambda_)
        return combined * num_tasks if self.reduction == "sum" else combined

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        if gramian.shape[-1] == 2 and math.prod(gramian.shape[:-2]) <= _SCALAR_ROWS:
            return self._two_task_weights(gramian)
        # normalized_gramian, inner_gradient and simplex_projection on numpy arrays (the same bits)
        gram = _host_gramian_np(gramian, "SDMGrad")
        weights = self._current(gram).numpy()
        num_tasks = gram.shape[-1]
        # the norms by torch's sqrt, as `normalized_gramian` (it can differ from numpy's in the last bit)
        norms = torch.diagonal(torch.from_numpy(gram), dim1=-2, dim2=-1).clamp_min(0).sqrt().numpy()
        scale = _ordered_sum_np(norms) / num_tasks
        square = (scale * scale)[..., None, None]
        normalized = gram / np.where(square > 0, square, 1.0)
        pull = self.lambda_ / num_tasks
        momentum, lr = self.momentum, self.lr
        velocity = np.zeros_like(weights)
        for _ in range(self.iterations):
            velocity = momentum * velocity + _ordered_matvec_np(normalized, weights + pull)
            weights = _simplex_projection_np(weights - lr * velocity)
        self._lambda = torch.from_numpy(weights)
        self._calls += 1
        residual = _residual_np(weights, _ordered_matvec_np(normalized, weights + pull))
        output = weights_in_dtype(
            self.direction_weights(self._lambda), gramian.dtype, "SDMGrad"
        ).to(gramian.device)
        return WeightsResult(output, {"kkt_residual": residual})

    def _two_task_weights(self, gramian: Tensor, /) -> WeightsResult:
        """`_weights` for K = 2 and a few rows, on Python floats row by row: the same IEEE
        operations in the same order as the numpy path (the same bits), without a numpy call per
        operation and iteration."""
        gram = _host_gramian(gramian, "SDMGrad")
        weights = self._current(gram)
        # the norms by torch's sqrt on the same [N, 2] layout, as the numpy path takes them
        norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0).sqrt().reshape(-1, 2).tolist()
        rows = zip(gram.reshape(-1, 4).tolist(), norms, weights.reshape(-1, 2).tolist())
        solved = [self._two_task_row(entries, *norm, *kept) for entries, norm, kept in rows]
        self._lambda = torch.tensor([row[:2] for row in solved], dtype=torch.float64).reshape(
            weights.shape
        )
        self._calls += 1
        residual = (
            torch.tensor([row[2:] for row in solved], dtype=torch.float64)
            .reshape(weights.shape)
            .norm(dim=-1)
        )
        output = weights_in_dtype(
            self.direction_weights(self._lambda), gramian.dtype, "SDMGrad"
        ).to(gramian.device)
        return WeightsResult(output, {"kkt_residual": residual})

    def _two_task_row(
        self, entries: list[float], norm0: float, norm1: float, w0: float, w1: float
    ) -> tuple[float, float, float, float]:
        """One row of `_two_task_weights`: the new weights and the residual vector
        `w - Proj(w - A (w + lambda u))`."""
        scale = (norm0 + norm1) / 2
        square = scale * scale
        divisor = square if square > 0 else 1.0
        a00, a01, a10, a11 = (entry / divisor for entry in entries)
        pull = self.lambda_ / 2
        momentum, lr = self.momentum, self.lr
        v0 = v1 = 0.0
        for _ in range(self.iterations):
            x0, x1 = w0 + pull, w1 + pull
            v0 = momentum * v0 + (a00 * x0 + a01 * x1)
            v1 = momentum * v1 + (a10 * x0 + a11 * x1)
            w0, w1 = _simplex_projection_pair(w0 - lr * v0, w1 - lr * v1)
        x0, x1 = w0 + pull, w1 + pull
        p0, p1 = _simplex_projection_pair(w0 - (a00 * x0 + a01 * x1), w1 - (a10 * x0 + a11 * x1))
        return w0, w1, w0 - p0, w1 - p1
