"""Preference-based gradient weightings: Pareto MTL (PMTL) and Exact Pareto Optimal search (EPO).

Both steer training towards one trade-off of the Pareto front, named by a preference vector,
and both need only the Gramian `G = J J^T` and the losses:

* **PMTL** (Lin, Zhen, Li, Zhang, Kwong, NeurIPS 2019) restricts the search to the sub-region
  of the loss space closest (in angle) to the preference `u_k` among a set of reference vectors
  `u_1..u_P`, with the constraints `G_j(theta) = (u_j - u_k)^T l(theta) <= 0`. Constraint
  gradients are `(u_j - u_k)^T J`, so every inner product it needs is `b^T G c` for coefficient
  vectors b, c: its min-norm subproblems are the shared min-norm solver
  (`core.pareto.min_norm_point`) on the Gramian `B G B^T` of the stacked coefficient rows B.
* **EPO** (Mahapatra & Rajan, ICML 2020) solves a K-variable linear programme on the Gramian and
  the losses at every step (`epo_linear_programme`), here with the small exact LP solver of this
  module (`simplex_linear_programme`), not with cvxpy/GLPK.

K x K work runs in float64 on the host; weights are returned in the Gramian's dtype and device.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, SupportsFloat

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError
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
from core.pareto.stationarity import min_norm_point

_HOST = torch.device("cpu")
_F64 = torch.float64


def _host_float64(tensor: Tensor) -> Tensor:
    return tensor.detach().to(device=_HOST, dtype=_F64)


def _symmetric(gramian: Tensor) -> Tensor:
    gram = _host_float64(gramian)
    return 0.5 * (gram + gram.transpose(-1, -2))


def _preference_vector(values: Any, name: str, /, *, strictly_positive: bool) -> tuple[float, ...]:
    """A preference given as K finite numbers, >= 0 (or > 0) and not all zero, as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor, np.ndarray)):
        raise InvalidHyperparameterError(
            f"{name} must be a list of K numbers (one per task) or None, got {values!r}"
        )
    items = values.tolist() if isinstance(values, (Tensor, np.ndarray)) else list(values)
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise InvalidHyperparameterError(
            f"{name} must be a non-empty list of numbers, got {values!r}"
        )
    numbers = tuple(float(v) for v in items)
    bound_ok = (
        all(v > 0 for v in numbers)
        if strictly_positive
        else all(v >= 0 for v in numbers) and any(v > 0 for v in numbers)
    )
    if not all(math.isfinite(v) for v in numbers) or not bound_ok:
        kind = "positive" if strictly_positive else "non-negative and not all zero"
        raise InvalidHyperparameterError(f"{name} must be finite and {kind}, got {list(values)!r}")
    return numbers


def _check_length(preference: tuple[float, ...], num_tasks: int, method: str) -> None:
    if len(preference) != num_tasks:
        raise MTLInputError(
            f"{method} has a preference of {len(preference)} entries but there are {num_tasks} losses"
        )


# --------------------------------------------------------------------------------------------
# PMTL
# --------------------------------------------------------------------------------------------


