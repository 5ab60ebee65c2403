"""Nash-MTL under per-task gradient rescaling and monotone loss transforms: where invariance holds and where it breaks.

The Nash-MTL update is `d = sum_i alpha_i g_i` with `alpha > 0` solving `alpha_i (G alpha)_i = 1`
(spec random_weighting_baselines_metrics.md §3.9). Rescaling `g_i -> c_i g_i` (`c_i > 0`) maps the
solution to `alpha_i / c_i` and leaves `d` unchanged; a strictly increasing transform `h_i` of loss i
rescales its gradient by `c_i = h_i'(l_i)` at every step. The Nash-MTL paper calls its solution
invariant to affine transforms only, and the DiBS-MTL paper lists Nash-MTL among the non-invariant
methods; the per-step argument says otherwise for everything that is a per-step rescaling. This
claim checks it numerically and finds the breaks.

Per-step measure (teacher forcing): along a nominal Adam trajectory (float64, `RandomNonconvex`
problems with 3 tasks), every version (nominal; the control, each loss times a constant
`10^U(-1, 1)`; random strictly increasing nonaffine transforms from
`proofs_numeric.invariance.random_transform`) is evaluated at the nominal iterate, each with its
own solver state, and its update compared with the nominal one: `dev = ||d_v - d_0|| / ||d_0||`.
Two yardsticks, with `b_i = alpha_i ||g_i||` the scale-free solution (`b = 1` for orthogonal
gradients, growing like `(1 + cos)^-1/2` as two gradients turn opposite) and `kappa = max(1, max_i b_i^2)`:

- rounding: relative rounding in the cosines moves `d` by about `eps64 * kappa`, so an exactly
  invariant solver has `dev / (eps64 kappa) <= ROUNDING_CONSTANT`;
- tolerance: a solve stopped at relative residual `tol` has each `alpha_i` within `sqrt(K) tol`
  (relative, first order; `core.NashMTL`'s docstring), so two solves of rescaled problems that are
  not started alike differ by at most `2 K tol sqrt(kappa)` in `d` (plus rounding).

(a) **Rescaling.** On random Jacobians (K = 2, 3, 5, 8, gradient scales over four decades) rescaled by
    `c_i = 10^U(-3, 3)`, `core.NashMTL` (cold start) returns `alpha / c` and the same update, to
    `RESCALING_TOLERANCE` relative.

(b) **Holds** (rounding yardstick): the default solver without warm start, a loose solve
    (tolerance 1e-3) without warm start (its stopping test is relative and scale-free, so it stops at
    the same point), and task heads that receive `alpha_i grad_head l_i` (what Nash-MTL's reference
    does: `alpha_i / c_i` times `c_i grad_head l_i` is the same head update). **Holds up to the solver
    tolerance** (tolerance yardstick): the default solver (1e-10, warm-started: the warm start is the
    previous step's solution, which under a transform carries the previous step's `h'`). Whole
    trajectories (free runs): cold, no further from the nominal one than the control's (factor
    `proofs_numeric.invariance.ROUNDING_FACTOR`, floor `INVARIANCE_TOLERANCE` step scales); default, the same with the floor
    `NASH_TOLERANCE_FLOOR` for the per-step tolerance differences the dynamics amplify.

(c) **Breaks** (rounding yardstick exceeded by `BREAK_FACTOR`), each predicted:
    - a loose solve with warm start (`NashMTL(tolerance=1e-3)`): where the warm start already meets
      the tolerance it is returned (after three scale-free balancing steps), so versions differ by
      up to the tolerance; required to stay within the tolerance yardstick too (two-sided);
    - `update_weights_every=5`: alpha solved at step t is reused at t+1..t+4 on new gradients; the
      transformed run's `alpha_i / c_i(t)` meets `c_i(t+k) g_i`, off by `c_i(t+k) / c_i(t)`;
    - heads that receive the plain `grad_head l_i` (not what Nash-MTL does): they see `c_i` directly;
    - a reference-style inexact solve, emulated in numpy (`ReferenceStyleSolve`): Newton steps on the
      raw alpha from the previous alpha (ones at the first step), stopped as the reference's CCP is
      (spec §3.9), on an absolute residual `||G alpha - 1/alpha|| < 1e-3` or a change in alpha below
      1e-6. Absolute tests in raw units are not scale-free. In full mode, when cvxpy is installed,
      the reference-style CCP of `benchmarks.perf.nash_solver` (cvxpy/ECOS, Frobenius-normalised
      Gramian) is measured the same way and reported (not in the verdict: cvxpy is optional).

The control version is predicted invariant (rounding yardstick) for every variant except raw heads
and the reference-style solve, which are not invariant to constant rescalings either; both
predictions are checked. The verdict needs every predicted invariance to hold and every predicted
break to show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import core
from core.methods.base import GradientWeighting, HeadGradient
from core.methods.nash_mtl import nash_residual
from proofs_numeric.claim import ClaimResult, single_thread
from proofs_numeric.invariance import (
    INVARIANCE_TOLERANCE,
    NASH_TOLERANCE_FLOOR,
    NOMINAL,
    TransformedFamily,
    box,
    control_test,
    describe,
    deviations,
    draw_versions,
    loss_ranges,
    method_weights,
    random_starts,
)
from toy_problems import RandomNonconvex, TwoTaskToy
from toy_problems.runner import Track, run_tracks
from toy_problems.task_transforms import TaskTransform

NAME = "nash_transforms"

RESCALING_TOLERANCE = 1e-10
"""(a): largest accepted relative deviation of `alpha * c` from `alpha` and of the update, on well-posed draws."""

ROUNDING_CONSTANT = 1e3
"""(b): largest accepted per-step deviation of an invariant variant, in units of `eps64 * max(1, max_i b_i^2)`."""

BREAK_FACTOR = 1e3
"""(c): a predicted break must reach a normalised per-step deviation of at least `BREAK_FACTOR * ROUNDING_CONSTANT`."""

EPS = float(np.finfo(np.float64).eps)

STATEMENT = (
    "Nash-MTL (core.NashMTL) is invariant to per-step gradient rescaling g_i -> c_i g_i: on random Jacobians with "
    f"c_i in [1e-3, 1e3], alpha -> alpha/c and the update is unchanged to <= {RESCALING_TOLERANCE:.0e}. Along "
    "trajectories under random strictly increasing nonaffine loss transforms its per-step update is unchanged up to "
    "rounding amplified by the conditioning of G alpha = 1/alpha for cold solves (tolerance 1e-10 or 1e-3, heads "
    "receiving alpha_i grad l_i included), and up to the solver tolerance for the default warm-started solve; whole "
    "trajectories stay as close as a constant loss rescaling keeps them. It breaks where a step is not a rescaling of "
    "the same step: reused weights (update_weights_every=5), a warm-started loose solve (tolerance 1e-3), raw head "
    "gradients, and a reference-style solve with absolute stopping tests (not invariant even to constant rescalings)."
)

INVARIANT_VARIANTS = ("exact_cold", "loose_cold", "weighted_heads")
"""Per-step invariant to rounding (cold solves: scale-free start and stopping test)."""
TOLERANCE_VARIANTS = ("exact", "loose_warm")
"""Per-step within the tolerance yardstick (warm-started solves)."""
BREAK_VARIANTS = ("loose_warm", "update_every_5", "raw_heads", "reference_style")
"""Per-step beyond the rounding yardstick by `BREAK_FACTOR`."""
CONTROL_BREAKS = ("raw_heads", "reference_style")
"""Variants not invariant to constant rescalings either (the control breaks them too)."""
FREE_RUNS = {"exact_cold": INVARIANCE_TOLERANCE, "exact": NASH_TOLERANCE_FLOOR}
"""The settings also run free (whole trajectories), with the floor of their control test; their
nominal rows are the teacher of their per-step check."""
TOY_METHODS = ("nashmtl", "ls", "dibsmtl")
"""The figure's methods on the toy (`core.make_method` specs): Nash-MTL, LS and 1-step DiBS-MTL."""


