"""Preference scalarisations as loss weightings: Tchebycheff, PBI, smooth Tchebycheff (STCH), GLS.

Each method is a scalarisation `S(l)` of the K losses; its weights are the gradient
`w = dS/dl` at the current losses (a subgradient where S is not differentiable), so that the
engine's `sum_i w_i grad l_i` is the gradient of `S(l(theta))`: one backward pass, as with any
loss weighting. All are stateless and batched over `[..., K]`; the arithmetic runs in float64
and the weights come back in the losses' dtype and device.

Preferences: `preference=None` is the uniform `p_i = 1/K` (on the simplex, as the STCH paper's
and LibMOON's preferences); K non-negative numbers (not all zero) are used as given. The ideal
point `ideal` (z) is a number or K numbers, 0 by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError
from core.methods.base import LossWeighting, WeightsResult, check_number

_F64 = torch.float64


def _vector(
    values: float | Sequence[float] | None, name: str, /, *, nonnegative: bool
) -> tuple[float, ...] | float | None:
    """None, one finite number (`ideal` only) or a non-empty list of finite numbers."""
    if values is None:
        return None
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        if nonnegative:
            raise InvalidHyperparameterError(
                f"{name} must be a list of K numbers (one per task) or None, got {values!r}"
            )
        return check_number(name, values)
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor)):
        raise InvalidHyperparameterError(f"{name} must be a list of K numbers, got {values!r}")
    items = values.tolist() if isinstance(values, Tensor) else list(values)
    if not items:
        raise InvalidHyperparameterError(f"{name} must not be empty")
    numbers = tuple(
        check_number(f"{name}[{index}]", item, minimum=0.0 if nonnegative else None)
        for index, item in enumerate(items)
    )
    if nonnegative and not any(value > 0 for value in numbers):
        raise InvalidHyperparameterError(
            f"{name} must have a positive entry, got {list(numbers)!r}"
        )
    return numbers


def _as_tensor(
    values: tuple[float, ...] | float | None,
    default: float | None,
    like: Tensor,
    name: str,
    method: str,
) -> Tensor:
    """`values` as a float64 tensor broadcastable to `like` `[..., K]` (None: `default`, or 1/K)."""
    num_tasks = like.shape[-1]
    if values is None:
        return torch.full(
            (num_tasks,),
            1.0 / num_tasks if default is None else default,
            dtype=_F64,
            device=like.device,
        )
    if isinstance(values, float):
        return torch.full((num_tasks,), values, dtype=_F64, device=like.device)
    if len(values) != num_tasks:
        raise MTLInputError(
            f"{method} has {len(values)} {name} entries but there are {num_tasks} losses"
        )
    return torch.tensor(values, dtype=_F64, device=like.device)


def _uniform(
    preference: tuple[float, ...] | float | None, ideal: tuple[float, ...] | float | None
) -> bool:
    """Whether relabelling the tasks leaves the preference and the ideal point unchanged."""
    equal_preference = (
        preference is None or isinstance(preference, float) or len(set(preference)) == 1
    )
    equal_ideal = ideal is None or isinstance(ideal, float) or len(set(ideal)) == 1
    return equal_preference and equal_ideal


class Tchebycheff(LossWeighting):
    """Weighted Tchebycheff scalarisation `S(l) = max_i p_i (l_i - z_i)` (Bowman 1976; Miettinen
    1999, §3.4; the Tchebycheff decomposition of MOEA/D, Zhang & Li 2007).

    Its minimisers cover every Pareto-optimal point (weakly Pareto-optimal ones included) as p
    ranges over the simplex, convex front or not. Weights: the subgradient `w_i = p_i / |M|` for
    i in the set M of maximisers of `p_i (l_i - z_i)`, 0 elsewhere. Tie rule: where several
    terms attain the maximum (exactly, in float64), the weight is shared evenly between them,
    the centre of the subdifferential `conv{p_i e_i : i in M}`; it is the limit of the smooth
    Tchebycheff weights as mu -> 0 and keeps the method permutation equivariant (an argmax by
    index, as LibMOON's `tche`, is not).

    Defaults: `preference=None` (p = 1/K), `ideal=0` (z = 0; the ideal point of the losses when
    they are non-negative). Claims: with equal preferences and ideal entries, relabelling the
    tasks relabels the weights; nothing else (one task gets all the weight, so the update
    conflicts with the others, and rescaling a loss moves the maximiser).

    LibMOON's `tche` returns the unweighted `l_i` at the argmax, whose gradient is `e_i` instead
    of `p_i e_i` (the same maximiser, a step larger by `1/p_i`); MOEA/D's is the weighted form.
    Diagnostics: `"value"`, the scalarisation `[...]` (float64).
    """

    name = "tchebycheff"
    paper = "Weighted Tchebycheff scalarisation (Bowman 1976; Miettinen 1999; MOEA/D, Zhang & Li, IEEE TEVC 2007)"
    claims = frozenset({"permutation_equivariant"})

    def __init__(
        self, *, preference: Sequence[float] | None = None, ideal: float | Sequence[float] = 0.0
    ) -> None:
        self.preference = _vector(preference, "preference", nonnegative=True)
        self.ideal = _vector(ideal, "ideal", nonnegative=False)
        self.claims = (
            frozenset({"permutation_equivariant"})
            if _uniform(self.preference, self.ideal)
            else frozenset()
        )

    def _weights(self, losses: Tensor, /) -> WeightsResult:
        values = losses.detach().to(_F64)
        p = _as_tensor(self.preference, None, values, "preference", "Tchebycheff")
        z = _as_tensor(self.ideal, 0.0, values, "ideal", "Tchebycheff")
        terms = p * (values - z)
        top = terms.amax(dim=-1, keepdim=True)
        maximisers = (terms == top).to(_F64)
        weights = p * maximisers / maximisers.sum(dim=-1, keepdim=True)
        return WeightsResult(weights.to(losses.dtype), {"value": top[..., 0]})


class SmoothTchebycheff(LossWeighting):
    """Smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Liu, Wang, Zhang, "Smooth Tchebycheff
    Scalarization for Multi-Objective Optimization", ICML 2024, eq. 9):

        S(l) = mu log sum_i exp(p_i (l_i - z_i) / mu),   w_i = dS/dl_i = p_i softmax(p (l - z) / mu)_i,

    computed with the max subtracted (the paper's App. B.1). As mu -> 0 it tends to the
    Tchebycheff scalarisation and its weights to `Tchebycheff`'s (ties shared evenly); for
    mu > 0 it is smooth and every minimiser is weakly Pareto optimal (paper, Thm. 3.3).

    `log_losses=True` applies it to `log l_i` instead (`w_i = p_i softmax(p (log l - z) / mu)_i
    / l_i`; positive losses), the form of the authors' MTL code (Xi-L/STCH `STCH_MTL`, and
    LibMTL's copy), which after a warm-up of `STCH_warmup_epoch = 4` epochs of `sum_i log l_i`
    minimises `K mu logsumexp(log(l / n) / mu)` with `n` the mean losses of the warm-up's last
    epoch and mu = 1 (`--STCH_mu`): that is `log_losses=True, mu=1, preference=[1, ..., 1],
    ideal=[log n_1, ..., log n_K]`, times K. The warm-up and the nadir estimate are not
    reproduced here (this method is stateless): pass the estimate as `ideal`.

    Defaults: p = 1/K, z = 0, `mu = 0.1` (LibMOON's `soft_tche`, on raw losses as here; the paper
    evaluates mu in {0.01, 0.1, 0.5, 1} and finds a small mu works well; its Pareto set learning
    code uses 0.01 on normalised objectives, its MTL code 1 on log losses). Claims: permutation
    equivariant with equal preferences and ideal entries; not rescaling or monotone invariant,
    not non-conflicting. Diagnostics: `"value"`, S `[...]` (float64).
    """

    name = "stch"
    paper = "Lin, Zhang, Yang, Liu, Wang, Zhang, Smooth Tchebycheff Scalarization for Multi-Objective Optimization (ICML 2024)"
    claims = frozenset({"permutation_equivariant"})

    def __init__(
        self,
        *,
        preference: Sequence[float] | None = None,
        ideal: float | Sequence[float] = 0.0,
        mu: float = 0.1,
        log_losses: bool = False,
    ) -> None:
        self.preference = _vector(preference, "preference", nonnegative=True)
        self.ideal = _vector(ideal, "ideal", nonnegative=False)
        self.mu = check_number("mu", mu, minimum=0.0, strict=True)
        if not isinstance(log_losses, bool):
            raise InvalidHyperparameterError(
                f"log_losses must be true or false, got {log_losses!r}"
            )
        self.log_losses = log_losses
        if log_losses:
            self.loss_domain = "positive"
        self.claims = (
            frozenset({"permutation_equivariant"})
            if _uniform(self.preference, self.ideal)
            else frozenset()
        )

    def _weights(self, losses: Tensor, /) -> WeightsResult:
        values = losses.detach().to(_F64)
        p = _as_tensor(self.preference, None, values, "preference", "SmoothTchebycheff")
        z = _as_tensor(self.ideal, 0.0, values, "ideal", "SmoothTchebycheff")
        inputs = torch.log(values) if self.log_losses else values
        terms = p * (inputs - z)
        top = terms.amax(dim=-1, keepdim=True)
        scaled = (terms - top) / self.mu
        shares = torch.softmax(scaled, dim=-1)
        weights = p * shares
        if self.log_losses:
            weights = weights / values
        value = top[..., 0] + self.mu * torch.logsumexp(scaled, dim=-1)
        return WeightsResult(weights.to(losses.dtype), {"value": value})


class PenaltyBoundaryIntersection(LossWeighting):
    """Penalty-based boundary intersection, PBI (Zhang & Li, "MOEA/D: A Multiobjective
    Evolutionary Algorithm Based on Decomposition", IEEE TEVC 2007, §II-C):

        S(l) = d_1 + theta d_2,   d_1 = (l - z) . u,   d_2 = ||(l - z) - d_1 u||,   u = p / ||p||,

    the distance along the preference direction plus theta times the distance to its ray.
    Weights: `w = u + theta v / ||v||` with `v = (l - z) - d_1 u` (the gradient; `v` is orthogonal
    to u). On the ray (`||v|| <= 8 K eps ||l - z||`, rounding included) d_2 is not
    differentiable; the subgradient taken there is `u` (d_2's part 0, its smallest subgradient).
    Weights can be negative: off the ray PBI raises the losses that lie below it.

    `d_1` is signed (as LibMOON's gradient-based `pbi` and TorchJD's `PBI`; MOEA/D writes
    `|(l - z) . u|`, the same for l >= z). Defaults: `theta = 5` (MOEA/D's experiments, and
    LibMOON's PBI metric; LibMOON's gradient-based `pbi` defaults to 1), p = 1/K (the uniform
    direction), z = 0. TorchJD's `PBI` adds 1e-12 under the square root of d_2 (its gradient
    is 0 on the ray too). Claims: permutation equivariant with equal preferences and ideal
    entries. Diagnostics: `"value"`, S `[...]` (float64).

    With two tasks and p uniform the weights off the ray are `(1 +- theta) / sqrt 2`: theta > 1
    ascends the smaller loss. On MultiMNIST (benchmarks/RESULTS.md §2.1) theta = 5 gives Δm%
    37.2 against LS's 2.7, theta = 1 gives 7.9 and theta = 0.5 gives 3.9.
    """

    name = "pbi"
    paper = "Zhang, Li, MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition (IEEE TEVC 2007), PBI"
    claims = frozenset({"permutation_equivariant"})

    def __init__(
        self,
        *,
        preference: Sequence[float] | None = None,
        ideal: float | Sequence[float] = 0.0,
        theta: float = 5.0,
    ) -> None:
        self.preference = _vector(preference, "preference", nonnegative=True)
        self.ideal = _vector(ideal, "ideal", nonnegative=False)
        self.theta = check_number("theta", theta, minimum=0.0)
        self.claims = (
            frozenset({"permutation_equivariant"})
            if _uniform(self.preference, self.ideal)
            else frozenset()
        )

    def _weights(self, losses: Tensor, /) -> WeightsResult:
        values = losses.detach().to(_F64)
        p = _as_tensor(self.preference, None, values, "preference", "PenaltyBoundaryIntersection")
        z = _as_tensor(self.ideal, 0.0, values, "ideal", "PenaltyBoundaryIntersection")
        direction = p / p.norm()
        shifted = values - z
        along = (shifted * direction).sum(dim=-1, keepdim=True)
        off = shifted - along * direction
        distance = off.norm(dim=-1, keepdim=True)
        floor = 8 * values.shape[-1] * torch.finfo(_F64).eps * shifted.norm(dim=-1, keepdim=True)
        on_ray = distance <= floor
        unit_off = torch.where(on_ray, 0.0, off / torch.where(on_ray, 1.0, distance))
        weights = direction + self.theta * unit_off
        value = along[..., 0] + self.theta * distance[..., 0]
        return WeightsResult(weights.to(losses.dtype), {"value": value})


class GeometricLossStrategy(LossWeighting):
    """Geometric loss strategy, GLS (Chennupati, Sistu, Yogamani, Rawashdeh, "MultiNet++:
    Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
    CVPR Workshops 2019): minimise the geometric mean of the losses,

        S(l) = (prod_i l_i)^(1/K),   w_i = dS/dl_i = S / (K l_i),

    computed as `exp(mean_j log l_j - log l_i) / K` in float64 (no overflow of the product).
    Positive losses only. No hyperparameters.

    Claims: permutation equivariant. Not `rescaling_invariant`: with `l_i -> a_i l_i` the update
    `sum_i w_i g_i = (S / K) sum_i g_i / l_i` keeps its direction (that of the scale-invariant
    log sum) but is multiplied by `(prod_i a_i)^(1/K)`, and the claim is about the update itself.
    LibMTL's `GLS` backpropagates the same S but reports `l_i / (K prod_j l_j)` as its weights
    (for logging only; not the gradient). Diagnostics: `"value"`, S `[...]` (float64).
    """

    name = "gls"
    paper = "Chennupati, Sistu, Yogamani, Rawashdeh, MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning (CVPRW 2019)"
    claims = frozenset({"permutation_equivariant"})
    loss_domain = "positive"
    loss_domain_advice = (
        "GLS takes the geometric mean (logs) of the losses: shift them to be positive"
    )

    def _weights(self, losses: Tensor, /) -> WeightsResult:
        logs = torch.log(losses.detach().to(_F64))
        mean = logs.mean(dim=-1, keepdim=True)
        weights = torch.exp(mean - logs) / losses.shape[-1]
        cast = weights.to(losses.dtype)
        if not bool(torch.isfinite(cast).all()):  # finite in float64, beyond the losses' dtype
            raise MTLInputError(
                f"GLS weights reach {float(weights.max()):.3g}, beyond the range of {losses.dtype}: the losses differ by a "
                f"factor of {float(torch.exp(logs.max() - logs.min())):.3g}; use float64 losses or rescale them"
            )
        return WeightsResult(cast, {"value": torch.exp(mean[..., 0])})
