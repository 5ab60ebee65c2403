"""The method contract, checked over the whole registry (core/methods/base.py, core/registry.py).

- every claim a method declares holds on hypothesis-drawn inputs (tests/claims.py has one
  assertion per claim of `core.CLAIMS`; a declared claim without one fails);
- the class facts are consistent and the registry builds, describes and validates every method;
- the lifecycle (`after_step`, `end_epoch`, `reset`, `state_dict`/`load_state_dict`) works for
  every method, checkpoints load with `weights_only=True` and continue exactly;
- batched state equals separate instances, and a used state refuses another batch shape.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from collections.abc import Mapping

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, MTLInputError, UnknownMethodError
from core.methods.base import ENGINE_MODES, GradientWeighting, Method, WeightsResult
from core.registry import (
    available_methods,
    canonical_spec,
    describe_method,
    make_method,
    parse_method_specs,
)
from tests.claims import (
    ASSERTIONS,
    ClaimInputs,
    Step,
    assert_rescaling_invariant,
    run_steps,
    usable_transforms,
)
from tests.jacobian_strategies import jacobians, positive_losses
from tests.strategies import positive_domain_transforms

VARIANTS = [
    "mgda:normalization=l2:apply_to=normalized",
    "mgda:normalization=loss:apply_to=normalized",
    "dibsmtl:steps=5",
    "ls:reduction=mean",
    "nashmtl:warm_start=false",
    "dwa:window=3",
    "famo:optimizer=sgd",
    "sdmgrad:reduction=sum",  # the weights sum to K: simplex_weights narrowed away
    "graddrop:leak=0.5",
    "moco:normalize_gradients=true",
    "db_mtl:beta_sigma=0.5",
    "excess_mtl:n_warmup_steps=2",
    "pmtl:init_epochs=0",  # stage 2 only: stateless and non-conflicting
    "pmtl:preference=1",  # an index: no claim
    "epo:reduction=sum",  # weights sum to K: simplex_weights narrowed away
    "stch:log_losses=true",
    "gradvac:shuffle=false",  # deterministic visiting order: the stateful contract without a generator
    "fairgrad:alpha=2",  # alpha != 1: rescaling and monotone invariance narrowed away
    "upgrad:norm_eps=0.0001:reg_eps=0.0001",  # TorchJD's regularised QP: non_conflicting narrowed away
    "aligned_mtl:scale_mode=median",
    "rotograd:burn_in_period=2",  # the baseline replaced within the state tests' trajectories
]
SPECS = available_methods() + VARIANTS

UNDECLARED_BECAUSE_FALSE = {
    # MGDA scales by s_i = l_i ||g_i||: under l_i -> a_i l_i the normalised gradient u_i / l_i
    # scales by 1/a_i, so the min-norm point moves (J = I, l = (1, 1), a = (2, 1): w = (1/2, 1/2),
    # a * w(a l) = (0.4, 0.2)); it was declared once and is not any more
    ("mgda:normalization=loss+:apply_to=normalized", "rescaling_invariant"): (
        Step(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
        [2.0, 1.0],
    ),
    # the learned and stochastic weightings start from the same weights (or scales) whatever the
    # loss scale: J = I, l = (1, 1), a = (2, 1) gives a * w(a l) != w(l) at the first step
    **{
        (spec, "rescaling_invariant"): (
            Step(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
            [2.0, 1.0],
        )
        for spec in ("gradnorm", "imtl_l", "imtl", "modo", "sdmgrad")
        if spec in available_methods()  # "imtl" once the registry frees the name
    },
    # Jacobian aggregations, same counterexample: GradDrop keeps both coordinates whole, d = a J;
    # MoCo's first lambda moves with Y Y^T = diag(1, 1/4) (d = (0.48, 0.26), not (1/4, 1/4));
    # ExcessMTL's first weights are uniform whatever the scale, d = J / 2; RotoGrad's common norm
    # C = sum_k alpha_k ||g_k|| follows the scales: d = (1, 1) becomes (3/2, 3/2)
    **{
        (spec, "rescaling_invariant"): (
            Step(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
            [2.0, 1.0],
        )
        for spec in ("graddrop", "moco", "excess_mtl", "rotograd")
    },
    # GLS: the update (S / K) sum_i g_i / l_i keeps its direction but scales by (prod_i a_i)^(1/K):
    # J = I, l = (1, 1), a = (2, 1) gives a * w(a l) = (1/sqrt 2, 1/sqrt 2), not (1/2, 1/2)
    ("gls", "rescaling_invariant"): (
        Step(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
        [2.0, 1.0],
    ),
}
"""(spec, claim) that is false, with a counterexample (step, factors): the method must not declare
it, and the check must fail on the counterexample (so the check can fail)."""
# the dual-cone projections keep orthogonal, non-conflicting gradients as they are (w = p), ConFIG
# sums their projections, GradVac and FairGrad (alpha != 1) weigh norms too: J = I, l = (1, 1),
# a = (2, 1) gives a * w(a l) != w(l); Aligned-MTL whitens orthogonal gradients to the smallest
# norm (invariant there), but the polar factor of D J moves with D: J = [[1, 0], [1, 1]]
UNDECLARED_BECAUSE_FALSE.update(
    {
        (spec, "rescaling_invariant"): (
            Step(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
            [2.0, 1.0],
        )
        for spec in ("upgrad", "dualproj", "config", "gradvac", "fairgrad:alpha=2")
    }
)
UNDECLARED_BECAUSE_FALSE[("aligned_mtl", "rescaling_invariant")] = (
    Step(
        torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
    ),
    [2.0, 1.0],
)

STATEFUL_SPECS = ["uw", "dwa", "dwa:window=3", "famo", "famo:optimizer=sgd", "nashmtl"]
STATEFUL_SPECS += [
    spec
    for spec in ("gradnorm", "imtl_l", "imtl", "modo", "sdmgrad")
    if spec in available_methods()
]
STATEFUL_SPECS += [
    "moco",
    "db_mtl",
    "excess_mtl",
    "moco:normalize_gradients=true",
    "db_mtl:beta_sigma=0.5",
    "excess_mtl:n_warmup_steps=2",
]
# PMTL with an index: on the state tests' trajectories the default's runs are feasible (in stage 2)
# at every step checked, where a fresh instance agrees; tests/core/methods/test_preference_methods.py checks the default
STATEFUL_SPECS += ["pmtl:preference=1"]
# GradVac's EMA targets; the default draws its orders from the global RNG here (no generator)
STATEFUL_SPECS += ["gradvac:shuffle=false"]
# RotoGrad's baseline norms (its rotations are model parameters: tests/core/methods/test_rotograd.py)
STATEFUL_SPECS += ["rotograd", "rotograd:burn_in_period=2"]

WITHOUT_CLAIMS = {
    # PCGrad projects in a random order: permutation equivariant only in distribution, and its
    # update conflicts with a task for K >= 3 (non-conflicting only for K = 2)
    "pcgrad",
}
"""The specs of SPECS that declare no claim at all (a method declaring nothing shows up here)."""
# PMTL with an index preference: the preference is not relabelled with the tasks, and stage 1
# may raise a loss
WITHOUT_CLAIMS |= {"pmtl:preference=1"}
# GradVac: a random order (equivariant only in distribution) and corrections towards targets
# that may be negative (it can conflict with a task), with norms in the corrections
WITHOUT_CLAIMS |= {"gradvac", "gradvac:shuffle=false"}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- solver accuracy: what a method certifies about the distance to its exact update -------------


def _mgda_allowance(method: core.MGDA, step: Step, result: WeightsResult) -> torch.Tensor:
    """MGDA's solver stops at a Frank-Wolfe gap `a^T G_s a - min_i (G_s a)_i <= gap` (relative to
    the largest diagonal entry of the Gramian G_s of `g_i / s_i` it solved); for the min-norm
    point d* of a convex set, `||d - d*||^2 <= ||d||^2 - ||d*||^2 <= 2 gap max_j ||g_j / s_j||^2`."""
    norms = step.norms
    if method.normalization != "none" and method.apply_to == "raw":
        raise NotImplementedError(
            "no update allowance derived for MGDA with a normalisation applied to the raw gradients"
        )
    scales = {
        "none": torch.ones_like(norms),
        "l2": norms,
        "loss": step.losses,
        "loss+": step.losses * norms,
    }[method.normalization]
    scaled_norms = torch.where(scales > 0, norms / torch.where(scales > 0, scales, 1.0), 0.0)
    gap = result.diagnostics["kkt_gap"].to(torch.float64).clamp_min(0)
    return (2 * gap).sqrt() * scaled_norms.amax(dim=-1)


def _cagrad_allowance(method: core.CAGrad, step: Step, result: WeightsResult) -> torch.Tensor:
    """CAGrad certifies `phi* - phi(d) <= delta = dual_gap * max_i G_ii` for `phi(d) = min_i g_i . d`
    on the ball `||d - g_0|| <= r = c ||g_0||`. With the optimum `d* = g_0 + r p / ||p||`, `p` a
    supergradient at d*, concavity gives `p . (d - d*) >= -delta` and the ball
    `||d - d*||^2 <= -2 r p.(d - d*) / ||p||`, so `||d - d*|| <= sqrt(2 r delta / ||p||)`; `||p||` is
    estimated by `||g_w||` of the reported dual weights. At most the ball's diameter 2 r, which
    is the bound where `g_w = 0`. Times the output scale of the weights."""
    gram = step.gramian
    delta = result.diagnostics["dual_gap"].to(torch.float64) * gram.diagonal(dim1=-2, dim2=-1).amax(
        dim=-1
    )
    radius = method.c * step.jacobian.mean(dim=-2).norm(dim=-1)
    dual = result.diagnostics["dual_weights"].to(torch.float64)
    dual_norm = (dual.unsqueeze(-2) @ step.jacobian).squeeze(-2).norm(dim=-1)
    factor = method.output_scale * (gram.shape[-1] if method.reduction == "sum" else 1)
    bound = (2 * radius * delta / dual_norm.clamp_min(torch.finfo(dual_norm.dtype).tiny)).sqrt()
    # ||d - d*|| <= 2 r inside the ball; where g_w = 0 (0 in the hull: a zero gradient) the optimum
    # is flat and not unique: J = [[-3.35e11], [0], [-2.95e-6]] gives updates 0.29 g_0 or 0.40 g_0
    # depending on the task order, both optimal
    return factor * torch.where(dual_norm > 0, torch.minimum(bound, 2 * radius), 2 * radius)


ALLOWANCES = {"mgda": _mgda_allowance, "cagrad": _cagrad_allowance}
"""Methods whose iterative solvers stop at a tolerance relative to the largest gradient: their
updates are compared to the accuracy they certify (every other method: 0, see tests/claims.py)."""


def _reported_allowance(method: Method, step: Step, result: WeightsResult) -> torch.Tensor:
    """PMTL, EPO and ConFIG report their own bound, `diagnostics["update_bound"]`: PMTL's min-norm
    solver's (MGDA's argument, `sqrt(2 gap) max ||v||`, times its scale), EPO's LP solution's
    rounding error (`64 K eps cond` of its bases) times `sum_i ||g_i||`, ConFIG's
    `64 K eps sum_i ||g_i||` (the rounding of its length where opposite unit gradients cancel)."""
    return result.diagnostics["update_bound"].to(torch.float64)


ALLOWANCES.update(
    {"pmtl": _reported_allowance, "epo": _reported_allowance, "config": _reported_allowance}
)


# -- every declared claim holds --------------------------------------------------------------------


@st.composite
def claim_inputs(
    draw, *, stateful: bool, check_transforms: bool, loss_domain: str
) -> tuple[ClaimInputs, int]:
    """A trajectory (6 steps for stateful methods, 1 otherwise) from a drawn Jacobian with
    structure (rank, scales 1e-12..1e12, conflicts, zero rows), positive losses, one random
    monotone transform and one factor in [1e-6, 1e6] per task, a permutation and a seed."""
    jacobian = draw(jacobians(min_tasks=1, max_tasks=5))
    num_tasks = jacobian.shape[0]
    seed = draw(st.integers(0, 2**31 - 1))
    generator = _generator(seed)

    def random_losses() -> torch.Tensor:
        return 10.0 ** (6 * torch.rand(num_tasks, generator=generator, dtype=torch.float64) - 3)

    steps = []
    for index in range(6 if stateful else 1):
        if index == 0:
            step_jacobian, losses = jacobian, draw(positive_losses(num_tasks))
        else:  # the same row scales and zero rows, moved by 30% of each row's norm
            noise = torch.randn(jacobian.shape, generator=generator, dtype=torch.float64)
            step_jacobian, losses = (
                jacobian + 0.3 * jacobian.norm(dim=-1, keepdim=True) * noise,
                random_losses(),
            )
        steps.append(
            Step(step_jacobian, losses, new_losses=random_losses(), end_epoch=index % 2 == 1)
        )
    transforms = [draw(positive_domain_transforms()) for _ in range(num_tasks)]
    if check_transforms:
        assume(usable_transforms(steps, transforms, loss_domain=loss_domain))
    scales = [10.0 ** draw(st.floats(-6, 6)) for _ in range(num_tasks)]
    order = draw(st.permutations(range(num_tasks)))
    return ClaimInputs(steps, transforms, scales, order), seed


def test_every_claim_has_one_assertion() -> None:
    assert set(ASSERTIONS) == set(core.CLAIMS), (
        f"claims without an assertion in tests/claims.py: {sorted(set(core.CLAIMS) - set(ASSERTIONS))}"
    )


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_declared_claims_hold(spec: str, data) -> None:
    """Every claim the instance declares holds, checked with its assertion from tests/claims.py."""
    probe = make_method(spec, num_tasks=1)
    undeclared = sorted(set(probe.claims) - set(ASSERTIONS))
    assert not undeclared, (
        f"{spec} declares {undeclared}, which no assertion in tests/claims.py checks"
    )
    inputs, seed = data.draw(
        claim_inputs(
            stateful=probe.stateful,
            check_transforms="monotone_invariant" in probe.claims,
            loss_domain=probe.loss_domain,
        )
    )
    num_tasks = inputs.steps[0].losses.shape[-1]

    def factory() -> Method:
        return make_method(spec, num_tasks=num_tasks, generator=_generator(seed))

    allowance = ALLOWANCES.get(probe.name)
    for claim in sorted(probe.claims):
        ASSERTIONS[claim](factory, inputs, allowance=allowance)


@pytest.mark.parametrize(("spec", "claim"), sorted(UNDECLARED_BECAUSE_FALSE))
def test_false_claims_are_not_declared_and_their_checks_fail(spec: str, claim: str) -> None:
    step, scales = UNDECLARED_BECAUSE_FALSE[(spec, claim)]
    assert claim not in make_method(spec, num_tasks=2).claims
    with pytest.raises(AssertionError):
        assert_rescaling_invariant(lambda: make_method(spec, num_tasks=2), [step], scales)


def test_methods_declaring_no_claim_are_the_expected_ones() -> None:
    without = {spec for spec in SPECS if not make_method(spec, num_tasks=3).claims}
    assert without == WITHOUT_CLAIMS, (
        f"declaring no claim: {sorted(without)}, expected {sorted(WITHOUT_CLAIMS)}"
    )


# -- class facts and the registry ------------------------------------------------------------------


@pytest.mark.parametrize("name", available_methods())
def test_class_facts_are_consistent(name: str) -> None:
    description = describe_method(name)
    cls = description.cls
    assert cls.name == name and description.name == name
    assert set(cls.claims) <= set(core.CLAIMS), sorted(set(cls.claims) - set(core.CLAIMS))
    assert cls.loss_domain in ("any", "nonnegative", "positive")
    assert cls.engine_modes and set(cls.engine_modes) <= ENGINE_MODES
    assert (
        isinstance(cls.stateful, bool)
        and isinstance(cls.random, bool)
        and isinstance(cls.requires_num_tasks, bool)
    )
    assert cls.paper, f"{name} cites no paper"
    parameters = inspect.signature(cls.__init__).parameters
    expected = {
        key
        for key, parameter in parameters.items()
        if key not in ("self", "num_tasks", "generator")
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }
    assert set(description.hyperparameters) == expected
    for key, default in description.hyperparameters.items():
        assert default is not inspect.Parameter.empty, (
            f"{name}: hyperparameter {key} has no default"
        )
        assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY, (
            f"{name}: {key} is not keyword-only"
        )
    method = make_method(name, num_tasks=3)
    assert type(method) is cls
    assert set(method.claims) <= set(core.CLAIMS) and method.loss_domain in (
        "any",
        "nonnegative",
        "positive",
    )


@pytest.mark.parametrize("spec", VARIANTS)
def test_variants_narrow_facts_within_the_vocabulary(spec: str) -> None:
    method = make_method(spec, num_tasks=3)
    assert set(method.claims) <= set(core.CLAIMS)
    assert method.loss_domain in ("any", "nonnegative", "positive")
    assert isinstance(method.stateful, bool)


def _numeric_hyperparameters(name: str) -> list[str]:
    """Hyperparameters with a numeric default, or a None default annotated as a number."""
    description = describe_method(name)
    parameters = inspect.signature(description.cls.__init__).parameters
    numeric = []
    for key, default in description.hyperparameters.items():
        annotation = str(parameters[key].annotation)
        if (isinstance(default, (int, float)) and not isinstance(default, bool)) or (
            default is None and ("float" in annotation or "int" in annotation)
        ):
            numeric.append(key)
    return numeric


NUMERIC_HYPERPARAMETERS = [
    (name, key) for name in available_methods() for key in _numeric_hyperparameters(name)
]


@pytest.mark.parametrize(("name", "key"), NUMERIC_HYPERPARAMETERS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_hyperparameters_are_refused(name: str, key: str, value: float) -> None:
    with pytest.raises(InvalidHyperparameterError):
        make_method(name, num_tasks=3, **{key: value})
    with pytest.raises(InvalidHyperparameterError):
        make_method(f"{name}:{key}={value}", num_tasks=3)


def test_every_method_has_a_numeric_hyperparameter_checked() -> None:
    checked = {name for name, _ in NUMERIC_HYPERPARAMETERS}
    assert {"dibsmtl", "nashmtl", "famo", "cagrad", "mgda", "dwa", "uw"} <= checked
    assert ("dibsmtl", "radius") in NUMERIC_HYPERPARAMETERS


def test_unknown_hyperparameters_and_names_list_the_accepted_ones() -> None:
    with pytest.raises(InvalidHyperparameterError, match="steps, radius, inner_step"):
        make_method("dibsmtl:stepz=5")
    with pytest.raises(InvalidHyperparameterError, match="its hyperparameters: c, rescale"):
        make_method("cagrad", num_tasks=3, cc=0.5)
    with pytest.raises(UnknownMethodError, match="choose one of: .*dibsmtl.*nashmtl"):
        make_method("dibs-mtl")
    assert (
        type(make_method("imtl", num_tasks=2)) is core.IMTL
    )  # the full IMTL (until issue 18 refused: it named IMTL-G)
    with pytest.raises(InvalidHyperparameterError, match="num_tasks"):
        make_method("famo")


@pytest.mark.parametrize(
    "spec", SPECS + ["cagrad:c=0.5:rescale=2", "ls:weights=[1,3]", "famo:lr=1", "dwa:temperature=2"]
)
def test_canonical_spec_round_trips(spec: str) -> None:
    canonical = canonical_spec(spec)
    assert canonical_spec(canonical) == canonical
    parsed = parse_method_specs(canonical)
    assert len(parsed) == 1 and str(parsed[0]) == canonical
    original, rebuilt = make_method(spec, num_tasks=2), make_method(canonical, num_tasks=2)
    assert repr(original) == repr(rebuilt)


def test_spec_aliases_and_defaults() -> None:
    assert canonical_spec("dibsmtl:steps=1") == canonical_spec("dibsmtl") == "dibsmtl"
    assert canonical_spec("dwa:temperature=2") == "dwa"  # an int for a float default is the default
    with pytest.warns(DeprecationWarning, match="dibsmtl:steps=5"):
        method = make_method("dibsmtl_multi_step")
    assert isinstance(method, core.DiBSMTL) and method.steps == 5
    with pytest.warns(DeprecationWarning, match="dibsmtl:steps=5"):
        assert canonical_spec("dibsmtl_multi_step") == "dibsmtl:steps=5"
    with pytest.warns(DeprecationWarning, match="normalized_sum"):
        assert isinstance(make_method("nsum"), core.NormalizedSum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_method("normalized_sum")  # the canonical names build without a warning
    assert canonical_spec("imtl") == "imtl" and canonical_spec("imtl_g") == "imtl_g"


# -- lifecycle ---------------------------------------------------------------------------------------

NUM_TASKS = 3


def _trajectory(num_steps: int, *, seed: int, batch_shape: tuple[int, ...] = ()) -> list[Step]:
    """Steps with random Jacobians and positive losses, `after_step` and `end_epoch` every other step."""
    generator = _generator(seed)
    steps = []
    for index in range(num_steps):
        jacobian = torch.randn(
            (*batch_shape, NUM_TASKS, 4), generator=generator, dtype=torch.float64
        )
        losses = (
            torch.rand((*batch_shape, NUM_TASKS), generator=generator, dtype=torch.float64) + 0.1
        )
        new_losses = losses * (
            0.5 + torch.rand(losses.shape, generator=generator, dtype=torch.float64)
        )
        steps.append(Step(jacobian, losses, new_losses=new_losses, end_epoch=index % 2 == 1))
    return steps


def _train_parameters(method: Method, step: Step) -> None:
    """One SGD step on a learnable method's parameters (UW's log-variances) with the analytic
    gradient of `1/2 (exp(-s) l + s)`, as a training loop's optimiser would."""
    for parameter in method.parameters():
        with torch.no_grad():
            losses = step.losses.to(parameter.dtype)
            parameter.sub_(0.1 * 0.5 * (1 - torch.exp(-parameter) * losses))


