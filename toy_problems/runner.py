"""One batched runner for the toy problems: every (method, transform, seed) track from every start,
advanced together, one step at a time.

A *track* is a method spec run from all starting points on the problem's losses, with optional
task transforms (`TASK:SPEC`) and a seed (for random methods). All rows (tracks x starts) share
one evaluation of the problem per step: its values and per-task gradients (analytic where the
problem has them, `Problem.values_and_jacobian`), to which each track's transforms are applied
by the chain rule. Each method then runs once per step on its slice of rows with its state per
row (`reset(batch_shape)`), the update `sum_i w_i grad f_i` of every row goes to one optimiser
(Adam or SGD act element-wise, so rows never interact), and a recorder keeps the iterates and the
losses every few steps. Methods whose `loss_domain` is not "any" see the losses minus the
problem's `lower_bound` (mapped through the track's transform): a constant shift that no
gradient sees.

Grouping: one method instance serves every track of the same spec (its state is per row, so this
is what one instance per track gives), except for random methods, which get one instance per
track, built with a generator seeded by the track's seed: tracks of one seed (e.g. the nominal and
the transformed run) draw the same weights, as separate runs from that seed do.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from core.jacobian import gramian, values_and_jacobian
from core.methods.base import GradientWeighting, JacobianAggregation, LossWeighting, Method
from core.registry import make_method
from toy_problems.task_transforms import TaskTransform

T = TypeVar("T")

OPTIMIZERS = ("adam", "sgd")
"""The optimisers of the toy runs: torch's Adam with its defaults (as the DiBS-MTL toy trainer) or plain SGD."""


@dataclass(frozen=True)
class Trajectory:
    """Iterates `[num_records, ..., n]` and losses `[num_records, ..., K]` at `steps` `[num_records]`,
    and the weights `[..., K]` of the last step taken (None without a step).

    The losses are those the method saw (transformed, and shifted for methods that need
    positive losses)."""

    steps: Tensor
    points: Tensor
    losses: Tensor
    last_weights: Tensor | None = None


@dataclass(frozen=True)
class Track:
    """One run: a method spec (`core.make_method`), the task transforms of the losses it sees, the
    seed of its random draws, and which of the runner's problems it runs on (an index; 0 when the
    runner has one problem); optionally its own step-size schedule and gradient noise."""

    method: str
    transforms: tuple[TaskTransform, ...] = ()
    seed: int = 0
    problem: int = 0
    step_sizes: Tensor | None = field(default=None, compare=False)
    """Plain gradient steps `x -= a_k d_k` with these sizes `[num_steps]` (a schedule, e.g.
    Robbins-Monro) instead of the runner's optimiser and `lr`; needs `optimizer="sgd"`."""
    gradient_noise: float = 0.0
    """Standard deviation of Gaussian noise added to every entry of every task gradient the
    method sees (the recorded losses and `measure` stay exact)."""


@dataclass
class _Group:
    """One method instance and the tracks whose rows it weighs (contiguous in the batch)."""

    method: Method
    rows: slice
    own: list[Tensor]
    update: Tensor | None = None
    """A Jacobian aggregation's update of its rows at the current step."""


