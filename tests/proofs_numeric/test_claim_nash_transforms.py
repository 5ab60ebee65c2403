"""`proofs_numeric.nash_transforms`: the quick run passes, a violated criterion fails, and its helpers do what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import core
from proofs_numeric import nash_transforms
from proofs_numeric.invariance import TransformedFamily, method_weights
from toy_problems import RandomNonconvex


@pytest.fixture(scope="module")
def quick_measurements() -> nash_transforms.Measurements:
    return nash_transforms.measure(quick=True)


def _evaluate(measurements: nash_transforms.Measurements):
    import matplotlib.pyplot as plt

    result = nash_transforms.evaluate(measurements)
    plt.close(result.figure)
    return result


def test_quick_run_passes(quick_measurements) -> None:
    result = _evaluate(quick_measurements)
    assert result.passed, result.measured
    data = json.loads(json.dumps(result.data))  # JSON-ready
    assert all(
        (check["value"] <= check["bound"])
        if check["sense"] == "<="
        else (check["value"] >= check["bound"])
        for check in data["checks"].values()
    )
    variants = data["variants"]
    # the predicted invariances sit at rounding, the predicted breaks far above it
    for name in nash_transforms.INVARIANT_VARIANTS:
        assert variants[name]["max_rounding"] <= nash_transforms.ROUNDING_CONSTANT
    for name in nash_transforms.BREAK_VARIANTS:
        assert (
            variants[name]["max_rounding"]
            >= nash_transforms.BREAK_FACTOR * nash_transforms.ROUNDING_CONSTANT
        )
    assert (
        data["cvxpy_reference_ccp"]["run"] is False
    )  # quick mode leaves the optional cvxpy check out
    for points in quick_measurements.figure_runs.values():
        assert points.shape == (401, 1, 3, 5, 2)  # [T + 1, 1, V, S, n], as the figure reads them


@pytest.mark.parametrize(
    ("constant", "value"),
    [("RESCALING_TOLERANCE", 1e-30), ("ROUNDING_CONSTANT", 1e-6), ("BREAK_FACTOR", 1e30)],
)
def test_a_violated_criterion_fails(quick_measurements, monkeypatch, constant, value) -> None:
    monkeypatch.setattr(nash_transforms, constant, value)
    assert not _evaluate(quick_measurements).passed


def test_rescaling_maps_alpha_to_alpha_over_c_on_a_hand_case() -> None:
    # orthogonal gradients of norms 1 and 2: alpha_i ||g_i||^2 alpha_i = 1 gives alpha = (1, 1/2)
    gramian = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha, alpha_c = nash_transforms.rescaled_solutions(
        gramian, torch.tensor([2.0, 1.0], dtype=torch.float64)
    )
    ridge = core.NashMTL().ridge
    torch.testing.assert_close(
        alpha,
        torch.tensor([1.0, 0.5], dtype=torch.float64) / (1 + ridge) ** 0.5,
        rtol=1e-15,
        atol=0,
    )
    torch.testing.assert_close(
        alpha_c,
        torch.tensor([0.5, 0.5], dtype=torch.float64) / (1 + ridge) ** 0.5,
        rtol=1e-15,
        atol=0,
    )


def test_rescaling_leaves_the_update_unchanged_on_random_jacobians() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = nash_transforms.random_jacobians(4, 20, generator=generator)
    scales = 10.0 ** (6 * torch.rand(20, 4, generator=generator, dtype=torch.float64) - 3)
    alpha, alpha_c = nash_transforms.rescaled_solutions(core.gramian(jacobian), scales)
    torch.testing.assert_close(alpha_c * scales, alpha, rtol=1e-12, atol=0)
    update = (alpha[..., None] * jacobian).sum(dim=-2)
    torch.testing.assert_close(
        (alpha_c[..., None] * scales[..., None] * jacobian).sum(dim=-2),
        update,
        rtol=1e-12,
        atol=1e-12,
    )


def test_reference_style_solve_meets_its_absolute_test_and_is_not_scale_free() -> None:
    # alpha = 100 solves G alpha = 1/alpha for G = 1e-4 I; from alpha = 1 the absolute residual test
    # (1/alpha ~ 0.01) stops Newton about a thousandth of 1/alpha early. The same problem rescaled by
    # c = 100 (G' = I) is solved exactly at the start, alpha' = 1, i.e. alpha' c = 100.
    small = torch.eye(3, dtype=torch.float64) * 1e-4
    losses = torch.ones(3, dtype=torch.float64)
    alpha = nash_transforms.ReferenceStyleSolve()(small, losses)
    rescaled = nash_transforms.ReferenceStyleSolve()(small * 1e4, losses)
    residual = np.linalg.norm(small.numpy() @ alpha.numpy() - 1 / alpha.numpy())
    assert residual < 1e-3
    torch.testing.assert_close(rescaled * 100, torch.full((3,), 100.0, dtype=torch.float64))
    assert (
        float((alpha / 100 - 1).abs().max()) > 1e-6
    )  # not the exact solution: stopped by an absolute test
    exact = core.NashMTL(warm_start=False)(small, losses)
    torch.testing.assert_close(
        exact, torch.full((3,), 100.0, dtype=torch.float64), rtol=1e-9, atol=0
    )


def test_headed_problem_separates_heads() -> None:
    problem = nash_transforms.HeadedNonconvex(3, 2, 3, seed=0)
    x = torch.randn(
        5, problem.n_var, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    values, jacobian = core.batched_task_gradients(problem, x)
    assert values.shape == (5, 3) and jacobian.shape == (5, 3, 9)
    for i in range(3):
        for j in range(3):
            head = jacobian[:, i, 3 + 2 * j : 5 + 2 * j]
            assert bool((head == 0).all()) != (i == j)  # task i reaches its own head only


def test_headed_problem_closed_form_matches_autograd() -> None:
    problem = nash_transforms.HeadedNonconvex(3, 2, 3, seed=1)
    x = 2 * torch.randn(
        4, 5, problem.n_var, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    values, jacobian = problem.values_and_jacobian(x)
    reference_values, reference = core.batched_task_gradients(problem, x)
    assert torch.equal(values, problem(x)) and torch.equal(values, reference_values)
    torch.testing.assert_close(jacobian, reference, rtol=1e-14, atol=1e-15)
    assert bool(
        ((jacobian == 0) == (reference == 0)).all()
    )  # the other heads' columns are exact zeros


def test_reference_style_solve_treats_every_row_as_if_alone() -> None:
    gramians = core.gramian(
        nash_transforms.random_jacobians(3, 40, generator=torch.Generator().manual_seed(2))
    )
    losses = torch.ones(40, 3, dtype=torch.float64)
    batched, alone = (
        nash_transforms.ReferenceStyleSolve(),
        [nash_transforms.ReferenceStyleSolve() for _ in range(40)],
    )
    for scale in (1.0, 1.5, 0.7):  # warm-started from the previous call's rows
        rows = batched(gramians * scale, losses)
        assert torch.equal(
            rows,
            torch.stack(
                [
                    solve(gramian * scale, loss)
                    for solve, gramian, loss in zip(alone, gramians, losses)
                ]
            ),
        )


def _small_case(problems: list, *, seed: int) -> tuple[TransformedFamily, torch.Tensor]:
    return nash_transforms._versions_case(
        problems, num_random=1, num_starts=2, generator=torch.Generator().manual_seed(seed)
    )


def _nominal(family: TransformedFamily) -> TransformedFamily:
    return TransformedFamily(family.problems, [versions[:1] for versions in family.transforms])


def _adam_alone(
    family: TransformedFamily,
    starts: torch.Tensor,
    method,
    *,
    num_steps: int,
    lr: float,
    shared_dim: int,
    raw_heads: bool,
) -> torch.Tensor:
    """One method's Adam run, written out: the update `sum_i w_i grad l_i` on the shared variables,
    and on the heads `w_i grad l_i` (or, with `raw_heads`, the plain `grad l_i`)."""
    x = starts.clone().requires_grad_(True)
    method.reset(tuple(starts.shape[:-1]))
    optimizer = torch.optim.Adam([x], lr=lr)
    points = [x.detach().clone()]
    for _ in range(num_steps):
        values, jacobian = family.values_and_jacobian(x.detach())
        weights = method_weights(method, values, jacobian, shared_dim=shared_dim)
        direction = (weights[..., None] * jacobian).sum(dim=-2)
        if raw_heads:
            direction = torch.cat(
                [direction[..., :shared_dim], jacobian[..., shared_dim:].sum(dim=-2)], dim=-1
            )
        x.grad = direction
        optimizer.step()
        points.append(x.detach().clone())
    return torch.stack(points)


def test_adam_runs_repeat_separate_runs() -> None:
    # several methods in one loop, a cold solver shared by a weighted-heads and a raw-heads run
    family, starts = _small_case(
        [nash_transforms.HeadedNonconvex(3, 2, 3, seed=5 + p) for p in range(2)], seed=3
    )
    cold = core.NashMTL(warm_start=False)
    runs = nash_transforms.adam_runs(
        family,
        starts,
        [cold, core.NashMTL(), cold],
        num_steps=30,
        lr=1e-2,
        shared_dim=3,
        raw_heads=[False, False, True],
    )
    separate = [
        _adam_alone(family, starts, method, num_steps=30, lr=1e-2, shared_dim=3, raw_heads=raw)
        for method, raw in (
            (core.NashMTL(warm_start=False), False),
            (core.NashMTL(), False),
            (core.NashMTL(warm_start=False), True),
        )
    ]
    assert all(torch.equal(run, alone) for run, alone in zip(runs, separate))


def _forced_step_by_step(
    family: TransformedFamily, starts: torch.Tensor, method, *, num_steps: int
) -> dict[str, torch.Tensor]:
    """The per-step check as first written: every version at the nominal iterate, one step at a time."""
    x = starts[:, :1].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=1e-2)
    deviation, b_squared = [], []
    for _ in range(num_steps):
        values, jacobian = family.values_and_jacobian(
            x.detach().expand(-1, starts.shape[1], -1, -1)
        )
        weights = method_weights(method, values, jacobian)
        direction = (weights[..., None] * jacobian).sum(dim=-2)
        deviation.append(
            (direction[:, 1:] - direction[:, :1]).norm(dim=-1) / direction[:, :1].norm(dim=-1)
        )
        b_squared.append((weights[:, 0] * jacobian[:, 0].norm(dim=-1)).square().amax(dim=-1))
        x.grad = direction[:, :1]
        optimizer.step()
    return {
        "relative": torch.stack(deviation).amax(dim=0),
        "b_squared": torch.stack(b_squared).amax(dim=0),
    }


@pytest.mark.parametrize(
    "make",
    [lambda: core.NashMTL(warm_start=False), lambda: core.NashMTL(update_weights_every=5)],
    ids=["stateless", "stateful"],
)
def test_forced_deviations_repeat_the_step_by_step_check(make) -> None:
    problems = [RandomNonconvex(4, 3, seed=7 + p) for p in range(2)]
    family, starts = _small_case(problems, seed=4)
    (teacher,) = nash_transforms.adam_runs(
        _nominal(family), starts[:, :1], [make()], num_steps=40, lr=1e-2
    )
    result = nash_transforms.forced_deviations(family, teacher[:-1], make())
    reference = _forced_step_by_step(family, starts, make(), num_steps=40)
    assert torch.equal(result["b_squared"], reference["b_squared"])  # the same nominal run
    assert torch.equal(
        result["relative"][:, 0], reference["relative"][:, 0]
    )  # the control (affine): the same arithmetic
    # the transformed versions' transforms run on all steps at once, where torch may round pow and
    # softplus differently: their deviations agree to rounding, relative to the update
    torch.testing.assert_close(
        result["relative"][:, 1:], reference["relative"][:, 1:], rtol=0, atol=1e-12
    )
