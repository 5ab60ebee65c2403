"""`proofs_numeric.symbolic`: each derivation simplifies to 0, and a deliberately wrong formula does not."""

from __future__ import annotations

import pytest
import sympy as sp

from proofs_numeric import symbolic as S


def test_unit_gradients_are_unchanged_by_an_increasing_transform() -> None:
    assert S.all_zero(S.unit_gradient_invariance(derivative_sign="positive"))
    assert not S.all_zero(
        S.unit_gradient_invariance(derivative_sign="real")
    )  # h' of unknown sign: sign(h') u - u
    flipped = S.unit_gradient_invariance(
        derivative_sign="negative"
    )  # -u - u, nonzero at a random point
    assert not S.all_zero(flipped) and all(e.is_number for e in flipped)
    assert S.nonzero_witness(sp.Symbol("x", positive=True) - sp.Symbol("x", positive=True)) is None


def test_concrete_increasing_transforms_scale_the_gradient_by_a_positive_factor() -> None:
    assert S.all_zero(S.unit_gradient_invariance_concrete())


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_dibs_mtl_one_inner_step_is_the_closed_form(num_tasks: int) -> None:
    assert S.all_zero(S.dibs_mtl_one_step(num_tasks))
    eta, r = sp.symbols("eta r", positive=True)
    wrong = S.dibs_mtl_one_step(
        num_tasks, code_weights=lambda gram: [eta * r / gram[i, i] for i in range(num_tasks)]
    )
    assert not S.all_zero(wrong)  # 1/||g||^2 instead of 1/||g||


def test_gramian_form_of_the_inner_loop_distances() -> None:
    assert S.all_zero(S.gramian_distance_identity())
    assert not S.all_zero(S.gramian_distance_identity(code_shift_sign=+1))


CASES = [  # (K, T, r, eta): the published 1-step and T-step settings, and large steps that hit the radius
    (2, 1, "1/1000", "1/100"),
    (3, 5, "1/1000", None),
    (5, 10, "1/1000", "1/100"),
    (2, 6, "1", "3/10"),
    (3, 6, "1", "3/10"),
    (4, 8, "1/2", "1/4"),
]


def test_t_step_weights_of_core_equal_the_vector_inner_loop() -> None:
    rejected = 0
    for seed, (num_tasks, steps, radius, step) in enumerate(CASES):
        result = S.dibs_mtl_weights_numeric(
            seed=seed, num_tasks=num_tasks, dimension=4, steps=steps, radius=radius, step=step
        )
        assert result["gap"] <= 1e-13, (num_tasks, steps, result)
        assert result["closed_form_gap"] <= 1e-40  # delta_T' = -sum_i w_i g_i (50-digit arithmetic)
        rejected += result["counted_steps"] < steps
    assert rejected >= 2  # the radius check and the counted rejected step are exercised
    wrong = S.dibs_mtl_weights_numeric(
        seed=3, num_tasks=2, dimension=4, steps=6, radius="1", step="3/10", count_rejected=False
    )
    assert wrong["gap"] > 1e-3  # dropping the rejected step is not what core (or the spec) does


def test_mgda_two_task_closed_form() -> None:
    assert S.all_zero(S.mgda_two_task())
    wrong = S.mgda_two_task(
        lambda g: (
            [(g[0, 0] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1])] * 1
            + [1 - (g[0, 0] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1])]
        )
    )
    assert not S.all_zero(wrong)  # the weight of g2 put on g1


def test_normalized_sum_weights() -> None:
    assert S.all_zero(S.normalized_sum_two_task())
    assert not S.all_zero(S.normalized_sum_two_task(lambda g: [1 / g[0, 0], 1 / g[1, 1]]))


def test_nash_mtl_two_task_closed_form_solves_the_nash_system() -> None:
    assert S.all_zero(S.nash_mtl_two_task())
    unnormalised = S.nash_mtl_two_task(
        lambda g: [1 / sp.sqrt(g[0, 0]), 1 / sp.sqrt(g[1, 1])]
    )  # b = 1
    assert not S.all_zero(unnormalised)


def test_imtlg_paper_closed_form_equals_the_gramian_form() -> None:
    assert S.all_zero(S.imtlg_two_task())
    swapped = S.imtlg_two_task(
        lambda g: [
            sp.sqrt(g[0, 0]) / (sp.sqrt(g[0, 0]) + sp.sqrt(g[1, 1])),
            sp.sqrt(g[1, 1]) / (sp.sqrt(g[0, 0]) + sp.sqrt(g[1, 1])),
        ]
    )
    assert not S.all_zero(swapped)  # alpha_i ∝ ||g_i|| instead of 1/||g_i||


def test_pcgrad_two_task_projection() -> None:
    assert S.all_zero(S.pcgrad_two_task())
    assert not S.all_zero(
        S.pcgrad_two_task(lambda g: [1 - g[0, 1] / g[1, 1], 1 - g[0, 1] / g[0, 0]])
    )


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    assert S.all_zero(S.cagrad_two_task_c0())
    assert not S.all_zero(S.cagrad_two_task_c0(lambda g: [1, 1]))  # the sum, not the mean


@pytest.mark.parametrize("seed", range(4))
def test_core_methods_equal_the_formulas_on_integer_gradients(seed: int) -> None:
    for conflicting in (True, False):
        gaps = S.two_task_numeric(seed=seed, conflicting=conflicting)
        assert gaps.pop("conflicting") == float(conflicting)
        nash = gaps.pop("NashMTL")
        assert nash <= 1e-8  # the solver's ridge 1e-10 moves the weights by ~1e-10
        assert max(gaps.values()) <= 1e-13, gaps


def test_cagrad_with_positive_c_equals_a_high_precision_dual_solution() -> None:
    for seed in range(3):
        assert S.cagrad_two_task_numeric(seed=seed, c=0.4) <= 1e-9
        assert S.cagrad_two_task_numeric(seed=seed, c=0.8) <= 1e-9
    assert S.cagrad_two_task_numeric(seed=1, c=0.4, reference_c=0.5) > 1e-3
