"""The measured invariance of every registered method (proofs_numeric/method_invariance.py): known
answers, a false or a missing declaration fails the claim, and the README's table is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import core
from proofs_numeric import method_invariance as claim

README = Path(__file__).resolve().parents[2] / "README.md"


def test_known_methods_measure_as_their_papers_say() -> None:
    results = claim.measure(quick=True, methods=["dibsmtl", "ls", "scaleinvls"])
    assert results["dibsmtl"]["measured"] == {
        "rescaling_invariant": True,
        "monotone_invariant": True,
    }
    assert results["ls"]["measured"] == {"rescaling_invariant": False, "monotone_invariant": False}
    assert results["scaleinvls"]["measured"] == {
        "rescaling_invariant": True,
        "monotone_invariant": False,
    }
    assert claim.evaluate(results).passed


@pytest.mark.parametrize(
    ("cls", "claims", "spec"),
    [
        (
            core.LinearScalarization,
            frozenset({"monotone_invariant", "rescaling_invariant"}),
            "ls",
        ),  # declares what is false
        (core.DiBSMTL, frozenset(), "dibsmtl"),  # does not declare what holds
    ],
)
def test_a_declaration_that_the_measurement_contradicts_fails(
    monkeypatch, cls, claims, spec
) -> None:
    monkeypatch.setattr(cls, "claims", claims)
    result = claim.evaluate(claim.measure(quick=True, methods=[spec]))
    assert not result.passed and f"disagreeing with their declarations: {spec}" in result.measured


def test_the_verdict_follows_the_rounding_control() -> None:
    """A transform moving the update 5x the rounding control is invariance; 20x is not; below the floor always is."""
    rounding = 1e-8
    deviations = torch.tensor([0.0, 5 * rounding, 20 * rounding, rounding])[:, None, None]
    verdict = claim.verdicts(deviations)
    assert verdict["rescaling_invariant"] and not verdict["monotone_invariant"]
    assert claim.verdicts(torch.tensor([0.0, 0.5, 0.5, 0.0])[:, None, None] * claim.FLOOR)[
        "monotone_invariant"
    ]
    # a method that amplifies rounding to O(1) cannot be measured invariant (the ceiling)
    assert not claim.verdicts(torch.tensor([0.0, 1.0, 1.0, 0.5])[:, None, None])[
        "rescaling_invariant"
    ]


def test_the_readme_method_table_is_current() -> None:
    """The README's table is the registry's facts and the quick measurement of every method; run
    `python -m proofs_numeric.method_invariance --write-readme` after adding or changing a method."""
    results = claim.measure(quick=True)
    text = README.read_text()
    stored = text[
        text.index(claim.TABLE_BEGIN) + len(claim.TABLE_BEGIN) : text.index(claim.TABLE_END)
    ].strip()
    assert stored == claim.method_table(results), (
        "the README's method table is out of date: python -m proofs_numeric.method_invariance --write-readme"
    )
    assert claim.evaluate(results).passed, claim.evaluate(results).measured


def test_representation_only_methods_are_measured_on_the_engine() -> None:
    """A method the toy runner cannot run (RotoGrad: representation mode only) follows its nominal
    trajectory through the engine, on the identity encoder whose features are the problem's
    variables; for methods both can run that path is the runner's trajectory (stateful, learnable
    and post-step methods included), and RotoGrad measures as it declares (neither invariance: its
    common norm C follows the losses' scales)."""
    case = claim.toy_case(quick=True, seed=0)
    for spec in ("mgda", "uw", "famo"):
        torch.testing.assert_close(
            claim.engine_points(case, spec, seed=0),
            claim.nominal_points(case, spec, seed=0),
            rtol=0,
            atol=1e-12,
        )
    results = claim.measure(quick=True, methods=["rotograd"])
    assert results["rotograd"]["measured"] == {
        "rescaling_invariant": False,
        "monotone_invariant": False,
    }
    assert results["rotograd"]["agrees"]


def test_a_random_method_draws_alike_in_every_version() -> None:
    """Teacher-forced, a random method gets one instance per version from one seed: identical
    inputs in two versions give identical updates (the rows within a version draw differently)."""
    from proofs_numeric.method_invariance import forced_updates

    generator = torch.Generator().manual_seed(0)
    values = torch.rand(6, 4, 2, generator=generator, dtype=torch.float64) + 0.5
    jacobian = torch.randn(6, 4, 2, 3, generator=generator, dtype=torch.float64)
    both_values, both_jacobian = (
        torch.cat([values, values], dim=1),
        torch.cat([jacobian, jacobian], dim=1),
    )
    for spec in ("rlw", "pcgrad", "graddrop"):
        updates, _ = forced_updates(spec, both_values, both_jacobian, lr=1e-2, seed=3, versions=2)
        assert torch.equal(updates[:, :4], updates[:, 4:])
    updates, _ = forced_updates("rlw", both_values, both_jacobian, lr=1e-2, seed=3, versions=2)
    assert not torch.equal(
        updates[:, 0],
        updates[:, 1] * (jacobian[:, 0].sum(-2).norm() / jacobian[:, 1].sum(-2).norm()),
    )


def test_the_nominal_trajectories_run_together_equal_each_method_alone() -> None:
    """`batched_nominal_points` runs every method's nominal trajectory in one runner batch: each is
    bit for bit the method's run alone (stateful, random and learnable methods included), and a
    representation-only method is left to the engine."""
    from proofs_numeric.claim import single_thread

    case = claim.nonconvex_case(quick=True, seed=0)
    specs = ["mgda", "famo", "rlw", "uw", "graddrop", "rotograd"]
    with single_thread():
        together = claim.batched_nominal_points(case, specs, seed=0)
        assert "rotograd" not in together
        for spec in specs[:-1]:
            assert torch.equal(together[spec], claim.nominal_points(case, spec, seed=0))