MAX_REFERENCE_VECTORS = 10_000
"""PMTL refuses a reference set larger than this (the lattice grows like K^(n-1) with K tasks)."""


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of `parts` non-negative integers summing to `total` (the lattice's counts)."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


@functools.lru_cache(maxsize=32)
def _reference_vectors(num_tasks: int, num_preferences: int) -> Tensor:
    pieces = []
    if num_tasks == 1:
        return torch.ones((num_preferences, 1), dtype=_F64)
    if num_tasks == 2:
        angles = [i * (0.5 * math.pi) / (num_preferences - 1) for i in range(num_preferences)]
        # (cos t_i, cos t_{n-1-i}) instead of (cos t_i, sin t_i): equal up to rounding, and
        # exactly symmetric under swapping the tasks (the middle vector exactly uniform)
        pieces = [
            [math.cos(angles[i]), math.cos(angles[num_preferences - 1 - i])]
            for i in range(num_preferences)
        ]
    else:
        divisions = num_preferences - 1
        count = math.comb(divisions + num_tasks - 1, num_tasks - 1)
        if count > MAX_REFERENCE_VECTORS:
            raise MTLInputError(
                f"PMTL's reference set for {num_tasks} tasks with num_preferences={num_preferences} has {count:,} vectors "
                f"(more than {MAX_REFERENCE_VECTORS:,}); pass a smaller num_preferences (2 gives the {num_tasks} axes)"
            )
        pieces = [list(counts) for counts in _compositions(divisions, num_tasks)]
        pieces.sort()
    vectors = torch.tensor(pieces, dtype=_F64)
    return vectors / vectors.norm(dim=-1, keepdim=True)


def pmtl_reference_vectors(num_tasks: int, num_preferences: int = 5, /) -> Tensor:
    """PMTL's unit reference vectors `[P, K]` (float64), in the positive orthant.

    K = 2: `num_preferences` vectors evenly spread in angle on the quarter circle, from (1, 0) to
    (0, 1) (`circle_points` of the reference code: 5 by default, as the Continuous Pareto
    Exploration paper's five PMTL starts). K >= 3: the simplex lattice of Das and Dennis with
    `num_preferences - 1` divisions (the K = 2 spacing of the lattice along every edge of the
    simplex; `C(n + K - 2, K - 1)` vectors, 15 for K = 3 and n = 5), each scaled to unit length,
    in lexicographic order of the lattice counts. K = 1: `num_preferences` copies of (1).
    """
    check_integer("num_tasks", num_tasks)
    check_integer("num_preferences", num_preferences, minimum=2)
    return _reference_vectors(num_tasks, num_preferences).clone()


class _Patterns(NamedTuple):
    indices: Tensor
    """The flat batch indices of the elements with this pattern."""
    active: Tensor
    """The pattern itself: which constraint rows are active `[M]` (bool)."""


def _group_by_pattern(active: Tensor) -> list[_Patterns]:
    """Batch elements grouped by their set of active constraints (`active [N, M]`, bool)."""
    if active.shape[0] == 0:
        return []
    if active.shape[1] == 0:
        return [_Patterns(torch.arange(active.shape[0]), active[0])]
    patterns, inverse = torch.unique(active, dim=0, return_inverse=True)
    return [
        _Patterns(torch.nonzero(inverse == index).flatten(), patterns[index])
        for index in range(patterns.shape[0])
    ]


class ParetoMTL(GradientWeighting):
    """Pareto MTL (Lin, Zhen, Li, Zhang, Kwong, "Pareto Multi-Task Learning", NeurIPS 2019).

    A preference `u_k` and reference vectors `u_1..u_P` (`pmtl_reference_vectors`, all of unit
    length) split the loss space into sub-regions; PMTL looks for a Pareto-stationary point of
    the sub-problem `min l(theta)` subject to `G_j(theta) = (u_j - u_k)^T l(theta) <= 0` for the
    other reference vectors j, whose constraint gradients are `(u_j - u_k)^T J`. With the rows
    `w_j = u_j - u_k` of the active constraints `I = {j : w_j . l > 0}` (the reference code's
    `gx > 0` on `l / ||l||`; only its sign matters):

    * **Stage 1, the feasible initialisation** (paper §3.2, reference `get_d_paretomtl_init`):
      `d = sum_{j in I} beta_j w_j^T J` with `beta` the min-norm point of the active constraint
      gradients (one active constraint: `beta = 1`), i.e. weights `sum_j beta_j w_j`, which
      decrease every violated `G_j` until the losses lie in the sub-region.
    * **Stage 2, the constrained MGDA** (paper eq. 12-14, reference `get_d_paretomtl`): the
      min-norm point `d = sum_i lambda_i g_i + sum_{j in I} beta_j w_j^T J` of the convex hull
      of the task gradients and the active constraint gradients, i.e. weights
      `w = lambda + sum_j beta_j w_j` (no active constraint: MGDA's min-norm point), then
      rescaled so that `sum_i |w_i| = 1` ("mean") or K ("sum", the reference's
      `n_tasks / sum |w|`; all-zero weights stay 0). Its update conflicts with no task
      (`g_i . d >= ||d||^2`, since g_i lies in the hull).

    Every min-norm problem is the shared solver (`core.pareto.min_norm_point`, exact up to
    rounding) on the Gramian `B G B^T` of the coefficient rows `B = [I_K; w_j, j in I]` (stage
    2) or `B = [w_j, j in I]` (stage 1), in float64 on the host; batch elements with the same
    active set are solved together. For K = 2 the problems are solved in closed form where the
    Gramian is non-singular (`_two_task_min_norm`: the best of the 2-point closed form over every
    pair of the points, the same minimiser to rounding), vectorised over the whole batch.

    **Stage switch** (state, per batch element): a run starts in stage 1 and moves to stage 2
    for good at the first call where no constraint is active (the reference multiMNIST code's
    `flag`), or once `end_epoch()` has been called `init_epochs` times (the reference's "at most
    2 epochs"; `init_epochs=None`: only feasibility switches, as LibMOON's `PMTLCore`;
    `init_epochs=0`: stage 2 from the start, and the method is stateless). At the call where a
    run becomes feasible the reference skips the (zero) step and continues with the next batch
    in stage 2; here that call already returns the stage-2 weights. Stage-1 weights are the
    reference's unnormalised `sum_j beta_j w_j` ("sum"), divided by K for "mean". The reference's
    toy example instead spends a fixed 20% of the iterations in stage 1 (`init_epochs` counts
    whatever the loop calls an epoch: the toy runner calls `end_epoch()` after every step).

    **Preference** (`preference`): None (default) is the uniform direction `1/sqrt(K)`; an
    integer k picks `u_k` of the reference set (0 <= k < P; for K = 2 and the default 5
    vectors, k = 0 is (1, 0), k = 2 the uniform one); K numbers give an explicit `u_k`
    (normalised to unit length; the reference vectors are still those of `num_preferences`, as in
    the EPO repository's PMTL). A reference vector within 1e-9 of `u_k` gives no constraint (the
    reference deletes row k).

    Defaults: `num_preferences = 5` (five PMTL solutions on the quarter circle, as the reference
    MultiMNIST runs and the Continuous Pareto Exploration paper's starts), `init_epochs = 2`,
    `reduction = "mean"` (weights summing in absolute value to 1, as MGDA's here; the reference
    scale is "sum"). Heads receive `w_i grad l_i` (the reference backpropagates the weighted
    loss). Losses must be non-negative (the sub-regions are cones of the positive orthant).

    Claims: with the uniform preference (None, or K equal numbers) the reference set and the
    preference are symmetric, so relabelling the tasks relabels the weights
    (`permutation_equivariant`); an index or any other preference breaks it unless the
    preference is permuted too (an index is not: for K = 2, index 1 becomes index 3). Stage 1
    may increase a task's loss, so only `init_epochs=0` declares `non_conflicting`.

    Diagnostics (batch-shaped): `"stage"` (1 or 2), `"active_constraints"` (how many `w_j . l > 0`),
    `"kkt_gap"` (the min-norm solver's, relative to the largest squared norm it saw) and
    `"update_bound"` (`sqrt(2 gap) max ||v||` times the scale: a bound on the distance of the
    update to the exact one, as MGDA's; large where the vectors' norms span many decades).

    Deviations from the reference (Xi-L/ParetoMTL): the exact min-norm solver instead of the
    Frank-Wolfe `MinNormSolver` (stop at 1e-6, at most 250 iterations, 2-point solutions clipped to
    [0.001, 0.999]); the K = 2 reference vectors computed as `(cos t_i, cos(pi/2 - t_i))` (see
    `pmtl_reference_vectors`); the switch at the feasible call (above); any K (the reference
    code is written for K = 2).
    """

    name = "pmtl"
    paper = "Lin, Zhen, Li, Zhang, Kwong, Pareto Multi-Task Learning (NeurIPS 2019)"
    claims = frozenset({"permutation_equivariant"})
    loss_domain = "nonnegative"
    loss_domain_advice = (
        "PMTL's sub-regions are cones of non-negative loss vectors: shift the losses to be >= 0"
    )
    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self,
        *,
        # SupportsFloat, not float: the registry turns an int given for a float into a float,
        # and an integer here is an index
        preference: int | Sequence[SupportsFloat] | None = None,
        num_preferences: int = 5,
        init_epochs: int | None = 2,
        reduction: Reduction = "mean",
    ) -> None:
        self.num_preferences = check_integer("num_preferences", num_preferences, minimum=2)
        if preference is None or (isinstance(preference, int) and not isinstance(preference, bool)):
            if preference is not None:
                check_integer("preference", preference, minimum=0)
            self.preference: int | tuple[float, ...] | None = preference
        else:
            self.preference = _preference_vector(preference, "preference", strictly_positive=False)
        self.init_epochs = (
            None if init_epochs is None else check_integer("init_epochs", init_epochs, minimum=0)
        )
        check_reduction(reduction)
        self.reduction = reduction
        uniform = self.preference is None or (
            isinstance(self.preference, tuple) and len(set(self.preference)) == 1
        )
        claims = {"permutation_equivariant"} if uniform else set()
        if self.init_epochs == 0:
            claims.add("non_conflicting")
            self.stateful = False
        self.claims = frozenset(claims)
        self.reset()

    # -- state ----------------------------------------------------------------------------------

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._feasible = torch.zeros(self.batch_shape, dtype=torch.bool)
        self._epochs = 0

    def end_epoch(self) -> None:
        """Count an epoch: after `init_epochs` of them every run is in stage 2."""
        self._epochs += 1

    def state_dict(self) -> dict[str, Any]:
        if not self.stateful:
            return {}
        return {
            "batch_shape": list(self.batch_shape),
            "feasible": self._feasible.clone(),
            "epochs": self._epochs,
            "pristine": self._pristine,
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        if not self.stateful:
            super().load_state_dict(state)
            return
        self.reset(tuple(state["batch_shape"]))
        self._feasible = (
            state_tensor(state, "feasible", self.batch_shape, "ParetoMTL").to(torch.bool).clone()
        )
        self._epochs = int(state["epochs"])
        self._pristine = bool(state.get("pristine", False))

    def stage_two(self) -> Tensor:
        """Which runs are in stage 2 for the next call (`[*batch_shape]`, bool)."""
        switched = self.init_epochs is not None and self._epochs >= self.init_epochs
        return self._feasible | switched

    # -- the method ------------------------------------------------------------------------------

    def preference_vector(self, num_tasks: int, /) -> Tensor:
        """The unit preference `u_k` for K tasks (float64)."""
        if self.preference is None:
            return torch.full((num_tasks,), 1.0 / math.sqrt(num_tasks), dtype=_F64)
        if isinstance(self.preference, int):
            vectors = _reference_vectors(num_tasks, self.num_preferences)
            if self.preference >= vectors.shape[0]:
                raise InvalidHyperparameterError(
                    f"preference={self.preference} indexes {vectors.shape[0]} reference vectors (K = {num_tasks}, "
                    f"num_preferences={self.num_preferences}); choose 0..{vectors.shape[0] - 1}"
                )
            return vectors[self.preference].clone()
        _check_length(self.preference, num_tasks, "ParetoMTL")
        vector = torch.tensor(self.preference, dtype=_F64)
        return vector / vector.norm()

    def constraint_rows(self, num_tasks: int, /) -> Tensor:
        """The rows `w_j = u_j - u_k` `[M, K]` of the constraints (reference vectors within 1e-9
        of the preference dropped)."""
        rows = _reference_vectors(num_tasks, self.num_preferences) - self.preference_vector(
            num_tasks
        )
        return rows[rows.norm(dim=-1) > 1e-9]

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        batch_shape = tuple(gramian.shape[:-2])
        num_tasks = gramian.shape[-1]
        if self.stateful:
            self._match_batch_shape(batch_shape)
        gram = _symmetric(gramian).reshape(-1, num_tasks, num_tasks)
        values = _host_float64(losses).reshape(-1, num_tasks)
        rows = self.constraint_rows(num_tasks)
        active = (values @ rows.T) > 0  # [N, M]: G_j(theta) > 0 (the sign of gx in the reference)
        second = (
            self.stage_two().reshape(-1)
            if self.stateful
            else torch.ones(values.shape[0], dtype=torch.bool)
        ).clone()
        feasible_now = ~active.any(dim=-1)
        second |= feasible_now
        stage_two = second.clone()
        weights = torch.zeros_like(values)
        gaps = torch.zeros(values.shape[0], dtype=_F64)
        bounds = torch.zeros(values.shape[0], dtype=_F64)
        first = ~second
        if num_tasks == 2:  # the closed form where the Gramian is well conditioned; the rest below
            handled, fast = _two_task_min_norm(
                gram.numpy(), rows.numpy(), active.numpy(), second.numpy()
            )
            if handled.any():
                done = torch.from_numpy(handled)
                weights[done], gaps[done], bounds[done] = (
                    torch.from_numpy(part[handled]) for part in fast
                )
                second, first = second & ~done, first & ~done
        eye = torch.eye(num_tasks, dtype=_F64)
        for group in _group_by_pattern(active[second]):
            members = torch.nonzero(second).flatten()[group.indices]
            coefficients = torch.cat([eye, rows[group.active]])
            weights[members], gaps[members], bounds[members] = _min_norm_combination(
                gram[members], coefficients
            )
        for group in _group_by_pattern(active[first]):
            members = torch.nonzero(first).flatten()[group.indices]
            weights[members], gaps[members], bounds[members] = _min_norm_combination(
                gram[members], rows[group.active]
            )
        second = stage_two
        scale = torch.where(
            second, self._scale(weights), 1.0 / num_tasks if self.reduction == "mean" else 1.0
        )
        weights = weights * scale[:, None]
        if self.stateful:
            self._feasible = self._feasible | feasible_now.reshape(batch_shape)
            self._used()
        diagnostics = {
            "stage": torch.where(second, 2, 1).reshape(batch_shape),
            "active_constraints": active.sum(dim=-1).reshape(batch_shape),
            "kkt_gap": gaps.reshape(batch_shape),
            "update_bound": (bounds * scale).reshape(batch_shape),
        }
        weights = weights.reshape(*batch_shape, num_tasks).to(gramian.device)
        return WeightsResult(weights_in_dtype(weights, gramian.dtype, "ParetoMTL"), diagnostics)

    def _scale(self, weights: Tensor) -> Tensor:
        """Stage 2's factor: `1 / sum_i |w_i|` ("mean") or `K / sum_i |w_i|` ("sum"); 1 for zero weights."""
        total = weights.abs().sum(dim=-1)
        return (weights.shape[-1] if self.reduction == "sum" else 1.0) / torch.where(
            total > 0, total, 1.0
        )


_CONDITION_FLOOR = 1e-12
"""The K = 2 closed form of PMTL serves Gramians with `det G > 1e-12 G_11 G_22` (task gradients
at least ~6e-5 degrees from parallel or anti-parallel, as near a Pareto-stationary point); the
others take the general solver. Close to that floor the update is still resolved to rounding
(the mapped points stay far apart on a near-line), but the weights themselves are not (many
coefficient vectors give nearly the same update), for the general solver as much as here."""


_FAST_GAP = 1e-10
"""The largest KKT gap the K = 2 closed form may leave; an element above it takes the general path."""


@functools.lru_cache(maxsize=8)
def _pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.triu_indices(count)
    return first, second


def _two_task_min_norm(
    gram: np.ndarray, rows: np.ndarray, active: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """PMTL's min-norm problems for K = 2 in closed form, vectorised over the batch.

    Every vector is `c^T J` for a coefficient row c of `[e_1; e_2; w_j]`, so the update lies in
    the plane of g_1, g_2; where G is positive definite the map c -> c^T J is injective and the
    min-norm point of the hull is unique in c. For the uniform or any quarter-circle preference the
    hull of the rows of a stage (`[e_1, e_2, w_j active]`, or `[w_j active]`) does not contain
    0 (the active w_j share one sign pattern (+, -) or (-, +)), so the min-norm point lies on a
    segment between two of the points: the best of Sener and Koltun's closed form over every pair
    (a pair (r, r) is the vertex r) is it. Returns which elements were served (G well
    conditioned: `det G > 1e-12 G_11 G_22`, and no point of the hull at the origin), and their
    task weights, KKT gap (as `min_norm_point` reports it, relative to the largest squared norm
    of the points) and update bound; the other elements take the general path."""
    num = gram.shape[0]
    points = np.concatenate([np.eye(2), rows])  # [P, 2]
    available = np.concatenate([np.repeat(second[:, None], 2, axis=1), active], axis=1)  # [N, P]
    g11, g22, g12 = gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]
    with np.errstate(invalid="ignore", over="ignore"):
        conditioned = (
            (g11 > 0)
            & (g22 > 0)
            & (g11 * g22 - g12 * g12 > _CONDITION_FLOOR * (g11 * g22))
            & np.isfinite(g11 * g22)
        )
    mapped = points @ gram  # [N, P, 2]: rows c_r^T G
    extended = mapped @ points.T  # [N, P, P]
    left, right = _pairs(points.shape[0])
    g_rr, g_ss, g_rs = extended[:, left, left], extended[:, right, right], extended[:, left, right]
    denominator = g_rr + g_ss - 2 * g_rs
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        degenerate = denominator <= np.finfo(np.float64).eps * (g_rr + g_ss)
        share = np.where(
            degenerate, 0.5, ((g_ss - g_rs) / np.where(degenerate, 1.0, denominator)).clip(0, 1)
        )
        combined = (
            share[..., None] * points[left] + (1 - share[..., None]) * points[right]
        )  # [N, pairs, 2]
        value = np.einsum("npk,nkl,npl->np", combined, gram, combined)
    usable = available[:, left] & available[:, right]
    value = np.where(usable, value, np.inf)
    best = value.argmin(axis=-1)
    coefficients = combined[np.arange(num), best]  # [N, 2]
    products = np.einsum("nrk,nk->nr", mapped, coefficients)  # (c_r^T J) . d
    squared = np.einsum("nk,nk->n", coefficients, np.einsum("nkl,nl->nk", gram, coefficients))
    largest = (
        np.where(available, np.diagonal(extended, axis1=-2, axis2=-1), -np.inf)
        .max(axis=-1)
        .clip(min=0)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        lowest = np.where(available, products, np.inf).min(axis=-1)
        gap = ((squared - lowest) / np.where(largest > 0, largest, 1.0)).clip(min=0)
    bound = np.sqrt(2 * gap * largest)
    # a guard: the KKT test passes at the min-norm point (it would not if 0 were inside the hull)
    handled = conditioned & (squared > 0) & available.any(axis=-1) & (gap <= _FAST_GAP)
    return handled, (coefficients, gap, bound)


def _min_norm_combination(gram: Tensor, coefficients: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The min-norm point of the hull of the vectors `c_r^T J` (rows c_r of `coefficients`
    `[R, K]`) for Gramians `[N, K, K]`: its coefficients on the tasks `[N, K]`, the solver's KKT
    gap and the bound `sqrt(2 gap) max_r ||c_r^T J||` on its distance to the exact point (for
    the min-norm point d* of a convex set, `||d - d*||^2 <= ||d||^2 - ||d*||^2`, MGDA's bound)."""
    extended = coefficients @ gram @ coefficients.T  # [N, R, R]: (c_r^T J) . (c_s^T J)
    solution = min_norm_point(extended)
    largest = torch.diagonal(extended, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(0)
    bound = (2 * solution.kkt_gap.clamp_min(0) * largest).sqrt()
    return solution.weights @ coefficients, solution.kkt_gap, bound


# --------------------------------------------------------------------------------------------
# A small exact linear programme on the simplex
# --------------------------------------------------------------------------------------------

_LP_TOLERANCE = 1e-9
"""Feasibility and optimality tolerance of the dense simplex method (K > 5), on rows scaled to a
largest entry of 1."""
_ROUNDING = 64.0
"""Times `K eps cond(B)`: the tolerance of a basic solution's feasibility and of a tie between
two of them, with `cond(B)` its basis's condition number (columns scaled)."""
_MAX_CONDITION = 1e8
"""Bases worse conditioned than this (columns scaled) count as singular: no vertex."""
_ENUMERATION_TASKS = 5
"""Up to this K the LP is solved by enumerating every basic solution (batched torch); above it by
the dense simplex method (numpy, one batch element at a time)."""
_ENUMERATION_CHUNK = 200_000
"""Basic solutions solved per batched call (bounds the memory of the enumeration)."""


class LinearProgrammeSolution(NamedTuple):
    """`weights` `[..., K]` on the simplex, the optimal `value` `[...]`, whether the programme
    was `feasible` `[...]` (where it is not, weights and value are NaN) and `error` `[...]`, the
    estimated rounding error of each weight (`64 K eps cond` of the worst basis averaged; the
    simplex method's tolerance 1e-9 for K > 5)."""

    weights: Tensor
    value: Tensor
    feasible: Tensor
    error: Tensor


def simplex_linear_programme(
    objective: Tensor, rows: Tensor, bounds: Tensor, /, *, column_scales: Tensor | None = None
) -> LinearProgrammeSolution:
    """Maximise `c . a` over the probability simplex subject to `A a >= b`, batched.

    `objective` c `[..., K]`, `rows` A `[..., m, K]`, `bounds` b `[..., m]` (a bound of -inf
    switches a row off). `column_scales` d `[..., K]` (positive; default 1): the programme is
    solved in the variables `beta_i = d_i a_i` (EPO passes the gradient norms, so that beta_i is
    task i's contribution to the update and a tiny weight on a large gradient is resolved to the
    precision of that contribution, not of the weight): maximise `(c / d) . beta` subject to
    `beta >= 0`, `sum_i beta_i / d_i = 1` and `A D^-1 beta >= b`. Every row (the equality row
    too) is scaled to a largest entry of 1.

    K <= 5: every basic solution (K - 1 of the inequalities `beta_i >= 0`, `A_j a >= b_j` tight,
    with the equality) is solved at once (batched `torch.linalg.solve_ex`). Each carries its own
    rounding error `64 K eps cond(B)`, with `cond(B)` the condition number of its basis (columns
    scaled to a largest entry of 1); a basis with `cond(B) > 1e8` (two constraints of parallel
    gradients) is no vertex. A basic solution is feasible if no scaled row is violated by more
    than its error, and two feasible ones tie if their values differ by less than the sum of
    their errors (so only rounding ties, never a near-tie of the data); the tied optimal ones
    are averaged: a tie between optimal vertices (a flat optimal face, as rank-deficient
    Gramians give) yields the mean of the optimal basic solutions, a point of the optimal face
    that relabelling the tasks relabels. K > 5: the two-phase dense simplex method with Bland's
    rule (`_dense_simplex`, feasibility and pivot tolerance 1e-9 on the scaled rows), which
    returns one optimal vertex (a tie is broken by the index order). Infeasible programmes give
    NaN weights and `feasible` False. The weights are clipped at 0 and renormalised (they lie
    exactly on the simplex).
    """
    c = _host_float64(objective)
    a = _host_float64(rows)
    b = _host_float64(bounds)
    num_tasks = c.shape[-1]
    batch_shape = c.shape[:-1]
    d = torch.ones_like(c) if column_scales is None else _host_float64(column_scales).expand_as(c)
    if not bool((d > 0).all()):
        raise MTLInputError("column_scales must be positive")
    count = math.prod(batch_shape)
    c, a, b, d = (
        c.reshape(count, num_tasks),
        a.reshape(count, a.shape[-2], num_tasks),
        b.reshape(count, b.shape[-1]),
        d.reshape(count, num_tasks),
    )
    on = torch.isfinite(b)
    d = d / d.amax(dim=-1, keepdim=True)
    a = a / d[:, None, :]
    c = c / d
    total = 1.0 / d
    # scale each row to a largest entry of 1; an empty row is always met (b <= 0) or never (b > 0)
    b = torch.where(on, b, 0.0)
    size = a.abs().amax(dim=-1)
    never = on & (size == 0) & (b > 0)
    on = on & (size > 0)
    scale = torch.maximum(size, b.abs())
    safe = torch.where(scale > 0, scale, 1.0)
    a, b = a / safe[..., None], b / safe
    largest = c.abs().amax(dim=-1, keepdim=True)
    c = c / torch.where(largest > 0, largest, 1.0)
    total_scale = total.amax(dim=-1, keepdim=True)
    total, level = total / total_scale, 1.0 / total_scale[:, 0]
    if num_tasks <= _ENUMERATION_TASKS:
        beta, feasible, error = _enumerate_basic_solutions(c, a, b, on, total, level)
    else:
        beta, feasible = _simplex_each(c, a, b, on, total, level)
        error = torch.full(feasible.shape, _LP_TOLERANCE, dtype=_F64)
    feasible = feasible & ~never.any(dim=-1)
    weights = (torch.nan_to_num(beta) * total).clamp_min(0)  # a_i = beta_i / d_i
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(_F64).tiny)
    weights = torch.where(feasible[:, None], weights, torch.nan)
    value = torch.where(
        feasible, (_host_float64(objective).reshape(-1, num_tasks) * weights).sum(dim=-1), torch.nan
    )
    error = torch.where(feasible, error, torch.nan)
    return LinearProgrammeSolution(
        weights.reshape(*batch_shape, num_tasks),
        value.reshape(batch_shape),
        feasible.reshape(batch_shape),
        error.reshape(batch_shape),
    )


@functools.lru_cache(maxsize=16)
def _bases(num_tasks: int, num_rows: int) -> Tensor:
    """Every choice of K - 1 tight inequalities among the K sign rows and `num_rows` others, `[S, K-1]`."""
    if num_tasks == 1:
        return torch.zeros((1, 0), dtype=torch.int64)
    return torch.tensor(
        list(itertools.combinations(range(num_tasks + num_rows), num_tasks - 1)), dtype=torch.int64
    )


def _enumerate_basic_solutions(
    c: Tensor, a: Tensor, b: Tensor, on: Tensor, total: Tensor, level: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`max c . x` subject to `x >= 0`, `total . x = level` and the enabled rows `a x >= b`, by
    every basic solution (see `simplex_linear_programme`); returns x `[N, K]`, feasibility and
    the largest rounding error of the basic solutions averaged."""
    num, num_tasks = c.shape
    num_rows = a.shape[-2]
    inequalities = torch.cat(
        [torch.eye(num_tasks, dtype=_F64).expand(num, num_tasks, num_tasks), a], dim=-2
    )
    lower = torch.cat([torch.zeros(num, num_tasks, dtype=_F64), b], dim=-1)
    usable = torch.cat([torch.ones(num, num_tasks, dtype=torch.bool), on], dim=-1)
    bases = _bases(num_tasks, num_rows)
    solutions = torch.full((num, num_tasks), torch.nan, dtype=_F64)
    value = torch.full((num,), -torch.inf, dtype=_F64)
    errors = torch.zeros(num, dtype=_F64)
    chunk = max(1, _ENUMERATION_CHUNK // bases.shape[0])
    for start in range(0, num, chunk):
        part = slice(start, min(num, start + chunk))
        rows_all, lower_all, usable_all = inequalities[part], lower[part], usable[part]
        n, count = rows_all.shape[0], bases.shape[0]
        tight = rows_all[:, bases]  # [n, S, K-1, K]
        system = torch.cat(
            [tight, total[part, None, None, :].expand(n, count, 1, num_tasks)], dim=-2
        )
        rhs = torch.cat([lower_all[:, bases], level[part, None, None].expand(n, count, 1)], dim=-1)
        solution, info = torch.linalg.solve_ex(system, rhs)
        # each basis's own rounding error, from its condition number with the columns scaled (a
        # basis that is merely badly scaled is fine); a (numerically) singular basis, e.g. two
        # constraints of parallel gradients, is no vertex: its "solution" is rounding noise
        columns = system.abs().amax(dim=-2, keepdim=True)
        singular_values = torch.linalg.svdvals(system / torch.where(columns > 0, columns, 1.0))
        condition = singular_values[..., 0] / singular_values[..., -1]
        error = _ROUNDING * num_tasks * torch.finfo(_F64).eps * condition  # [n, S]
        valid = (
            (info == 0)
            & (condition <= _MAX_CONDITION)
            & usable_all[:, bases].all(dim=-1)
            & torch.isfinite(solution).all(dim=-1)
        )
        solution = torch.nan_to_num(solution)
        slack = torch.einsum("nrk,nsk->nsr", rows_all, solution) - lower_all[:, None, :]
        valid &= (torch.where(usable_all[:, None, :], slack, 0.0) >= -error[..., None]).all(dim=-1)
        objective = torch.where(valid, torch.einsum("nk,nsk->ns", c[part], solution), -torch.inf)
        best_index = objective.argmax(dim=-1, keepdim=True)
        best = objective.gather(-1, best_index)[..., 0]
        # ties: optimal vertices agree in value up to the rounding of both
        chosen = valid & (objective >= best[:, None] - error - error.gather(-1, best_index))
        count_chosen = chosen.sum(dim=-1, keepdim=True)
        solutions[part] = torch.where(chosen[..., None], solution, 0.0).sum(
            dim=-2
        ) / count_chosen.clamp_min(1)
        value[part] = best
        errors[part] = torch.where(chosen, error, 0.0).amax(dim=-1)
    return solutions, torch.isfinite(value), errors


def _simplex_each(
    c: Tensor, a: Tensor, b: Tensor, on: Tensor, total: Tensor, level: Tensor
) -> tuple[Tensor, Tensor]:
    num, num_tasks = c.shape
    solutions = torch.full((num, num_tasks), torch.nan, dtype=_F64)
    feasible = torch.zeros(num, dtype=torch.bool)
    for index in range(num):
        keep = on[index].numpy()
        solution = _dense_simplex(
            c[index].numpy(),
            a[index].numpy()[keep],
            b[index].numpy()[keep],
            total[index].numpy(),
            float(level[index]),
        )
        if solution is not None:
            solutions[index] = torch.from_numpy(solution)
            feasible[index] = True
    return solutions, feasible


def _dense_simplex(
    c: np.ndarray, a: np.ndarray, b: np.ndarray, total: np.ndarray, level: float
) -> np.ndarray | None:
    """`max c . x` subject to `x >= 0`, `total . x = level` and `a x >= b`, by the two-phase
    tableau simplex method with Bland's rule (no cycling), or None if infeasible. Standard form:
    (x, s) >= 0 with `total . x = level` and `a x - s = b`, rows negated where the right-hand side
    is negative, one artificial variable per row in phase 1."""
    num_tasks, num_rows = c.shape[0], a.shape[0]
    num_vars = num_tasks + num_rows
    equality = np.zeros((num_rows + 1, num_vars))
    equality[0, :num_tasks] = total
    equality[1:, :num_tasks] = a
    equality[1:, num_tasks:] = -np.eye(num_rows)
    rhs = np.concatenate([[level], b])
    flip = rhs < 0
    equality[flip] *= -1
    rhs[flip] *= -1
    m = num_rows + 1
    tableau = np.zeros((m + 1, num_vars + m + 1))
    tableau[:m, :num_vars] = equality
    tableau[:m, num_vars : num_vars + m] = np.eye(m)
    tableau[:m, -1] = rhs
    tableau[m, :num_vars] = -equality.sum(axis=0)  # phase 1: minimise the sum of the artificials
    tableau[m, -1] = -rhs.sum()
    basis = list(range(num_vars, num_vars + m))
    _pivot_to_optimum(tableau, basis, num_vars + m)
    if -tableau[m, -1] > _LP_TOLERANCE * max(1.0, float(rhs.sum())):
        return None
    for row, variable in enumerate(basis):  # drive artificial variables out of the basis
        if variable >= num_vars:
            candidates = np.flatnonzero(np.abs(tableau[row, :num_vars]) > _LP_TOLERANCE)
            if candidates.size:
                _pivot(tableau, basis, row, int(candidates[0]))
    keep = [
        row for row, variable in enumerate(basis) if variable < num_vars
    ]  # others: redundant rows
    phase_two = np.zeros((len(keep) + 1, num_vars + 1))
    phase_two[:-1, :num_vars] = tableau[keep, :num_vars]
    phase_two[:-1, -1] = tableau[keep, -1]
    basis = [basis[row] for row in keep]
    phase_two[-1, :num_tasks] = -c  # maximise c . x: minimise -c . x
    for row, variable in enumerate(basis):
        phase_two[-1] -= phase_two[-1, variable] * phase_two[row]
    _pivot_to_optimum(phase_two, basis, num_vars)
    solution = np.zeros(num_vars)
    for row, variable in enumerate(basis):
        solution[variable] = phase_two[row, -1]
    return solution[:num_tasks]


def _pivot_to_optimum(tableau: np.ndarray, basis: list[int], num_columns: int) -> None:
    """Bland's rule: the lowest-index column with a negative reduced cost enters; the ratio test's
    tie goes to the lowest-index basic variable. The region is bounded, so it terminates."""
    cost = tableau.shape[0] - 1
    for _ in range(10_000):
        entering = np.flatnonzero(tableau[cost, :num_columns] < -_LP_TOLERANCE)
        if entering.size == 0:
            return
        column = int(entering[0])
        positive = tableau[:cost, column] > _LP_TOLERANCE
        if not positive.any():
            return  # unbounded direction: impossible on the simplex, stop rather than loop
        ratios = np.where(
            positive, tableau[:cost, -1] / np.where(positive, tableau[:cost, column], 1.0), np.inf
        )
        best = ratios.min()
        ties = np.flatnonzero(ratios <= best + _LP_TOLERANCE * max(1.0, abs(best)))
        row = int(min(ties, key=lambda r: basis[r]))
        _pivot(tableau, basis, row, column)


def _pivot(tableau: np.ndarray, basis: list[int], row: int, column: int) -> None:
    tableau[row] /= tableau[row, column]
    for other in range(tableau.shape[0]):
        if other != row and tableau[other, column] != 0:
            tableau[other] -= tableau[other, column] * tableau[row]
    basis[row] = column


# --------------------------------------------------------------------------------------------
# EPO
# --------------------------------------------------------------------------------------------


class EPOProgramme(NamedTuple):
    """EPO's LP at one step (`epo_linear_programme`), batched: maximise `objective . alpha` over
    the simplex subject to `rows alpha >= bounds` (rows with a -inf bound are off)."""

    objective: Tensor
    rows: Tensor
    bounds: Tensor
    balance: Tensor
    """Whether the step is a balance step (`mu_r(l) > threshold`) or a descent ("dominance") step."""
    non_uniformity: Tensor
    """`mu_r(l)`, the KL divergence of the normalised `r * l` from uniform."""
    adjustments: Tensor
    """The adjustment vector `a = r * (log(K l_hat) - mu_r(l))`."""


def epo_linear_programme(
    gramian: Tensor, losses: Tensor, preference: Tensor, /, *, threshold: float = 1e-4
) -> EPOProgramme:
    """EPO's linear programme (Mahapatra & Rajan 2020, §3.3; reference `EPO_LP.get_alpha`).

    With `C = G`, `rl = r * l`, `l_hat = rl / sum(rl)`, the non-uniformity
    `mu = sum_{l_hat_i > eps} l_hat_i log(K l_hat_i)` and the adjustments
    `a = r * (log(K l_hat) - mu)`:

    * balance step (`mu > threshold`): maximise `alpha . C a` subject to `C alpha >= rhs`, with
      `rhs_j = (C a)_j`, except `-inf` (no constraint) for `j in J = {(C a)_j > 0}` and 0 for
      `j in J* = argmax rl` (ties included); if J is empty, `rhs = 0`;
    * dominance step: maximise `1^T C alpha` subject to `C alpha >= 0` and
      `alpha . C a >= min(max_j (C a)_j, 0)` (the reference's "restricted" descent).

    Batched over the leading dimensions; float64 on the host.
    """
    gram = _symmetric(gramian)
    values = _host_float64(losses)
    r = _host_float64(preference).expand_as(values)
    num_tasks = values.shape[-1]
    rl = r * values
    l_hat = rl / rl.sum(dim=-1, keepdim=True)
    log_ratio = torch.log(l_hat * num_tasks)
    # the reference sums over l_hat > eps (float64 epsilon) only
    counted = l_hat > torch.finfo(_F64).eps
    non_uniformity = torch.where(counted, l_hat * log_ratio, 0.0).sum(dim=-1)
    adjustments = r * (log_ratio - non_uniformity[..., None])
    products = (gram @ adjustments[..., None])[..., 0]  # C a
    balance = non_uniformity > threshold
    increasing = products > 0
    top = rl == rl.amax(dim=-1, keepdim=True)
    balance_bounds = torch.where(increasing, -torch.inf, products)
    balance_bounds = torch.where(top, 0.0, balance_bounds)
    balance_bounds = torch.where(increasing.any(dim=-1, keepdim=True), balance_bounds, 0.0)
    restriction = products.amax(dim=-1, keepdim=True).clamp_max(0.0)
    dominance_rows = torch.cat([gram, products[..., None, :]], dim=-2)
    dominance_bounds = torch.cat([torch.zeros_like(products), restriction], dim=-1)
    balance_rows = torch.cat([gram, torch.zeros_like(products)[..., None, :]], dim=-2)
    balance_bounds = torch.cat([balance_bounds, torch.full_like(restriction, -torch.inf)], dim=-1)
    rows = torch.where(balance[..., None, None], balance_rows, dominance_rows)
    bounds = torch.where(balance[..., None], balance_bounds, dominance_bounds)
    objective = torch.where(balance[..., None], products, gram.sum(dim=-2))
    return EPOProgramme(objective, rows, bounds, balance, non_uniformity, adjustments)


class EPOSearch(GradientWeighting):
    """Exact Pareto Optimal search (Mahapatra & Rajan, "Multi-Task Learning with User Preferences:
    Gradient Descent with Controlled Ascent in Pareto Optimization", ICML 2020).

    EPO looks for the Pareto-optimal point where `r_1 l_1 = ... = r_K l_K` (the losses on the
    ray `l ~ 1/r` of the preference r): at each step the weights `alpha` solve the LP of
    `epo_linear_programme` on the Gramian and the losses: a balance step (`mu_r(l) > 1e-4`)
    maximises the first-order decrease `alpha . C a / (r . l)` of the non-uniformity `mu_r`
    (`grad_l mu_r = a / (r . l)`), keeping the task with the largest `r_i l_i` from increasing
    and the other non-increasing tasks from doing worse than along `a`; a dominance step
    (losses within `balance_threshold` of the ray) maximises the descent `1^T C alpha` with
    `C alpha >= 0` (no task increases) and without increasing `mu_r` where that is possible.
    Where the LP is infeasible the weights are `r / sum(r)` (the reference's patch for cvxpy's
    failure). Weights lie on the simplex ("mean", default) or sum to K ("sum": the reference
    training loops multiply `alpha` by `n_tasks`).

    The LP is solved exactly (`simplex_linear_programme`: every basic solution for K <= 5, a
    dense simplex above; scipy's HiGHS agrees in the tests) instead of cvxpy/GLPK.

    Preference: r, K positive numbers; None (default) is the uniform `1/sqrt(K)` (unit length,
    as the reference's `circle_points` preferences). The scale of r matters: the balance bounds
    `(C a)_j` scale with r while `C alpha` does not (golden values: r = (1, 1) and (1/2, 1/2)
    give different weights), so it is used as given. Defaults: `balance_threshold = 1e-4` (the
    reference's `eps`). Heads receive `alpha_i grad l_i`. Losses must be positive
    (`log(K l_hat)`).

    Claims: weights on the simplex ("mean"); with the uniform preference the LP is symmetric
    under relabelling, and the tie rule (mean of the optimal basic solutions) keeps it so for
    K <= 5 (for K > 5 a tie between optimal vertices is broken by index order, which ties of
    distinct updates, a non-generic case, can make non-equivariant). Not non-conflicting: a
    balance step raises the losses that are below the ray on purpose ("controlled ascent").

    Diagnostics (batch-shaped): `"balance"` (bool: a balance step), `"non_uniformity"`
    (`mu_r(l)`), `"lp_value"` (the LP's optimum), `"fallback"` (bool: the LP was infeasible) and
    `"update_bound"` (the LP solution's estimated rounding error times `sum_i ||g_i||`, and K for
    "sum": how far the update may be from the exact LP optimum's).

    Deviations from the reference (dbmptr/EPOSearch `epo_lp.py`): the exact LP solver and its
    tie rule (GLPK returns one optimal vertex); rows of the LP with a -inf bound are left out
    rather than passed to the solver. LibMOON's copy differs from both: it passes `r = 1/pref`,
    clips `l_hat K` at 1e-3 inside the log and clips negative `r l` to 0.
    """

    name = "epo"
    paper = "Mahapatra, Rajan, Multi-Task Learning with User Preferences: Gradient Descent with Controlled Ascent in Pareto Optimization (ICML 2020)"
    claims = frozenset({"permutation_equivariant", "simplex_weights"})
    loss_domain = "positive"
    loss_domain_advice = "EPO takes log(r l / sum(r l)): shift the losses to be positive"
    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self,
        *,
        preference: Sequence[float] | None = None,
        balance_threshold: float = 1e-4,
        reduction: Reduction = "mean",
    ) -> None:
        self.preference = (
            None
            if preference is None
            else _preference_vector(preference, "preference", strictly_positive=True)
        )
        self.balance_threshold = check_number("balance_threshold", balance_threshold, minimum=0.0)
        check_reduction(reduction)
        self.reduction = reduction
        claims = set()
        if self.preference is None or len(set(self.preference)) == 1:
            claims.add("permutation_equivariant")
        if reduction == "mean":
            claims.add("simplex_weights")
        self.claims = frozenset(claims)

    def preference_vector(self, num_tasks: int, /) -> Tensor:
        """r for K tasks (float64): the given one, or `1/sqrt(K)` each."""
        if self.preference is None:
            return torch.full((num_tasks,), 1.0 / math.sqrt(num_tasks), dtype=_F64)
        _check_length(self.preference, num_tasks, "EPOSearch")
        return torch.tensor(self.preference, dtype=_F64)

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        num_tasks = gramian.shape[-1]
        preference = self.preference_vector(num_tasks)
        host = _epo_on_host(gramian, losses, preference, self.balance_threshold)
        if host is not None:
            programme, solution = host
        else:
            programme = epo_linear_programme(
                gramian, losses, preference, threshold=self.balance_threshold
            )
            solution = simplex_linear_programme(
                programme.objective, programme.rows, programme.bounds
            )
        fallback = ~solution.feasible
        weights = torch.where(fallback[..., None], preference / preference.sum(), solution.weights)
        scale = num_tasks if self.reduction == "sum" else 1.0
        weights = weights * scale
        norms = torch.diagonal(_symmetric(gramian), dim1=-2, dim2=-1).clamp_min(0).sqrt()
        diagnostics = {
            "balance": programme.balance,
            "non_uniformity": programme.non_uniformity,
            "lp_value": solution.value,
            "fallback": fallback,
            # the update's rounding error: each weight's, times the gradients' norms
            "update_bound": torch.where(fallback, 0.0, solution.error) * scale * norms.sum(dim=-1),
        }
        return WeightsResult(
            weights_in_dtype(weights.to(gramian.device), gramian.dtype, "EPOSearch"), diagnostics
        )


# --------------------------------------------------------------------------------------------
# EPO's programme and its enumeration on numpy arrays
# --------------------------------------------------------------------------------------------
# EPO solves a K-variable LP on `[N, K]` arrays of a few entries per step, where every torch call
# costs more than its arithmetic. `_epo_on_host` is `epo_linear_programme` followed by
# `simplex_linear_programme` (no column scales, the enumeration for K <= 5) written on numpy
# arrays operation for operation; the two LAPACK calls (the bases' solves and singular values)
# stay the torch ones, so bases, tolerances and ties are decided on the same numbers up to the
# rounding of the elementwise logarithm and of the small sums.


def _epo_on_host(
    gramian: Tensor, losses: Tensor, preference: Tensor, threshold: float
) -> tuple[EPOProgramme, LinearProgrammeSolution] | None:
    """EPO's programme and its solution as `epo_linear_programme` and `simplex_linear_programme`
    give them, or None where those take another path (K > 5, a batch beyond one chunk)."""
    num_tasks = gramian.shape[-1]
    batch_shape = tuple(gramian.shape[:-2])
    count = math.prod(batch_shape)
    if (
        num_tasks > _ENUMERATION_TASKS
        or count * _bases(num_tasks, num_tasks + 1).shape[0] > _ENUMERATION_CHUNK
    ):
        return None
    gram = _symmetric(gramian).numpy().reshape(count, num_tasks, num_tasks)
    values = _host_float64(losses).numpy().reshape(count, num_tasks)
    r = _host_float64(preference).numpy()
    rl = r * values
    l_hat = rl / rl.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = np.log(l_hat * num_tasks)
        counted = l_hat > np.finfo(np.float64).eps
        non_uniformity = np.where(counted, l_hat * log_ratio, 0.0).sum(axis=-1)
        adjustments = r * (log_ratio - non_uniformity[..., None])
        products = np.einsum("nij,nj->ni", gram, adjustments)  # C a
    balance = non_uniformity > threshold
    increasing = products > 0
    top = rl == rl.max(axis=-1, keepdims=True)
    balance_bounds = np.where(increasing, -np.inf, products)
    balance_bounds = np.where(top, 0.0, balance_bounds)
    balance_bounds = np.where(increasing.any(axis=-1, keepdims=True), balance_bounds, 0.0)
    restriction = np.minimum(products.max(axis=-1, keepdims=True), 0.0)
    zeros = np.zeros_like(products)
    dominance_rows = np.concatenate([gram, products[:, None, :]], axis=-2)
    dominance_bounds = np.concatenate([zeros, restriction], axis=-1)
    balance_rows = np.concatenate([gram, zeros[:, None, :]], axis=-2)
    balance_bounds = np.concatenate([balance_bounds, np.full_like(restriction, -np.inf)], axis=-1)
    rows = np.where(balance[:, None, None], balance_rows, dominance_rows)
    bounds = np.where(balance[:, None], balance_bounds, dominance_bounds)
    objective = np.where(balance[:, None], products, gram.sum(axis=-2))
    solution = _simplex_programme_np(objective, rows, bounds)

    def back(array: np.ndarray, *shape: int) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).reshape((*batch_shape, *shape))

    programme = EPOProgramme(
        back(objective, num_tasks),
        back(rows, num_tasks + 1, num_tasks),
        back(bounds, num_tasks + 1),
        back(balance),
        back(non_uniformity),
        back(adjustments, num_tasks),
    )
    weights, value, feasible, error = solution
    return programme, LinearProgrammeSolution(
        back(weights, num_tasks), back(value), back(feasible), back(error)
    )


def _simplex_programme_np(
    objective: np.ndarray, rows: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, ...]:
    """`simplex_linear_programme(objective, rows, bounds)` for `[N, K]`, `[N, m, K]`, `[N, m]`
    with K <= 5 and no column scales (then the equality row is `1 . x = 1` as it is)."""
    count, num_tasks = objective.shape
    num_rows = rows.shape[-2]
    on = np.isfinite(bounds)
    b = np.where(on, bounds, 0.0)
    size = np.abs(rows).max(axis=-1)
    never = on & (size == 0) & (b > 0)
    on = on & (size > 0)
    scale = np.maximum(size, np.abs(b))
    safe = np.where(scale > 0, scale, 1.0)
    a, b = rows / safe[..., None], b / safe
    largest = np.abs(objective).max(axis=-1, keepdims=True)
    c = objective / np.where(largest > 0, largest, 1.0)
    # _enumerate_basic_solutions with total = 1 and level = 1
    inequalities = np.concatenate(
        [np.broadcast_to(np.eye(num_tasks), (count, num_tasks, num_tasks)), a], axis=-2
    )
    lower = np.concatenate([np.zeros((count, num_tasks)), b], axis=-1)
    usable = np.concatenate([np.ones((count, num_tasks), dtype=bool), on], axis=-1)
    bases = _bases(num_tasks, num_rows).numpy()
    num_bases = bases.shape[0]
    tight = inequalities[:, bases]  # [N, S, K-1, K]
    system = np.concatenate([tight, np.ones((count, num_bases, 1, num_tasks))], axis=-2)
    rhs = np.concatenate([lower[:, bases], np.ones((count, num_bases, 1))], axis=-1)
    solved, info = torch.linalg.solve_ex(torch.from_numpy(system), torch.from_numpy(rhs))
    columns = np.abs(system).max(axis=-2, keepdims=True)
    singular_values = torch.linalg.svdvals(
        torch.from_numpy(system / np.where(columns > 0, columns, 1.0))
    ).numpy()
    solution = solved.numpy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        condition = singular_values[..., 0] / singular_values[..., -1]
        error = _ROUNDING * num_tasks * np.finfo(np.float64).eps * condition  # [N, S]
        valid = (
            (info.numpy() == 0)
            & (condition <= _MAX_CONDITION)
            & usable[:, bases].all(axis=-1)
            & np.isfinite(solution).all(axis=-1)
        )
        solution = np.nan_to_num(solution)
        slack = np.einsum("nrk,nsk->nsr", inequalities, solution) - lower[:, None, :]
        valid &= (np.where(usable[:, None, :], slack, 0.0) >= -error[..., None]).all(axis=-1)
        value_all = np.where(valid, np.einsum("nk,nsk->ns", c, solution), -np.inf)
        best_index = value_all.argmax(axis=-1)[:, None]
        best = np.take_along_axis(value_all, best_index, axis=-1)[:, 0]
        chosen = valid & (
            value_all >= best[:, None] - error - np.take_along_axis(error, best_index, axis=-1)
        )
        count_chosen = chosen.sum(axis=-1, keepdims=True)
        beta = np.where(chosen[..., None], solution, 0.0).sum(axis=-2) / np.maximum(count_chosen, 1)
        errors = np.where(chosen, error, 0.0).max(axis=-1)
    feasible = np.isfinite(best) & ~never.any(axis=-1)
    weights = np.maximum(np.nan_to_num(beta), 0.0)
    weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    weights = np.where(feasible[:, None], weights, np.nan)
    value = np.where(feasible, (objective * weights).sum(axis=-1), np.nan)
    return weights, value, feasible, np.where(feasible, errors, np.nan)
