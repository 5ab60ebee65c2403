"""Every registered method, measured: are its updates invariant to rescaled and to transformed losses?

The `invariance` claim follows a few methods' whole trajectories under transforms; this one asks
the question of every method in the registry (at its default hyperparameters) and checks the
answer against what the method declares: `rescaling_invariant` (the update is unchanged when
each task loss is multiplied by its own positive constant) and `monotone_invariant` (unchanged
when each loss `l_i` is replaced by `h_i(l_i)`, `h_i` strictly increasing: the method then sees
`h_i(l_i)` and the gradient `h_i'(l_i) g_i`).

Protocol (float64). For each method, its own nominal trajectory is run with Adam (the toy
runner, as every toy experiment; a method of the engine's representation mode only, RotoGrad, runs
through `core.mtl_backward` on the model whose identity encoder's features are the problem's
variables, which gives it the same per-task gradients) on two cases: the two-task DiBS-MTL toy from its five published
starts, and seeded `RandomNonconvex` problems (3 tasks, 4 variables) from random starts. Along
that trajectory, step by step, the method is fed the inputs of every *version* of the problem at
the same iterate (teacher forcing: the versions share the points, so what differs is the
method's answer, not chaos of the dynamics): the nominal losses; the *control*, each loss times
a constant `10^U(-1, 1)`; random strictly increasing nonaffine transforms per task (the
compositions of `proofs_numeric.invariance.random_transform`); and the *rounding* version, the
nominal inputs with every number multiplied by `1 + 1e-14 U(-1, 1)`. A fresh instance runs each
version over the whole sequence, with its whole lifecycle (state, `after_step` with the next
losses, `end_epoch`, its own learnable parameters stepped by Adam as the engine's gradient gives
them), and random methods draw from the same seed in every version. Methods whose loss domain is
not "any" see the losses minus the version's (transformed) lower bound, as in every toy run.

Measure: per version and row, the largest distance between the version's update and the nominal
one over the trajectory, relative to the largest size of the nominal update's terms
`sum_i |w_i| ||g_i||` (for Jacobian aggregations, `sum_i |head weight_i| ||g_i||` or `||d||` if
larger). A version leaves the method *invariant* when, in every row of every case, that
deviation is at most `ROUNDING_FACTOR` times the rounding version's largest deviation, or
`FLOOR`, and never more than `CEILING`: the transform moves the update no more than a
perturbation of the inputs at the level of their own rounding does (solver tolerances and the
amplification of rounding show up in the rounding version too), and by a negligible amount.

Verdict: measured rescaling invariance (the control) and monotone invariance (the control and
every transformed version) equal the declared claims, for every registered method. A method that
declares an invariance it does not have fails, and so does one that has an invariance it does not
declare.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import core
from core.errors import MTLInputError
from core.methods.base import JacobianAggregation, Method
from core.registry import available_methods, make_method
from proofs_numeric.claim import ClaimResult, single_thread
from proofs_numeric.invariance import TOY_LOWER_BOUND, box, draw_versions, loss_ranges
from toy_problems import RandomNonconvex, TwoTaskToy
from toy_problems.runner import Track, make_optimizer, run_tracks, step_direction

NAME = "method_invariance"

ROUNDING_FACTOR = 10.0
"""A version leaves a method invariant if its deviation is at most this times the rounding version's."""

FLOOR = 1e-9
"""... or at most this (relative to the terms of the update): below it every method is invariant."""

CEILING = 1e-6
"""... but never more than this: a method whose update a rounding-level perturbation of its inputs
moves by more than this (SDMGrad at its default lr 10 amplifies it to O(1) over a trajectory)
cannot be measured invariant, whatever it declares."""

ROUNDING_PERTURBATION = 1e-14
"""The rounding version multiplies every input number by `1 + ROUNDING_PERTURBATION * U(-1, 1)`."""

STATEMENT = (
    "For every registered method at its defaults, whether its update is invariant to per-task positive rescaling and to "
    "strictly increasing nonaffine loss transforms, measured in float64 along whole teacher-forced trajectories on the "
    "DiBS-MTL toy and random nonconvex problems against a rounding control, equals what the method declares "
    "(rescaling_invariant, monotone_invariant)."
)
DECLARED = ("rescaling_invariant", "monotone_invariant")


@dataclass
class Case:
    """Problems of one shape with their versions: starts `[P, S, n]`, lower bounds `[P, K]`, and
    per problem the transforms of each version (`draw_versions`: nominal, control, random ones)."""

    name: str
    problems: list[Any]
    starts: Tensor
    lower_bounds: Tensor
    transforms: list[list[list[core.MonotoneTransform | None]]]
    num_steps: int
    lr: float