def make_optimizer(params: Iterable[Tensor], optimizer: str, lr: float) -> torch.optim.Optimizer:
    """`torch.optim.Adam` (torch defaults) or `torch.optim.SGD` on `params` with learning rate `lr`."""
    if optimizer == "adam":
        return torch.optim.Adam(list(params), lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(list(params), lr=lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


def _answer(
    method: Method, values: Tensor, gramians: Tensor | None, jacobian: Tensor, own: Sequence[Tensor]
) -> tuple[Tensor, Tensor | None]:
    """A method's answer on rows of losses, Gramians (gradient weightings only) and Jacobians: its
    weights (a Jacobian aggregation's head weights) and, for a Jacobian aggregation, its own update.
    A learnable loss weighting's parameters `own` get their gradients (`_loss_weights`)."""
    if isinstance(method, GradientWeighting):
        return method(gramians, values), None
    if isinstance(method, JacobianAggregation):
        update, head_weights, _ = method.aggregate(jacobian, values)
        return head_weights, update.to(jacobian.dtype)
    return _loss_weights(method, values, own), None


def run_tracks(
    problem: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]],
    starts: Tensor,
    tracks: Sequence[Track],
    /,
    *,
    num_steps: int,
    lr: float = 1e-3,
    optimizer: str = "adam",
    record_every: int = 1,
    shift_losses: bool = True,
    project: Callable[[Tensor], Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    noise_seed: int = 0,
    measure: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> list[Trajectory]:
    """Run every track from every row of `starts` `[S, n]` for `num_steps` steps, all together.

    `problem` may also be a list of problems of one shape (e.g. seeds of a family), with `starts`
    `[P, S, n]` (each problem's own starts) and `Track.problem` the index of a track's problem: every
    problem is evaluated on its own rows, and each method still runs once per step on all its rows.

    Returns one `Trajectory` per track (points `[R, S, n]`, losses `[R, S, K]`), in the order of
    `tracks`. `shift_losses`: methods whose `loss_domain` is not "any" see the losses minus the
    problem's (transformed) `lower_bound`, where it has one. `project` maps the iterates back
    onto the feasible set after every step (it must act row by row). `progress(step)` is called
    once per step.

    Tracks with `gradient_noise` draw it from one generator seeded `noise_seed`, one draw of the
    whole Jacobian's shape per step (every row draws; rows without noise scale it by 0). Tracks
    with `step_sizes` take plain steps of those sizes (the others `lr`); all need `optimizer="sgd"`.
    `measure(step, points, values, jacobian)` is called at every recorded step with the iterates
    `[len(tracks), S, n]`, the losses seen and the exact (noise-free) gradients seen, rows in the
    order of `tracks`: for measures of the whole trajectory that the caller accumulates.
    """
    problems, starts = _problems_and_starts(problem, starts, tracks)
    num_tasks = (
        int(getattr(problems[0], "n_obj", 0))
        or values_and_jacobian(problems[0], starts[0, :1])[0].shape[-1]
    )
    order, groups = _plan_groups(tracks, starts, num_tasks)
    ordered = [tracks[i] for i in order]
    x0 = torch.stack([starts[track.problem] for track in ordered]).detach().clone()
    offsets = _offsets(problems, ordered, groups, num_tasks, starts) if shift_losses else None
    seen_of = _seen_losses(ordered)
    evaluate = (
        problems[0]
        if len(problems) == 1
        else _problem_rows(problems, [track.problem for track in ordered], starts.shape[-2])
    )
    position = {track_index: row for row, track_index in enumerate(order)}
    schedule = _schedule(ordered, num_steps, lr, optimizer, x0)
    noise = _noise(ordered, noise_seed, x0)
    in_track_order = torch.tensor([position[i] for i in range(len(tracks))], device=x0.device)
    trajectory = _advance(
        evaluate,
        x0,
        groups,
        seen_of,
        offsets,
        num_steps=num_steps,
        lr=lr,
        optimizer=optimizer,
        record_every=record_every,
        project=project,
        progress=progress,
        schedule=schedule,
        noise=noise,
        measure=None if measure is None else _in_track_order(measure, in_track_order),
    )
    weights = trajectory.last_weights
    return [
        Trajectory(
            trajectory.steps,
            trajectory.points[:, position[i]],
            trajectory.losses[:, position[i]],
            None if weights is None else weights[position[i]],
        )
        for i in range(len(tracks))
    ]


def _problems_and_starts(
    problem: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]],
    starts: Tensor,
    tracks: Sequence[Track],
) -> tuple[list[Callable[[Tensor], Tensor]], Tensor]:
    """The problems as a list and the starts as `[P, S, n]`, checked against the tracks' indices."""
    problems = list(problem) if isinstance(problem, Sequence) else [problem]
    if isinstance(problem, Sequence):
        if starts.ndim != 3 or starts.shape[0] != len(problems):
            raise ValueError(
                f"with {len(problems)} problems, starts must have shape [{len(problems)}, S, n], got {tuple(starts.shape)}"
            )
    elif starts.ndim != 2:
        raise ValueError(f"starts must have shape [S, n], got {tuple(starts.shape)}")
    else:
        starts = starts[None]
    wrong = sorted({track.problem for track in tracks} - set(range(len(problems))))
    if wrong:
        raise ValueError(
            f"tracks name problems {wrong}, but the runner has {len(problems)} (indices 0..{len(problems) - 1})"
        )
    return problems, starts