def _run(method: Method, steps: list[Step]) -> list[torch.Tensor]:
    outputs = []
    for step in steps:
        result = run_steps(method, [step])[0]  # a Jacobian aggregation's update counts too
        outputs.append(
            result.weights
            if result.update is None
            else torch.cat([result.weights, result.update], dim=-1)
        )
        _train_parameters(method, step)
    return outputs


def _assert_plain(value, path: str = "state") -> None:
    if (
        isinstance(value, torch.Tensor)
        or value is None
        or isinstance(value, (bool, int, float, str))
    ):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _assert_plain(item, f"{path}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            assert isinstance(key, str), f"{path} has a non-string key {key!r}"
            _assert_plain(item, f"{path}[{key!r}]")
        return
    raise AssertionError(f"{path} is a {type(value).__name__}, not a tensor or plain Python value")


@pytest.mark.parametrize("spec", SPECS)
def test_lifecycle_hooks_and_reset(spec: str) -> None:
    method = make_method(spec, num_tasks=NUM_TASKS, generator=_generator(0))
    (step,) = _trajectory(1, seed=1)
    run_steps(method, [Step(step.jacobian, step.losses)])
    method.after_step(step.new_losses)  # after the weighted call, as a training loop does
    method.end_epoch()
    method.reset(batch_shape=(2,))
    assert method.batch_shape == (2,)
    batched = _trajectory(3, seed=2, batch_shape=(2,))
    weights = _run(method, batched)
    assert all(
        w.shape[:-1] == (2,) and w.shape[-1] >= NUM_TASKS and bool(torch.isfinite(w).all())
        for w in weights
    )
    method.reset()
    assert method.batch_shape == ()
    assert run_steps(method, [step])[0].weights.shape == (NUM_TASKS,)


@pytest.mark.parametrize("spec", SPECS)
def test_state_dict_survives_a_checkpoint_and_continues_exactly(spec: str) -> None:
    original = make_method(spec, num_tasks=NUM_TASKS, generator=_generator(1))
    steps = _trajectory(8, seed=3)
    _run(original, steps[:5])
    state = original.state_dict()
    _assert_plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    restored = make_method(
        spec, num_tasks=NUM_TASKS, generator=_generator(2)
    )  # another seed: the state must carry it
    restored.load_state_dict(loaded)
    for step_index, (expected, got) in enumerate(
        zip(_run(original, steps[5:]), _run(restored, steps[5:]))
    ):
        assert torch.equal(expected, got), (
            f"{spec}: step {step_index} after loading: {got.tolist()} != {expected.tolist()}"
        )


@pytest.mark.parametrize("spec", STATEFUL_SPECS)
def test_checkpoint_between_the_weighted_call_and_its_hooks(spec: str) -> None:
    """Saved after the weighted call, before `after_step`/`end_epoch` (FAMO's pending losses, DWA's
    open epoch): the restored instance finishes the step and continues as the original."""
    steps = _trajectory(6, seed=11)
    original = make_method(spec, num_tasks=NUM_TASKS)
    _run(original, steps[:3])
    pending = steps[3]
    run_steps(original, [Step(pending.jacobian, pending.losses)])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make_method(spec, num_tasks=NUM_TASKS)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for method in (original, restored):
        method.after_step(pending.new_losses)
        method.end_epoch()
    for expected, got in zip(_run(original, steps[4:]), _run(restored, steps[4:])):
        assert torch.equal(expected, got), f"{spec}: {got.tolist()} != {expected.tolist()}"


def test_state_dict_restores_what_matters() -> None:
    """The checkpoint test above is not vacuous: each stateful method's state changes its weights."""
    steps = _trajectory(6, seed=4)
    for spec in STATEFUL_SPECS + ["rlw", "rgw", "pcgrad", "graddrop"]:
        used = make_method(spec, num_tasks=NUM_TASKS, generator=_generator(1))
        _run(used, steps[:5])
        fresh = make_method(spec, num_tasks=NUM_TASKS, generator=_generator(1))
        assert not torch.equal(_run(used, steps[5:])[0], _run(fresh, steps[5:])[0]), (
            f"{spec}: the state does not matter"
        )


# -- batched state ---------------------------------------------------------------------------------

BATCH = 3


@pytest.mark.parametrize("spec", STATEFUL_SPECS)
def test_batched_state_equals_separate_instances(spec: str) -> None:
    steps = _trajectory(8, seed=5, batch_shape=(BATCH,))
    batched = make_method(spec, num_tasks=NUM_TASKS)
    batched_weights = _run(batched, steps)
    assert batched.batch_shape == (BATCH,)
    tolerance = 1e-9 if spec.startswith("nashmtl") else 1e-12
    for row in range(BATCH):
        single = make_method(spec, num_tasks=NUM_TASKS)
        row_steps = [
            Step(s.jacobian[row], s.losses[row], s.new_losses[row], s.end_epoch) for s in steps
        ]
        for step_index, (together, alone) in enumerate(
            zip(batched_weights, _run(single, row_steps))
        ):
            torch.testing.assert_close(
                together[row],
                alone,
                rtol=tolerance,
                atol=0,
                msg=lambda m, row=row, step_index=step_index: (
                    f"{spec}, run {row}, step {step_index}: {m}"
                ),
            )


@pytest.mark.parametrize("weight_decay", [1e-3, 0.0])
def test_famo_adam_follows_torch_adam(weight_decay: float) -> None:
    """FAMO's logits follow `torch.optim.Adam(lr, weight_decay)` on the gradient
    `delta = z * Delta - z (z . Delta)`, `Delta = log(l - l* + eps) - log(l' - l* + eps)`."""
    lr, eps = 0.1, 1e-8
    famo = core.FAMO(NUM_TASKS, lr=lr, weight_decay=weight_decay, eps=eps, optimizer="adam")
    logits = torch.zeros(NUM_TASKS, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr, weight_decay=weight_decay)
    for step in _trajectory(10, seed=6):
        z = torch.softmax(logits.detach(), dim=-1)
        ratios = z / (step.losses + eps)
        torch.testing.assert_close(famo(step.losses), ratios / ratios.sum(), rtol=1e-12, atol=0)
        famo.after_step(step.new_losses)
        change = torch.log(step.losses + eps) - torch.log(step.new_losses + eps)
        logits.grad = z * change - z * (z * change).sum()
        optimizer.step()
        torch.testing.assert_close(famo.logits, logits.detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("spec", STATEFUL_SPECS)
def test_used_state_refuses_another_batch_shape(spec: str) -> None:
    (single,) = _trajectory(1, seed=7)
    (batched,) = _trajectory(1, seed=8, batch_shape=(2,))
    used = make_method(spec, num_tasks=NUM_TASKS)
    assert used.stateful
    run_steps(used, [single])
    with pytest.raises(MTLInputError, match=r"reset\(batch_shape=\(2,\)\)"):
        run_steps(used, [batched])
    fresh = make_method(spec, num_tasks=NUM_TASKS)
    assert run_steps(fresh, [batched])[0].weights.shape == (2, NUM_TASKS)
    assert fresh.batch_shape == (2,)


def test_stateless_nash_mtl_takes_any_batch_shape() -> None:
    method = make_method("nashmtl:warm_start=false")
    assert not method.stateful
    (single,) = _trajectory(1, seed=9)
    (batched,) = _trajectory(1, seed=10, batch_shape=(2,))
    run_steps(method, [single])
    assert run_steps(method, [batched])[0].weights.shape == (2, NUM_TASKS)


def test_every_method_is_of_exactly_one_kind() -> None:
    for name in available_methods():
        cls = describe_method(name).cls
        kinds = (GradientWeighting, core.LossWeighting, core.JacobianAggregation)
        assert sum(issubclass(cls, kind) for kind in kinds) == 1, name
