"""The DiBS bargaining theorems on random strongly convex, smooth problems (DiBS paper, Thms 1-2).

DiBS (Gupta, Murthy et al., NeurIPS 2025, arXiv:2505.14817) iterates, with preferred states
`x*_i in argmin l_i` and unit gradients `u_i = grad l_i / ||grad l_i||` (0 where the gradient is 0),

    x_{k+1} = x_k - alpha_k D(x_k),      D(x) = sum_i ||x - x*_i|| u_i(x).

Checked here on `toy_problems.ConvexQuadratic` problems (`l_i = 1/2 (x - c_i)^T A_i (x - c_i)`,
each `mu_i`-strongly convex and `L_i`-smooth, preferred states the exact minimisers `c_i`, S = R^n
so the Pareto set is interior), several (n, K), float64, everything batched over problems and
starts, with the Robbins-Monro schedule `alpha_k = a tau^p / (k + tau)^p`, p = 3/4, tau = 100
(`sum alpha_k = inf`, `sum alpha_k^2 < inf`), `a = 1 / max_problems sum_i (1 + L_i/mu_i)`; each
term `||y|| A y / ||A y||` of D is (1 + L/mu)-Lipschitz, so `a` is 1/Lip(D). A finite run cannot
tell a Robbins-Monro schedule from any other; the schedule has the theorem's form, nothing more.

(a) **Thm 1.1, fixed points are Pareto stationary.** Quantitatively, for every x with some
    `g_i != 0`, the simplex weights `beta_i ∝ d_i / ||g_i||` (`d_i = ||x - x*_i||`) give
    `||sum_i beta_i g_i|| = ||D(x)|| / sum_j d_j/||g_j||`, so the min-norm stationarity residual is
    at most that bound: D = 0 forces residual 0 (and at x = x*_i, g_i = 0 is stationary anyway).
    Checked: the bound along every DiBS trajectory; fixed points found by running DiBS and then
    Newton on D = 0 (from the DiBS limits and, to catch fixed points DiBS does not reach, damped
    Newton from random starts) have `||D|| ~ 0`, a vanishing certificate residual, a vanishing
    library residual (`core.stationarity`) and, when K <= n, min-norm weights equal to `beta`.
    The converse is not claimed and is false: most Pareto-stationary points `x(w)` are not DiBS
    fixed points (`D(x(w)) != 0`), whereas for K = 2 every one of them is a fixed point of the
    naive normalised sum (`u_1 = -u_2` on the whole Pareto set).
(b) **Thm 1.4, global convergence.** From random starts (radii 0.1 to 30 around the origin, the
    centres lie in [-1, 1]^n) every run ends at a point whose stationarity residual (relative to
    `max_i ||g_i||`) is ~0, within ~0 of the Pareto point `x(w)` of its min-norm weights, and at
    the Newton-polished fixed point. Whether all starts of one problem share the limit (unique
    fixed point) is reported, not claimed.
(c) **Thm 2.3, symmetry.** Relabelling the tasks (permuting losses and preferred states) leaves
    every iterate unchanged up to summation order; on problems symmetric under a reflection R that
    swaps tasks 1 and 2 (`l(Rx) = l(x)` with tasks 1, 2 swapped, a third task, if any, mapped to
    itself) the trajectory from `R x_0` is `R` times the one from `x_0`, and every DiBS limit lies
    on the symmetry axis `v . x = 0`. Contrast (shows the axis test can fail): the naive
    normalised sum with the same steps stalls at Pareto points off the axis when K = 2.

What DiBS paper Example 2 (`l1 = x^2, l2 = (x-1)^2`, module `dibs_fairness`) means for 1-step
DiBS-MTL: its update is `eps sum_i u_i`, the naive normalised sum, which is exactly zero on the
whole Pareto set [0, 1], so it stops at once wherever it meets that set; it keeps DiBS's
"fixed points are Pareto stationary" guarantee but not DiBS's convergence to the fair point 1/2.
The theorems checked here are about DiBS itself (true preferred states, many steps), not 1-step DiBS-MTL.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

import core
from core.dibs import StepSchedule
from proofs_numeric.claim import ClaimResult, single_thread
from toy_problems import ConvexQuadratic

NAME = "dibs_theorems"
STATEMENT = (
    "DiBS on mu-strongly convex, L-smooth quadratics with exact preferred states and Robbins-Monro steps "
    "(sum alpha = inf, sum alpha^2 < inf): (a) its fixed points are Pareto stationary (the converse is false); "
    "(b) from every random start it converges to a Pareto-stationary point; (c) relabelling the tasks changes "
    "no iterate, and on reflection-symmetric problems the limit lies on the symmetry axis."
)

# ---- pass criteria (all dimensionless; see `run` for what each is measured on) ----------------
FIELD_TOLERANCE = 1e-12
"""Fixed points: `||D(x)|| / sum_i d_i` after the Newton polish (a found fixed point)."""
FIXED_POINT_RESIDUAL_TOLERANCE = 1e-10
"""Fixed points: certificate residual `||sum_i beta_i g_i|| / max_i ||g_i||`, beta_i ∝ d_i/||g_i||."""
LIBRARY_RESIDUAL_TOLERANCE = 1e-6
"""Fixed points: `core.stationarity` residual / max_i ||g_i|| (a Gramian residual resolves ~1e-8)."""
WEIGHT_TOLERANCE = 1e-6
"""Fixed points with K <= n: `max_i |a_i - beta_i|` between min-norm weights and beta."""
CERTIFICATE_SLACK = 1e-12
"""Along trajectories: `||sum_i a_i g_i|| - ||D|| / sum_j d_j/||g_j||` (a: min-norm weights) must be
<= this times max_i ||g_i|| (the inequality is exact; this is rounding)."""
CONVERSE_MIN_FIELD = 1e-2
"""Converse: per problem, the largest `||D(x(w))|| / sum_i d_i` over sampled Pareto points must exceed this."""
NAIVE_PARETO_FIELD_TOLERANCE = 1e-10
"""Converse contrast, K = 2: `||sum_i u_i(x(w))||` on sampled Pareto points must be at most this."""
CONVERGENCE_RESIDUAL_TOLERANCE = 1e-7
"""Global convergence: final `||sum_i a_i g_i|| / max_i ||g_i||` with the min-norm weights a."""
PARETO_DISTANCE_TOLERANCE = 1e-7
"""Global convergence: final `||x - x(a)||` (problems have centres in [-1, 1]^n)."""
LIMIT_TOLERANCE = 1e-6
"""Global convergence: distance from the last DiBS iterate to its Newton-polished fixed point."""
PERMUTATION_TOLERANCE = 1e-12
"""Symmetry: max |iterate difference| / (1 + max |iterate|) between relabelled runs."""
REFLECTION_TOLERANCE = 1e-12
"""Symmetry: max ||x'_k - R x_k|| / (1 + max ||x_k||) for the runs from x_0 and R x_0."""
AXIS_TOLERANCE = 1e-7
"""Symmetry: the largest |v . x_limit| of the DiBS limits on the symmetric problems."""
NAIVE_AXIS_MIN = 1e-2
"""Contrast: the naive normalised sum (K = 2) must leave some limit at |v . x| above this."""