def _schedule(
    tracks: Sequence[Track], num_steps: int, lr: float, optimizer: str, x0: Tensor
) -> Tensor | None:
    """Per step and row, the step size `[num_steps, T, 1, 1]` when some track has its own
    schedule (the others `lr`); None when none has."""
    if all(track.step_sizes is None for track in tracks):
        return None
    if optimizer != "sgd":
        raise ValueError(
            f"tracks with their own step sizes take plain gradient steps: use optimizer='sgd', got {optimizer!r}"
        )
    columns = []
    for track in tracks:
        sizes = (
            torch.full((num_steps,), float(lr), dtype=x0.dtype)
            if track.step_sizes is None
            else torch.as_tensor(track.step_sizes)
        )
        if sizes.shape != (num_steps,):
            raise ValueError(
                f"a track's step_sizes must have shape [num_steps] = [{num_steps}], got {tuple(sizes.shape)}"
            )
        columns.append(sizes.to(dtype=x0.dtype, device=x0.device))
    return torch.stack(columns, dim=1)[..., None, None]


@dataclass
class _Noise:
    """Gradient noise: its generator and each row's standard deviation `[T, 1, 1, 1]`."""

    generator: torch.Generator
    scale: Tensor

    def add(self, jacobian: Tensor) -> Tensor:
        draws = torch.randn(
            jacobian.shape, generator=self.generator, dtype=jacobian.dtype, device=jacobian.device
        )
        return jacobian + self.scale * draws


def _noise(tracks: Sequence[Track], seed: int, x0: Tensor) -> _Noise | None:
    if all(track.gradient_noise == 0 for track in tracks):
        return None
    if any(not (track.gradient_noise >= 0) for track in tracks):
        raise ValueError(
            f"gradient_noise must be >= 0, got {sorted({t.gradient_noise for t in tracks})}"
        )
    scale = torch.tensor(
        [track.gradient_noise for track in tracks], dtype=x0.dtype, device=x0.device
    )[:, None, None, None]
    return _Noise(torch.Generator(device=x0.device).manual_seed(seed), scale)


def _in_track_order(
    measure: Callable[[int, Tensor, Tensor, Tensor], None], rows: Tensor
) -> Callable[[int, Tensor, Tensor, Tensor], None]:
    return lambda step, points, values, jacobian: measure(
        step, points[rows], values[rows], jacobian[rows]
    )


