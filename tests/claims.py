"""One reusable assertion per claim of `core.CLAIMS`, for any method (as TorchJD's `_asserts.py`).

Each assertion takes a *method factory* (a zero-argument callable returning a fresh instance, so
that a random method is rebuilt with the same seeded generator and a stateful one starts empty)
and a sequence of `Step`s. It runs the method over the steps with its whole lifecycle (the
weighted call, then `after_step(new_losses)` and `end_epoch()` where a step asks for them) and
fails with an `AssertionError` naming the claim, the method, the step and the numbers. A
stateless method is checked on one step; a stateful one on a trajectory (its claims are about
sequences: the transformed or permuted trajectory is run on a fresh instance).

A step carries the per-task gradients `J [..., K, D]` (rows `g_i`) and the losses `[..., K]`.
Gradient weightings get the Gramian `G = J J^T` and the losses, loss weightings the losses; for
both the shared update is `d = sum_i w_i g_i` (`w @ J`). Jacobian aggregations get `J` and the
losses and return d themselves (`StepResult.update`); their "weights" are the heads' weights.
For them the claims are checked on d (and on the heads' weights where they enter the step), with
`S` the sum of the norms of d's terms (`"contribution_norms"` where the method reports them, else
`sum_j ||g_j||`).

Precision (the same rules for every method; `S = sum_j |w_j| ||g_j||` is the size of the terms
that make up d):

- Weights compared across two runs (invariance, equivariance) agree when, elementwise, the
  relative error is at most `rtol` or the error's contribution to the update `|x_i - y_i| ||g_i||`
  is at most `rtol` times the largest contribution. Otherwise the updates must agree to
  `rtol * S` plus the method's `allowance` and rounding, and, where the input determines the
  weights (not `ill_determined`: no zero gradient, a nonsingular cosine Gramian), the weights to
  that update error divided by `sqrt(lambda_min(G))`. This is how MGDA is compared on a singular
  Gramian (non-unique weights), and any method where the weights move along a near-null
  direction of G without changing the update.
- Quantities computed from d also allow the float64 rounding of forming d from its terms,
  `ROUNDING_FACTOR * K * eps * S`, and where the input is `ill_determined` (every
  Pareto-stationary input is: 0 in the convex hull of the gradients makes them linearly
  dependent) `non_conflicting` measures the conflict against `tol * S` instead of `tol * ||d||`:
  there d is zero up to the precision of its terms (Nash-MTL's ridge leaves `||d|| ~ 1e-10 S`).
- `allowance(method, step, result)` is a method's certified bound on the distance from the
  update it returned to an exact one (e.g. from MGDA's KKT gap); 0 by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from core.jacobian import gramian as gramian_of
from core.methods.base import GradientWeighting, HeadGradient, JacobianAggregation, Method
from core.transforms import Affine, MonotoneTransform

MethodFactory = Callable[[], Method]
"""A zero-argument callable that returns a fresh method instance (the same seed every time)."""


class StepResult(NamedTuple):
    """One weighted call: the weights (a Jacobian aggregation's head weights), the diagnostics
    and, for a Jacobian aggregation, the update d it returned (None: d is `weights @ J`)."""

    weights: Tensor
    diagnostics: dict[str, Tensor]
    update: Tensor | None = None


Allowance = Callable[[Method, "Step", StepResult], Tensor]
"""`(method, step, result) -> [...]`: a bound on the distance from the returned update to an
exact one (the method's certified solver accuracy), in the units of the gradients."""

ROUNDING_FACTOR = 16.0
"""Multiplier of `K * eps * S`, the floating-point error of forming `d = w @ J` from its terms."""

SINGULAR_COSINE_EIGENVALUE = 1e-8
"""Below this smallest eigenvalue of the cosine Gramian the input is `ill_determined`."""


@dataclass(frozen=True)
class Step:
    """One step of a trajectory: the weighted call, then the lifecycle hooks it asks for."""

    jacobian: Tensor
    """Per-task gradients on the shared parameters, `[..., K, D]` (the rows are `g_i`)."""
    losses: Tensor
    """The loss values `[..., K]` of the weighted call."""
    new_losses: Tensor | None = None
    """If given, `after_step(new_losses)` follows the weighted call (FAMO's logit update)."""
    end_epoch: bool = False
    """Whether `end_epoch()` follows (DWA's epoch history)."""

    @property
    def gramian(self) -> Tensor:
        return gramian_of(self.jacobian)

    @property
    def norms(self) -> Tensor:
        return self.jacobian.norm(dim=-1)


@dataclass(frozen=True)
class ClaimInputs:
    """Everything any claim's assertion needs, drawn once per example by the registry-wide test."""

    steps: Sequence[Step]
    transforms: Sequence[MonotoneTransform]
    """One strictly increasing transform per task (monotone_invariant)."""
    scales: Sequence[float]
    """One positive factor per task (rescaling_invariant)."""
    order: Sequence[int]
    """A permutation of the tasks (permutation_equivariant)."""


def run_steps(method: Method, steps: Sequence[Step]) -> list[StepResult]:
    """The result of each weighted call of `steps`, calling the lifecycle hooks they ask for."""
    results = []
    for step in steps:
        if isinstance(method, JacobianAggregation):
            aggregated = method.aggregate(step.jacobian, step.losses)
            results.append(
                StepResult(
                    aggregated.head_weights.detach().clone(),
                    aggregated.diagnostics,
                    aggregated.update.detach().clone(),
                )
            )
        else:
            if isinstance(method, GradientWeighting):
                result = method.weights(step.gramian, step.losses)
            else:
                result = method.weights(step.losses)
            results.append(StepResult(result.weights.detach().clone(), result.diagnostics))
        if step.new_losses is not None:
            method.after_step(step.new_losses)
        if step.end_epoch:
            method.end_epoch()
    return results


def update(weights: Tensor, jacobian: Tensor) -> Tensor:
    """The shared update `d = sum_i w_i g_i`, batched: `[..., K] x [..., K, D] -> [..., D]`."""
    return (weights.unsqueeze(-2) @ jacobian).squeeze(-2)


def term_size(weights: Tensor, norms: Tensor) -> Tensor:
    """`S = sum_j |w_j| ||g_j||`, the size of the terms of d (`[...]`)."""
    return (weights.abs() * norms).sum(dim=-1)


def rounding_floor(weights: Tensor, norms: Tensor) -> Tensor:
    """The float error of forming d from its terms, `ROUNDING_FACTOR K eps S` (`[...]`)."""
    return (
        ROUNDING_FACTOR
        * weights.shape[-1]
        * torch.finfo(weights.dtype).eps
        * term_size(weights, norms)
    )


def shared_update(result: StepResult, jacobian: Tensor) -> Tensor:
    """The update d of a result: the one a Jacobian aggregation returned, else `w @ J`."""
    return update(result.weights, jacobian) if result.update is None else result.update


def update_term_size(result: StepResult, jacobian: Tensor) -> Tensor:
    """`S` of d (`[...]`): `sum_j |w_j| ||g_j||`, or for a Jacobian aggregation the sum of its
    `"contribution_norms"` (else `sum_j ||g_j||`)."""
    norms = jacobian.norm(dim=-1)
    if result.update is None:
        return term_size(result.weights, norms)
    contributions = result.diagnostics.get("contribution_norms")
    return (norms if contributions is None else contributions.to(norms)).sum(dim=-1)


def update_rounding(result: StepResult, jacobian: Tensor) -> Tensor:
    """`ROUNDING_FACTOR K eps S`, the float error of forming d from its terms (`[...]`)."""
    return (
        ROUNDING_FACTOR
        * jacobian.shape[-2]
        * torch.finfo(jacobian.dtype).eps
        * update_term_size(result, jacobian)
    )


def _assert_same_aggregation(
    actual: StepResult,
    expected: StepResult,
    actual_heads: Tensor | None,
    *,
    actual_jacobian: Tensor,
    expected_jacobian: Tensor,
    allowance: Tensor,
    rtol: float,
    context: Callable[[], str],
) -> None:
    """Two Jacobian aggregations' updates agree to `rtol S` plus the allowance and rounding, and,
    if `actual_heads` is given (expressed per task of the expected run), their heads' weights to
    `rtol` times the largest."""
    assert actual.update is not None and expected.update is not None
    allowed = (
        rtol
        * torch.maximum(
            update_term_size(actual, actual_jacobian), update_term_size(expected, expected_jacobian)
        )
        + allowance
        + update_rounding(actual, actual_jacobian)
        + update_rounding(expected, expected_jacobian)
    )
    distance = (actual.update - expected.update).norm(dim=-1)
    if not bool(torch.isfinite(distance).all()) or bool((distance > allowed).any()):
        raise AssertionError(
            f"the updates differ: ||d' - d|| = {distance.tolist()} > {allowed.tolist()}\n  got      "
            f"{actual.update.tolist()}\n  expected {expected.update.tolist()}\n{context()}"
        )
    if actual_heads is None:
        return
    scale = torch.maximum(actual_heads.abs(), expected.weights.abs()).amax(dim=-1, keepdim=True)
    if bool(((actual_heads - expected.weights).abs() > rtol * scale).any()):
        raise AssertionError(
            f"the heads' weights differ beyond rtol {rtol:g}:\n  got      {actual_heads.tolist()}\n  expected "
            f"{expected.weights.tolist()}\n{context()}"
        )


def cosine_eigenvalue(step: Step) -> Tensor:
    """The smallest eigenvalue of the cosine Gramian `U = N^-1 G N^-1` (0 with a zero gradient)."""
    norms = step.norms
    units = step.jacobian / torch.where(norms > 0, norms, 1.0)[..., None]
    smallest = torch.linalg.eigvalsh(gramian_of(units))[..., 0]
    return torch.where((norms == 0).any(dim=-1), 0.0, smallest)


def ill_determined(step: Step) -> Tensor:
    """Per batch element: a zero gradient or a (numerically) singular cosine Gramian, where the
    weights are not unique (MGDA) or not determined by the update (`[...]`, bool)."""
    return cosine_eigenvalue(step) < SINGULAR_COSINE_EIGENVALUE


def _no_allowance(method: Method, step: Step, result: StepResult) -> Tensor:
    return torch.zeros(step.losses.shape[:-1], dtype=step.jacobian.dtype)


def _describe(method: Method, step_index: int, step: Step) -> str:
    return (
        f"{method!r}, step {step_index}:\n  J = {step.jacobian.tolist()}\n  losses = {step.losses.tolist()}"
        + (f"\n  new_losses = {step.new_losses.tolist()}" if step.new_losses is not None else "")
    )


def _assert_same_weights(
    actual: Tensor,
    expected: Tensor,
    *,
    actual_jacobian: Tensor,
    expected_jacobian: Tensor,
    allowance: Tensor,
    rtol: float,
    context: Callable[[], str],
) -> None:
    """`actual` and `expected` weights give the same update: `actual @ actual_jacobian` against
    `expected @ expected_jacobian`, with the rules of the module docstring. `actual` is expressed
    per task of the expected run (so the elementwise comparison uses `expected_jacobian`'s norms)."""
    if actual.shape != expected.shape:
        raise AssertionError(
            f"weights of shape {tuple(actual.shape)}, expected {tuple(expected.shape)}\n{context()}"
        )
    if not bool(torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        raise AssertionError(
            f"non-finite weights: {actual.tolist()} vs {expected.tolist()}\n{context()}"
        )
    norms = expected_jacobian.norm(dim=-1)
    error = (actual - expected).abs()
    relative_ok = error <= rtol * torch.maximum(actual.abs(), expected.abs())
    largest = torch.maximum(actual.abs() * norms, expected.abs() * norms).amax(dim=-1, keepdim=True)
    contribution_ok = error * norms <= rtol * largest
    if bool((relative_ok | contribution_ok).all()):
        return
    scale = torch.maximum(actual.abs(), expected.abs())
    worst = float((error / torch.where(scale > 0, scale, 1.0)).max())
    mismatch = (
        f"weights differ beyond rtol {rtol:g} (worst relative error {worst:.3g}) at tasks "
        f"{(~(relative_ok | contribution_ok)).nonzero().tolist()}:\n  got      {actual.tolist()}\n  expected {expected.tolist()}"
    )
    # the update is what is determined: compare it, then the weights to the precision G gives them
    actual_update = update(actual, actual_jacobian)
    expected_update = update(expected, expected_jacobian)
    actual_norms = actual_jacobian.norm(dim=-1)
    allowed = (
        rtol * torch.maximum(term_size(actual, actual_norms), term_size(expected, norms))
        + allowance
        + rounding_floor(actual, actual_norms)
        + rounding_floor(expected, norms)
    )
    distance = (actual_update - expected_update).norm(dim=-1)
    if bool((distance > allowed).any()):
        raise AssertionError(
            f"{mismatch}\nand the updates differ: ||d' - d|| = {distance.tolist()} > {allowed.tolist()}\n{context()}"
        )
    step = Step(expected_jacobian, torch.zeros_like(expected))
    smallest = cosine_eigenvalue(step)
    determined = smallest >= SINGULAR_COSINE_EIGENVALUE
    # ||dw|| <= ||dd|| / sqrt(lambda_min(G)), and lambda_min(G) >= lambda_min(U) min_i ||g_i||^2
    floor = (smallest.clamp_min(0).sqrt() * norms.amin(dim=-1)).clamp_min(
        torch.finfo(norms.dtype).tiny
    )
    weight_bound = allowed / floor
    weight_distance = (actual - expected).norm(dim=-1)
    bad = determined & (weight_distance > weight_bound)
    if bool(bad.any()):
        raise AssertionError(
            f"{mismatch}\nthe updates agree, but the input determines the weights (lambda_min of the cosine Gramian "
            f"{smallest.tolist()}) and ||w' - w|| = {weight_distance.tolist()} > {weight_bound.tolist()}\n{context()}"
        )


# -- the transformation claims ---------------------------------------------------------------------


def transform_step(step: Step, transforms: Sequence[MonotoneTransform]) -> tuple[Step, Tensor]:
    """`step` with task i's loss replaced by `h_i(l_i)`: losses `h(l)`, gradients `h_i'(l_i) g_i`,
    new losses `h(l')`; also returns `D = h'(l)` `[..., K]`."""
    num_tasks = step.losses.shape[-1]
    if len(transforms) != num_tasks:
        raise ValueError(f"one transform per task: got {len(transforms)} for K = {num_tasks}")

    def apply(values: Tensor) -> Tensor:
        return torch.stack([transforms[i](values[..., i]) for i in range(num_tasks)], dim=-1)

    derivatives = torch.stack(
        [transforms[i].derivative(step.losses[..., i]) for i in range(num_tasks)], dim=-1
    )
    new_losses = None if step.new_losses is None else apply(step.new_losses)
    return Step(
        step.jacobian * derivatives[..., None], apply(step.losses), new_losses, step.end_epoch
    ), derivatives


def usable_transforms(
    steps: Sequence[Step], transforms: Sequence[MonotoneTransform], *, loss_domain: str = "any"
) -> bool:
    """Whether the transforms are finite, with a finite positive, non-negligible derivative at every
    loss of `steps`, and keep the losses in `loss_domain` (for drawing inputs with `assume`)."""
    tiny = 1e-100
    for step in steps:
        transformed, derivatives = transform_step(step, transforms)
        values = [transformed.losses, derivatives] + (
            [transformed.new_losses] if transformed.new_losses is not None else []
        )
        if not all(bool(torch.isfinite(value).all()) for value in values):
            return False
        if not bool((derivatives > tiny).all()) or not bool((derivatives < 1 / tiny).all()):
            return False
        for losses in values[:1] + values[2:]:
            if (loss_domain == "positive" and not bool((losses > 0).all())) or (
                loss_domain == "nonnegative" and not bool((losses >= 0).all())
            ):
                return False
    return True


def _assert_transform_invariant(
    claim: str,
    factory: MethodFactory,
    steps: Sequence[Step],
    transforms: Sequence[MonotoneTransform],
    rtol: float,
    allowance: Allowance | None,
) -> None:
    allowance = allowance or _no_allowance
    pairs = [transform_step(step, transforms) for step in steps]
    for step, (transformed, derivatives) in zip(steps, pairs):
        if not bool(
            torch.isfinite(transformed.losses).all()
            and torch.isfinite(derivatives).all()
            and (derivatives > 0).all()
        ):
            raise ValueError(
                f"{claim}: the transforms {list(transforms)} are not usable at losses {step.losses.tolist()} "
                f"(h(l) = {transformed.losses.tolist()}, h'(l) = {derivatives.tolist()})"
            )
    original_method, transformed_method = factory(), factory()
    original = run_steps(original_method, steps)
    transformed_results = run_steps(transformed_method, [pair[0] for pair in pairs])
    for index, (step, (transformed, derivatives), expected, got) in enumerate(
        zip(steps, pairs, original, transformed_results)
    ):
        if got.update is not None:  # a Jacobian aggregation: d itself, and D w' where heads use w'
            weighted = original_method.head_gradient is HeadGradient.WEIGHTED
            _assert_same_aggregation(
                got,
                expected,
                derivatives * got.weights if weighted else None,
                actual_jacobian=transformed.jacobian,
                expected_jacobian=step.jacobian,
                allowance=allowance(original_method, step, expected)
                + allowance(transformed_method, transformed, got),
                rtol=rtol,
                context=lambda derivatives=derivatives, index=index, step=step: (
                    f"{claim}: d(h) != d with h = {list(transforms)}, D = h'(l) = {derivatives.tolist()}\n"
                    f"{_describe(original_method, index, step)}"
                ),
            )
            continue
        _assert_same_weights(
            derivatives * got.weights,
            expected.weights,
            actual_jacobian=step.jacobian,  # (D w')_i g_i = w'_i (h_i' g_i): the transformed update
            expected_jacobian=step.jacobian,
            allowance=allowance(original_method, step, expected)
            + allowance(transformed_method, transformed, got),
            rtol=rtol,
            context=lambda derivatives=derivatives, transformed=transformed, index=index, step=step: (
                f"{claim}: D w(D G D, h(l)) != w(G, l) with h = {list(transforms)}, D = h'(l) = {derivatives.tolist()}, "
                f"h(l) = {transformed.losses.tolist()}\n{_describe(original_method, index, step)}"
            ),
        )


def assert_monotone_invariant(
    factory: MethodFactory,
    steps: Sequence[Step],
    transforms: Sequence[MonotoneTransform],
    *,
    rtol: float = 1e-9,
    allowance: Allowance | None = None,
) -> None:
    """`monotone_invariant`: with task i's loss replaced by `h_i(l_i)` (strictly increasing h_i),
    every step's weights satisfy `D w(D G D, h(l)) = w(G, l)`, `D = diag(h_i'(l_i))`, so that the
    update is the same; fresh instances run the original and the transformed trajectory."""
    _assert_transform_invariant("monotone_invariant", factory, steps, transforms, rtol, allowance)


def assert_rescaling_invariant(
    factory: MethodFactory,
    steps: Sequence[Step],
    scales: Sequence[float],
    *,
    rtol: float = 1e-9,
    allowance: Allowance | None = None,
) -> None:
    """`rescaling_invariant`: with `l_i -> a_i l_i` (a_i > 0), `a_i w_i(D G D, a l) = w_i(G, l)`
    (for loss weightings `a_i w_i(a l) = w_i(l)`) at every step of the trajectory."""
    if not all(float(scale) > 0 for scale in scales):
        raise ValueError(f"rescaling_invariant: the factors must be positive, got {list(scales)}")
    transforms = [Affine(scale=float(scale)) for scale in scales]
    _assert_transform_invariant("rescaling_invariant", factory, steps, transforms, rtol, allowance)


# -- permutation ----------------------------------------------------------------------------------


def assert_permutation_equivariant(
    factory: MethodFactory,
    steps: Sequence[Step],
    order: Sequence[int],
    *,
    rtol: float = 1e-9,
    allowance: Allowance | None = None,
) -> None:
    """`permutation_equivariant`: relabelling the tasks of every step by `order` relabels the
    weights of every step, `w(P G P^T, P l) = P w(G, l)` (fresh instances for both trajectories).
    Where the weights are not unique (MGDA on a singular Gramian) the updates are compared."""
    allowance = allowance or _no_allowance
    index = torch.as_tensor(list(order), dtype=torch.long)
    num_tasks = steps[0].losses.shape[-1]
    if sorted(index.tolist()) != list(range(num_tasks)):
        raise ValueError(f"order must be a permutation of range({num_tasks}), got {list(order)}")

    def permute(step: Step) -> Step:
        new_losses = None if step.new_losses is None else step.new_losses[..., index]
        return Step(
            step.jacobian[..., index, :], step.losses[..., index], new_losses, step.end_epoch
        )

    permuted_steps = [permute(step) for step in steps]
    original_method, permuted_method = factory(), factory()
    original = run_steps(original_method, steps)
    permuted = run_steps(permuted_method, permuted_steps)
    for step_index, (step, permuted_step, expected, got) in enumerate(
        zip(steps, permuted_steps, original, permuted)
    ):
        if (
            got.update is not None
        ):  # a Jacobian aggregation: the same d, the heads' weights relabelled
            _assert_same_aggregation(
                got,
                StepResult(expected.weights[..., index], expected.diagnostics, expected.update),
                got.weights,
                actual_jacobian=permuted_step.jacobian,
                expected_jacobian=step.jacobian,
                allowance=allowance(original_method, step, expected)
                + allowance(permuted_method, permuted_step, got),
                rtol=rtol,
                context=lambda step_index=step_index, step=step: (
                    f"permutation_equivariant: order {list(order)}\n{_describe(original_method, step_index, step)}"
                ),
            )
            continue
        _assert_same_weights(
            got.weights,
            expected.weights[..., index],
            actual_jacobian=permuted_step.jacobian,
            expected_jacobian=permuted_step.jacobian,
            allowance=allowance(original_method, step, expected)
            + allowance(permuted_method, permuted_step, got),
            rtol=rtol,
            context=lambda step_index=step_index, step=step: (
                f"permutation_equivariant: order {list(order)}\n{_describe(original_method, step_index, step)}"
            ),
        )


# -- properties of one call ------------------------------------------------------------------------


def assert_non_conflicting(
    factory: MethodFactory,
    steps: Sequence[Step],
    *,
    tol: float = 1e-9,
    allowance: Allowance | None = None,
) -> None:
    """`non_conflicting`: at every step `g_i . d >= -tol ||g_i|| ||d||` for every task i, less
    `||g_i||` times the allowance and the rounding of forming d; on `ill_determined` input
    (Pareto-stationary input is) `tol * S` replaces `tol * ||d||`."""
    allowance = allowance or _no_allowance
    method = factory()
    for step_index, (step, result) in enumerate(zip(steps, run_steps(method, steps))):
        weights = result.weights
        d = shared_update(result, step.jacobian)
        products = (step.jacobian @ d.unsqueeze(-1)).squeeze(-1)
        norms = step.norms
        size = torch.where(
            ill_determined(step), update_term_size(result, step.jacobian), d.norm(dim=-1)
        )
        slack = (
            tol * size + allowance(method, step, result) + update_rounding(result, step.jacobian)
        )
        allowed = -norms * slack[..., None]
        bad = products < allowed
        if bool(bad.any()):
            cosines = products / (norms * d.norm(dim=-1)[..., None]).clamp_min(
                torch.finfo(d.dtype).tiny
            )
            raise AssertionError(
                f"non_conflicting: g_i . d = {products.tolist()} < {allowed.tolist()} at tasks {bad.nonzero().tolist()} "
                f"(cosines {cosines.tolist()}, weights {weights.tolist()}, ||d|| = {d.norm(dim=-1).tolist()})\n"
                f"{_describe(method, step_index, step)}"
            )


def assert_simplex_weights(
    factory: MethodFactory, steps: Sequence[Step], *, tol: float = 1e-12
) -> None:
    """`simplex_weights`: at every step the weights are >= 0 and sum to 1 (to `tol`)."""
    method = factory()
    for step_index, (step, result) in enumerate(zip(steps, run_steps(method, steps))):
        weights = result.weights
        total = weights.sum(dim=-1)
        if not bool((weights >= 0).all()) or not bool(((total - 1).abs() <= tol).all()):
            raise AssertionError(
                f"simplex_weights: weights {weights.tolist()} (sum {total.tolist()}) are not on the simplex (tol {tol:g})\n"
                f"{_describe(method, step_index, step)}"
            )


def assert_equal_projections(
    factory: MethodFactory,
    steps: Sequence[Step],
    *,
    rtol: float = 1e-9,
    allowance: Allowance | None = None,
) -> None:
    """`equal_projections`: at every step `d . u_i` is the same for every task with a nonzero
    gradient (`u_i = g_i / ||g_i||`), to `rtol` times the largest `|d . u_i|`, plus twice the
    allowance and the rounding of forming d."""
    allowance = allowance or _no_allowance
    method = factory()
    for step_index, (step, result) in enumerate(zip(steps, run_steps(method, steps))):
        weights = result.weights
        norms = step.norms
        nonzero = norms > 0
        units = step.jacobian / torch.where(nonzero, norms, 1.0)[..., None]
        projections = (units @ shared_update(result, step.jacobian).unsqueeze(-1)).squeeze(-1)
        high = torch.where(nonzero, projections, -torch.inf).amax(dim=-1)
        low = torch.where(nonzero, projections, torch.inf).amin(dim=-1)
        spread = torch.where(nonzero.any(dim=-1), high - low, 0.0)
        largest = torch.where(nonzero, projections.abs(), 0.0).amax(dim=-1)
        allowed = (
            rtol * largest
            + 2 * allowance(method, step, result)
            + update_rounding(result, step.jacobian)
        )
        if bool((spread > allowed).any()):
            raise AssertionError(
                f"equal_projections: d . u_i = {projections.tolist()} differ by {spread.tolist()} > {allowed.tolist()} "
                f"(weights {weights.tolist()})\n{_describe(method, step_index, step)}"
            )


ASSERTIONS: dict[str, Callable[..., None]] = {
    "monotone_invariant": lambda factory, inputs, allowance=None: assert_monotone_invariant(
        factory, inputs.steps, inputs.transforms, allowance=allowance
    ),
    "rescaling_invariant": lambda factory, inputs, allowance=None: assert_rescaling_invariant(
        factory, inputs.steps, inputs.scales, allowance=allowance
    ),
    "permutation_equivariant": lambda factory, inputs, allowance=None: (
        assert_permutation_equivariant(factory, inputs.steps, inputs.order, allowance=allowance)
    ),
    "non_conflicting": lambda factory, inputs, allowance=None: assert_non_conflicting(
        factory, inputs.steps, allowance=allowance
    ),
    "simplex_weights": lambda factory, inputs, allowance=None: assert_simplex_weights(
        factory, inputs.steps
    ),
    "equal_projections": lambda factory, inputs, allowance=None: assert_equal_projections(
        factory, inputs.steps, allowance=allowance
    ),
}
"""Claim of `core.CLAIMS` -> `check(factory, inputs: ClaimInputs, allowance=None)` with the
default tolerances (tests/core/methods/test_method_contract.py checks that every claim has one)."""
