"""The one batched toy runner: every (method, transform, seed) track from every start, together."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.registry import make_method
from toy_problems import ZDT1, TwoTaskToy
from toy_problems.runner import Track, run_toy, run_tracks
from toy_problems.task_transforms import TaskTransform, parse_task_transform

POWER = parse_task_transform("0:power:4", 2)


def seen(problem, transforms, offsets):
    """The objectives a track sees, written out: transforms, then the shift."""

    def objectives(x):
        values = problem(x)
        for transform in transforms:
            values = transform.values(values)
        return values - offsets

    return objectives


@pytest.mark.parametrize(
    "spec",
    ["dibsmtl", "mgda", "famo", "uw", "dwa", "nashmtl", "scaleinvls", "rlw", "pcgrad", "cagrad"],
)
def test_a_track_in_a_batch_equals_the_method_alone(spec) -> None:
    """Each track of a batch follows the run of its method alone on the losses it sees (the
    transform by the chain rule, the lower bound subtracted for methods that need positive
    losses), to rounding."""
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    tracks = [Track(spec, (), 3), Track(spec, (POWER,), 3), Track("ls", (POWER,), 0)]
    batched = run_tracks(problem, starts, tracks, num_steps=60, lr=0.02, record_every=20)
    for track, trajectory in zip(tracks[:2], batched):
        method = make_method(
            track.method, num_tasks=2, generator=torch.Generator().manual_seed(track.seed)
        )
        bounds = torch.tensor([-20.0, -20.0], dtype=torch.float64)
        if track.transforms:
            bounds[0] = track.transforms[0].transformed_bound(-20.0)
        offsets = bounds if method.loss_domain != "any" else torch.zeros(2, dtype=torch.float64)
        alone = run_toy(
            seen(problem, track.transforms, offsets),
            starts,
            method,
            num_steps=60,
            lr=0.02,
            record_every=20,
        )
        assert torch.equal(trajectory.steps, alone.steps)
        torch.testing.assert_close(trajectory.points, alone.points, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(trajectory.losses, alone.losses, rtol=1e-10, atol=1e-10)


def test_random_tracks_of_one_seed_draw_the_same_weights() -> None:
    """A random method gets one instance per track, seeded by the track's seed: its draws are
    those of a separate run from that seed (the nominal track equals RLW alone from seed 5, and
    the transformed track of seed 5 draws the same weights); another seed draws others."""
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    both = run_tracks(
        problem,
        starts,
        [Track("rlw", (), 5), Track("rlw", (POWER,), 5), Track("rlw", (), 6)],
        num_steps=30,
        lr=0.05,
    )
    alone = run_toy(
        problem,
        starts,
        make_method("rlw", generator=torch.Generator().manual_seed(5)),
        num_steps=30,
        lr=0.05,
    )
    torch.testing.assert_close(both[0].points, alone.points, rtol=0, atol=0)
    assert not torch.equal(both[0].points, both[2].points)  # another seed, other draws


def test_tracks_come_back_in_their_order_and_projection_holds() -> None:
    problem = ZDT1(n_var=3)
    starts = problem.starts(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracks = [
        Track("mgda"),
        Track("ls"),
        Track("mgda", (TaskTransform(1, parse_task_transform("1:exp", 2).transform),)),
    ]
    out = run_tracks(
        problem, starts, tracks, num_steps=40, lr=0.05, project=problem.project, record_every=10
    )
    assert [t.points.shape for t in out] == [(5, 4, 3)] * 3
    for trajectory in out:
        assert bool(((trajectory.points >= 0) & (trajectory.points <= 1)).all())
    mgda_alone = run_toy(
        problem,
        starts,
        make_method("mgda"),
        num_steps=40,
        lr=0.05,
        project=problem.project,
        record_every=10,
    )
    torch.testing.assert_close(out[0].points, mgda_alone.points, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", ["dibsmtl", "famo", "nashmtl", "rlw"])
def test_tracks_on_several_problems_equal_each_problem_run_alone(spec) -> None:
    """Problems of one shape as rows of one run (`Track.problem`, starts `[P, S, n]`): each track
    follows the run on its problem alone, from its problem's starts, lower bound included."""
    from toy_problems import RandomNonconvex

    problems = [RandomNonconvex(3, 2, seed=seed) for seed in (4, 5)]
    starts = torch.stack(
        [
            p.starts(3, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            for i, p in enumerate(problems)
        ]
    )
    tracks = [Track(spec, (), 1, 1), Track(spec, (POWER,), 1, 0), Track(spec, (), 1, 0)]
    together = run_tracks(problems, starts, tracks, num_steps=30, lr=0.02, record_every=10)
    for track, trajectory in zip(tracks, together):
        alone = run_tracks(
            problems[track.problem],
            starts[track.problem],
            [dataclasses.replace(track, problem=0)],
            num_steps=30,
            lr=0.02,
            record_every=10,
        )[0]
        torch.testing.assert_close(trajectory.points, alone.points, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(trajectory.losses, alone.losses, rtol=1e-13, atol=1e-13)


def test_a_track_naming_a_missing_problem_or_mismatched_starts_is_refused() -> None:
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    with pytest.raises(ValueError, match="tracks name problems \\[1\\]"):
        run_tracks(problem, starts, [Track("ls", (), 0, 1)], num_steps=1)
    with pytest.raises(ValueError, match="with 2 problems, starts must have shape"):
        run_tracks([problem, problem], starts, [Track("ls")], num_steps=1)


def test_forked_starmap_keeps_the_order_of_the_jobs() -> None:
    from toy_problems.runner import forked_starmap

    jobs = [(7, 2), (9, 4), (5, 5), (1, 3)]
    assert (
        forked_starmap(divmod, jobs, processes=2)
        == forked_starmap(divmod, jobs, processes=1)
        == [divmod(*job) for job in jobs]
    )


def test_split_by_method_balances_the_measured_costs() -> None:
    """Every track of a method lands in one part; with costs, the most expensive method is dealt
    first and the others fill the lighter part (6 | 3 + 3, where counting tracks gives 6 + 3 | 3)."""
    from toy_problems.measured import split_by_method

    tracks = [
        Track("mgda"),
        Track("mgda", (POWER,)),
        Track("ls"),
        Track("ls", (POWER,)),
        Track("rlw"),
        Track("rlw", (POWER,)),
    ]
    parts = split_by_method(tracks, 2, costs={"mgda": 6.0, "ls": 3.0, "rlw": 3.0})
    assert sorted(parts) == [[0, 1], [2, 3, 4, 5]]
    assert split_by_method(tracks, 2) == [
        [0, 1, 4, 5],
        [2, 3],
    ]  # by number of tracks, ties to the first part


def test_method_seconds_per_step_measures_without_touching_the_runs() -> None:
    """The calibration builds its own instances: a stateful method's run afterwards is the run
    without it, and the measured cost is positive."""
    from toy_problems.runner import method_seconds_per_step

    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    tracks = [Track("famo"), Track("famo", (POWER,))]
    before = run_tracks(problem, starts, tracks, num_steps=20, lr=0.05)
    assert method_seconds_per_step(problem, starts, tracks, steps=3) > 0
    after = run_tracks(problem, starts, tracks, num_steps=20, lr=0.05)
    for a, b in zip(before, after):
        assert torch.equal(a.points, b.points)


def test_a_representation_only_method_is_refused_with_the_reason(monkeypatch) -> None:
    """The runner gives methods the gradients of the parameters themselves (engine mode "full");
    a method that needs a model's representation is refused, naming why."""
    import core.registry as registry
    from core.methods.linear import LinearScalarization

    class RepresentationOnly(LinearScalarization):
        name = "representation_only"
        engine_modes = frozenset({"representation"})

    monkeypatch.setitem(registry.METHODS, "representation_only", RepresentationOnly)
    problem = TwoTaskToy()
    with pytest.raises(
        ValueError, match="representation_only runs only on a model's shared representation"
    ):
        run_tracks(
            problem,
            problem.default_starts(dtype=torch.float64),
            [Track("representation_only")],
            num_steps=1,
        )


def test_step_size_schedules_and_gradient_noise_are_plain_noisy_gradient_steps() -> None:
    """A track with its own step sizes takes `x -= a_k sum_i w_i (g_i + s xi_i)`, the noise drawn
    from the runner's generator in the Jacobian's shape at every step (every row draws, rows
    without noise scale it by 0): written out by hand, to the bit."""
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    sizes = 0.05 / (1 + torch.arange(30, dtype=torch.float64) / 10) ** 0.75
    tracks = [
        Track("ls", step_sizes=sizes, gradient_noise=0.3),
        Track("ls"),
        Track("ls", step_sizes=sizes),
    ]
    runs = run_tracks(problem, starts, tracks, num_steps=30, lr=0.01, optimizer="sgd", noise_seed=4)
    generator = torch.Generator().manual_seed(4)
    x = torch.stack([starts] * 3)
    scale = torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)[:, None, None, None]
    steps = torch.stack([sizes, torch.full((30,), 0.01, dtype=torch.float64), sizes], dim=1)[
        ..., None, None
    ]
    for k in range(30):
        _, jacobian = problem.values_and_jacobian(x)
        jacobian = jacobian + scale * torch.randn(
            jacobian.shape, generator=generator, dtype=torch.float64
        )
        x = x - steps[k] * jacobian.sum(dim=-2)
    for row, run in enumerate(runs):
        assert torch.equal(run.points[-1], x[row])
    assert not torch.equal(
        runs[0].points[-1], runs[2].points[-1]
    )  # the noise moved the noisy track
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        run_tracks(problem, starts, tracks, num_steps=30, optimizer="adam")
    with pytest.raises(ValueError, match=r"step_sizes must have shape \[num_steps\] = \[5\]"):
        run_tracks(problem, starts, tracks, num_steps=5, optimizer="sgd")


def test_measure_sees_every_recorded_step_in_track_order_with_exact_gradients() -> None:
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)
    tracks = [
        Track("mgda", gradient_noise=0.5),
        Track("ls", (POWER,)),
    ]  # two groups: rows reordered inside
    seen = []
    runs = run_tracks(
        problem,
        starts,
        tracks,
        num_steps=10,
        lr=0.05,
        optimizer="sgd",
        record_every=5,
        measure=lambda step, points, values, jacobian: seen.append(
            (step, points, values, jacobian)
        ),
    )
    assert [step for step, *_ in seen] == [0, 5, 10]
    for index, (_step, points, values, jacobian) in enumerate(seen):
        for row, run in enumerate(runs):
            assert torch.equal(points[row], run.points[index]) and torch.equal(
                values[row], run.losses[index]
            )
        exact_values, exact_jacobian = problem.values_and_jacobian(points[0])
        assert torch.equal(jacobian[0], exact_jacobian) and torch.equal(
            values[0], exact_values
        )  # noise-free


def test_random_nonconvex_rows_are_one_stacked_closed_form_bit_for_bit() -> None:
    """A list of `RandomNonconvex` problems is evaluated as one stacked closed form
    (`RandomNonconvex.stack_rows`), bit for bit each problem's own: the runs equal the problems'
    runs alone."""
    from toy_problems import RandomNonconvex

    problems = [RandomNonconvex(3, 2, seed=seed) for seed in range(3)]
    starts = torch.stack(
        [
            p.starts(4, generator=torch.Generator().manual_seed(p.seed), dtype=torch.float64)
            for p in problems
        ]
    )
    tracks = [Track("mgda", problem=p) for p in range(3)]
    together = run_tracks(problems, starts, tracks, num_steps=40, lr=0.02)
    for p, problem in enumerate(problems):
        alone = run_tracks(problem, starts[p], [Track("mgda")], num_steps=40, lr=0.02)[0]
        assert torch.equal(together[p].points, alone.points)