def toy_case(*, quick: bool, seed: int) -> Case:
    """The DiBS-MTL toy from its five starts; the control and one (quick) or two random versions."""
    generator = torch.Generator().manual_seed(seed)
    toy = TwoTaskToy()
    ranges = loss_ranges([toy], *box(toy), generator=generator)
    lower = torch.full((1, 2), TOY_LOWER_BOUND, dtype=torch.float64)
    transforms = draw_versions(generator, ranges, lower, 1 if quick else 2)
    return Case(
        "toy",
        [toy],
        toy.default_starts(dtype=torch.float64)[None],
        lower,
        transforms,
        150 if quick else 1500,
        1e-2,
    )


def nonconvex_case(*, quick: bool, seed: int) -> Case:
    """`RandomNonconvex(4, 3)` problems from random starts in their box."""
    generator = torch.Generator().manual_seed(seed)
    num_problems, num_starts = (2, 2) if quick else (3, 4)
    problems = [RandomNonconvex(4, 3, seed=seed + p) for p in range(num_problems)]
    ranges = loss_ranges(problems, *box(problems[0]), generator=generator)
    lower = torch.zeros(num_problems, 3, dtype=torch.float64)  # every RandomNonconvex loss is >= 0
    transforms = draw_versions(generator, ranges, lower, 1 if quick else 2)
    lows, highs = box(problems[0])
    starts = lows + (highs - lows) * torch.rand(
        num_problems, num_starts, 4, generator=generator, dtype=torch.float64
    )
    return Case("nonconvex", problems, starts, lower, transforms, 100 if quick else 1000, 2e-2)


# ---------------------------------------------------------------------------------------------
# the inputs of every version along a nominal trajectory


