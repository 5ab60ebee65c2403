"""Jacobian aggregations: methods that act on the per-task gradient vectors themselves.

GradDrop masks the gradients coordinate by coordinate; MoCo and DB-MTL track each task's gradient
across steps; ExcessMTL accumulates each task's squared gradient per coordinate. None of them is
K weights on the Gramian, so each is a `JacobianAggregation` (`core.methods.base`): it maps
`J [..., K, n]` (rows `g_i`) and the losses `[..., K]` to the shared update `d [..., n]` and the
heads' weights, and costs O(K n) per step (MoCo O(K^2 n)) where a gradient weighting costs
O(poly(K)) after the Gramian.

State kept per coordinate has shape `[*batch_shape, K, n]`, in the dtype and on the device of the
Jacobian (MoCo's tracked gradients, DB-MTL's moving averages, ExcessMTL's squared-gradient sums);
state kept per task (`[*batch_shape, K]`) is float64 on the host, like the other methods' K x K
work. The three stateful methods take `num_tasks` and support only the engine's "full" mode: in
representation mode a coordinate of `J` is one sample's feature, another sample at every step,
and n changes with the batch size. Decisions and comparisons with LibMTL and TorchJD are in
docs/DECISIONS.md ("Jacobian aggregations (issue 18)").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError
from core.methods.base import (
    AggregationResult,
    DrawsFromGenerator,
    HeadGradient,
    JacobianAggregation,
    check_integer,
    check_num_tasks,
    check_number,
    check_task_count,
    safe_reciprocal,
    state_tensor,
)
from core.methods.projection import _SCALAR_ROWS
from core.pareto.stationarity import project_to_simplex

_FULL_MODE = frozenset({"full"})


def _combine(coefficients: Tensor, vectors: Tensor) -> Tensor:
    """`sum_i c_i v_i`, batched: `[..., K] x [..., K, n] -> [..., n]`, in the vectors' dtype.

    Coefficients too large for that dtype (a float32 DB-MTL scale `max_j ||v_j|| / ||v_i||` of
    1e40) are applied in float64 instead, where the terms themselves are representable."""
    cast = coefficients.to(dtype=vectors.dtype, device=vectors.device)
    if bool(torch.isfinite(cast).all()):
        return (cast.unsqueeze(-2) @ vectors).squeeze(-2)
    wide = coefficients.to(dtype=torch.float64, device=vectors.device)
    return (wide.unsqueeze(-2) @ vectors.to(torch.float64)).squeeze(-2).to(vectors.dtype)


def _few_two_task_float64_rows(jacobian: Tensor) -> bool:
    """Whether the K = 2 Python-float paths apply: float64 CPU Jacobians `[..., 2, n]` with at
    most `2 * _SCALAR_ROWS` rows x coordinates (float32 arithmetic is not Python's)."""
    return (
        jacobian.shape[-2] == 2
        and jacobian.dtype == torch.float64
        and jacobian.device.type == "cpu"
        and jacobian.numel() <= 4 * _SCALAR_ROWS
        and not jacobian.requires_grad
    )


def _row_norms(vectors: Tensor) -> Tensor:
    """`||v_i||` `[..., K]` in float64 on the host."""
    return torch.linalg.vector_norm(vectors, dim=-1, dtype=torch.float64).cpu()


def _optional_state(
    state: Mapping[str, Any], key: str, shape: tuple[int, ...], method: str
) -> Tensor | None:
    """A per-coordinate state tensor of the leading `shape` (its last dimension n free), or None."""
    value = state.get(key)
    if value is None:
        return None
    value = torch.as_tensor(value)
    if tuple(value.shape[:-1]) != shape:
        raise MTLInputError(
            f"{method} state {key!r} has shape {tuple(value.shape)}, expected {(*shape, 'n')}"
        )
    return value.clone()


# --------------------------------------------------------------------------------------------
# GradDrop
# --------------------------------------------------------------------------------------------


class GradDrop(DrawsFromGenerator, JacobianAggregation):
    """GradDrop, gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov,
    NeurIPS 2020, Algorithm 1 lines 10-15).

    Per coordinate, the gradient positive sign purity `P = (1 + sum_i g_i / sum_i |g_i|) / 2` in
    [0, 1] (1/2 where every `g_i` is 0); a uniform `U` in [0, 1) per coordinate; task i's mask
    `M_i = I[P > U] I[g_i > 0] + I[P < U] I[g_i < 0]`; the update
    `d = sum_i (leak + (1 - leak) M_i) g_i`. So at each coordinate either the positive or the
    negative entries are kept (the positive ones with probability P), and a coordinate where every
    task agrees in sign is kept whole. `f` of the paper is the identity (its default). Written as
    `d = leak s + (1 - leak) (I[P > U] p + I[P < U] m)`, with `p` and `m` the sums of the positive
    and of the negative entries and `s = p + m`: O(K n), no K x n mask is formed.

    Defaults: `leak = 0` (the paper's multitask setting, LibMTL's `--leak` default and TorchJD's
    `leak=None`). One leak for every task (the paper allows one per task; a per-task leak breaks
    permutation equivariance). Heads receive the plain `grad l_i` (LibMTL backpropagates each loss
    into its decoder unweighted); `head_weights` are ones.

    Engine modes: both. In representation mode (where the paper and LibMTL apply it, at the last
    shared activation layer) `J` is the gradient on the features and the masks are per entry of the
    features, i.e. per sample and feature. The paper's line 7-9 is not applied: it multiplies the
    activation gradients by `sgn(A)` and, for batch-separated activations, sums over the batch so
    that one mask per feature serves every sample (as LibMTL does); the engine hands a Jacobian
    aggregation `J` alone, not the activations. Without the batch sum, `sgn(A)` does not change
    the distribution of the update (it maps P to 1 - P where A < 0, and U to 1 - U is uniform too).
    In full mode (as TorchJD applies it to the parameters' Jacobian) the masks are per shared
    parameter entry; there the entries are the quantities updated, so no sign correction is needed.

    Randomness: `U` is drawn from `generator` (on the generator's device, in J's dtype, then moved
    to J's device), one uniform per coordinate and batch element, nothing per task: relabelling
    the tasks with the same seed gives the same update (`permutation_equivariant` holds exactly,
    not only in distribution). `generator=None` draws from the global RNG. Data-parallel runs must
    seed the generator alike on every rank.

    Diagnostics: `"conflict_fraction"` (batch shape), the fraction of coordinates where both signs
    occur.
    """

    name = "graddrop"
    paper = (
        "Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, Just Pick a Sign: Optimizing Deep Multitask "
        "Models with Gradient Sign Dropout (NeurIPS 2020)"
    )
    claims = frozenset({"permutation_equivariant"})
    random = True
    head_gradient = HeadGradient.RAW

    def __init__(self, *, leak: float = 0.0, generator: torch.Generator | None = None) -> None:
        self._use_generator(generator)
        self.leak = check_number(
            "leak (how much of each gradient always passes, in [0, 1])",
            leak,
            minimum=0.0,
            maximum=1.0,
        )

    def uniforms(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The draw `U` of one call: `shape` uniforms in [0, 1) from the generator."""
        return self._uniform(shape, dtype=dtype, device=device)

    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        if _few_two_task_float64_rows(jacobian):
            fast = self._two_task_scalars(jacobian, losses)
            if fast is not None:
                return fast
        positive = jacobian.clamp_min(0).sum(dim=-2)
        negative = jacobian.clamp_max(0).sum(dim=-2)
        magnitude = positive - negative
        nonzero = magnitude > 0
        purity = torch.where(
            nonzero, 0.5 * (1 + (positive + negative) / torch.where(nonzero, magnitude, 1.0)), 0.5
        )
        uniform = self.uniforms(tuple(purity.shape), jacobian.dtype, jacobian.device)
        zero = torch.zeros((), dtype=jacobian.dtype, device=jacobian.device)
        kept = torch.where(purity > uniform, positive, zero) + torch.where(
            purity < uniform, negative, zero
        )
        update = (
            kept if self.leak == 0.0 else self.leak * (positive + negative) + (1 - self.leak) * kept
        )
        conflict = ((positive > 0) & (negative < 0)).to(torch.float64).mean(dim=-1).cpu()
        return AggregationResult(update, torch.ones_like(losses), {"conflict_fraction": conflict})

    def _two_task_scalars(self, jacobian: Tensor, losses: Tensor) -> AggregationResult | None:
        """`_aggregate` for a few float64 CPU Jacobians `[..., 2, n]` on Python floats: the same
        IEEE operations and the same draw from the generator. None (the general path, before
        anything is drawn) where an entry is not finite."""
        width = jacobian.shape[-1]
        rows = jacobian.detach().reshape(-1, 2 * width).tolist()
        if not all(math.isfinite(value) for row in rows for value in row):
            return None
        uniforms = (
            self.uniforms((*jacobian.shape[:-2], width), jacobian.dtype, jacobian.device)
            .reshape(-1, width)
            .tolist()
        )
        leak, updates, conflicts = self.leak, [], []
        for row, draws in zip(rows, uniforms):
            update, conflicting = [], 0
            for first, second, uniform in zip(row[:width], row[width:], draws):
                positive = (first if first > 0 else 0.0) + (second if second > 0 else 0.0)
                negative = (first if first < 0 else 0.0) + (second if second < 0 else 0.0)
                magnitude = positive - negative
                purity = 0.5 * (1 + (positive + negative) / magnitude) if magnitude > 0 else 0.5
                kept = (positive if purity > uniform else 0.0) + (
                    negative if purity < uniform else 0.0
                )
                update.append(
                    kept if leak == 0.0 else leak * (positive + negative) + (1 - leak) * kept
                )
                conflicting += positive > 0 and negative < 0
            updates.append(update)
            conflicts.append(conflicting / width)
        batch_shape = jacobian.shape[:-2]
        combined = torch.tensor(updates, dtype=torch.float64).reshape(*batch_shape, width)
        conflict = torch.tensor(conflicts, dtype=torch.float64).reshape(batch_shape)
        return AggregationResult(combined, torch.ones_like(losses), {"conflict_fraction": conflict})


# --------------------------------------------------------------------------------------------
# MoCo
# --------------------------------------------------------------------------------------------


class MoCo(JacobianAggregation):
    """MoCo, stochastic multi-objective gradient correction (Fernando et al., ICLR 2023, Algorithm 1).

    Each call t = 1, 2, ... with per-task gradients `g_i` (rows of J):

        y_i <- y_i - beta_t (y_i - g_i)                         (tracking, y_i = 0 at the start)
        lambda <- Proj_simplex(lambda - gamma_t (Y Y^T + rho I) lambda)   (lambda = 1/K at the start)
        d = Y^T lambda = sum_i lambda_i y_i

    with `beta_t = beta / t^beta_sigma` and `gamma_t = gamma / t^gamma_sigma`. The y update uses
    the current gradients and the lambda update the updated Y, as in the paper and LibMTL. The
    tracked gradients `y` are state `[*batch_shape, K, n]` in J's dtype and device; lambda
    `[*batch_shape, K]` float64 on the host; `Y Y^T` is formed in J's dtype and solved in float64
    (the projection's argument shifted so that its largest entry is 0, which the projection
    ignores and which keeps it exact for large `gamma_t Y Y^T`).

    Defaults (LibMTL's `MoCo_*` flags, which follow the authors' code): `beta = 0.5`,
    `beta_sigma = 0.5`, `gamma = 0.1`, `gamma_sigma = 0.5`, `rho = 0`. `normalize_gradients=True`
    tracks `l_i g_i / ||g_i||` instead of `g_i`, as LibMTL does (0 for a zero gradient; the losses
    must then be non-negative, or the direction flips). `head_weights` are lambda (on the
    simplex); heads receive the plain `grad l_i` (LibMTL backpropagates each loss into its decoder
    unweighted).

    Deviations from LibMTL: lambda is projected onto the simplex (the paper's `Proj`), where LibMTL
    applies a softmax to `lambda - gamma_t (Y Y^T + rho I) lambda` (not a projection: it never
    reaches a face of the simplex, and at rho = 0, Y = 0 it still moves lambda); gradients are used
    as they are unless `normalize_gradients` (LibMTL always normalises, without `+ 1e-8`
    here). The paper's analysis also projects each y_i onto a ball of bounded gradients; neither
    LibMTL nor this class does. Engine mode: "full" only (LibMTL refuses `rep_grad` too).

    Measured (benchmarks/RESULTS.md §2.1): on MultiMNIST under Adam the decaying rates leave MoCo
    at Δm% 20.4 against LS's 2.7 at 20 epochs; constant rates (`beta_sigma=0, gamma_sigma=0`)
    give 5.1.

    Diagnostics: `"contribution_norms"` (`lambda_i ||y_i||`) and `"tracked_norms"` (`||y_i||`).
    """

    name = "moco"
    paper = (
        "Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, Mitigating Gradient Bias in Multi-objective Learning: "
        "A Provably Convergent Approach (ICLR 2023)"
    )
    claims = frozenset({"permutation_equivariant", "simplex_weights"})
    stateful = True
    requires_num_tasks = True
    head_gradient = HeadGradient.RAW
    engine_modes = _FULL_MODE

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize_gradients: bool = False,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "MoCo")
        self.beta = check_number(
            "beta (the tracking step, in (0, 1])", beta, minimum=0.0, strict=True, maximum=1.0
        )
        self.beta_sigma = check_number(
            "beta_sigma (the decay exponent of beta_t)", beta_sigma, minimum=0.0
        )
        self.gamma = check_number("gamma (the step on lambda)", gamma, minimum=0.0, strict=True)
        self.gamma_sigma = check_number(
            "gamma_sigma (the decay exponent of gamma_t)", gamma_sigma, minimum=0.0
        )
        self.rho = check_number("rho (the ridge on Y Y^T)", rho, minimum=0.0)
        if not isinstance(normalize_gradients, bool):
            raise InvalidHyperparameterError(
                f"normalize_gradients must be True or False, got {normalize_gradients!r}"
            )
        self.normalize_gradients = normalize_gradients
        if normalize_gradients:
            self.loss_domain = "nonnegative"
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._steps = 0
        self._tracked: Tensor | None = None
        self._lambdas = torch.full(
            (*self.batch_shape, self.num_tasks), 1.0 / self.num_tasks, dtype=torch.float64
        )

    @property
    def tracked(self) -> Tensor | None:
        """The tracked gradients `y` `[*batch_shape, K, n]` (None before the first call)."""
        return None if self._tracked is None else self._tracked.clone()

    @property
    def lambdas(self) -> Tensor:
        """The current lambda `[*batch_shape, K]` (float64)."""
        return self._lambdas.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_shape": list(self.batch_shape),
            "steps": self._steps,
            "lambdas": self._lambdas.clone(),
            "tracked": None if self._tracked is None else self._tracked.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        shape = (*self.batch_shape, self.num_tasks)
        self._steps = int(state["steps"])
        self._lambdas = state_tensor(state, "lambdas", shape, "MoCo").to(torch.float64).clone()
        self._tracked = _optional_state(state, "tracked", shape, "MoCo")
        self._width = None if self._tracked is None else self._tracked.shape[-1]
        self._pristine = self._steps == 0

    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        check_task_count(self, losses, self.num_tasks)
        self._match_jacobian(jacobian)
        if not self.normalize_gradients and _few_two_task_float64_rows(jacobian):
            fast = self._two_task_scalars(jacobian, losses)
            if fast is not None:
                return fast
        gradients = jacobian
        if self.normalize_gradients:
            norms = torch.linalg.vector_norm(jacobian, dim=-1, keepdim=True)
            gradients = jacobian * (losses.to(jacobian.dtype)[..., None] * safe_reciprocal(norms))
        tracked = (
            torch.zeros_like(jacobian) if self._tracked is None else self._tracked.to(jacobian)
        )
        steps = self._steps + 1
        beta_t = self.beta / steps**self.beta_sigma
        gamma_t = self.gamma / steps**self.gamma_sigma
        tracked = tracked - beta_t * (tracked - gradients)
        gram = (tracked @ tracked.mT).to(device="cpu", dtype=torch.float64)
        lambdas = self._lambdas
        ridge = self.rho * torch.eye(self.num_tasks, dtype=torch.float64)
        target = lambdas - gamma_t * ((gram + ridge) @ lambdas.unsqueeze(-1)).squeeze(-1)
        # the projection commutes with a common shift; shifting the largest entry to 0 keeps its
        # threshold exact when gamma_t Y Y^T is huge (1e17 - (1e17 - 1) is 0 in float64)
        lambdas = project_to_simplex(target - target.amax(dim=-1, keepdim=True))
        update = _combine(lambdas, tracked)
        tracked_norms = _row_norms(tracked)
        self._tracked, self._lambdas, self._steps = tracked, lambdas, steps
        self._used()
        diagnostics = {
            "contribution_norms": lambdas * tracked_norms,
            "tracked_norms": tracked_norms,
        }
        return AggregationResult(
            update, lambdas.to(dtype=losses.dtype, device=losses.device), diagnostics
        )

    def _two_task_scalars(self, jacobian: Tensor, losses: Tensor) -> AggregationResult | None:
        """`_aggregate` without gradient normalisation for a few float64 CPU Jacobians
        `[..., 2, n]` on Python floats: the same IEEE operations (`Y Y^T` and `sum_i lambda_i y_i`
        added term by term, as torch's matmul does on such small matrices; the simplex projection
        for K = 2), with torch's norms of the tracked gradients. None (the general path, before any
        state changes) where an entry of J or of `Y Y^T` is not finite."""
        width = jacobian.shape[-1]
        rows = jacobian.reshape(-1, 2, width).tolist()
        if not all(math.isfinite(value) for row in rows for vector in row for value in vector):
            return None
        steps = self._steps + 1
        beta_t = self.beta / steps**self.beta_sigma
        gamma_t = self.gamma / steps**self.gamma_sigma
        old = (
            [[[0.0] * width] * 2] * len(rows)
            if self._tracked is None
            else self._tracked.reshape(-1, 2, width).tolist()
        )
        tracked, targets = [], []
        for (first, second), (old_first, old_second), (lambda1, lambda2) in zip(
            rows, old, self._lambdas.reshape(-1, 2).tolist()
        ):
            y1 = [y - beta_t * (y - g) for y, g in zip(old_first, first)]
            y2 = [y - beta_t * (y - g) for y, g in zip(old_second, second)]
            g11, g12, g22 = _dot(y1, y1), _dot(y1, y2), _dot(y2, y2)
            if not (math.isfinite(g11) and math.isfinite(g12) and math.isfinite(g22)):
                return None
            g11, g22, g12 = g11 + self.rho, g22 + self.rho, g12 + 0.0
            target1 = lambda1 - gamma_t * (g11 * lambda1 + g12 * lambda2)
            target2 = lambda2 - gamma_t * (g12 * lambda1 + g22 * lambda2)
            largest = target1 if target1 > target2 else target2
            targets.append(_simplex_projection_of_two(target1 - largest, target2 - largest))
            tracked.append((y1, y2))
        updates = [
            [lambda1 * a + lambda2 * b for a, b in zip(y1, y2)]
            for (y1, y2), (lambda1, lambda2) in zip(tracked, targets)
        ]
        batch_shape = jacobian.shape[:-2]
        tracked_tensor = torch.tensor(tracked, dtype=torch.float64).reshape(jacobian.shape)
        lambdas = torch.tensor(targets, dtype=torch.float64).reshape(*batch_shape, 2)
        tracked_norms = _row_norms(tracked_tensor)
        self._tracked, self._lambdas, self._steps = tracked_tensor, lambdas, steps
        self._used()
        diagnostics = {
            "contribution_norms": lambdas * tracked_norms,
            "tracked_norms": tracked_norms,
        }
        update = torch.tensor(updates, dtype=torch.float64).reshape(*batch_shape, width)
        return AggregationResult(update, lambdas.to(dtype=losses.dtype), diagnostics)


def _dot(left: list[float], right: list[float]) -> float:
    """`sum_k left_k right_k`, added one term at a time from 0."""
    total = 0.0
    for a, b in zip(left, right):
        total += a * b
    return total


def _simplex_projection_of_two(first: float, second: float) -> tuple[float, float]:
    """`project_to_simplex` of one pair of finite floats, operation for operation."""
    high, low = (first, second) if first >= second else (second, first)
    cumulative_high, cumulative_low = high - 1, (high + low) - 1
    support = (high - cumulative_high / 1 > 0) + (low - cumulative_low / 2 > 0)
    threshold = cumulative_low / 2 if support == 2 else cumulative_high / 1
    first, second = first - threshold, second - threshold
    return (first if first > 0 else 0.0), (second if second > 0 else 0.0)


# --------------------------------------------------------------------------------------------
# DB-MTL
# --------------------------------------------------------------------------------------------


class DBMTL(JacobianAggregation):
    """DB-MTL, dual balancing (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, arXiv:2308.12029).

    Loss-scale balancing: each task is trained on `log l_i`, whose gradient is `g_i / l_i`.
    Gradient-magnitude balancing: a moving average of each task's log-loss gradient, each rescaled
    to the largest average's norm, summed. Each call t = 1, 2, ...:

        m_i <- (1 - beta_t) g_i / l_i + beta_t m_i       (m_i = 0 at the start; beta_t = beta / t^beta_sigma)
        d = sum_i (max_j ||m_j|| / ||m_i||) m_i

    so every task contributes a term of the same norm `max_j ||m_j||` (a zero average contributes
    0). Heads receive the gradient of `sum_i log l_i`: `head_weights` are `1 / l_i`. The averages
    are state `[*batch_shape, K, n]` in J's dtype and device.

    Claims: the update is unchanged by `l_i -> a_i l_i` (a_i > 0 constant: `g_i / l_i` is), and so
    are the heads' gradients; not by other monotone transforms (the common scale
    `max_j h_j'(l_j) ||g_j|| / h_j(l_j)` changes).

    Defaults: LibMTL's `DB_MTL` (by the paper's authors): `beta = 0.9`, `beta_sigma = 0` (its
    `--DB_beta`, `--DB_beta_sigma` defaults), the average initialised at 0 without bias
    correction (so the first update is `1 - beta` times the unaveraged one). Deviations: the
    losses must be positive (`log l_i` without LibMTL's `+ 1e-8`), and a zero average gets scale 0
    (LibMTL divides by `||m_i|| + 1e-8`), which makes the rescaling invariance exact. The DiBS-MTL
    repository's `DBMTL` differs (docs/DECISIONS.md). Engine mode: "full" only (LibMTL refuses
    `rep_grad`).

    Measured (benchmarks/RESULTS.md §2.1): on MultiMNIST under Adam the constant average
    (`beta_sigma = 0`) makes the accuracies oscillate (Δm% 16.3 against LS's 2.7); with
    `beta_sigma = 0.5` DB-MTL reaches 2.0, ahead of LS on all 3 seeds.

    Diagnostics: `"contribution_norms"` (`max_j ||m_j||`, or 0 for a zero average) and
    `"average_norms"` (`||m_i||`).
    """

    name = "db_mtl"
    paper = (
        "Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, Dual-Balancing for Multi-Task Learning "
        "(arXiv:2308.12029, 2023)"
    )
    claims = frozenset({"rescaling_invariant", "permutation_equivariant"})
    loss_domain = "positive"
    loss_domain_advice = (
        "DB-MTL trains on log l_i; shift the losses (e.g. add a constant) or choose another method"
    )
    stateful = True
    requires_num_tasks = True
    engine_modes = _FULL_MODE

    def __init__(
        self, num_tasks: int | None = None, *, beta: float = 0.9, beta_sigma: float = 0.0
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "DBMTL")
        self.beta = check_number(
            "beta (the weight of the old average, in [0, 1))", beta, minimum=0.0
        )
        if self.beta >= 1:
            raise InvalidHyperparameterError(
                f"beta (the weight of the old average) must be < 1, got {beta!r}"
            )
        self.beta_sigma = check_number(
            "beta_sigma (the decay exponent of beta_t)", beta_sigma, minimum=0.0
        )
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._steps = 0
        self._averages: Tensor | None = None

    @property
    def averages(self) -> Tensor | None:
        """The moving averages `m` `[*batch_shape, K, n]` (None before the first call)."""
        return None if self._averages is None else self._averages.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_shape": list(self.batch_shape),
            "steps": self._steps,
            "averages": None if self._averages is None else self._averages.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        self._steps = int(state["steps"])
        self._averages = _optional_state(
            state, "averages", (*self.batch_shape, self.num_tasks), "DBMTL"
        )
        self._width = None if self._averages is None else self._averages.shape[-1]
        self._pristine = self._steps == 0

    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        check_task_count(self, losses, self.num_tasks)
        self._match_jacobian(jacobian)
        gradients = jacobian / losses.to(jacobian.dtype)[..., None]  # grad log l_i
        averages = (
            torch.zeros_like(jacobian) if self._averages is None else self._averages.to(jacobian)
        )
        steps = self._steps + 1
        beta_t = self.beta / steps**self.beta_sigma
        averages = gradients + beta_t * (averages - gradients)
        norms = _row_norms(averages)
        largest = norms.amax(dim=-1, keepdim=True)
        scales = largest * safe_reciprocal(norms)
        update = _combine(scales, averages)
        self._averages, self._steps = averages, steps
        self._used()
        diagnostics = {"contribution_norms": scales * norms, "average_norms": norms}
        return AggregationResult(update, 1.0 / losses, diagnostics)


# --------------------------------------------------------------------------------------------
# ExcessMTL
# --------------------------------------------------------------------------------------------

HESSIAN_EPSILON = 1e-7
"""Added to the accumulated squared gradients before the square root (ExcessMTL's reference code,
LibMTL and TorchJD alike)."""


class ExcessMTL(JacobianAggregation):
    """ExcessMTL, robust multi-task learning with excess risks (He et al., ICML 2024, eqs. 6-9).

    Each call accumulates the squared gradients `S_i <- S_i + g_i^2` (elementwise; an AdaGrad-like
    diagonal Hessian estimate `H_i = diag(sqrt(S_i + 1e-7))`, eq. 7) and estimates task i's excess
    risk by the second-order expansion `E_i = g_i^T H_i^{-1} g_i = sum_j g_ij^2 / sqrt(S_ij + 1e-7)`
    (eq. 6). After `n_warmup_steps` calls, which only collect statistics (uniform weights), the
    baseline `E_i^0` is the mean excess risk over the warm-up (or, with no warm-up, the first
    call's), and every call takes an exponentiated-gradient step on the simplex (eq. 9, with the
    scale processing of Section 3.2):

        alpha_i <- alpha_i exp(eta E_i / E_i^0) / sum_j alpha_j exp(eta E_j / E_j^0),   alpha = 1/K at the start,

    done in log space (a large ratio saturates instead of overflowing). The update is
    `d = sum_i alpha_i g_i`, and heads receive `alpha_i grad l_i` (the reference backpropagates
    the weighted loss): `head_weights` are alpha. At the baseline call `E_i / E_i^0 = 1` for every
    task, so the weights do not move there (as the reference, where the first call only records
    the baseline). State: `S` `[*batch_shape, K, n]` in J's dtype and device; alpha, the baseline
    and the warm-up sums `[*batch_shape, K]` in float64 on the host.

    Defaults: `robust_step_size` (eta) `= 1.0` and `n_warmup_steps = 0`, as TorchJD 0.18 (LibMTL's
    `--robust_step_size` default is 1e-2; the paper's Appendix C.1 collects statistics for three
    epochs). Deviations: the weights sum to 1 (the paper, TorchJD; the reference and LibMTL scale
    them to sum K, which multiplies the update by K); the ratio is taken without `+ 1e-7` (TorchJD
    adds it, the reference has none), and a task whose baseline excess risk is 0 (a zero gradient
    so far) takes its first nonzero excess risk as its baseline, with ratio 1 until then (the
    reference divides by zero; TorchJD's `+ 1e-7` gives it ratios of order 1e7). TorchJD with
    `n_warmup_steps=0` also steps with the raw (unnormalised) `E_i` at the baseline call; this
    class follows the reference and the paper there (docs/DECISIONS.md has the comparison). Engine
    mode: "full" only (the reference's representation mode sums the per-sample feature gradients
    over the batch, which needs the features' layout).

    Measured (benchmarks/RESULTS.md §2.1): on MultiMNIST, eta = 1 takes the weights to a vertex
    within a few epochs and the other task does not recover within 20 epochs (Δm% 29.6 against
    LS's 2.7); LibMTL's eta = 0.01 gives 3.7.

    Diagnostics: `"excess_risks"` (`E_i`), `"contribution_norms"` (`alpha_i ||g_i||`).
    """

    name = "excess_mtl"
    paper = "He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao, Robust Multi-Task Learning with Excess Risks (ICML 2024)"
    claims = frozenset({"permutation_equivariant", "simplex_weights"})
    stateful = True
    requires_num_tasks = True
    engine_modes = _FULL_MODE

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        robust_step_size: float = 1.0,
        n_warmup_steps: int = 0,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "ExcessMTL")
        self.robust_step_size = check_number(
            "robust_step_size (the exponentiated-gradient step eta)",
            robust_step_size,
            minimum=0.0,
            strict=True,
        )
        self.n_warmup_steps = check_integer("n_warmup_steps", n_warmup_steps, minimum=0)
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        shape = (*self.batch_shape, self.num_tasks)
        self._steps = 0
        self._squares: Tensor | None = None
        self._log_weights = torch.full(shape, -math.log(self.num_tasks), dtype=torch.float64)
        self._baseline = torch.zeros(shape, dtype=torch.float64)
        self._warmup_sum = torch.zeros(shape, dtype=torch.float64)

    @property
    def current_weights(self) -> Tensor:
        """alpha `[*batch_shape, K]` (float64), the weights of the latest call."""
        return self._log_weights.exp()

    @property
    def baseline(self) -> Tensor:
        """The baseline excess risks `E^0` `[*batch_shape, K]` (0 where not yet set)."""
        return self._baseline.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_shape": list(self.batch_shape),
            "steps": self._steps,
            "log_weights": self._log_weights.clone(),
            "baseline": self._baseline.clone(),
            "warmup_sum": self._warmup_sum.clone(),
            "squares": None if self._squares is None else self._squares.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        shape = (*self.batch_shape, self.num_tasks)
        self._steps = int(state["steps"])
        for key in ("log_weights", "baseline", "warmup_sum"):
            setattr(
                self,
                f"_{key}",
                state_tensor(state, key, shape, "ExcessMTL").to(torch.float64).clone(),
            )
        self._squares = _optional_state(state, "squares", shape, "ExcessMTL")
        self._width = None if self._squares is None else self._squares.shape[-1]
        self._pristine = self._steps == 0

    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        check_task_count(self, losses, self.num_tasks)
        self._match_jacobian(jacobian)
        squared = jacobian.to(
            torch.float64
        ).square()  # float64: float32 gradients of 1e20 square beyond float32's range
        squares = squared if self._squares is None else self._squares.to(squared) + squared
        excess = (squared / (squares + HESSIAN_EPSILON).sqrt()).sum(dim=-1).cpu()
        steps = self._steps + 1
        log_weights, baseline, warmup_sum = self._log_weights, self._baseline, self._warmup_sum
        if steps <= self.n_warmup_steps:
            warmup_sum = warmup_sum + excess
        else:
            if steps == self.n_warmup_steps + 1 and self.n_warmup_steps > 0:
                baseline = warmup_sum / self.n_warmup_steps
            baseline = torch.where(baseline > 0, baseline, excess)
            ratio = torch.where(baseline > 0, excess * safe_reciprocal(baseline), 1.0)
            log_weights = torch.log_softmax(log_weights + self.robust_step_size * ratio, dim=-1)
        weights = log_weights.exp()
        update = _combine(weights, jacobian)
        self._squares, self._steps = squares, steps
        self._log_weights, self._baseline, self._warmup_sum = log_weights, baseline, warmup_sum
        self._used()
        diagnostics = {"excess_risks": excess, "contribution_norms": weights * _row_norms(jacobian)}
        return AggregationResult(
            update, weights.to(dtype=losses.dtype, device=losses.device), diagnostics
        )