# ---------------------------------------------------------------------------------------------
# (a) random Jacobians


def rescaled_solutions(gramian: Tensor, scales: Tensor, /) -> tuple[Tensor, Tensor]:
    """Cold-start Nash weights of `G` `[..., K, K]` and of `C G C` (`C = diag(scales)`, the Gramian of `c_i g_i`)."""
    losses = torch.ones(gramian.shape[:-1], dtype=gramian.dtype)
    alpha = core.NashMTL(warm_start=False)(gramian, losses)
    rescaled = gramian * scales[..., :, None] * scales[..., None, :]
    return alpha, core.NashMTL(warm_start=False)(rescaled, losses)


def random_jacobians(num_tasks: int, count: int, *, generator: torch.Generator) -> Tensor:
    """`count` Jacobians `[count, K, 3K]`: Gaussian rows with a shared component (mild conflict),
    row scales `10^U(-2, 2)`."""
    dim = 3 * num_tasks
    shared = torch.randn(count, 1, dim, generator=generator, dtype=torch.float64)
    rows = 0.5 * shared + torch.randn(
        count, num_tasks, dim, generator=generator, dtype=torch.float64
    )
    return (
        10.0 ** (4 * torch.rand(count, num_tasks, 1, generator=generator, dtype=torch.float64) - 2)
        * rows
    )