TAU, POWER = 100.0, 0.75
QUICK = {
    "configs": [(2, 2), (3, 3), (5, 2), (8, 4), (2, 3)],
    "problems": 8,
    "starts": 5,
    "steps": 2000,
    "newton_starts": 10,
    "pareto_samples": 64,
    "symmetric_starts": 8,
    "symmetric_configs": [(2, 2), (4, 3)],
}
FULL = {
    "configs": [(2, 2), (3, 3), (5, 2), (8, 4), (2, 3), (4, 6), (10, 3)],
    "problems": 20,
    "starts": 5,
    "steps": 6000,
    "newton_starts": 40,
    "pareto_samples": 256,
    "symmetric_starts": 32,
    "symmetric_configs": [(2, 2), (3, 2), (6, 2), (2, 3), (4, 3)],
}


class Objectives(Protocol):
    """A batched objective `x [..., n] -> [..., K]` with its values and per-task gradients
    `values_and_jacobian(x)` (every toy problem, `StackedQuadratics`)."""

    def __call__(self, x: Tensor, /) -> Tensor: ...

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]: ...


# ---- problems --------------------------------------------------------------------------------


class StackedQuadratics:
    """P quadratics of equal (n, K) as one batched objective `x [..., P, S, n] -> [..., P, S, K]`, with
    the centres `[P, K, n]` (the preferred states) and curvatures `[P, K, n, n]`.

    `values_and_jacobian` gives the gradients `(x - c_i)^T A_i` in closed form, bit for bit autograd's:
    autograd adds `(A_i^T (x - c_i)) / 2` and `((x - c_i)^T A_i) / 2`, which are equal (A_i is exactly
    symmetric, and these tiny matrix products sum their n terms in one order), so their sum is exact
    (tests/proofs_numeric/test_claim_dibs_theorems.py checks every size of the claim)."""

    def __init__(self, problems: list[ConvexQuadratic], /) -> None:
        self.centers = torch.stack([p.centers for p in problems])
        self.curvatures = torch.stack([p.curvatures for p in problems])

    def __call__(self, x: Tensor, /) -> Tensor:
        return self.values_and_jacobian(x)[0]

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., P, S, K]` and gradients `[..., P, S, K, n]`; with a graph to `x` where `x`
        requires grad (the values then are those autograd differentiates for Newton's method)."""
        offsets = x[..., None, :] - self.centers[:, None]  # [..., P, S, K, n]
        rows = offsets[..., None, :] @ self.curvatures[:, None]  # [..., P, S, K, 1, n]
        return 0.5 * (rows @ offsets[..., :, None])[..., 0, 0], rows[..., 0, :]


def reflection_symmetric_problem(
    n_var: int, n_obj: int, /, *, seed: int, condition: float = 10.0
) -> tuple[ConvexQuadratic, Tensor]:
    """A quadratic K = 2 or 3 problem with `l(R x) = l(x)[swap]`, `R = I - 2 v v^T`, swap = (1 0 [2]).

    Task 2 is task 1 reflected (`c_2 = R c_1`, `A_2 = R A_1 R`); a third task is mapped to itself
    (`c_3` on the axis `v . x = 0`, `A_3 = (B + R B R)/2`). Returns the problem and the unit normal v."""
    if n_obj not in (2, 3) or n_var < 2:
        raise ValueError(f"need n_var >= 2 and n_obj in (2, 3), got {n_var}, {n_obj}")
    generator = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    normal = torch.randn(n_var, generator=generator, dtype=f64)
    normal = normal / normal.norm()
    reflection = torch.eye(n_var, dtype=f64) - 2 * torch.outer(normal, normal)

    def spd() -> Tensor:
        rotation, _ = torch.linalg.qr(torch.randn(n_var, n_var, generator=generator, dtype=f64))
        spectrum = condition ** torch.rand(n_var, generator=generator, dtype=f64)
        return rotation @ torch.diag(spectrum) @ rotation.T

    first = 2 * torch.rand(n_var, generator=generator, dtype=f64) - 1
    first = first + (0.5 - normal @ first) * normal  # 0.5 off the axis
    curvature = spd()
    centers = [first, reflection @ first]
    curvatures = [curvature, reflection @ curvature @ reflection]
    if n_obj == 3:
        third = 2 * torch.rand(n_var, generator=generator, dtype=f64) - 1
        centers.append(third - (normal @ third) * normal)
        extra = spd()
        curvatures.append(0.5 * (extra + reflection @ extra @ reflection))
    curvatures_t = torch.stack(curvatures)
    return ConvexQuadratic(
        torch.stack(centers), 0.5 * (curvatures_t + curvatures_t.transpose(-1, -2))
    ), normal


def schedule_scale(curvatures: Tensor, /) -> float:
    """`1 / max_problems sum_i (1 + L_i/mu_i)`: one over the Lipschitz bound of D (module docstring)."""
    eigenvalues = torch.linalg.eigvalsh(curvatures)  # [P, K, n]
    condition = eigenvalues[..., -1] / eigenvalues[..., 0]
    return float(1.0 / (1.0 + condition).sum(dim=-1).max())


def robbins_monro(scale: float, /) -> StepSchedule:
    """`alpha_k = scale tau^p / (k + tau)^p` (so alpha_0 = scale), p = 3/4, tau = 100."""
    return core.robbins_monro_step(scale * TAU**POWER, power=POWER, offset=TAU)


# ---- the DiBS iteration, its field and its fixed points ---------------------------------------


def dibs_and_naive(
    objectives: Objectives,
    dibs_starts: Tensor,
    naive_starts: Tensor,
    preferred: Tensor,
    /,
    *,
    num_steps: int,
    step_size: StepSchedule,
) -> tuple[Tensor, Tensor]:
    """The trajectories of DiBS from `dibs_starts [S, n]` and of the naive normalised sum from
    `naive_starts [S', n]`, run as one batch."""
    weighted = torch.arange(len(dibs_starts) + len(naive_starts)) < len(dibs_starts)
    trajectory = core.dibs(
        objectives,
        torch.cat([dibs_starts, naive_starts]),
        preferred,
        num_steps=num_steps,
        step_size=step_size,
        distance_weighted=weighted,
    )
    return trajectory[:, : len(dibs_starts)], trajectory[:, len(dibs_starts) :]


def field_parts(
    objectives: Objectives, x: Tensor, preferred: Tensor, /, *, create_graph: bool = False
) -> dict[str, Tensor]:
    """At `x [..., n]`: gradients `[..., K, n]`, distances `d_i`, the field `D = sum_i d_i u_i`,
    the certificate weights `beta_i ∝ d_i / ||g_i||` and their residual `||sum_i beta_i g_i||`.

    With `create_graph`, `x` must require grad and D carries a graph to it (for Newton's method)."""
    if create_graph:
        values = objectives(x)
        gradients = torch.stack(
            [
                torch.autograd.grad(values[..., i].sum(), x, create_graph=True)[0]
                for i in range(values.shape[-1])
            ],
            dim=-2,
        )
    else:
        _, gradients = objectives.values_and_jacobian(x)
    norms = gradients.norm(dim=-1)
    inverse = torch.where(
        norms > 0,
        1.0 / torch.where(norms > 0, norms, torch.ones_like(norms)),
        torch.zeros_like(norms),
    )
    distances = (x[..., None, :] - preferred).norm(dim=-1)
    field = ((distances * inverse)[..., None] * gradients).sum(dim=-2)
    ratios = distances * inverse
    beta = ratios / ratios.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    certificate = (beta[..., None] * gradients).sum(dim=-2).norm(dim=-1)
    return {
        "gradients": gradients,
        "norms": norms,
        "distances": distances,
        "field": field,
        "beta": beta,
        "certificate": certificate,
    }


def relative_field(parts: dict[str, Tensor], /) -> Tensor:
    """`||D|| / sum_i d_i` in [0, 1] (0 exactly at fixed points)."""
    return parts["field"].norm(dim=-1) / parts["distances"].sum(dim=-1).clamp_min(
        torch.finfo(parts["field"].dtype).tiny
    )


def newton_fixed_points(
    objectives: Objectives, x: Tensor, preferred: Tensor, /, *, iterations: int = 40
) -> Tensor:
    """Solve `D(x) = 0` by damped Newton from `x [..., n]` (step halved until ||D|| decreases).

    The Jacobian of D comes from double backward; its pseudo-inverse covers singular points."""
    x = x.detach().clone()
    n = x.shape[-1]
    trials = torch.tensor([0.5**j for j in range(12)], dtype=x.dtype)
    for _ in range(iterations):
        point = x.detach().requires_grad_(True)
        with torch.enable_grad():
            field = field_parts(objectives, point, preferred, create_graph=True)["field"]
            rows = [
                torch.autograd.grad(field[..., j].sum(), point, retain_graph=j < n - 1)[0]
                for j in range(n)
            ]
        jacobian = torch.stack(rows, dim=-2)  # [..., n (component of D), n (coordinate)]
        field = field.detach()
        step = -(torch.linalg.pinv(jacobian) @ field[..., None])[..., 0]
        candidates = x + trials.reshape(-1, *[1] * x.ndim) * step  # [trials, ..., n]
        norms = field_parts(objectives, candidates, preferred)["field"].norm(dim=-1)
        current = field.norm(dim=-1)
        scale = (x[..., None, :] - preferred).norm(dim=-1).sum(dim=-1)
        better = (norms < current) & (current > 1e-15 * scale)  # converged elements stay put
        first = torch.where(
            better.any(dim=0),
            better.to(torch.int64).argmax(dim=0),
            torch.full_like(current, -1, dtype=torch.int64),
        )
        chosen = candidates.gather(0, first.clamp_min(0)[None, ..., None].expand(1, *x.shape))[0]
        x = torch.where((first >= 0)[..., None], chosen, x)
        if not bool(
            (first >= 0).any()
        ):  # no element can decrease ||D|| any more: the rounding floor
            break
    return x


def stationarity_measures(gradients: Tensor, /) -> dict[str, Tensor]:
    """Min-norm weights `a`, the library's Gramian residual and the vector residual
    `||sum_i a_i g_i||`, both relative to `max_i ||g_i||`, for gradients `[..., K, n]`."""
    weights, residual = core.stationarity(core.gramian(gradients))
    scale = gradients.norm(dim=-1).amax(dim=-1).clamp_min(torch.finfo(gradients.dtype).tiny)
    combination = (weights[..., None] * gradients).sum(dim=-2)
    return {
        "weights": weights,
        "library": residual / scale,
        "vector": combination.norm(dim=-1) / scale,
        "combination": combination,
        "scale": scale,
    }


def distinct_points(points: Tensor, /, *, tolerance: float = 1e-6) -> int:
    """How many clusters of points `[M, n]` lie more than `tolerance` apart (greedy)."""
    kept: list[Tensor] = []
    for point in points:
        if all(float((point - other).norm()) > tolerance for other in kept):
            kept.append(point)
    return len(kept)


# ---- the three parts --------------------------------------------------------------------------


def _quantiles(values: Tensor) -> dict[str, float]:
    flat = values.reshape(-1).to(torch.float64)
    return {
        name: float(torch.quantile(flat, q))
        for name, q in (("min", 0.0), ("median", 0.5), ("q90", 0.9), ("max", 1.0))
    }


def _configuration(n_var: int, n_obj: int, settings: dict, seed: int) -> dict:
    """Parts (a) and (b) on `settings['problems']` random quadratics of size (n, K)."""
    num_problems, num_starts, num_steps = (
        settings["problems"],
        settings["starts"],
        settings["steps"],
    )
    problems = [ConvexQuadratic.random(n_var, n_obj, seed=seed + p) for p in range(num_problems)]
    objectives = StackedQuadratics(problems)
    preferred = objectives.centers[:, None]  # [P, 1, K, n]: per problem, shared by its starts
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(
        num_problems, num_starts, n_var, generator=generator, dtype=torch.float64
    )
    radii = 10 ** (
        -1
        + math.log10(300)
        * torch.rand(num_problems, num_starts, 1, generator=generator, dtype=torch.float64)
    )
    starts = radii * directions / directions.norm(dim=-1, keepdim=True)
    scale = schedule_scale(objectives.curvatures)
    trajectory = core.dibs(
        objectives, starts, preferred, num_steps=num_steps, step_size=robbins_monro(scale)
    )

    # (b) convergence, measured on log-spaced iterations
    shown = torch.unique(torch.logspace(0, math.log10(num_steps + 1), 40).long() - 1)
    parts = field_parts(objectives, trajectory[shown], preferred)
    measures = stationarity_measures(parts["gradients"])
    final_parts = field_parts(objectives, trajectory[-1], preferred)
    final = stationarity_measures(final_parts["gradients"])
    pareto = torch.stack(
        [problems[p].pareto_point(final["weights"][p]) for p in range(num_problems)]
    )
    pareto_distance = (trajectory[-1] - pareto).norm(dim=-1)

    # Thm 1.1 in quantitative form along the trajectory: residual <= ||D|| / sum_j d_j/||g_j||
    bound = parts["certificate"] / measures["scale"]
    certificate_excess = (measures["vector"] - bound).amax()

    # (a) fixed points: polish the DiBS limits, and look for others by damped Newton from random starts
    limits = newton_fixed_points(objectives, trajectory[-1], preferred)
    limit_gap = (limits - trajectory[-1]).norm(dim=-1)
    newton_starts = (
        4
        * torch.rand(
            num_problems, settings["newton_starts"], n_var, generator=generator, dtype=torch.float64
        )
        - 2
    )
    others = newton_fixed_points(objectives, newton_starts, preferred, iterations=60)
    candidates = torch.cat([limits, others], dim=1)
    fixed_parts = field_parts(objectives, candidates, preferred)
    fixed_field = relative_field(fixed_parts)
    found = fixed_field <= FIELD_TOLERANCE
    found[:, :num_starts] = (
        True  # the DiBS limits are always judged (a failure to polish them fails the check)
    )
    fixed = stationarity_measures(fixed_parts["gradients"])
    certificate = fixed_parts["certificate"] / fixed["scale"]
    weight_gap = (fixed["weights"] - fixed_parts["beta"]).abs().amax(dim=-1)
    counts = [distinct_points(candidates[p][found[p]]) for p in range(num_problems)]
    reached = [distinct_points(limits[p]) for p in range(num_problems)]

    # the converse: Pareto-stationary points x(w) are generally not DiBS fixed points
    exponential = -torch.log(
        torch.rand(
            num_problems,
            settings["pareto_samples"],
            n_obj,
            generator=generator,
            dtype=torch.float64,
        )
    )
    samples = exponential / exponential.sum(dim=-1, keepdim=True)
    pareto_points = torch.stack([problems[p].pareto_point(samples[p]) for p in range(num_problems)])
    pareto_parts = field_parts(objectives, pareto_points, preferred)
    converse_field = relative_field(pareto_parts)
    units = pareto_parts["gradients"] / pareto_parts["norms"][..., None]
    naive_field = units.sum(dim=-2).norm(dim=-1)

    return {
        "n_var": n_var,
        "n_obj": n_obj,
        "seeds": [seed + p for p in range(num_problems)],
        "schedule_scale": scale,
        "strong_convexity_min": float(torch.stack([p.strong_convexity for p in problems]).min()),
        "smoothness_max": float(torch.stack([p.smoothness for p in problems]).max()),
        "final_residual": final["vector"],
        "final_library_residual": final["library"],
        "pareto_distance": pareto_distance,
        "limit_gap": limit_gap,
        "certificate_excess": float(certificate_excess),
        "residual_by_iteration": measures["vector"].reshape(len(shown), -1),
        "field_by_iteration": relative_field(parts).reshape(len(shown), -1),
        "shown": shown,
        "fixed_field": fixed_field[found],
        "fixed_certificate": certificate[found],
        "fixed_library": fixed["library"][found],
        "fixed_weight_gap": weight_gap[found] if n_obj <= n_var else None,
        "fixed_points_per_problem": counts,
        "fixed_points_reached_by_dibs": reached,
        "newton_converged": int(found[:, num_starts:].sum()),
        "newton_tried": int(found[:, num_starts:].numel()),
        "converse_field_max": converse_field.amax(dim=-1),
        "converse_field_median": converse_field.median(),
        "naive_field_on_pareto": float(naive_field.max()) if n_obj == 2 else None,
    }


def _permutation(settings: dict, seed: int) -> dict:
    """Relabel the tasks of two problems per configuration and compare whole trajectories."""
    gaps = []
    generator = torch.Generator().manual_seed(seed)
    for index, (n_var, n_obj) in enumerate(settings["configs"]):
        problems = [
            ConvexQuadratic.random(n_var, n_obj, seed=seed + 10 * index + p) for p in range(2)
        ]
        relabelled = []
        for problem in problems:
            permutation = torch.randperm(n_obj, generator=generator)
            while bool((permutation == torch.arange(n_obj)).all()):
                permutation = torch.randperm(n_obj, generator=generator)
            relabelled.append(
                ConvexQuadratic(problem.centers[permutation], problem.curvatures[permutation])
            )
        objectives = StackedQuadratics(problems + relabelled)  # one batched run
        starts = 3 * torch.randn(
            2, settings["starts"], n_var, generator=generator, dtype=torch.float64
        ).repeat(2, 1, 1)
        steps = settings["steps"] // 8
        trajectory = core.dibs(
            objectives,
            starts,
            objectives.centers[:, None],
            num_steps=steps,
            step_size=robbins_monro(schedule_scale(objectives.curvatures)),
        )
        original, swapped = trajectory[:, :2], trajectory[:, 2:]
        gaps.append(float((original - swapped).abs().amax() / (1 + original.abs().amax())))
    return {"gaps": gaps}


def _reflection(settings: dict, seed: int) -> dict:
    """DiBS and the naive sum on reflection-symmetric problems (K = 2 and 3)."""
    cases = []
    generator = torch.Generator().manual_seed(seed)
    for index, (n_var, n_obj) in enumerate(settings["symmetric_configs"]):
        problem, normal = reflection_symmetric_problem(n_var, n_obj, seed=seed + index)
        reflection = torch.eye(n_var, dtype=torch.float64) - 2 * torch.outer(normal, normal)
        starts = 3 * torch.randn(
            settings["symmetric_starts"], n_var, generator=generator, dtype=torch.float64
        )
        starts = (
            starts
            + normal
            * (0.5 + (starts @ normal).abs())[:, None]
            * torch.sign(starts @ normal)[:, None]
        )  # off the axis
        step = robbins_monro(schedule_scale(problem.curvatures[None]))
        both = torch.cat([starts, starts @ reflection.T])
        trajectory, naive = dibs_and_naive(
            problem, both, starts, problem.centers, num_steps=settings["steps"] // 2, step_size=step
        )
        direct, mirrored = trajectory[:, : len(starts)], trajectory[:, len(starts) :]
        reflection_gap = float(
            (mirrored - direct @ reflection.T).norm(dim=-1).amax()
            / (1 + direct.norm(dim=-1).amax())
        )
        axis = (trajectory[-1] @ normal).abs()
        cases.append(
            {
                "n_var": n_var,
                "n_obj": n_obj,
                "seed": seed + index,
                "normal": normal.tolist(),
                "reflection_gap": reflection_gap,
                "axis_distance_max": float(axis.max()),
                "naive_axis_distance_max": float((naive[-1] @ normal).abs().max()),
                "naive_final_residual_max": float(
                    stationarity_measures(problem.values_and_jacobian(naive[-1])[1])["vector"].max()
                ),
                "trajectory": trajectory if index == 0 else None,
                "naive_trajectory": naive if index == 0 else None,
                "problem": problem if index == 0 else None,
            }
        )
    return {"cases": cases}


def run(*, quick: bool) -> ClaimResult:
    settings = QUICK if quick else FULL
    with single_thread():
        configurations = [
            _configuration(n, k, settings, seed=1000 * (index + 1))
            for index, (n, k) in enumerate(settings["configs"])
        ]
        permutation = _permutation(settings, seed=77)
        reflection = _reflection(settings, seed=500)

    def worst(key: str) -> float:
        return max(
            float(torch.as_tensor(c[key]).max()) for c in configurations if c[key] is not None
        )

    naive_pareto = [
        c["naive_field_on_pareto"] for c in configurations if c["naive_field_on_pareto"] is not None
    ]
    converse_min = min(float(c["converse_field_max"].min()) for c in configurations)
    two_task = [case for case in reflection["cases"] if case["n_obj"] == 2]
    checks = {
        # (a) fixed points are Pareto stationary
        "a_fixed_point_field": (worst("fixed_field"), "<=", FIELD_TOLERANCE),
        "a_fixed_point_certificate_residual": (
            worst("fixed_certificate"),
            "<=",
            FIXED_POINT_RESIDUAL_TOLERANCE,
        ),
        "a_fixed_point_library_residual": (
            worst("fixed_library"),
            "<=",
            LIBRARY_RESIDUAL_TOLERANCE,
        ),
        "a_fixed_point_weights_vs_beta": (worst("fixed_weight_gap"), "<=", WEIGHT_TOLERANCE),
        "a_residual_minus_certificate_bound": (
            max(c["certificate_excess"] for c in configurations),
            "<=",
            CERTIFICATE_SLACK,
        ),
        "a_converse_fails_min_over_problems": (converse_min, ">=", CONVERSE_MIN_FIELD),
        "a_naive_sum_on_pareto_set_k2": (max(naive_pareto), "<=", NAIVE_PARETO_FIELD_TOLERANCE),
        # (b) global convergence
        "b_final_residual": (worst("final_residual"), "<=", CONVERGENCE_RESIDUAL_TOLERANCE),
        "b_distance_to_pareto_point": (worst("pareto_distance"), "<=", PARETO_DISTANCE_TOLERANCE),
        "b_distance_to_fixed_point": (worst("limit_gap"), "<=", LIMIT_TOLERANCE),
        # (c) symmetry
        "c_permutation_gap": (max(permutation["gaps"]), "<=", PERMUTATION_TOLERANCE),
        "c_reflection_gap": (
            max(case["reflection_gap"] for case in reflection["cases"]),
            "<=",
            REFLECTION_TOLERANCE,
        ),
        "c_limit_axis_distance": (
            max(case["axis_distance_max"] for case in reflection["cases"]),
            "<=",
            AXIS_TOLERANCE,
        ),
        "c_naive_axis_distance_k2": (
            min(case["naive_axis_distance_max"] for case in two_task),
            ">=",
            NAIVE_AXIS_MIN,
        ),
    }

    def holds(value: float, relation: str, bound: float) -> bool:
        return math.isfinite(value) and (value <= bound if relation == "<=" else value >= bound)

    passed = all(holds(*check) for check in checks.values())
    return ClaimResult(
        name=NAME,
        statement=STATEMENT,
        passed=passed,
        measured=", ".join(f"{key} {value:.1e}" for key, (value, _, _) in checks.items()),
        bound=", ".join(f"{relation} {bound:.0e}" for _, relation, bound in checks.values()),
        data={
            "quick": quick,
            "settings": {key: value for key, value in settings.items()},
            "schedule": f"alpha_k = a * {TAU:g}^{POWER} / (k + {TAU:g})^{POWER}, a = 1 / max sum_i (1 + L_i/mu_i) per configuration",
            "checks": {
                key: {
                    "value": value,
                    "relation": relation,
                    "bound": bound,
                    "passed": holds(value, relation, bound),
                }
                for key, (value, relation, bound) in checks.items()
            },
            "configurations": [_configuration_summary(c) for c in configurations],
            "permutation_gaps": permutation["gaps"],
            "reflection": [
                {
                    key: value
                    for key, value in case.items()
                    if key not in ("trajectory", "naive_trajectory", "problem")
                }
                for case in reflection["cases"]
            ],
        },
        figure=_figure(configurations, reflection["cases"][0]),
    )


def _configuration_summary(c: dict) -> dict:
    return {
        "n_var": c["n_var"],
        "n_obj": c["n_obj"],
        "seeds": c["seeds"],
        "schedule_scale": c["schedule_scale"],
        "strong_convexity_min": c["strong_convexity_min"],
        "smoothness_max": c["smoothness_max"],
        "final_residual": _quantiles(c["final_residual"]),
        "final_library_residual": _quantiles(c["final_library_residual"]),
        "pareto_distance": _quantiles(c["pareto_distance"]),
        "distance_to_fixed_point": _quantiles(c["limit_gap"]),
        "residual_minus_certificate_bound_max": c["certificate_excess"],
        "fixed_point_field": _quantiles(c["fixed_field"]),
        "fixed_point_certificate_residual": _quantiles(c["fixed_certificate"]),
        "fixed_point_library_residual": _quantiles(c["fixed_library"]),
        "fixed_point_weight_gap": None
        if c["fixed_weight_gap"] is None
        else _quantiles(c["fixed_weight_gap"]),
        "fixed_points_per_problem": c["fixed_points_per_problem"],
        "fixed_points_reached_by_dibs": c["fixed_points_reached_by_dibs"],
        "newton_starts_converged": f"{c['newton_converged']}/{c['newton_tried']}",
        "converse_field_max_per_problem": c["converse_field_max"].tolist(),
        "converse_field_median": float(c["converse_field_median"]),
        "naive_field_on_pareto_max": c["naive_field_on_pareto"],
        "iterations": c["shown"].tolist(),
        "residual_quantiles_by_iteration": {
            q: torch.quantile(c["residual_by_iteration"], float(v), dim=1).tolist()
            for q, v in (("median", 0.5), ("q90", 0.9), ("max", 1.0))
        },
        "relative_field_quantiles_by_iteration": {
            q: torch.quantile(c["field_by_iteration"], float(v), dim=1).tolist()
            for q, v in (("median", 0.5), ("max", 1.0))
        },
    }


def _figure(configurations: list[dict], symmetric: dict):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.4))
    (left, middle, right) = figure.subplots(1, 3)
    for c in configurations:
        iterations = (c["shown"] + 1).numpy()
        residual = c["residual_by_iteration"].clamp_min(1e-17)
        line = left.loglog(
            iterations,
            residual.median(dim=1).values.numpy(),
            label=f"n={c['n_var']}, K={c['n_obj']}",
        )[0]
        left.loglog(
            iterations, residual.amax(dim=1).numpy(), color=line.get_color(), ls=":", lw=0.8
        )
    left.axhline(CONVERGENCE_RESIDUAL_TOLERANCE, color="k", lw=0.6, ls="--")
    left.set(
        xlabel="iteration k + 1",
        ylabel="||sum a_i g_i|| / max ||g_i||",
        title="(b) stationarity residual: median (solid), max (dotted)",
    )
    left.legend(fontsize=7)

    seed = next((c["seeds"][0] for c in configurations if (c["n_var"], c["n_obj"]) == (2, 3)), 5000)
    problem = ConvexQuadratic.random(
        2, 3, seed=seed
    )  # the first problem of the (2, 3) configuration
    pareto = problem.pareto_set(4000, generator=torch.Generator().manual_seed(0))
    angles = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1] + 0.3
    starts = 2.5 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    step = robbins_monro(schedule_scale(problem.curvatures[None]))
    trajectory, naive = dibs_and_naive(
        problem, starts, starts, problem.centers, num_steps=1000, step_size=step
    )
    middle.scatter(pareto[:, 0], pareto[:, 1], s=2, color="0.8", label="Pareto set x(w)")
    for s in range(len(starts)):
        middle.plot(
            trajectory[:, s, 0],
            trajectory[:, s, 1],
            lw=0.9,
            color="tab:blue",
            label="DiBS" if s == 0 else None,
        )
        middle.plot(
            naive[:, s, 0],
            naive[:, s, 1],
            lw=0.8,
            ls="--",
            color="tab:orange",
            label="normalised sum" if s == 0 else None,
        )
    middle.scatter(
        problem.centers[:, 0],
        problem.centers[:, 1],
        marker="*",
        s=90,
        color="k",
        label="preferred states",
        zorder=3,
    )
    middle.scatter(
        trajectory[-1, :, 0],
        trajectory[-1, :, 1],
        marker="o",
        facecolors="none",
        edgecolors="r",
        s=70,
        label="DiBS limits",
        zorder=4,
    )
    middle.set(
        title="(a, b) n = 2, K = 3: DiBS vs normalised sum",
        xlabel="x1",
        ylabel="x2",
        aspect="equal",
    )
    middle.legend(fontsize=7, loc="best")

    problem, dibs_path, naive_path = (
        symmetric["problem"],
        symmetric["trajectory"],
        symmetric["naive_trajectory"],
    )
    normal = torch.tensor(symmetric["normal"], dtype=torch.float64)
    pareto = problem.pareto_set(2000, generator=torch.Generator().manual_seed(0))
    right.scatter(pareto[:, 0], pareto[:, 1], s=2, color="0.8", label="Pareto set")
    middle_point = problem.centers.mean(dim=0)
    span = 1.5 * float((problem.centers - middle_point).norm(dim=-1).max()) + 0.5
    axis = torch.stack([normal[1], -normal[0]])
    ends = torch.stack([middle_point - 3 * span * axis, middle_point + 3 * span * axis])
    right.plot(ends[:, 0], ends[:, 1], color="k", ls="--", lw=0.7, label="symmetry axis v . x = 0")
    shown = min(8, naive_path.shape[1])
    for s in range(shown):
        right.plot(
            dibs_path[:, s, 0],
            dibs_path[:, s, 1],
            color="tab:blue",
            lw=0.8,
            label="DiBS" if s == 0 else None,
        )
        right.plot(
            naive_path[:, s, 0],
            naive_path[:, s, 1],
            color="tab:orange",
            lw=0.8,
            ls="--",
            label="normalised sum" if s == 0 else None,
        )
    right.scatter(
        naive_path[-1, :shown, 0],
        naive_path[-1, :shown, 1],
        marker="x",
        color="tab:orange",
        s=40,
        zorder=4,
    )
    right.scatter(
        dibs_path[-1, :shown, 0],
        dibs_path[-1, :shown, 1],
        marker="o",
        facecolors="none",
        edgecolors="r",
        s=70,
        zorder=4,
    )
    right.scatter(
        problem.centers[:, 0], problem.centers[:, 1], marker="*", s=90, color="k", zorder=3
    )
    right.set(
        title="(c) reflection-symmetric problem, K = 2",
        xlabel="x1",
        ylabel="x2",
        aspect="equal",
        xlim=(float(middle_point[0]) - span, float(middle_point[0]) + span),
        ylim=(float(middle_point[1]) - span, float(middle_point[1]) + span),
    )
    right.legend(fontsize=7)
    figure.tight_layout()
    return figure