def run_toy(
    objectives: Callable[[Tensor], Tensor],
    starts: Tensor,
    method: GradientWeighting | LossWeighting,
    /,
    *,
    num_steps: int,
    lr: float = 1e-3,
    optimizer: str = "adam",
    record_every: int = 1,
    progress: Callable[[int], None] | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> Trajectory:
    """One method instance on every row of `starts` `[..., n]` (the runner of `run_tracks` with one
    group): the losses it sees are `objectives(x)` as they are (no transform, no shift)."""
    batch_shape = tuple(starts.shape[:-1])
    method.reset(batch_shape)
    own = list(method.to(device=starts.device, dtype=starts.dtype).parameters())
    x0 = starts.detach().reshape(1, -1, starts.shape[-1]).clone()
    group = _Group(method, slice(0, 1), own)
    reshaped = _Reshaped(objectives, batch_shape)
    trajectory = _advance(
        reshaped,
        x0,
        [group],
        None,
        None,
        num_steps=num_steps,
        lr=lr,
        optimizer=optimizer,
        record_every=record_every,
        project=project,
        progress=progress,
        batch_shape=batch_shape,
    )
    records = trajectory.points.shape[0]
    weights = trajectory.last_weights
    return Trajectory(
        trajectory.steps,
        trajectory.points.reshape(records, *batch_shape, starts.shape[-1]),
        trajectory.losses.reshape(records, *batch_shape, trajectory.losses.shape[-1]),
        None if weights is None else weights.reshape(*batch_shape, weights.shape[-1]),
    )


# -- the loop ----------------------------------------------------------------------------------------


def _advance(
    problem: Callable[[Tensor], Tensor],
    x0: Tensor,
    groups: list[_Group],
    seen_of: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None,
    offsets: Tensor | None,
    *,
    num_steps: int,
    lr: float,
    optimizer: str,
    record_every: int,
    project: Callable[[Tensor], Tensor] | None,
    progress: Callable[[int], None] | None,
    batch_shape: tuple[int, ...] | None = None,
    schedule: Tensor | None = None,
    noise: _Noise | None = None,
    measure: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> Trajectory:
    """The one loop: rows `x0` `[T, S, n]`; per step the problem once, the methods once each on
    their rows, one optimiser step, the projection, the lifecycle hooks, the recorder.

    `batch_shape`: the shape a single group's method state holds (`run_toy`'s caller's), when it
    is not `[rows of the group, S]`."""
    x = x0.clone().requires_grad_(True)
    opt = make_optimizer([x, *(p for g in groups for p in g.own)], optimizer, lr)
    steps, points, losses = [], [], []
    last_weights: Tensor | None = None
    needs_gramian = any(isinstance(g.method, GradientWeighting) for g in groups)
    post_step = [g for g in groups if g.method.needs_post_step_losses]
    epoch_end = [g for g in groups if type(g.method).end_epoch is not Method.end_epoch]
    aggregations = [g for g in groups if isinstance(g.method, JacobianAggregation)]
    sizes = [g.rows.stop - g.rows.start for g in groups]
    for step in range(num_steps + 1):
        with torch.no_grad():
            values, jacobian = values_and_jacobian(problem, x.detach())
            if seen_of is not None:
                values, jacobian = seen_of(values, jacobian)
            if offsets is not None:
                values = values - offsets
        if step > 0:  # the lifecycle hooks of the last step, with the losses at the new iterates
            for group in post_step:
                group.method.after_step(_state_view(values[group.rows], batch_shape))
            for group in epoch_end:
                group.method.end_epoch()
        if step % record_every == 0 or step == num_steps:
            steps.append(step)
            points.append(x.detach().clone())
            losses.append(values)
            if measure is not None:
                measure(step, points[-1], values, jacobian)
        if step == num_steps:
            break
        if noise is not None:
            jacobian = noise.add(jacobian)
        opt.zero_grad(set_to_none=True)
        # one Gramian, one weighted sum and one weights tensor for all rows; the methods each
        # run once on their slice (rows never interact, so this is their per-group arithmetic)
        value_parts = values.split(sizes)
        gramian_parts = gramian(jacobian).split(sizes) if needs_gramian else [None] * len(groups)
        jacobian_parts = jacobian.split(sizes)
        weights = torch.cat(
            [
                _group_weights(group, part_values, part_gramian, part_jacobian, batch_shape)
                for group, part_values, part_gramian, part_jacobian in zip(
                    groups, value_parts, gramian_parts, jacobian_parts
                )
            ]
        )
        with torch.no_grad():
            direction = (weights[..., None] * jacobian).sum(dim=-2)
        for group in aggregations:
            direction[group.rows] = group.update
        last_weights = weights
        if schedule is None:
            x.grad = direction
            opt.step()
        else:  # plain steps of each row's size; the methods' own parameters (if any) by the optimiser
            with torch.no_grad():
                x.sub_(schedule[step] * direction)
            if any(g.own for g in groups):
                opt.step()
        if project is not None:
            with torch.no_grad():
                x.copy_(project(x))
        if progress is not None:
            progress(step)
    return Trajectory(torch.tensor(steps), torch.stack(points), torch.stack(losses), last_weights)


def _group_weights(
    group: _Group,
    values: Tensor,
    gramians: Tensor | None,
    jacobian: Tensor,
    batch_shape: tuple[int, ...] | None,
) -> Tensor:
    """The weights `[rows, S, K]` of one group from its rows' values, Gramians and Jacobians (a
    Jacobian aggregation's head weights; its update is left in `group.update`). Learnable loss
    weightings get their parameters' gradients."""
    method, seen = group.method, _state_view(values, batch_shape)
    rows_gramians = None if gramians is None else _state_view(gramians, batch_shape, trailing=2)
    weights, update = _answer(
        method, seen, rows_gramians, _state_view(jacobian, batch_shape, trailing=2), group.own
    )
    if update is not None:
        group.update = update.reshape(jacobian.shape[:-2] + jacobian.shape[-1:])
    weights = weights.detach()
    if weights.dtype != values.dtype:
        weights = weights.to(values.dtype)
    return weights if batch_shape is None else weights.reshape(values.shape)


def _state_view(
    values: Tensor, batch_shape: tuple[int, ...] | None, *, trailing: int = 1
) -> Tensor:
    """The rows as the method's state holds them (`[rows, S, ...]`, or the caller's batch shape)."""
    if batch_shape is None:
        return values
    return values.reshape(*batch_shape, *values.shape[values.ndim - trailing :])


def step_direction(
    method: Method, values: Tensor, jacobian: Tensor, /, *, own: Sequence[Tensor] = ()
) -> tuple[Tensor, Tensor]:
    """One step of `method` on rows of losses `[..., K]` and per-task gradients `[..., K, n]`: the
    shared update `[..., n]` and the weights (a Jacobian aggregation's head weights). A learnable
    loss weighting's parameters `own` get the gradient of the weighted loss plus its penalty, as
    the engine gives them (the caller's optimiser steps them). The runner's loop takes the same
    step for many groups at once."""
    gramians = gramian(jacobian) if isinstance(method, GradientWeighting) else None
    weights, update = _answer(method, values, gramians, jacobian, own)
    if update is None:
        update = (weights.detach().to(jacobian.dtype)[..., None] * jacobian).sum(dim=-2)
    return update, weights.detach()


def _loss_weights(method: Method, values: Tensor, own: Sequence[Tensor]) -> Tensor:
    """A loss weighting's (detached) weights; with learnable parameters `own`, their gradients of
    the weighted loss plus the penalty are set, as the engine sets them."""
    if not own:
        return method(values).detach()
    with torch.enable_grad():
        weights = method(values)
        objective = (weights * values).sum()
        penalty = method.penalty()
        if penalty is not None:
            objective = objective + penalty
        for param, grad in zip(own, torch.autograd.grad(objective, list(own))):
            param.grad = grad
    return weights.detach()


def method_seconds_per_step(
    problem: Callable[[Tensor], Tensor],
    starts: Tensor,
    tracks: Sequence[Track],
    /,
    *,
    steps: int = 20,
) -> float:
    """The seconds one step of the methods of `tracks` costs (their calls on fresh instances at
    `starts` `[S, n]`, the median of `steps` calls after a warm-up call); the problem's own
    evaluation, shared by every track of a batch, is not counted."""
    num_tasks = (
        int(getattr(problem, "n_obj", 0)) or values_and_jacobian(problem, starts[:1])[0].shape[-1]
    )
    order, groups = _plan_groups(tracks, starts[None], num_tasks)
    ordered = [tracks[i] for i in order]
    x = torch.stack([starts] * len(ordered))
    with torch.no_grad():
        values, jacobian = values_and_jacobian(problem, x)
        seen_of = _seen_losses(ordered)
        if seen_of is not None:
            values, jacobian = seen_of(values, jacobian)
        offsets = _offsets([problem], ordered, groups, num_tasks, starts[None])
        if offsets is not None:
            values = values - offsets
    gramians = gramian(jacobian)
    times = []
    for call in range(steps + 1):
        began = time.perf_counter()
        for group in groups:
            _group_weights(
                group, values[group.rows], gramians[group.rows], jacobian[group.rows], None
            )
        if call > 0:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


# -- planning: groups, transforms, shifts -------------------------------------------------------------


def runs_on_parameters(spec: str, /) -> bool:
    """Whether a method spec runs on per-task gradients of the parameters themselves (engine mode
    "full"), which is what the runner gives it; a representation-only method needs a model."""
    from core.registry import describe_method, parse_method_spec

    return "full" in describe_method(parse_method_spec(spec).name).cls.engine_modes


def _plan_groups(
    tracks: Sequence[Track], starts: Tensor, num_tasks: int
) -> tuple[list[int], list[_Group]]:
    """Tracks ordered so that each method instance's rows are contiguous, and the instances."""
    keys: dict[tuple, list[int]] = {}
    probes: dict[str, Method] = {}
    for index, track in enumerate(tracks):
        probe = probes.setdefault(track.method, make_method(track.method, num_tasks=num_tasks))
        if "full" not in probe.engine_modes:
            raise ValueError(
                f"{track.method} runs only on a model's shared representation (engine modes {sorted(probe.engine_modes)}); "
                "the toy runner gives methods the gradients of the parameters themselves (engine mode 'full')"
            )
        key = (track.method, index) if probe.random else (track.method,)
        keys.setdefault(key, []).append(index)
    order: list[int] = []
    groups: list[_Group] = []
    for members in keys.values():
        first = tracks[members[0]]
        generator = torch.Generator(device=starts.device).manual_seed(first.seed)
        method = make_method(first.method, num_tasks=num_tasks, generator=generator)
        method.reset((len(members), starts.shape[-2]))
        own = list(method.to(device=starts.device, dtype=starts.dtype).parameters())
        groups.append(_Group(method, slice(len(order), len(order) + len(members)), own))
        order.extend(members)
    return order, groups


def _offsets(
    problems: Sequence[Callable[[Tensor], Tensor]],
    tracks: Sequence[Track],
    groups: list[_Group],
    num_tasks: int,
    starts: Tensor,
) -> Tensor | None:
    """Per row, the (transformed) lower bounds of its problem subtracted from the losses of methods
    that need non-negative or positive losses, `[T, 1, K]`; None if no method needs it or no bound is known."""
    needs = [False] * len(tracks)
    for group in groups:
        for row in range(group.rows.start, group.rows.stop):
            needs[row] = group.method.loss_domain != "any"
    lowers = [
        getattr(problem, "lower_bound", None) for problem in problems
    ]  # a toy Problem's fact; None for plain callables
    if not any(
        needs[row] and lowers[track.problem] is not None for row, track in enumerate(tracks)
    ):
        return None
    offsets = torch.zeros(len(tracks), 1, num_tasks, dtype=starts.dtype, device=starts.device)
    for row, (track, shifted) in enumerate(zip(tracks, needs)):
        lower = lowers[track.problem]
        if shifted and lower is not None:
            bounds = [float(lower)] * num_tasks
            for transform in track.transforms:
                bounds[transform.task] = transform.transformed_bound(float(lower))
            offsets[row, 0] = torch.tensor(bounds, dtype=starts.dtype)
    return offsets


def _seen_losses(
    tracks: Sequence[Track],
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The function applying each row's transforms to the values `[T, S, K]` and gradients
    `[T, S, K, n]` (rows of one set of transforms share one call); None if no track has any."""
    classes: dict[tuple[str, ...], list[int]] = {}
    for row, track in enumerate(tracks):
        if track.transforms:
            classes.setdefault(tuple(t.spec for t in track.transforms), []).append(row)
    if not classes:
        return None
    plans = [(torch.tensor(rows), tracks[rows[0]].transforms) for rows in classes.values()]

    def apply(values: Tensor, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        values, jacobian = values.clone(), jacobian.clone()
        for rows, transforms in plans:
            rows = rows.to(values.device)
            nominal_values, nominal_jacobian = values[rows], jacobian[rows]
            for transform in transforms:
                nominal_values, nominal_jacobian = transform.values_and_jacobian(
                    nominal_values, nominal_jacobian
                )
            values[rows], jacobian[rows] = nominal_values, nominal_jacobian
        return values, jacobian

    return apply


def _problem_rows(
    problems: Sequence[Callable[[Tensor], Tensor]], row_problems: Sequence[int], num_starts: int
) -> Callable[[Tensor], Tensor]:
    """The rows' evaluator: the problems' own stacked closed form where their class has one
    (`stack_rows(row_problems, num_starts)`, every row in one computation), else each problem on
    its rows."""
    kind = type(problems[0])
    stack = getattr(kind, "stack_rows", None)
    if stack is not None and all(type(problem) is kind for problem in problems):
        return stack([problems[p] for p in row_problems], num_starts)
    return _ProblemRows(problems, row_problems)


class _ProblemRows:
    """Several problems as one: row t of `x` `[T, S, n]` is evaluated by problem `row_problems[t]`."""

    def __init__(
        self, problems: Sequence[Callable[[Tensor], Tensor]], row_problems: Sequence[int]
    ) -> None:
        self.problems = list(problems)
        self.rows = [
            torch.tensor([t for t, p in enumerate(row_problems) if p == index], dtype=torch.long)
            for index in range(len(problems))
        ]

    def values_and_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        values = jacobian = None
        for problem, rows in zip(self.problems, self.rows):
            if rows.numel() == 0:
                continue
            rows = rows.to(x.device)
            part_values, part_jacobian = values_and_jacobian(problem, x[rows])
            if values is None:
                values = part_values.new_empty(x.shape[:-1] + part_values.shape[-1:])
                jacobian = part_jacobian.new_empty(x.shape[:-1] + part_jacobian.shape[-2:])
            values[rows], jacobian[rows] = part_values, part_jacobian
        return values, jacobian


class _Reshaped:
    """`objectives` on rows `[1, prod(batch_shape), n]` for a caller's batch shape."""

    def __init__(
        self, objectives: Callable[[Tensor], Tensor], batch_shape: tuple[int, ...]
    ) -> None:
        self.objectives, self.batch_shape = objectives, batch_shape

    def values_and_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shaped = x.reshape(*self.batch_shape, x.shape[-1])
        values, jacobian = values_and_jacobian(self.objectives, shaped)
        return values.reshape(*x.shape[:-1], values.shape[-1]), jacobian.reshape(
            *x.shape[:-1], *jacobian.shape[-2:]
        )


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread for the duration (restored after). The claims run thousands of
    operations on tensors of a few dozen numbers, where thread hand-offs cost more than the
    arithmetic (and, on a loaded 2-core machine, intra-op threads contend badly)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def forked_starmap(
    function: Callable[..., T], jobs: Sequence[tuple], /, *, processes: int
) -> list[T]:
    """`[function(*job) for job in jobs]`, in up to `processes` forked processes taking the jobs in
    order (one at a time each), or in this process with one process, one job or no `fork`. Each
    child runs torch on one thread: a forked child must not start an OpenMP team (libgomp hangs
    after a fork when the parent used one), and the children already share the cores. `function`
    must be defined at module level."""
    if not _forks(processes, jobs):
        return [function(*job) for job in jobs]
    with _one_thread_pool(processes, jobs) as pool:
        return pool.starmap(function, jobs, chunksize=1)


def forked_imap_unordered(
    function: Callable[[Any], T], jobs: Sequence[Any], /, *, processes: int
) -> Iterator[T]:
    """`function(job)` of every job, each yielded as soon as it finishes (in the order they
    finish), from forked processes as in `forked_starmap`; in job order in this process with one
    process, one job or no `fork`."""
    if not _forks(processes, jobs):
        yield from (function(job) for job in jobs)
        return
    with _one_thread_pool(processes, jobs) as pool:
        yield from pool.imap_unordered(function, jobs, chunksize=1)


def _forks(processes: int, jobs: Sequence[Any]) -> bool:
    return processes > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods()


def _one_thread_pool(processes: int, jobs: Sequence[Any]):
    return multiprocessing.get_context("fork").Pool(
        min(processes, len(jobs)), initializer=torch.set_num_threads, initargs=(1,)
    )