def check_rescaling(*, quick: bool, seed: int) -> dict[str, Any]:
    """(a) on `count` draws per K: max relative deviation of `alpha_c * c` from `alpha` and of `d_c` from `d`."""
    generator = torch.Generator().manual_seed(seed)
    count = 200 if quick else 2000
    out: dict[str, Any] = {"draws_per_k": count, "per_k": {}}
    weight_gap = update_gap = 0.0
    for num_tasks in (2, 3, 5, 8):
        jacobian = random_jacobians(num_tasks, count, generator=generator)
        gramian = core.gramian(jacobian)
        scales = 10.0 ** (
            6 * torch.rand(count, num_tasks, generator=generator, dtype=torch.float64) - 3
        )
        alpha, alpha_c = rescaled_solutions(gramian, scales)
        well_posed = nash_residual(gramian, alpha) <= 1e-8
        update = (alpha[..., None] * jacobian).sum(dim=-2)
        update_c = (alpha_c[..., None] * scales[..., None] * jacobian).sum(dim=-2)
        weights = ((alpha_c * scales / alpha - 1).abs().amax(dim=-1))[well_posed]
        updates = ((update_c - update).norm(dim=-1) / update.norm(dim=-1))[well_posed]
        conditioning = (alpha * gramian.diagonal(dim1=-2, dim2=-1).sqrt()).square().amax(dim=-1)
        out["per_k"][num_tasks] = {
            "well_posed": int(well_posed.sum()),
            "max_weight_deviation": float(weights.max()),
            "max_update_deviation": float(updates.max()),
            "max_b_squared": float(conditioning[well_posed].max()),
        }
        weight_gap = max(weight_gap, float(weights.max()))
        update_gap = max(update_gap, float(updates.max()))
    out["max_weight_deviation"], out["max_update_deviation"] = weight_gap, update_gap
    return out


# ---------------------------------------------------------------------------------------------
# a reference-style inexact solve


