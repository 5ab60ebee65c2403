"""DiBS-MTL's central claim, end to end through `mtl_backward`: invariance to strictly increasing,
nonaffine loss transforms; and counter-examples for the methods that do not have it.

If task i's loss becomes `phi_i(l_i)`, its gradient becomes `phi_i'(l_i) g_i`, a positive
rescaling. DiBS-MTL only uses the unit gradients, so its weights scale by `1 / phi_i'(l_i)` and
the shared update `sum_i w_i g_i` and the head updates `w_i grad l_i` stay the same.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import core
from tests.models import TwoLayerMultiTask
from tests.strategies import monotone_transforms

RTOL = 1e-6


def updates(
    model: TwoLayerMultiTask, method, transforms=None, *, representation: bool = False
) -> list[torch.Tensor]:
    """The `.grad` that `mtl_backward` writes, shared parameters first, for (transformed) losses."""
    model.zero_grad_all()
    z = model.representation()
    losses = model.losses_from(z)
    if transforms is not None:
        losses = [phi(loss) for phi, loss in zip(transforms, losses)]
    core.mtl_backward(
        losses,
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
    )
    return [p.grad.clone() for p in model.shared_params()] + [
        p.grad.clone() for g in model.task_params() for p in g
    ]


@st.composite
def transformed_models(draw):
    """A small random model in float64 and one random transform per task, tuned to its loss values."""
    num_tasks = draw(st.integers(2, 4))
    model = TwoLayerMultiTask(num_tasks, seed=draw(st.integers(0, 10_000)), dtype=torch.float64)
    with torch.no_grad():
        losses = [float(loss) for loss in model.losses()]
    transforms = [
        draw(monotone_transforms(max_depth=3, input_range=(loss, loss))) for loss in losses
    ]
    return model, transforms


def relative_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    got_flat, want_flat = (
        torch.cat([g.reshape(-1) for g in got]),
        torch.cat([w.reshape(-1) for w in want]),
    )
    return float((got_flat - want_flat).norm() / want_flat.norm())


@pytest.mark.parametrize("representation", [False, True], ids=["full", "representation"])
@pytest.mark.parametrize("steps", [1, 5])
@given(case=transformed_models())
def test_dibs_mtl_updates_are_invariant(case, steps, representation) -> None:
    model, transforms = case
    method = core.DiBSMTL(steps=steps)
    nominal = updates(model, method, representation=representation)
    transformed = updates(model, method, transforms, representation=representation)
    for got, want in zip(transformed, nominal):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))


NOT_INVARIANT = {
    "ls": core.LinearScalarization,
    "mgda": lambda: core.MGDA(normalization="none"),
    "rlw": lambda: core.RandomLossWeighting(generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", sorted(NOT_INVARIANT))
def test_counter_example_is_found_for_scale_dependent_methods(name) -> None:
    """Searching the same space of models and transforms finds one that changes the update by 10%."""

    def changes_the_update(case) -> bool:
        model, transforms = case
        make = NOT_INVARIANT[name]  # a fresh method (and RLW generator) for each of the two calls
        return relative_difference(updates(model, make(), transforms), updates(model, make())) > 0.1

    model, transforms = find(
        transformed_models(),
        changes_the_update,
        settings=settings(max_examples=200, database=None, derandomize=True),
    )
    assert changes_the_update((model, transforms))
    assert (
        relative_difference(
            updates(model, core.DiBSMTL(), transforms), updates(model, core.DiBSMTL())
        )
        < RTOL
    )


@given(
    transform_0=monotone_transforms(input_range=(0.0, 1.0)),
    transform_1=monotone_transforms(input_range=(0.0, 1.0)),
)
@settings(max_examples=20)
def test_dibs_iterates_are_invariant(transform_0, transform_1) -> None:
    def nominal(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x**2, (x - 1) ** 2], dim=-1)

    def transformed(x: torch.Tensor) -> torch.Tensor:
        values = nominal(x)
        return torch.stack([transform_0(values[..., 0]), transform_1(values[..., 1])], dim=-1)

    starts = torch.tensor([[0.05], [0.3], [0.7], [0.95]], dtype=torch.float64)
    preferred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    schedule = core.robbins_monro_step(0.3)
    want = core.dibs(nominal, starts, preferred, num_steps=200, step_size=schedule)
    got = core.dibs(transformed, starts, preferred, num_steps=200, step_size=schedule)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL)
