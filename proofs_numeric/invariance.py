"""Whole trajectories under strictly increasing nonaffine loss transforms: who is invariant.

If task i's loss `l_i` is replaced by `h_i(l_i)` with `h_i' > 0`, its gradient becomes
`h_i'(l_i) g_i`, a positive rescaling ([DiBS] Thm 2.2, spec dibs.md §4). Methods that only use
the unit gradients `u_i = g_i / ||g_i||` (and, for DiBS, preferred states `argmin l_i`, which `h_i`
does not move) make the same update at every point, hence follow the same trajectory: 1-step and
T-step DiBS-MTL, and DiBS. Linear scalarisation (update `sum_i h_i' g_i`), MGDA (min-norm point of
the raw gradients), RLW (random weights on the raw losses) and FAMO (weights from
`log(l_i - l*_i)`, invariant to positive scaling of `l_i - l*_i` only) see the rescaled gradients or
the transformed loss values.

Nash-MTL is measured, not assumed. Its exact update `d = sum_i alpha_i g_i`, `alpha_i (G alpha)_i = 1`,
is unchanged by `g_i -> c_i g_i` (`alpha_i -> alpha_i / c_i`; spec random_weighting_baselines_metrics.md
§3.9), and `core.NashMTL` solves in a scale-free (unit-diagonal) parameterisation, so its trajectory
should coincide too, up to its solver tolerance, its warm start (the previous step's solution, rescaled
by the previous step's `h'`) and rounding. The DiBS-MTL paper groups Nash-MTL with the non-invariant
methods; `proofs_numeric.nash_transforms` settles where its invariance breaks.

**Rounding control.** In floating point, "coincide" can only mean "as closely as two runs that
differ by rounding". Every normalised-direction method has places where rounding is amplified: near
a point where one task's gradient vanishes, `u_i` turns discontinuously and a constant-step method
jitters chaotically around it; near Pareto stationarity Nash-MTL's update keeps the norm `sqrt(K)`
while its direction is set by the vanishing residual (its weights grow like
`(1 + cos(g_1, g_2))^-1/2` for two tasks), so rounding in the cosines is amplified by up to the
inverse of its ridge (1e10). To tell the transform's effect from rounding, every problem is also run
in a *control* version, each loss multiplied by a constant `c_i = 10^U(-1, 1)`: every method of the
invariant group is invariant to that in exact arithmetic, so the control's deviation measures how
much the run amplifies rounding. A run is *rounding-sensitive* if the control deviates by more than
`INVARIANCE_TOLERANCE`. (The baselines are not invariant to the control either: LS, MGDA and RLW
change direction, FAMO keeps its direction but not its step normalisation `c`, which Adam sees.)

Protocol. Every problem is run in float64 from several starts, on the nominal losses, the control
and each transformed version, as one batch (rows never interact):

- the two-task toy of CAGrad/Nash-MTL/DiBS-MTL (`TwoTaskToy`) from the five published starts, with
  the reference transform `f0 -> f0^3 |f0|` on task 0 (spec dibs.md §5) and one random transform
  per task;
- `RandomNonconvex` problems with 3 tasks in 4 variables from random starts, random transforms per
  task and version;
- DiBS (`core.dibs`, Robbins-Monro steps) on random convex quadratics and nonconvex problems. Its
  preferred states `argmin l_i` are the same for every version (no `h_i` moves an argmin): they are
  found once by normalised descent on the nominal oracle (DiBS App. E) and shared. Recomputing them
  per version from the transformed oracles is reported too: normalised descent is chaotic near the
  minimiser (its steps overshoot by the step size), so per-version preferred states agree only to
  about the last step size, and the DiBS trajectories inherit that gap.

Random transforms are compositions of 2-3 layers (exp, log, signed power, softplus, arcsinh), each
preceded by an affine map that sends the task's loss range (sampled over the problem's box) to a
range where the layer is strongly curved, plus a final random scale 10^U(-1.5, 1.5). Log is only
drawn where every possible loss is in its domain: its affine map sends the loss's lower bound (0 for
the nonnegative problems, -20 for the toy; the composition tracks it) to a positive number, i.e.
`log(a (l - lower) + u0)`, never `log(l)` of a loss that can be 0. A draw is kept if `h'` varies by
at least `MIN_NONLINEARITY` over the loss range (it is far from affine there).

Optimiser: Adam with torch defaults, as the reference toy trainer (lr 1e-3 and 35,000 steps on the
toy in full mode, as published; lr 1e-2 on the random problems; lr 2-2.5e-2 and fewer steps in quick mode).
Fairness: Adam only sees the combined gradient, so a method whose combined gradient is invariant
(DiBS-MTL, whose weights `eps / ||g_i||` absorb `h_i'`) stays invariant through Adam; for the other
methods Adam's per-coordinate normalisation cancels a common change of scale of the update, so
what separates their trajectories is the change of direction. The divergence measured here is
therefore smaller than plain SGD would show: the comparison favours the baselines. RLW uses the
same draws for every version (one draw per step from one seeded generator, shared, as two runs from
the same seed); FAMO runs one instance per start and version (its logits are state), with its
lower bounds `l*` the losses' lower bounds mapped through `h_i` (so a positive scaling leaves its
direction unchanged: what turns it is the nonaffine part).

Measures. Per run (problem, start, version): the deviation `max_t ||x'_t - x_t||` over the whole
trajectory, relative to the step scale `max_t ||x_{t+1} - x_t||` of the nominal run; the endpoint
distance `||x'_T - x_T||`; which task gained (the change of each task's nominal-loss decrease over
the run, in units of the task's loss range); and the final share of each task in the combined
direction expressed as weights on the *nominal* gradients (`w_i h_i'(l_i) / sum_j w_j h_j'(l_j)`),
compared by total variation with the nominal run's shares.

Verdict. Control test, for 1-step and 5-step DiBS-MTL, DiBS (shared preferred states) and
Nash-MTL: per case, the largest transformed deviation is at most `ROUNDING_FACTOR` times the
largest control deviation (floored at `INVARIANCE_TOLERANCE`): the transform moves the trajectories
no more than rounding does. Exactness, for DiBS-MTL and DiBS: the median transformed run deviates by
at most `INVARIANCE_TOLERANCE` step scales. (Nash-MTL's median is reported, not bounded: most of its
runs reach Pareto stationarity, where it amplifies rounding.) Divergence, for LS, MGDA, FAMO and
RLW: the median transformed run deviates by at least `DIVERGENCE_MIN` step scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import core
from core.methods.base import GradientWeighting, LossWeighting
from core.transforms import (
    Affine,
    Arcsinh,
    Compose,
    Exp,
    Log,
    MonotoneTransform,
    SignedPower,
    Softplus,
)
from proofs_numeric.claim import ClaimResult, single_thread
from toy_problems import ConvexQuadratic, RandomNonconvex, TwoTaskToy
from toy_problems.runner import Track, run_tracks
from toy_problems.task_transforms import TaskTransform

NAME = "invariance"

INVARIANCE_TOLERANCE = 1e-8
"""Largest accepted deviation (in step scales) of the median transformed run of DiBS-MTL and DiBS;
also the floor of the control test."""

ROUNDING_FACTOR = 10.0
"""Control test: per case, the largest transformed deviation of an invariant method may be at most
this many times the largest control deviation (or `INVARIANCE_TOLERANCE`, if larger)."""

DIVERGENCE_MIN = 10.0
"""Smallest accepted median deviation (in step scales) of each non-invariant method (LS, MGDA, FAMO,
RLW): in the typical run, not just in one, the transformed trajectory leaves the nominal one by at
least this many steps' worth."""