class ReferenceStyleSolve(GradientWeighting):
    """Nash weights with the reference solver's scale-dependent stopping rules, in numpy.

    From the previous step's alpha (ones at the first step), at most `iterations` damped Newton
    steps on `f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i` in the raw alpha coordinates,
    stopping as the reference's CCP does (spec random_weighting_baselines_metrics.md §3.9): before
    a step when `||G alpha - 1/alpha||_2 < residual` (absolute), after one when the change
    `||alpha_new - alpha||_2 < change` (absolute). The inner step differs from the reference (Newton,
    not a cvxpy convex program): what it shares with it is what breaks scale invariance, the start
    at ones and the absolute tests. Each row of a batch is solved as if alone.
    """

    name = "nash_reference_style"
    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self, *, residual: float = 1e-3, change: float = 1e-6, iterations: int = 20
    ) -> None:
        self.residual, self.change, self.iterations = residual, change, iterations
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._previous: np.ndarray | None = None

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        grams = (
            gramian.detach()
            .to(device="cpu", dtype=torch.float64)
            .numpy()
            .reshape(-1, *gramian.shape[-2:])
        )
        previous = (
            self._previous
            if self._previous is not None and self._previous.shape == grams.shape[:-1]
            else np.ones(grams.shape[:-1])
        )
        solved = self._solve(grams, previous.copy())
        self._previous = solved
        return torch.from_numpy(solved.reshape(gramian.shape[:-1])).to(
            device=gramian.device, dtype=gramian.dtype
        )

    def _solve(self, grams: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Every row's own iteration from `alpha` `[B, K]` (updated in place), the rows still
        iterating all at once. Stacked matmuls round as a row's own `@` and `norm` do, so each row
        gets what solving it alone gives."""
        rows = np.arange(len(grams))
        for _ in range(self.iterations):
            gram, current = grams[rows], alpha[rows]
            gradient = _matvec(gram, current) - 1.0 / current
            going = ~(_norm(gradient) < self.residual)
            rows, gram, current, gradient = (
                rows[going],
                gram[going],
                current[going],
                gradient[going],
            )
            if rows.size == 0:
                break
            step = np.linalg.solve(
                gram + np.eye(gram.shape[-1]) * (1.0 / current**2)[:, None, :], gradient[..., None]
            )[..., 0]
            decrement = np.sqrt(np.maximum(_dot(gradient, step), 0.0))
            new = current - step * np.where(decrement < 0.25, 1.0, 1.0 / (1.0 + decrement))[:, None]
            alpha[rows] = new
            rows = rows[~(_norm(new - current) < self.change)]
        return alpha


def _matvec(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """`M @ v` row by row, `[B, K, K]` and `[B, K]`."""
    return (matrices @ vectors[..., None])[..., 0]


def _dot(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`u @ v` row by row, `[B, K]` each."""
    return (left[..., None, :] @ right[..., :, None])[..., 0, 0]


def _norm(vectors: np.ndarray) -> np.ndarray:
    """`np.linalg.norm(v)` row by row, `[B, K]`."""
    return np.sqrt(_dot(vectors, vectors))


class CvxpyReferenceCCP(GradientWeighting):
    """The reference-style CCP of `benchmarks.perf.nash_solver` (cvxpy), warm-started row by row."""

    name = "nash_reference_ccp"
    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def __init__(self, num_tasks: int, solver: str) -> None:
        from benchmarks.perf.nash_solver import ReferenceStyleCCP

        self.solver = ReferenceStyleCCP(num_tasks, solver=solver)
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._previous: np.ndarray | None = None

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        grams = (
            gramian.detach()
            .to(device="cpu", dtype=torch.float64)
            .numpy()
            .reshape(-1, *gramian.shape[-2:])
        )
        previous = self._previous if self._previous is not None else [None] * len(grams)
        solved = np.stack([self.solver.solve(gram, start) for gram, start in zip(grams, previous)])
        self._previous = solved
        return torch.from_numpy(solved.reshape(gramian.shape[:-1])).to(
            device=gramian.device, dtype=gramian.dtype
        )


# ---------------------------------------------------------------------------------------------
# problems with task heads


class HeadedNonconvex:
    """K tasks sharing `shared_dim` variables, each with `head_dim` variables of its own.

    `x = [s, t_1, ..., t_K]`; task i's loss is task i of `RandomNonconvex(shared_dim + head_dim, K)`
    evaluated at `(s, t_i)`, so it depends on the shared variables and on its own head only.
    """

    def __init__(self, shared_dim: int, head_dim: int, num_tasks: int, *, seed: int) -> None:
        self.shared_dim, self.head_dim, self.n_obj = shared_dim, head_dim, num_tasks
        self.n_var = shared_dim + num_tasks * head_dim
        self.inner = RandomNonconvex(shared_dim + head_dim, num_tasks, seed=seed)
        self.bounds = self.inner.bounds

    def __call__(self, x: Tensor, /) -> Tensor:
        shared = x[..., : self.shared_dim]
        losses = []
        for i in range(self.n_obj):
            losses.append(self.inner(torch.cat([shared, x[..., self._head(i)]], dim=-1))[..., i])
        return torch.stack(losses, dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., K]` and per-task gradients `[..., K, n]` in closed form: the inner problem's
        own (`RandomNonconvex.values_and_jacobian`) at the K points `(s, t_i)`, in one call; task i's
        gradient is its shared block and, in task i's head columns, its head block (zeros in the
        other heads' columns)."""
        x = x.detach()
        shared = x[..., None, : self.shared_dim].expand(*x.shape[:-1], self.n_obj, self.shared_dim)
        heads = x[..., self.shared_dim :].unflatten(-1, (self.n_obj, self.head_dim))
        values, gradients = self.inner.values_and_jacobian(
            torch.cat([shared, heads], dim=-1)
        )  # [..., K points, K tasks(, d)]
        own = gradients.diagonal(dim1=-3, dim2=-2).movedim(
            -1, -2
        )  # [..., K, d]: task i at its point (s, t_i)
        jacobian = x.new_zeros(*x.shape[:-1], self.n_obj, self.n_var)
        jacobian[..., : self.shared_dim] = own[..., : self.shared_dim]
        for i in range(self.n_obj):
            jacobian[..., i, self._head(i)] = own[..., i, self.shared_dim :]
        return values.diagonal(dim1=-2, dim2=-1), jacobian

    def _head(self, task: int) -> slice:
        """Task `task`'s head columns of `x`."""
        start = self.shared_dim + task * self.head_dim
        return slice(start, start + self.head_dim)


# ---------------------------------------------------------------------------------------------
# (b), (c): per-step deviations along the nominal trajectory


def adam_runs(
    family: TransformedFamily,
    starts: Tensor,
    methods: Sequence[GradientWeighting],
    /,
    *,
    num_steps: int,
    lr: float,
    shared_dim: int | None = None,
    raw_heads: Sequence[bool] | None = None,
) -> list[Tensor]:
    """Adam runs (torch defaults) of every row of `starts` `[P, V, S, n]` under each method, in one loop:
    the iterates `[T + 1, P, V, S, n]` per method, as a separate Adam loop per method gives them
    (`shared_dim` and, per method, `raw_heads` alike; tested against one).

    The runs are blocks of one batch `[P, V, M, S]` (rows never interact): each step evaluates the
    family once and calls each method instance once, on the blocks it serves. An instance listed
    several times serves several runs in one call, each row with its own state. For the solvers of
    this claim, which have no lifecycle hooks.
    """
    x = starts[:, :, None].expand(-1, -1, len(methods), -1, -1).clone().requires_grad_(True)
    served: dict[int, tuple[GradientWeighting, list[int]]] = {}
    for block, method in enumerate(methods):  # by identity: one call per instance
        served.setdefault(id(method), (method, []))[1].append(block)
    for method, blocks in served.values():
        method.reset((*x.shape[:2], len(blocks), x.shape[3]))
    raw = (
        torch.tensor(raw_heads)[:, None, None] if raw_heads is not None and any(raw_heads) else None
    )  # [M, 1, 1]
    optimizer = torch.optim.Adam([x], lr=lr)
    points = [x.detach().clone()]
    for _ in range(num_steps):
        values, jacobian = family.values_and_jacobian(x.detach())
        gramian = core.gramian(jacobian if shared_dim is None else jacobian[..., :shared_dim])
        weights = torch.empty_like(values)
        for method, blocks in served.values():
            weights[:, :, blocks] = method(gramian[:, :, blocks], values[:, :, blocks])
        weighted = (weights[..., None] * jacobian).sum(dim=-2)
        x.grad = (
            weighted
            if raw is None
            else torch.where(raw, _raw_heads(weighted, jacobian, shared_dim), weighted)
        )
        optimizer.step()
        points.append(x.detach().clone())
    return list(torch.stack(points).unbind(dim=3))


def _raw_heads(direction: Tensor, jacobian: Tensor, shared_dim: int | None) -> Tensor:
    """The update with the plain `sum_i grad_head l_i` on the heads (the variables after `shared_dim`)."""
    if shared_dim is None:
        return direction
    return torch.cat([direction[..., :shared_dim], jacobian[..., shared_dim:].sum(dim=-2)], dim=-1)


def _nominal_family(family: TransformedFamily, /) -> TransformedFamily:
    """The family's nominal version alone (what a teacher runs on)."""
    return TransformedFamily(family.problems, [versions[:1] for versions in family.transforms])


def forced_deviations(
    family: TransformedFamily,
    iterates: Tensor,
    method: GradientWeighting,
    /,
    *,
    tolerance: float = 0.0,
    shared_dim: int | None = None,
    raw_heads: bool = False,
) -> dict[str, Tensor]:
    """Per-step update deviations of every version at the nominal iterates `[T, P, 1, S, n]` (teacher forcing).

    Every version is evaluated at the nominal iterate of every step, each batch row with its own
    solver state (`_updates`). Returns the maxima over the steps, `[P, V - 1, S]`, of
    `dev = ||d_v - d_0|| / ||d_0||` ("relative"), of `dev / (eps64 kappa)` ("rounding") and of
    `dev / (ROUNDING_CONSTANT eps64 kappa + 2 K tolerance sqrt(kappa))` ("tolerance"), with
    `kappa = max(1, max_i b_i^2)` from the nominal version's solution; and the largest
    `max_i b_i^2` `[P, S]`.
    """
    weights, jacobian, direction = _updates(
        family, iterates, method, shared_dim=shared_dim, raw_heads=raw_heads
    )
    nominal = direction[:, :, :1]
    deviation = (direction[:, :, 1:] - nominal).norm(dim=-1) / nominal.norm(
        dim=-1
    )  # [T, P, V - 1, S]
    shared = jacobian if shared_dim is None else jacobian[..., :shared_dim]
    b_squared = (weights[:, :, 0] * shared[:, :, 0].norm(dim=-1)).square().amax(dim=-1)  # [T, P, S]
    kappa = b_squared.clamp_min(1.0)[:, :, None]
    within = deviation / (
        ROUNDING_CONSTANT * EPS * kappa + 2 * family.num_tasks * tolerance * kappa.sqrt()
    )
    return {
        "relative": deviation.amax(dim=0),
        "rounding": (deviation / (EPS * kappa)).amax(dim=0),
        "tolerance": within.amax(dim=0),
        "b_squared": b_squared.amax(dim=0),
    }


def _updates(
    family: TransformedFamily,
    iterates: Tensor,
    method: GradientWeighting,
    *,
    shared_dim: int | None,
    raw_heads: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The weights `[T, P, V, S, K]`, Jacobians and updates of every version at the iterates `[T, P, 1, S, n]`.

    The family is evaluated at every step at once (the transforms cost per call, not per value);
    the method then runs on each step's rows in order, its state carried from step to step (from
    a `reset`), or on all steps in one call if it keeps no state. The nominal rows see what the
    teacher's own run saw, so they repeat its updates.
    """
    rows = iterates.movedim(0, 2).expand(-1, family.num_versions, -1, -1, -1)  # [P, V, T, S, n]
    values, jacobian = (
        tensor.movedim(2, 0) for tensor in family.values_and_jacobian(rows)
    )  # [T, P, V, S, ...]
    method.reset(tuple(values.shape[1:-1]))
    if method.stateful:
        weights = torch.stack(
            [
                method_weights(method, step_values, step_jacobian, shared_dim=shared_dim)
                for step_values, step_jacobian in zip(values, jacobian)
            ]
        )
    else:
        weights = method_weights(method, values, jacobian, shared_dim=shared_dim)
    direction = (weights[..., None] * jacobian).sum(dim=-2)
    return (
        weights,
        jacobian,
        _raw_heads(direction, jacobian, shared_dim) if raw_heads else direction,
    )


def _versions_case(
    problems: list[Any], *, num_random: int, num_starts: int, generator: torch.Generator
) -> tuple[TransformedFamily, Tensor]:
    ranges = loss_ranges(problems, *box(problems[0]), generator=generator)
    lower = torch.zeros(
        len(problems), problems[0].n_obj, dtype=torch.float64
    )  # RandomNonconvex losses are >= 0
    transforms = draw_versions(generator, ranges, lower, num_random)
    return TransformedFamily(problems, transforms), random_starts(
        problems, num_random + 2, num_starts, generator
    )


def _summarise(result: dict[str, Tensor]) -> dict[str, float]:
    """Maxima over the transformed versions (index 1 on) and, separately, the control (index 0)."""
    summary = {"max_b_squared": float(result["b_squared"].max())}
    for key in ("relative", "rounding", "tolerance"):
        summary[f"max_{key}"] = float(result[key][:, 1:].max())
        summary[f"control_max_{key}"] = float(result[key][:, 0].max())
    summary["median_relative"] = float(result["relative"][:, 1:].flatten().median())
    return summary


@dataclass(frozen=True, eq=False)
class Setting:
    """One per-step check: its problems and starts, its method (a factory: each run gets a fresh
    instance), the solver tolerance of a warm-started solve (0 for a cold one) and the head options."""

    family: TransformedFamily
    starts: Tensor
    make: Callable[[], GradientWeighting]
    tolerance: float = 0.0
    shared_dim: int | None = None
    raw_heads: bool = False


def _settings(
    family: TransformedFamily, starts: Tensor, head_family: TransformedFamily, head_starts: Tensor
) -> dict[str, Setting]:
    """The per-step checks of (b) and (c), by variant name."""

    def cold() -> (
        GradientWeighting
    ):  # one factory: the two head checks share a solver in their teacher loop
        return core.NashMTL(warm_start=False)

    return {
        "exact_cold": Setting(family, starts, cold),
        "loose_cold": Setting(
            family, starts, lambda: core.NashMTL(tolerance=1e-3, warm_start=False)
        ),
        "weighted_heads": Setting(head_family, head_starts, cold, shared_dim=3),
        "exact": Setting(family, starts, lambda: core.NashMTL(), 1e-10),
        "loose_warm": Setting(family, starts, lambda: core.NashMTL(tolerance=1e-3), 1e-3),
        "update_every_5": Setting(
            family, starts, lambda: core.NashMTL(update_weights_every=5), 1e-10
        ),
        "raw_heads": Setting(head_family, head_starts, cold, shared_dim=3, raw_heads=True),
        "reference_style": Setting(family, starts, lambda: ReferenceStyleSolve()),
    }


def _teachers(
    settings: dict[str, Setting], *, num_steps: int, lr: float
) -> dict[str, tuple[Tensor, float]]:
    """Per setting, the nominal iterates `[T, P, 1, S, n]` of its own Adam run and the seconds it took.

    Settings with the same problems, starts and head split run in one loop (`adam_runs`, the time
    shared); those with the same method factory share one instance there (one solver call a step)."""
    groups: dict[tuple[TransformedFamily, Tensor, int | None], list[str]] = {}
    for name, setting in settings.items():
        groups.setdefault((setting.family, setting.starts, setting.shared_dim), []).append(name)
    teachers: dict[str, tuple[Tensor, float]] = {}
    for (family, starts, shared_dim), names in groups.items():
        instances = {make: make() for make in {settings[name].make for name in names}}
        methods = [instances[settings[name].make] for name in names]
        clock = time.perf_counter()
        runs = adam_runs(
            _nominal_family(family),
            starts[:, :1],
            methods,
            num_steps=num_steps,
            lr=lr,
            shared_dim=shared_dim,
            raw_heads=[settings[name].raw_heads for name in names],
        )
        seconds = (time.perf_counter() - clock) / len(names)
        teachers.update({name: (points[:-1], seconds) for name, points in zip(names, runs)})
    return teachers


def _whole_trajectories(
    settings: dict[str, Setting], *, num_steps: int, lr: float
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """Free runs of every version under the `FREE_RUNS` settings (one loop, the time shared), the
    iterates `[T + 1, P, V, S, n]` per name, and their control tests (`proofs_numeric.invariance`)."""
    first = settings[next(iter(FREE_RUNS))]  # the free-run settings share their problems and starts
    clock = time.perf_counter()
    runs = adam_runs(
        first.family,
        first.starts,
        [settings[name].make() for name in FREE_RUNS],
        num_steps=num_steps,
        lr=lr,
    )
    seconds = round((time.perf_counter() - clock) / len(FREE_RUNS), 2)
    free = dict(zip(FREE_RUNS, runs))
    results: dict[str, dict[str, Any]] = {}
    for name, points in free.items():
        measures = deviations(points)
        results[name] = {
            **control_test(measures["transform"], measures["control"], floor=FREE_RUNS[name]),
            "floor": FREE_RUNS[name],
            "seconds": seconds,
        }
    return free, results


def _per_step_checks(
    settings: dict[str, Setting], free: dict[str, Tensor], *, num_steps: int, lr: float
) -> dict[str, dict[str, Any]]:
    """(b), (c): every setting's per-step deviations (`_summarise`d), teacher-forced by its nominal
    run: the nominal rows of its free run where it has one (rows never interact), else its own."""
    teachers = {
        name: (points[:-1, :, :1], 0.0) for name, points in free.items()
    }  # timed with the free runs
    teachers.update(
        _teachers(
            {name: setting for name, setting in settings.items() if name not in free},
            num_steps=num_steps,
            lr=lr,
        )
    )
    variants: dict[str, dict[str, Any]] = {}
    for name, setting in settings.items():
        clock = time.perf_counter()
        iterates, teacher_seconds = teachers[name]
        result = forced_deviations(
            setting.family,
            iterates,
            setting.make(),
            tolerance=setting.tolerance,
            shared_dim=setting.shared_dim,
            raw_heads=setting.raw_heads,
        )
        variants[name] = {
            **_summarise(result),
            "seconds": round(teacher_seconds + time.perf_counter() - clock, 2),
        }
    return variants


@dataclass
class Measurements:
    """Everything `run` measures before judging it (so that a verdict can be re-evaluated)."""

    quick: bool
    rescaling: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    trajectories: dict[str, dict[str, Any]]
    cvxpy_result: dict[str, Any]
    figure_runs: dict[str, Tensor]
    setup: dict[str, Any]
    seconds: float


def measure(*, quick: bool, seed: int = 0) -> Measurements:
    """Every measurement of the claim (the expensive part of `run`), on one torch thread."""
    began = time.perf_counter()
    with single_thread():
        rescaling = check_rescaling(quick=quick, seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)
        num_problems, num_starts, num_random = (2, 3, 1) if quick else (3, 6, 2)
        num_steps, lr = (200, 1e-2) if quick else (2000, 1e-2)
        problems = [RandomNonconvex(4, 3, seed=seed + 10 + p) for p in range(num_problems)]
        family, starts = _versions_case(
            problems, num_random=num_random, num_starts=num_starts, generator=generator
        )
        headed = [HeadedNonconvex(3, 2, 3, seed=seed + 20 + p) for p in range(num_problems)]
        head_family, head_starts = _versions_case(
            headed, num_random=num_random, num_starts=num_starts, generator=generator
        )

        settings = _settings(family, starts, head_family, head_starts)
        free, trajectories = _whole_trajectories(settings, num_steps=num_steps, lr=lr)
        variants = _per_step_checks(settings, free, num_steps=num_steps, lr=lr)
        cvxpy_result = (
            _cvxpy_check(family, starts, num_steps=min(num_steps, 100), lr=lr)
            if not quick
            else {"run": False, "why": "quick mode"}
        )
        figure_runs = _toy_runs(quick=quick)
    setup = {
        "problems": num_problems,
        "starts_per_problem": num_starts,
        "num_steps": num_steps,
        "lr": lr,
        "optimizer": "adam (torch defaults); per-step checks teacher-forced by the nominal version",
        "transforms": describe(family.transforms),
        "head_transforms": describe(head_family.transforms),
    }
    return Measurements(
        quick,
        rescaling,
        variants,
        trajectories,
        cvxpy_result,
        figure_runs,
        setup,
        time.perf_counter() - began,
    )


def run(*, quick: bool) -> ClaimResult:
    return evaluate(measure(quick=quick))


def evaluate(measurements: Measurements, /) -> ClaimResult:
    """The verdict, measured/bound strings, data and figure from `measure`'s results (module constants
    are read here, not in `measure`)."""
    rescaling, variants, trajectories = (
        measurements.rescaling,
        measurements.variants,
        measurements.trajectories,
    )
    limit = BREAK_FACTOR * ROUNDING_CONSTANT
    checks: dict[str, tuple[float, float, str]] = {
        "rescaling_weights": (rescaling["max_weight_deviation"], RESCALING_TOLERANCE, "<="),
        "rescaling_update": (rescaling["max_update_deviation"], RESCALING_TOLERANCE, "<="),
    }
    checks.update(
        {
            f"{name}_rounding": (variants[name]["max_rounding"], ROUNDING_CONSTANT, "<=")
            for name in INVARIANT_VARIANTS
        }
    )
    checks.update(
        {
            f"{name}_tolerance": (variants[name]["max_tolerance"], 1.0, "<=")
            for name in TOLERANCE_VARIANTS
        }
    )
    checks.update(
        {
            f"{name}_rounding": (variants[name]["max_rounding"], limit, ">=")
            for name in BREAK_VARIANTS
        }
    )
    for name in variants:
        if name in CONTROL_BREAKS:
            checks[f"{name}_control_rounding"] = (
                variants[name]["control_max_rounding"],
                limit,
                ">=",
            )
        else:
            checks[f"{name}_control_rounding"] = (
                variants[name]["control_max_rounding"],
                ROUNDING_CONSTANT,
                "<=",
            )
    checks.update(
        {
            f"{name}_trajectory_excess": (result["excess"], 1.0, "<=")
            for name, result in trajectories.items()
        }
    )
    passed = all(
        math.isfinite(value) and (value <= bound if sense == "<=" else value >= bound)
        for value, bound, sense in checks.values()
    )

    holds = max(variants[name]["max_rounding"] for name in INVARIANT_VARIANTS)
    breaks = min(variants[name]["max_rounding"] for name in BREAK_VARIANTS)
    measured = (
        f"rescaling {max(rescaling['max_weight_deviation'], rescaling['max_update_deviation']):.0e}; "
        f"holds {holds:.0e}, warm {variants['exact']['max_tolerance']:.1g} of tol, breaks >= {breaks:.0e} (x eps b^2); "
        f"trajectory excess {max(r['excess'] for r in trajectories.values()):.1g}"
    )
    bound = f"<= {RESCALING_TOLERANCE:.0e}; <= {ROUNDING_CONSTANT:.0e}, <= 1, >= {limit:.0e}; <= 1"
    data = {
        "quick": measurements.quick,
        "seconds": round(measurements.seconds, 2),
        "checks": {
            key: {"value": value, "bound": bound_, "sense": sense}
            for key, (value, bound_, sense) in checks.items()
        },
        "rescaling": rescaling,
        "trajectory_setup": measurements.setup,
        "variants": variants,
        "whole_trajectories": trajectories,
        "cvxpy_reference_ccp": measurements.cvxpy_result,
        "toy_figure_runs": {
            name: {
                "nominal_endpoints": points[-1, 0, NOMINAL].tolist(),
                "transformed_endpoints": points[-1, 0, 2].tolist(),
            }
            for name, points in measurements.figure_runs.items()
        },
    }
    return ClaimResult(
        NAME, STATEMENT, passed, measured, bound, data, _figure(measurements.figure_runs, variants)
    )


def _cvxpy_check(
    family: TransformedFamily, starts: Tensor, *, num_steps: int, lr: float
) -> dict[str, Any]:
    """The cvxpy reference-style CCP on the first problem and two starts (full mode, cvxpy installed)."""
    from benchmarks.perf.nash_solver import reference_solver

    solver = reference_solver()
    if solver is None:
        return {"run": False, "why": "cvxpy (or ECOS/CLARABEL) is not installed"}
    sub = TransformedFamily(family.problems[:1], family.transforms[:1])
    clock = time.perf_counter()
    method = CvxpyReferenceCCP(family.num_tasks, solver)
    (teacher,) = adam_runs(
        _nominal_family(sub), starts[:1, :1, :2], [method], num_steps=num_steps, lr=lr
    )
    result = _summarise(forced_deviations(sub, teacher[:-1], method))
    result["breaks"] = result["max_rounding"] >= BREAK_FACTOR * ROUNDING_CONSTANT
    return {
        "run": True,
        "solver": solver,
        "num_steps": num_steps,
        "seconds": round(time.perf_counter() - clock, 2),
        **result,
    }


def _toy_runs(*, quick: bool) -> dict[str, Tensor]:
    """Nash-MTL, LS and 1-step DiBS-MTL on the toy: nominal, control, `f0 -> f0^3|f0|` (the figure).

    One batched run of the toy runner (every method in every version from every start; all three
    accept any loss, so it shifts none); per method the iterates `[T + 1, 1, V, S, 2]`."""
    from core.transforms import Affine, SignedPower
    from proofs_numeric.invariance import TOY_STARTS

    versions = ((), (TaskTransform(0, Affine(scale=3.0)),), (TaskTransform(0, SignedPower(4.0)),))
    tracks = [Track(name, version) for name in TOY_METHODS for version in versions]
    starts = torch.tensor(TOY_STARTS, dtype=torch.float64)
    num_steps, lr = (400, 2.5e-2) if quick else (35000, 1e-3)
    runs = run_tracks(TwoTaskToy(), starts, tracks, num_steps=num_steps, lr=lr)
    points = torch.stack([run.points for run in runs], dim=1).unflatten(
        1, (len(TOY_METHODS), len(versions))
    )  # [T + 1, M, V, S, 2]
    return {name: points[:, m, None] for m, name in enumerate(TOY_METHODS)}


def _figure(runs: dict[str, Tensor], variants: dict[str, dict[str, Any]]):
    from matplotlib.figure import Figure

    toy = TwoTaskToy()
    front = toy.pareto_front(200)
    figure = Figure(figsize=(3.8 * (len(runs) + 1), 3.6))
    axes = figure.subplots(1, len(runs) + 1)
    for axis, (name, points) in zip(axes, runs.items()):
        stride = max(1, points.shape[0] // 400)
        losses = toy(
            points[::stride, 0]
        )  # [T', V, S, 2]: nominal losses of each version's iterates
        for s in range(points.shape[3]):
            axis.plot(
                losses[:, NOMINAL, s, 0],
                losses[:, NOMINAL, s, 1],
                color="tab:blue",
                lw=1.8,
                alpha=0.6,
            )
            axis.plot(losses[:, 2, s, 0], losses[:, 2, s, 1], color="tab:red", lw=0.9, ls="--")
        axis.plot(front[:, 0], front[:, 1], color="k", lw=0.6)
        axis.set(title=f"toy: {name}", xlabel="f0 (nominal)", ylabel="f1 (nominal)")
    axes[0].plot([], [], color="tab:blue", label="nominal")
    axes[0].plot([], [], color="tab:red", ls="--", label="f0 -> f0^3|f0|")
    axes[0].legend(fontsize=7)
    names = list(variants)
    values = [max(variants[n]["max_rounding"], 1e-3) for n in names]
    colors = [
        "tab:green" if n in INVARIANT_VARIANTS else "tab:olive" if n == "exact" else "tab:orange"
        for n in names
    ]
    axes[-1].bar(range(len(names)), values, color=colors)
    axes[-1].axhline(ROUNDING_CONSTANT, color="k", ls=":", lw=0.8)
    axes[-1].axhline(BREAK_FACTOR * ROUNDING_CONSTANT, color="k", ls="--", lw=0.8)
    axes[-1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    axes[-1].set(yscale="log", title="Nash-MTL per-step deviation / (eps b^2)")
    figure.tight_layout()
    return figure