def version_inputs(
    case: Case, points: Tensor, method: Method, *, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """What the method sees at the iterates `points` `[T, P, S, n]` in every version, the rounding
    version last: losses `[T, V + 1, P, S, K]` and per-task gradients `[T, V + 1, P, S, K, n]`."""
    values_per_problem, jacobians_per_problem = [], []
    for p, problem in enumerate(case.problems):
        nominal, gradients = core.values_and_jacobian(
            problem, points[:, p]
        )  # [T, S, K], [T, S, K, n]
        versions_values, versions_jacobians = [], []
        for version in case.transforms[p]:
            values, jacobian = nominal.clone(), gradients.clone()
            for task, h in enumerate(version):
                if h is not None:
                    jacobian[..., task, :] *= h.derivative(nominal[..., task])[..., None]
                    values[..., task] = h(nominal[..., task])
            if (
                method.loss_domain != "any"
            ):  # the runner's rule: minus the version's transformed lower bound
                bound = case.lower_bounds[p]
                values = values - torch.stack(
                    [bound[t] if h is None else h(bound[t]) for t, h in enumerate(version)]
                )
            versions_values.append(values)
            versions_jacobians.append(jacobian)
        values_per_problem.append(torch.stack(versions_values, dim=1))  # [T, V, S, K]
        jacobians_per_problem.append(torch.stack(versions_jacobians, dim=1))
    values, jacobian = (
        torch.stack(values_per_problem, dim=2),
        torch.stack(jacobians_per_problem, dim=2),
    )

    def wobble(x: torch.Tensor) -> torch.Tensor:
        noise = 2 * torch.rand(x[:, :1].shape, generator=generator, dtype=x.dtype) - 1
        return x[:, :1] * (1 + ROUNDING_PERTURBATION * noise)

    return torch.cat([values, wobble(values)], dim=1), torch.cat(
        [jacobian, wobble(jacobian)], dim=1
    )


# ---------------------------------------------------------------------------------------------
# the method's answers, teacher-forced


def forced_updates(
    spec: str, values: Tensor, jacobian: Tensor, *, lr: float, seed: int, versions: int = 1
) -> tuple[Tensor, Tensor]:
    """The updates `[T, B, n]` and the sizes of their terms `[T, B]` of `spec` fed the sequences
    of losses `values` `[T, B, K]` and gradients `jacobian` `[T, B, K, n]` (B independent rows:
    one instance with batch shape `[B]`). A random method gets one instance per version (the rows
    in `versions` equal contiguous blocks), each from `seed`: its draws depend only on the batch
    shape, so row r of every version draws the same numbers, as the nominal row does."""
    num_tasks = values.shape[-1]
    if not make_method(spec, num_tasks=num_tasks).random:
        return _forced(make_method(spec, num_tasks=num_tasks), values, jacobian, lr=lr)
    if values.shape[1] % versions:
        raise ValueError(f"{values.shape[1]} rows do not split into {versions} versions")
    block = values.shape[1] // versions
    parts = [
        _forced(
            make_method(spec, num_tasks=num_tasks, generator=torch.Generator().manual_seed(seed)),
            values[:, v * block : (v + 1) * block],
            jacobian[:, v * block : (v + 1) * block],
            lr=lr,
        )
        for v in range(versions)
    ]
    return torch.cat([u for u, _ in parts], dim=1), torch.cat([s for _, s in parts], dim=1)


def _forced(
    method: Method, values: Tensor, jacobian: Tensor, *, lr: float
) -> tuple[Tensor, Tensor]:
    method.reset((values.shape[1],))
    own = list(method.to(dtype=values.dtype).parameters())
    optimizer = (
        torch.optim.Adam(own, lr=lr) if own else None
    )  # the method's own parameters, as the runner steps them
    updates, sizes = [], []
    for t in range(values.shape[0]):
        if t > 0:
            if method.needs_post_step_losses:
                method.after_step(values[t])
            method.end_epoch()
        update, size = _one_update(method, values[t], jacobian[t], optimizer, own)
        updates.append(update)
        sizes.append(size)
    return torch.stack(updates), torch.stack(sizes)


def _one_update(
    method: Method,
    values: Tensor,
    jacobian: Tensor,
    optimizer: torch.optim.Optimizer | None,
    own: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """The runner's step (`toy_problems.runner.step_direction`) and the size of its terms,
    `sum_i |w_i| ||g_i||` (a Jacobian aggregation's head weights, or `||d||` if larger)."""
    if optimizer is not None:
        optimizer.zero_grad()
    update, weights = step_direction(method, values, jacobian, own=own)
    if optimizer is not None:
        optimizer.step()
    size = (weights.to(jacobian.dtype).abs() * torch.linalg.vector_norm(jacobian, dim=-1)).sum(
        dim=-1
    )
    if isinstance(method, JacobianAggregation):
        size = torch.maximum(size, torch.linalg.vector_norm(update, dim=-1))
    return update, size


# ---------------------------------------------------------------------------------------------
# measures and verdict


def nominal_points(case: Case, spec: str, *, seed: int) -> Tensor:
    """The method's nominal Adam trajectory on every problem and start, `[T, P, S, n]` (T = steps + 1):
    the toy runner's, or the engine's for a method of the representation mode only (`engine_points`)."""
    if "full" not in make_method(spec, num_tasks=case.lower_bounds.shape[-1]).engine_modes:
        return engine_points(case, spec, seed=seed)
    tracks = [Track(spec, (), seed, p) for p in range(len(case.problems))]
    runs = run_tracks(
        case.problems, case.starts, tracks, num_steps=case.num_steps, lr=case.lr, record_every=1
    )
    return torch.stack([run.points for run in runs], dim=1)


def batched_nominal_points(case: Case, specs: Sequence[str], *, seed: int) -> dict[str, Tensor]:
    """`nominal_points` of every spec the toy runner can run, as one `run_tracks` batch (one
    problem evaluation and one Adam step a step for all of them; each method's rows are its own,
    so every trajectory is the one it has alone, bit for bit); empty if a method fails in the
    batch (each is then run alone, which names the one that fails)."""
    num_tasks = case.lower_bounds.shape[-1]
    runnable = [
        spec for spec in specs if "full" in make_method(spec, num_tasks=num_tasks).engine_modes
    ]
    tracks = [Track(spec, (), seed, p) for spec in runnable for p in range(len(case.problems))]
    try:
        runs = run_tracks(
            case.problems, case.starts, tracks, num_steps=case.num_steps, lr=case.lr, record_every=1
        )
    except (MTLInputError, RuntimeError, ValueError):
        return {}
    per_spec = len(case.problems)
    return {
        spec: torch.stack([run.points for run in runs[i * per_spec : (i + 1) * per_spec]], dim=1)
        for i, spec in enumerate(runnable)
    }


def engine_points(case: Case, spec: str, *, seed: int) -> Tensor:
    """`nominal_points` of a method the toy runner cannot run (engine modes without "full":
    RotoGrad): row by row through `core.mtl_backward` in representation mode, on the model whose
    encoder is the identity, its parameters the problem's variables x and its features `z = x`
    (so `J` on z is the runner's `J` on x, and x's `.grad` is the update), with the runner's Adam
    on x and on the method's own parameters (trained by its auxiliary loss, if any), its lower-bound
    shift for a method whose loss domain is not "any", and the lifecycle hooks at each new iterate."""
    num_tasks = case.lower_bounds.shape[-1]
    points = torch.empty(case.num_steps + 1, *case.starts.shape, dtype=case.starts.dtype)
    for p, problem in enumerate(case.problems):
        for s in range(case.starts.shape[1]):
            method = make_method(
                spec, num_tasks=num_tasks, generator=torch.Generator().manual_seed(seed)
            )
            x = case.starts[p, s].detach().clone().requires_grad_(True)
            optimizer = make_optimizer([x, *method.to(dtype=x.dtype).parameters()], "adam", case.lr)
            for step in range(case.num_steps + 1):
                points[step, p, s] = x.detach()
                if step == case.num_steps:
                    break
                features = x.clone()
                losses = problem(features)
                if method.loss_domain != "any":
                    losses = losses - case.lower_bounds[p]
                if step > 0:
                    if method.needs_post_step_losses:
                        method.after_step(losses.detach())
                    method.end_epoch()
                optimizer.zero_grad()
                core.mtl_backward(losses, [x], method, representation=features)
                optimizer.step()
    return points


def case_deviations(case: Case, spec: str, *, seed: int, points: Tensor | None = None) -> Tensor:
    """Per version (nominal first, rounding last) the largest deviation of the update from the
    nominal one over the trajectory, per row, relative to the nominal terms' size: `[V + 1, P, S]`."""
    method = make_method(spec, num_tasks=case.lower_bounds.shape[-1])
    points = nominal_points(case, spec, seed=seed) if points is None else points
    values, jacobian = version_inputs(
        case, points, method, generator=torch.Generator().manual_seed(seed + 1)
    )
    steps, versions, problems, starts = values.shape[:4]
    flat_values = values.reshape(steps, versions * problems * starts, -1)
    flat_jacobian = jacobian.reshape(steps, versions * problems * starts, *jacobian.shape[-2:])
    updates, sizes = forced_updates(
        spec, flat_values, flat_jacobian, lr=case.lr, seed=seed, versions=versions
    )
    updates = updates.reshape(steps, versions, problems, starts, -1)
    sizes = sizes.reshape(steps, versions, problems, starts)
    gaps = torch.linalg.vector_norm(updates - updates[:, :1], dim=-1).amax(dim=0)  # [V + 1, P, S]
    scale = sizes[:, 0].amax(dim=0).clamp_min(torch.finfo(torch.float64).tiny)  # [P, S]
    return gaps / scale


def verdicts(deviations: Tensor, /) -> dict[str, Any]:
    """From `[V + 1, P, S]` deviations (nominal, control, transformed..., rounding): the threshold,
    and whether the control and every transformed version stay below it."""
    rounding = float(deviations[-1].max())
    threshold = min(max(ROUNDING_FACTOR * rounding, FLOOR), CEILING)
    control = float(deviations[1].max())
    transformed = float(deviations[2:-1].max())
    return {
        "rounding": rounding,
        "threshold": threshold,
        "control": control,
        "transformed": transformed,
        "rescaling_invariant": control <= threshold,
        "monotone_invariant": control <= threshold and transformed <= threshold,
    }


def measure_method(
    spec: str,
    cases: Sequence[Case],
    *,
    seed: int,
    nominal: dict[str, dict[str, Tensor]] | None = None,
) -> dict[str, Any]:
    """The measured invariances of `spec` on every case (both must hold in every case), or the
    error it raised. `nominal`: per case name, nominal trajectories already run
    (`batched_nominal_points`); the others are run here."""
    began = time.perf_counter()
    per_case = {}
    try:
        for case in cases:
            points = (nominal or {}).get(case.name, {}).get(spec)
            per_case[case.name] = verdicts(case_deviations(case, spec, seed=seed, points=points))
    except (MTLInputError, RuntimeError, ValueError) as error:
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - began}
    measured = {claim: all(case[claim] for case in per_case.values()) for claim in DECLARED}
    declared = {claim: claim in make_method(spec, num_tasks=3).claims for claim in DECLARED}
    return {
        "cases": per_case,
        "measured": measured,
        "declared": declared,
        "agrees": measured == declared,
        "seconds": time.perf_counter() - began,
    }


def measure(
    *, quick: bool, seed: int = 0, methods: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every registered method (or `methods`), measured on the toy and the nonconvex case."""
    cases = [toy_case(quick=quick, seed=seed), nonconvex_case(quick=quick, seed=seed)]
    specs = list(methods or available_methods())
    with single_thread():
        nominal = {case.name: batched_nominal_points(case, specs, seed=seed) for case in cases}
        return {spec: measure_method(spec, cases, seed=seed, nominal=nominal) for spec in specs}


def run(*, quick: bool) -> ClaimResult:
    return evaluate(measure(quick=quick))


def evaluate(results: dict[str, dict[str, Any]], /) -> ClaimResult:
    """Pass iff every method was measured and its measured invariances equal its declared ones."""
    failed = sorted(spec for spec, result in results.items() if "error" in result)
    disagree = sorted(
        spec for spec, result in results.items() if "error" not in result and not result["agrees"]
    )
    invariant = [
        spec
        for spec, r in results.items()
        if "error" not in r and r["measured"]["monotone_invariant"]
    ]
    rescaling = [
        spec
        for spec, r in results.items()
        if "error" not in r and r["measured"]["rescaling_invariant"] and spec not in invariant
    ]
    measured = (
        f"{len(results)} methods; monotone-invariant: {', '.join(invariant) or 'none'}; rescaling only: "
        f"{', '.join(rescaling) or 'none'}; disagreeing with their declarations: {', '.join(disagree) or 'none'}"
        + (f"; failed to run: {', '.join(failed)}" if failed else "")
    )
    return ClaimResult(
        name=NAME,
        statement=STATEMENT,
        passed=not failed and not disagree,
        measured=measured,
        bound=f"measured = declared for every method (invariant: deviation <= {ROUNDING_FACTOR:g}x rounding control or {FLOOR:.0e}, at most {CEILING:.0e})",
        data={"methods": results},
    )


# ---------------------------------------------------------------------------------------------
# the README's method table

TABLE_BEGIN = (
    "<!-- method-table:begin (python -m proofs_numeric.method_invariance --write-readme) -->"
)
TABLE_END = "<!-- method-table:end -->"


def method_table(results: dict[str, dict[str, Any]], /) -> str:
    """The README's markdown table: per registered method its name, paper, registry name, default
    hyperparameters, stateful, random, loss domain, the declared invariances, and whether the
    measurement (`results` of `measure`) agrees with them."""
    from core.registry import describe_method

    header = [
        "method",
        "paper",
        "registry name",
        "hyperparameters (defaults)",
        "stateful",
        "random",
        "needs positive losses",
        "rescaling-invariant",
        "monotone-invariant",
        "measured",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec in sorted(results):
        about = describe_method(spec)
        result = results[spec]
        if "error" in result:
            measured = "failed to run"
        elif result["agrees"]:
            measured = "agrees"
        else:
            wrong = [
                claim.split("_")[0]
                for claim in DECLARED
                if result["measured"][claim] != result["declared"][claim]
            ]
            measured = f"disagrees ({', '.join(wrong)})"
        hyperparameters = (
            ", ".join(f"{key}={value}" for key, value in about.hyperparameters.items()) or "none"
        )
        cells = [
            about.title,
            about.paper.replace("|", "/"),
            f"`{spec}`",
            hyperparameters.replace("|", "/"),
            _mark(about.stateful),
            _mark(about.random),
            {"any": "no", "nonnegative": ">= 0", "positive": "> 0"}[about.loss_domain],
            _mark("rescaling_invariant" in about.claims),
            _mark("monotone_invariant" in about.claims),
            measured,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mark(flag: bool) -> str:
    return "yes" if flag else "no"


def readme_with_table(readme: str, table: str, /) -> str:
    """`readme` with the text between the table markers replaced by `table`."""
    begin, end = readme.index(TABLE_BEGIN) + len(TABLE_BEGIN), readme.index(TABLE_END)
    return readme[:begin] + "\n" + table + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """`python -m proofs_numeric.method_invariance [--write-readme]`: the method table from the
    registry and a quick measurement, printed, or written between the README's markers."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m proofs_numeric.method_invariance", description=main.__doc__
    )
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="replace the table in README.md (between its markers)",
    )
    args = parser.parse_args(argv)
    table = method_table(measure(quick=True))
    if not args.write_readme:
        print(table)
        return 0
    readme = Path(__file__).resolve().parents[1] / "README.md"
    readme.write_text(readme_with_table(readme.read_text(), table))
    print(f"wrote the method table into {readme}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