NASH_TOLERANCE_FLOOR = 1e-4
"""Floor (in step scales) of Nash-MTL's control test. `core.NashMTL` stops at relative residual
1e-10 and is warm-started from the previous step's solution, which a transform rescales by the
previous step's `h'`, so per step the versions differ by up to ~1e-10 relative (measured in
`proofs_numeric.nash_transforms`), not by rounding; the dynamics amplify that like rounding. A run
may therefore deviate by up to `ROUNDING_FACTOR` times this floor even when its control does not."""

MIN_NONLINEARITY = 5.0
"""A drawn transform is kept only if `max h' / min h'` over the task's loss range is at least this."""

STATEMENT = (
    "In float64, under random strictly increasing nonaffine per-task loss transforms (compositions of "
    "exp/log/signed powers/softplus/arcsinh, and the toy's f0 -> f0^3|f0|), whole trajectories of 1-step and "
    "5-step DiBS-MTL (Adam) and of DiBS coincide with the untransformed ones: the median run to "
    f"<= {INVARIANCE_TOLERANCE:.0e} step scales, the farthest no more than {ROUNDING_FACTOR:g}x as far as a constant "
    "rescaling of the losses (a pure rounding perturbation) moves any run. Nash-MTL's coincide as far as rounding and its "
    f"solver tolerance allow (the same control test, floor {NASH_TOLERANCE_FLOOR:.0e} step scales): numerically "
    "invariant, unlike the DiBS-MTL paper's grouping, though most of its runs amplify rounding near Pareto "
    "stationarity. Linear scalarisation, MGDA, FAMO and RLW (same draws) leave the nominal trajectory by "
    f">= {DIVERGENCE_MIN:g} step scales in the median run."
)

TOY_STARTS = ((-8.5, 7.5), (0.1, 0.1), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
"""The five starting points of the DiBS-MTL toy trainer (spec dibs.md §5)."""

TOY_LOWER_BOUND = -20.0
"""Every toy loss is > -20 (the quadratic branch `s_i c_2 >= -20`, the log branch `a_i c_1 >= -6.3`)."""

INVARIANT = ("dibsmtl", "dibsmtl:steps=5", "dibs", "nashmtl")
EXACT = ("dibsmtl", "dibsmtl:steps=5", "dibs")
"""The invariant methods whose median run must also coincide to `INVARIANCE_TOLERANCE`."""
NON_INVARIANT = ("ls", "mgda", "famo", "rlw")
ADAM_METHODS = ("dibsmtl", "dibsmtl:steps=5", "nashmtl", "ls", "mgda", "famo", "rlw")
"""The method specs (`core.make_method`) run with Adam; "dibs" is the DiBS iteration itself."""

NOMINAL, CONTROL = 0, 1
"""Version indices: the nominal losses and the rounding control; versions 2, 3, ... are transformed."""


# ---------------------------------------------------------------------------------------------
# random strictly increasing transforms


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _choice(generator: torch.Generator, options: Sequence[str]) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


def nonlinearity(
    transform: MonotoneTransform, loss_range: tuple[float, float], /, *, points: int = 201
) -> float:
    """`max h' / min h'` of the analytic derivative on a grid over `loss_range` (1 for affine maps)."""
    grid = torch.linspace(*loss_range, points, dtype=torch.float64)
    derivative = transform.derivative(grid)
    return float(derivative.max() / derivative.min())


def _layer(generator: torch.Generator, kind: str) -> tuple[MonotoneTransform, tuple[float, float]]:
    """A nonaffine layer and the input interval [start, start + span] its affine map aims at."""
    if kind == "exp":
        return Exp(), (_uniform(generator, -2.0, 0.0), _uniform(generator, 1.0, 4.0))
    if kind == "softplus":
        return Softplus(beta=_uniform(generator, 0.5, 2.0)), (
            _uniform(generator, -3.0, 0.0),
            _uniform(generator, 2.0, 5.0),
        )
    if kind == "arcsinh":
        return Arcsinh(), (_uniform(generator, -4.0, 0.0), _uniform(generator, 2.0, 8.0))
    # signed power on a positive interval: p in [1.3, 3.5] or its reciprocal (never close to 1)
    power = _uniform(generator, 1.3, 3.5)
    if _uniform(generator, 0.0, 1.0) < 0.5:
        power = 1.0 / power
    return SignedPower(power), (_uniform(generator, 0.1, 1.0), _uniform(generator, 1.0, 4.0))


def _draw_composition(
    generator: torch.Generator,
    loss_range: tuple[float, float],
    lower_bound: float,
    depth: tuple[int, int],
) -> MonotoneTransform:
    low, high = loss_range
    bound = lower_bound
    layers: list[MonotoneTransform] = []
    for _ in range(int(torch.randint(depth[0], depth[1] + 1, (), generator=generator))):
        kinds = ("exp", "softplus", "arcsinh", "power") + (("log",) if math.isfinite(bound) else ())
        kind = _choice(generator, kinds)
        if kind == "log":
            # log(a (t - bound) + u0): positive for every possible value t >= bound, not only the range
            offset, width = _uniform(generator, 0.05, 0.5), _uniform(generator, 2.0, 20.0)
            scale = width / (high - bound)
            pre, layer = Affine(scale=scale, shift=offset - scale * bound), Log()
        else:
            layer, (start, span) = _layer(generator, kind)
            scale = span / (high - low)
            pre = Affine(scale=scale, shift=start - scale * low)
        step = Compose(pre, layer)
        low, high = step(torch.tensor([low, high], dtype=torch.float64)).tolist()
        bound = (
            float(step(torch.tensor(bound, dtype=torch.float64)))
            if math.isfinite(bound)
            else layer.image.lower
        )
        layers += [pre, layer]
    layers.append(Affine(scale=10.0 ** _uniform(generator, -1.5, 1.5)))
    return Compose(*layers)


def random_transform(
    generator: torch.Generator,
    loss_range: tuple[float, float],
    /,
    *,
    lower_bound: float = -math.inf,
    depth: tuple[int, int] = (2, 3),
    min_nonlinearity: float = MIN_NONLINEARITY,
    max_tries: int = 100,
) -> MonotoneTransform:
    """A random strictly increasing nonaffine transform for losses in `loss_range` (all draws from `generator`).

    `lower_bound` is a bound every possible loss respects (`-inf` if none): Log layers are drawn
    only where it is finite and are preceded by an affine map that sends it to a positive number, so
    the transform is defined for every loss the problem can produce, not just those in the range.
    Redraws until `nonlinearity(h, loss_range) >= min_nonlinearity`.
    """
    if not loss_range[0] < loss_range[1] or not lower_bound <= loss_range[0]:
        raise ValueError(f"need lower_bound <= low < high, got {lower_bound} and {loss_range}")
    for _ in range(max_tries):
        transform = _draw_composition(generator, loss_range, lower_bound, depth)
        if nonlinearity(transform, loss_range) >= min_nonlinearity:
            return transform
    raise RuntimeError(f"no transform with nonlinearity >= {min_nonlinearity} in {max_tries} draws")


# ---------------------------------------------------------------------------------------------
# problems in several versions, as one batch


class TransformedFamily:
    """Problems of one shape, each in several versions (nominal and transformed), as one objective.

    `problems[p]` maps `[..., n]` to `[..., K]`; `transforms[p][v][i]` is task i's transform in
    version v of problem p (None: the nominal loss). The objective takes `x` of shape
    `[P, V, ..., n]` and returns `[P, V, ..., K]`, row `[p, v]` being version v of problem p.
    """

    def __init__(
        self,
        problems: Sequence[Callable[[Tensor], Tensor]],
        transforms: Sequence[Sequence[Sequence[MonotoneTransform | None]]],
    ) -> None:
        self.problems = list(problems)
        self.transforms = [[list(version) for version in versions] for versions in transforms]
        self.num_versions = len(self.transforms[0])
        self.num_tasks = len(self.transforms[0][0])

    def __call__(self, x: Tensor, /) -> Tensor:
        rows = []
        for problem, versions in zip(self.problems, self.transforms):
            values = problem(x[len(rows)])
            rows.append(
                torch.stack([self._apply(version, values[v]) for v, version in enumerate(versions)])
            )
        return torch.stack(rows)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """The values `[P, V, ..., K]` and per-task gradients `[P, V, ..., K, n]` of every row: each
        problem's own (closed form where it has one), its versions by the chain rule `h'(l) grad l`
        (autograd through the transforms cost 3 backward passes a step)."""
        values_rows, jacobian_rows = [], []
        for problem, versions, rows in zip(self.problems, self.transforms, x):
            values, jacobian = core.values_and_jacobian(problem, rows)
            pairs = [
                self._apply_with_jacobian(version, values[v], jacobian[v])
                for v, version in enumerate(versions)
            ]
            values_rows.append(torch.stack([value for value, _ in pairs]))
            jacobian_rows.append(torch.stack([gradient for _, gradient in pairs]))
        return torch.stack(values_rows), torch.stack(jacobian_rows)

    @staticmethod
    def _apply_with_jacobian(
        version: Sequence[MonotoneTransform | None], values: Tensor, jacobian: Tensor
    ) -> tuple[Tensor, Tensor]:
        if all(h is None for h in version):
            return values, jacobian
        values, jacobian = values.clone(), jacobian.clone()
        for i, h in enumerate(version):
            if h is not None:
                jacobian[..., i, :] *= h.derivative(values[..., i])[..., None]
                values[..., i] = h(values[..., i])
        return values, jacobian

    @staticmethod
    def _apply(version: Sequence[MonotoneTransform | None], values: Tensor) -> Tensor:
        if all(h is None for h in version):
            return values
        return torch.stack(
            [values[..., i] if h is None else h(values[..., i]) for i, h in enumerate(version)],
            dim=-1,
        )

    def nominal(self, x: Tensor, /) -> Tensor:
        """The untransformed losses of every row, `[P, V, ..., K]`."""
        return torch.stack([problem(x[p]) for p, problem in enumerate(self.problems)])

    def derivatives(self, nominal_losses: Tensor, /) -> Tensor:
        """`h_i'(l_i)` for every row (1 where the loss is nominal), same shape as `nominal_losses`."""
        out = torch.ones_like(nominal_losses)
        for p, versions in enumerate(self.transforms):
            for v, version in enumerate(versions):
                for i, h in enumerate(version):
                    if h is not None:
                        out[p, v, ..., i] = h.derivative(nominal_losses[p, v, ..., i])
        return out


# ---------------------------------------------------------------------------------------------
# the weights of one step


def method_weights(
    method: GradientWeighting | LossWeighting,
    values: Tensor,
    jacobian: Tensor,
    *,
    shared_dim: int | None = None,
) -> Tensor:
    """The method's weights from the losses `[..., K]` and the Jacobian `[..., K, n]` (Gramian on
    the first `shared_dim` variables, all if None)."""
    if isinstance(method, GradientWeighting):
        shared = jacobian if shared_dim is None else jacobian[..., :shared_dim]
        return method(core.gramian(shared), values)
    return method(values).detach()


# ---------------------------------------------------------------------------------------------
# measures


def deviations(points: Tensor, /) -> dict[str, Tensor]:
    """Deviations from the nominal run, from iterates `[T + 1, P, V, S, n]` (version 0 nominal, 1 the control).

    `transform` `[P, V - 2, S]` and `control` `[P, S]`: `max_t ||x'_t - x_t||` relative to the step
    scale `max_t ||x_{t+1} - x_t||` of the nominal run; `endpoint` `[P, V - 2, S]`: `||x'_T - x_T||`.
    """
    nominal = points[:, :, :1]
    ratio = (points - nominal).norm(dim=-1).amax(dim=0) / (nominal[1:] - nominal[:-1]).norm(
        dim=-1
    ).amax(dim=0)
    return {
        "transform": ratio[:, 2:],
        "control": ratio[:, CONTROL],
        "endpoint": (points[-1, :, 2:] - points[-1, :, :1]).norm(dim=-1),
    }


def dominance(
    family: TransformedFamily, points: Tensor, final_weights: Tensor, loss_ranges: Tensor
) -> dict[str, Tensor]:
    """Which task the transformed runs favour, from iterates `[T + 1, P, V, S, n]`.

    `gain` `[P, V - 2, S, K]`: the change (transformed minus nominal run) of each task's nominal-loss
    decrease over the run, in units of the task's loss range (`loss_ranges` `[P, K]`);
    `share_tv` `[P, V - 2, S]`: total variation between the final shares of the tasks in the
    direction, as weights on the nominal gradients, of the transformed and the nominal run.
    """
    first, last = family.nominal(points[0]), family.nominal(points[-1])  # [P, V, S, K]
    decrease = (first - last) / loss_ranges[:, None, None, :]
    effective = final_weights * family.derivatives(last)
    shares = effective / effective.sum(dim=-1, keepdim=True)
    return {
        "gain": decrease[:, 2:] - decrease[:, :1],
        "share_tv": 0.5 * (shares[:, 2:] - shares[:, :1]).abs().sum(dim=-1),
        "shares": shares,
    }


def control_test(
    transform: Tensor, control: Tensor, /, *, floor: float = INVARIANCE_TOLERANCE
) -> dict[str, float | int]:
    """The control test of one case: transformed ratios `[P, V - 2, S]` against the control's `[P, S]`.

    `excess`: the largest transformed deviation over `ROUNDING_FACTOR x` the largest control deviation
    (floored at `floor`); the test passes at `excess <= 1`.
    """
    allowed = ROUNDING_FACTOR * max(float(control.max()), floor)
    return {
        "max_ratio": float(transform.max()),
        "max_control_ratio": float(control.max()),
        "excess": float(transform.max()) / allowed,
        "rounding_sensitive_runs": int((control > INVARIANCE_TOLERANCE).sum()),
        "runs": int(control.numel()),
    }


# ---------------------------------------------------------------------------------------------
# the cases


def loss_ranges(
    problems: Sequence[Callable[[Tensor], Tensor]],
    lows: Tensor,
    highs: Tensor,
    *,
    generator: torch.Generator,
    samples: int = 4096,
) -> Tensor:
    """Per problem and task, the (min, max) of the loss over `samples` uniform points of the box
    `[lows, highs]` enlarged by a quarter on each side, `[P, K, 2]`."""
    out = []
    for problem in problems:
        width = highs - lows
        x = (
            lows
            - 0.25 * width
            + 1.5
            * width
            * torch.rand(samples, lows.numel(), generator=generator, dtype=torch.float64)
        )
        values = problem(x)
        out.append(torch.stack([values.amin(dim=0), values.amax(dim=0)], dim=-1))
    return torch.stack(out)


def draw_versions(
    generator: torch.Generator, ranges: Tensor, lower_bounds: Tensor, num_random: int
) -> list[list[list[MonotoneTransform | None]]]:
    """Per problem: the nominal version (no transforms), the control (`Affine(scale=10^U(-1, 1))` per
    task) and `num_random` versions with a random transform per task."""
    per_problem = []
    num_tasks = ranges.shape[1]
    for p in range(ranges.shape[0]):
        control: list[MonotoneTransform | None] = [
            Affine(scale=10.0 ** _uniform(generator, -1.0, 1.0)) for _ in range(num_tasks)
        ]
        versions: list[list[MonotoneTransform | None]] = [[None] * num_tasks, control]
        for _ in range(num_random):
            versions.append(
                [
                    random_transform(
                        generator,
                        tuple(ranges[p, i].tolist()),
                        lower_bound=float(lower_bounds[p, i]),
                    )
                    for i in range(num_tasks)
                ]
            )
        per_problem.append(versions)
    return per_problem


def describe(
    transforms: Sequence[Sequence[Sequence[MonotoneTransform | None]]],
) -> list[list[list[str]]]:
    """The `to_spec()` strings of every transform ("identity" for the nominal losses)."""
    return [
        [["identity" if h is None else h.to_spec() for h in version] for version in versions]
        for versions in transforms
    ]


@dataclass
class Case:
    """Problems of one shape in several versions: starts `[P, V, S, n]`, lower bounds `[P, K]`, loss ranges `[P, K, 2]`."""

    name: str
    family: TransformedFamily
    starts: Tensor
    lower_bounds: Tensor
    ranges: Tensor
    num_steps: int
    lr: float


def random_starts(
    problems: Sequence[Any], num_versions: int, num_starts: int, generator: torch.Generator
) -> Tensor:
    """`num_starts` uniform points of the first problem's box per problem, the same in every version, `[P, V, S, n]`."""
    lows, highs = box(problems[0])
    unit = torch.rand(
        len(problems), 1, num_starts, problems[0].n_var, generator=generator, dtype=torch.float64
    )
    return (lows + (highs - lows) * unit).expand(-1, num_versions, -1, -1).clone()


def box(problem: Any) -> tuple[Tensor, Tensor]:
    """A problem's `bounds` as two float64 `[n_var]` tensors."""
    lows, highs = (
        torch.as_tensor(b, dtype=torch.float64).expand(problem.n_var) for b in problem.bounds
    )
    return lows, highs


def toy_case(*, quick: bool, seed: int) -> Case:
    """The two-task toy from the five published starts: nominal, control, `f0 -> f0^3|f0|` (task 0), one random draw."""
    generator = torch.Generator().manual_seed(seed)
    toy = TwoTaskToy()
    ranges = loss_ranges([toy], *box(toy), generator=generator)
    lower = torch.full((1, 2), TOY_LOWER_BOUND, dtype=torch.float64)
    transforms = draw_versions(generator, ranges, lower, 1)
    transforms[0].insert(
        2, [SignedPower(4.0), None]
    )  # the reference toy's transform (spec dibs.md §5)
    starts = (
        torch.tensor(TOY_STARTS, dtype=torch.float64).expand(1, len(transforms[0]), -1, -1).clone()
    )
    num_steps, lr = (400, 2.5e-2) if quick else (35000, 1e-3)
    return Case("toy", TransformedFamily([toy], transforms), starts, lower, ranges, num_steps, lr)


def nonconvex_case(*, quick: bool, seed: int) -> Case:
    """RandomNonconvex(4 variables, 3 tasks) problems, random starts, random transforms per task and version."""
    generator = torch.Generator().manual_seed(seed)
    num_problems, num_starts, num_random = (2, 3, 1) if quick else (4, 6, 2)
    problems = [RandomNonconvex(4, 3, seed=seed + p) for p in range(num_problems)]
    ranges = loss_ranges(problems, *box(problems[0]), generator=generator)
    lower = torch.zeros(num_problems, 3, dtype=torch.float64)  # every RandomNonconvex loss is >= 0
    transforms = draw_versions(generator, ranges, lower, num_random)
    starts = random_starts(problems, num_random + 2, num_starts, generator)
    num_steps, lr = (300, 2e-2) if quick else (5000, 1e-2)
    return Case(
        "nonconvex", TransformedFamily(problems, transforms), starts, lower, ranges, num_steps, lr
    )


def version_tracks(case: Case, problem_index: int, spec: str, *, seed: int) -> list[Track]:
    """One runner track per version of problem `problem_index`: the method `spec` on the version's
    per-task transforms, all from `seed` (random methods then draw alike in every version)."""
    return [
        Track(
            spec,
            tuple(TaskTransform(task, h) for task, h in enumerate(version) if h is not None),
            seed,
            problem_index,
        )
        for version in case.family.transforms[problem_index]
    ]


def run_case(case: Case, *, seed: int) -> dict[str, dict[str, Any]]:
    """Every Adam-driven method on every row of the case: per method the measures and the iterates.

    One batched run of the toy runner (`toy_problems.runner.run_tracks`): every method in every
    version of every problem from every start, each step recorded. Methods that need positive
    losses see them shifted by the version's transformed lower bound (the runner's rule)."""
    began = time.perf_counter()
    num_problems, num_versions = case.starts.shape[:2]
    tracks = [
        track
        for name in ADAM_METHODS
        for p in range(num_problems)
        for track in version_tracks(case, p, name, seed=seed)
    ]
    runs = iter(
        run_tracks(
            case.family.problems,
            case.starts[:, 0],
            tracks,
            num_steps=case.num_steps,
            lr=case.lr,
            record_every=1,
        )
    )
    seconds = (time.perf_counter() - began) / len(ADAM_METHODS)  # one batch: the time shared
    results: dict[str, dict[str, Any]] = {}
    for name in ADAM_METHODS:
        mine = [[next(runs) for _ in range(num_versions)] for _ in range(num_problems)]
        stacked = torch.stack(
            [torch.stack([run.points for run in versions], dim=1) for versions in mine], dim=1
        )  # [T + 1, P, V, S, n]
        weights = torch.stack(
            [torch.stack([run.last_weights for run in versions]) for versions in mine]
        )  # [P, V, S, K]
        measures: dict[str, Any] = dict(deviations(stacked))
        measures.update(
            dominance(case.family, stacked, weights, case.ranges[..., 1] - case.ranges[..., 0])
        )
        measures["seconds"] = seconds
        measures["points"] = stacked
        results[name] = measures
    return results


def dibs_case(*, quick: bool, seed: int) -> dict[str, Any]:
    """DiBS on convex quadratics (3 variables) and nonconvex problems (4 variables), 3 tasks each.

    Preferred states: normalised descent on every version's own oracle; the nominal version's are
    shared by all versions for the main measure ("shared"), the per-version ones give "own".
    """
    generator = torch.Generator().manual_seed(seed)
    num_problems, num_starts, num_random = (2, 3, 1) if quick else (3, 6, 2)
    preferred_steps, num_steps = (150, 150) if quick else (3000, 5000)
    schedule = core.robbins_monro_step(0.05, power=0.75)
    families = {
        "convex": [ConvexQuadratic.random(3, 3, seed=seed + p) for p in range(num_problems)],
        "nonconvex": [RandomNonconvex(4, 3, seed=seed + 100 + p) for p in range(num_problems)],
    }
    out: dict[str, Any] = {}
    for name, problems in families.items():
        ranges = loss_ranges(problems, *box(problems[0]), generator=generator)
        lower = torch.zeros(num_problems, 3, dtype=torch.float64)  # both families are >= 0
        transforms = draw_versions(generator, ranges, lower, num_random)
        starts = random_starts(problems, num_random + 2, num_starts, generator)
        began = time.perf_counter()
        own = core.preferred_states_by_normalized_descent(
            TransformedFamily(problems, transforms), starts, num_steps=preferred_steps
        )
        # one batch for both DiBS runs: versions 0..V-1 with the nominal preferred states (shared),
        # then the transformed versions again with their own
        doubled = TransformedFamily(problems, [versions + versions[1:] for versions in transforms])
        preferred = torch.cat([own[:, :1].expand_as(own), own[:, 1:]], dim=1)
        both = core.dibs(
            doubled,
            torch.cat([starts, starts[:, 1:]], dim=1),
            preferred,
            num_steps=num_steps,
            step_size=schedule,
        )
        num_versions = starts.shape[1]
        trajectory = both[:, :, :num_versions]
        own_trajectory = torch.cat([both[:, :, :1], both[:, :, num_versions:]], dim=2)
        last_step = 0.5 / preferred_steps  # the default normalised-descent schedule 0.5 / (k + 1)
        out[name] = {
            **deviations(trajectory),
            "own_oracle": deviations(own_trajectory),
            "preferred_gap": (own[:, 1:] - own[:, :1]).norm(dim=-1).amax(dim=-1),  # [P, V - 1, S]
            "preferred_last_step": last_step,
            "seconds": time.perf_counter() - began,
            "transforms": describe(transforms),
        }
    return out


# ---------------------------------------------------------------------------------------------
# the claim


def _summary(measures: dict[str, Any]) -> dict[str, Any]:
    transform, control = measures["transform"], measures["control"]
    summary: dict[str, Any] = {
        "max_ratio": float(transform.max()),
        "median_ratio": float(transform.flatten().median()),
        "min_ratio": float(transform.min()),
        "control_ratios": control.flatten().tolist(),
        "ratios": transform.flatten().tolist(),
        "max_endpoint_distance": float(measures["endpoint"].max()),
        "median_endpoint_distance": float(measures["endpoint"].flatten().median()),
        "seconds": round(measures["seconds"], 2),
    }
    if "share_tv" in measures:
        gain = measures["gain"]  # [P, V - 2, S, K]
        summary["mean_share_tv"] = float(measures["share_tv"].mean())
        summary["favoured_task"] = gain.argmax(dim=-1).flatten().tolist()
        summary["max_gain"] = gain.amax(dim=-1).flatten().tolist()
    return summary


def _decrease(points: Tensor, version: int) -> list[float]:
    """Mean over the toy's starts of each task's nominal-loss decrease in one version's runs."""
    toy = TwoTaskToy()
    return (toy(points[0, 0, version]) - toy(points[-1, 0, version])).mean(dim=0).tolist()


@dataclass
class Measurements:
    """Everything `run` measures before judging it (so that a verdict can be re-evaluated)."""

    quick: bool
    cases: list[Case]
    per_case: dict[str, dict[str, dict[str, Any]]]
    dibs_results: dict[str, Any]
    seconds: float


def measure(*, quick: bool, seed: int = 0) -> Measurements:
    """Run every case (the expensive part of `run`), on one torch thread."""
    began = time.perf_counter()
    with single_thread():
        cases = [toy_case(quick=quick, seed=seed), nonconvex_case(quick=quick, seed=seed + 1)]
        per_case = {case.name: run_case(case, seed=seed) for case in cases}
        dibs_results = dibs_case(quick=quick, seed=seed + 2)
    return Measurements(quick, cases, per_case, dibs_results, time.perf_counter() - began)


def run(*, quick: bool) -> ClaimResult:
    return evaluate(measure(quick=quick))


def evaluate(measurements: Measurements, /) -> ClaimResult:
    """The verdict, measured/bound strings, data and figure from `measure`'s results (module constants
    are read here, not in `measure`)."""
    quick, cases, per_case, dibs_results = (
        measurements.quick,
        measurements.cases,
        measurements.per_case,
        measurements.dibs_results,
    )

    invariant: dict[str, dict[str, Any]] = {}
    for name in INVARIANT:
        sources = dibs_results if name == "dibs" else {c: per_case[c][name] for c in per_case}
        floor = NASH_TOLERANCE_FLOOR if name == "nashmtl" else INVARIANCE_TOLERANCE
        tests = {
            c: control_test(m["transform"], m["control"], floor=floor) for c, m in sources.items()
        }
        median = float(torch.cat([m["transform"].flatten() for m in sources.values()]).median())
        excess = max(t["excess"] for t in tests.values())
        invariant[name] = {
            "median_ratio": median,
            "max_ratio": max(t["max_ratio"] for t in tests.values()),
            "max_control_ratio": max(t["max_control_ratio"] for t in tests.values()),
            "control_excess": excess,
            "rounding_sensitive_runs": sum(t["rounding_sensitive_runs"] for t in tests.values()),
            "runs": sum(t["runs"] for t in tests.values()),
            "per_case": tests,
            "passed": bool(
                math.isfinite(excess)
                and excess <= 1.0
                and (name not in EXACT or median <= INVARIANCE_TOLERANCE)
            ),
        }
    divergent: dict[str, dict[str, Any]] = {}
    for name in NON_INVARIANT:
        transform = torch.cat([per_case[c][name]["transform"].flatten() for c in per_case])
        divergent[name] = {
            "median_ratio": float(transform.median()),  # NaN (a failed run) fails the test below
            "min_ratio": float(transform.min()),
            "max_ratio": float(transform.max()),
            "max_endpoint_distance": max(
                float(per_case[c][name]["endpoint"].max()) for c in per_case
            ),
            "mean_share_total_variation": float(
                torch.cat([per_case[c][name]["share_tv"].flatten() for c in per_case]).mean()
            ),
            "control_excess": max(
                control_test(per_case[c][name]["transform"], per_case[c][name]["control"])["excess"]
                for c in per_case
            ),
        }
        divergent[name]["passed"] = bool(divergent[name]["median_ratio"] >= DIVERGENCE_MIN)
    passed = all(v["passed"] for v in invariant.values()) and all(
        v["passed"] for v in divergent.values()
    )

    own = {
        c: {
            "max_ratio": float(m["own_oracle"]["transform"].max()),
            "median_ratio": float(m["own_oracle"]["transform"].flatten().median()),
            "max_preferred_state_gap": float(m["preferred_gap"].max()),
            "last_normalized_descent_step": m["preferred_last_step"],
        }
        for c, m in dibs_results.items()
    }
    toy = per_case["toy"]
    data = {
        "quick": quick,
        "seconds": round(measurements.seconds, 2),
        "invariance_tolerance": INVARIANCE_TOLERANCE,
        "nash_tolerance_floor": NASH_TOLERANCE_FLOOR,
        "rounding_factor": ROUNDING_FACTOR,
        "divergence_min": DIVERGENCE_MIN,
        "min_nonlinearity": MIN_NONLINEARITY,
        "invariant": invariant,
        "non_invariant": divergent,
        "dibs_with_per_version_preferred_states": own,
        "cases": {
            case.name: {
                "num_steps": case.num_steps,
                "lr": case.lr,
                "optimizer": "adam (torch defaults)",
                "problems": case.starts.shape[0],
                "starts_per_problem": case.starts.shape[2],
                "versions": "nominal, control (constant per-task scales), transformed...",
                "transforms": describe(case.family.transforms),
                "nonlinearity": [
                    [
                        [
                            None
                            if h is None
                            else nonlinearity(h, tuple(case.ranges[p, i].tolist()))
                            for i, h in enumerate(version)
                        ]
                        for version in versions[2:]
                    ]
                    for p, versions in enumerate(case.family.transforms)
                ],
                "methods": {name: _summary(per_case[case.name][name]) for name in ADAM_METHODS},
            }
            for case in cases
        },
        "dibs_cases": {
            c: {**_summary(m), "transforms": m["transforms"]} for c, m in dibs_results.items()
        },
        "toy_reference_transform": {
            name: {
                "nominal_loss_decrease_nominal_run": _decrease(toy[name]["points"], NOMINAL),
                "nominal_loss_decrease_transformed_run": _decrease(toy[name]["points"], 2),
                "endpoints_nominal_run": toy[name]["points"][-1, 0, NOMINAL].tolist(),
                "endpoints_transformed_run": toy[name]["points"][-1, 0, 2].tolist(),
            }
            for name in ADAM_METHODS
        },
    }
    measured = (
        ", ".join(
            f"{k} {v['median_ratio']:.0e}/{v['control_excess']:.1g}" for k, v in invariant.items()
        )
        + "; "
        + ", ".join(f"{k} {v['median_ratio']:.0f}" for k, v in divergent.items())
    )
    bound = (
        f"invariant: median <= {INVARIANCE_TOLERANCE:.0e} (not Nash-MTL) / control excess <= 1; "
        f"others: median >= {DIVERGENCE_MIN:g} (step scales)"
    )
    return ClaimResult(
        NAME, STATEMENT, passed, measured, bound, data, _figure(toy, invariant, divergent)
    )


def _figure(
    toy: dict[str, dict[str, Any]],
    invariant: dict[str, dict[str, Any]],
    divergent: dict[str, dict[str, Any]],
):
    from matplotlib.figure import Figure

    shown = ("dibsmtl", "nashmtl", "ls", "mgda")
    figure = Figure(figsize=(3.6 * (len(shown) + 1), 3.6))
    axes = figure.subplots(1, len(shown) + 1)
    pareto = TwoTaskToy().pareto_set(200)
    for axis, name in zip(axes, shown):
        points = toy[name]["points"]  # [T + 1, 1, V, S, 2]
        stride = max(1, points.shape[0] // 400)
        for s in range(points.shape[3]):
            axis.plot(
                points[::stride, 0, NOMINAL, s, 0],
                points[::stride, 0, NOMINAL, s, 1],
                color="tab:blue",
                lw=1.8,
                alpha=0.6,
            )
            axis.plot(
                points[::stride, 0, 2, s, 0],
                points[::stride, 0, 2, s, 1],
                color="tab:red",
                lw=0.9,
                ls="--",
            )
        axis.plot(pareto[:, 0], pareto[:, 1], color="k", lw=0.6)
        axis.set(title=f"toy: {name}", xlabel="x1", ylabel="x2", xlim=(-10, 10), ylim=(-10, 10))
    axes[0].plot([], [], color="tab:blue", label="nominal")
    axes[0].plot([], [], color="tab:red", ls="--", label="f0 -> f0^3|f0|")
    axes[0].legend(fontsize=7, loc="upper right")
    names = list(invariant) + list(divergent)
    medians = [
        max(invariant[n]["median_ratio"] if n in invariant else divergent[n]["median_ratio"], 1e-18)
        for n in names
    ]
    colors = ["tab:green" if n in invariant else "tab:orange" for n in names]
    maxima = [
        max(
            invariant[n]["max_ratio"]
            if n in invariant
            else divergent[n].get("max_ratio", float("nan")),
            1e-18,
        )
        for n in names
    ]
    axes[-1].bar(range(len(names)), medians, color=colors)
    axes[-1].scatter(range(len(names)), maxima, color="k", marker="_", s=80, label="max over runs")
    axes[-1].axhline(INVARIANCE_TOLERANCE, color="k", ls=":", lw=0.8)
    axes[-1].axhline(DIVERGENCE_MIN, color="k", ls="--", lw=0.8)
    axes[-1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    axes[-1].set(yscale="log", title="deviation / step scale (bar: median)")
    axes[-1].legend(fontsize=7, loc="center left")
    figure.tight_layout()
    return figure
