"""Fuzzing the engine and every registered method at the edges of their input domain.

Two layers:

- **Methods alone** (cheap, many examples): every method of `core.available_methods()`, built
  with `core.make_method` and drawn hyperparameters, is called on a short sequence of inputs (so
  that stateful methods use their state): Gramians `J J^T` of Jacobians with K = 1..64 tasks,
  row norms 10^e for e in [-30, 30] (float64) or [-30, 19] (float32, whose Gramian of larger
  gradients overflows: the engine rejects that before any method runs, see the engine layer),
  computed in the drawn dtype as the engine does, with zero, duplicate, parallel, antiparallel and
  nearly duplicate rows and low rank; losses of either sign with magnitudes 10^[-30, 30] and 0.
  Property: the weights are finite, of the losses' shape and dtype, or a `core.errors.MTLInputError`
  is raised (e.g. `LossDomainError` for a non-positive loss under a log). Non-finite Gramians or
  losses are outside a method's contract (the engine screens them; docs/DECISIONS.md, "Fuzzed
  inputs").
- **The engine end to end** (`core.mtl_backward`, few cheap examples): a raw shared parameter
  vector split into tensors, up to 1e6 entries (full mode), or a linear encoder with up to 1e6
  weights whose output is the representation ("MTL-R" mode), K task losses `s_i f_i` with scales
  10^[-30, 30] of either sign, zero-gradient, duplicate and antiparallel tasks, head-only tasks,
  NaN and infinite losses, infinite or overflowing gradients of a finite loss, losses as a list
  or one tensor, every Jacobian strategy, and `.grad`s that are None or already hold values (plus
  a bystander parameter in neither set), two steps per method. Property: either the call
  returns, the `StepInfo` is finite and every written `.grad` is finite, or it raises an
  `MTLInputError` and every `.grad` is bit-identical to before (None stays None). A
  `NonFiniteGradientError` saying that a method returned non-finite weights is a method defect and
  fails the test; any other exception type fails it too.

The `test_found_*` tests pin the inputs the fuzzer found (and the fixes) deterministically.
`INPUTS_TRIED` counts the inputs each test tried (every run of a test body, shrinking included);
tests/conftest.py prints the totals at the end of the session. Example counts scale with the
hypothesis profile (`ci`, `dev`, `thorough`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import core
from core import errors
from core.registry import available_methods, make_method


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny ops: a second intra-op thread only contends (8 min instead of 45 s on a
    busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


INPUTS_TRIED: Counter[str] = Counter()
"""Inputs tried per test function (summed over its parametrisations); see tests/conftest.py."""

_PROFILE_EXAMPLES = settings.default.max_examples  # the loaded profile's (tests/conftest.py)


def _examples(factor: float) -> int:
    """The profile's example count scaled by `factor` (at least 2)."""
    return max(2, round(factor * _PROFILE_EXAMPLES))


METHOD_NAMES = available_methods()
GRADIENT_WEIGHTINGS = [
    n for n in METHOD_NAMES if isinstance(make_method(n, num_tasks=2), core.GradientWeighting)
]
LOSS_WEIGHTINGS = [
    n for n in METHOD_NAMES if isinstance(make_method(n, num_tasks=2), core.LossWeighting)
]
RANDOM_METHODS = frozenset(n for n in METHOD_NAMES if make_method(n, num_tasks=2).random)
DTYPES = (torch.float32, torch.float64)
MAX_EXPONENT = 30.0
FLOAT32_MAX_ROW_EXPONENT = 19.0  # (1e19)^2 = 1e38 < 3.4e38, the largest float32
TASK_COUNTS = st.one_of(st.integers(1, 4), st.integers(1, 64))


# ------------------------------------------------------------------------------------------
# building methods
# ------------------------------------------------------------------------------------------

_REDUCTION = st.fixed_dictionaries({"reduction": st.sampled_from(["sum", "mean"])})
_DISTRIBUTION = st.fixed_dictionaries(
    {
        "distribution": st.sampled_from(
            ["normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli"]
        )
    }
)


def hyperparameters(name: str, num_tasks: int) -> st.SearchStrategy[dict]:
    """Hyperparameters for `make_method(name, ...)`: the defaults first, then drawn variants."""
    variants = {
        "dibsmtl": st.one_of(
            _REDUCTION,
            st.just({"steps": 5}),
            st.just({"steps": 5, "radius": 1.0, "inner_step": 0.3}),
            st.just({"steps": 3, "inner_step_rule": "radius/5", "epsilon": 1.0}),
        ),
        "normalized_sum": _REDUCTION,
        "mgda": st.fixed_dictionaries(
            {
                "normalization": st.sampled_from(["none", "l2", "loss", "loss+"]),
                "apply_to": st.sampled_from(["raw", "normalized"]),
            }
        ),
        "nashmtl": st.fixed_dictionaries(
            {"warm_start": st.booleans(), "update_weights_every": st.integers(1, 2)}
        ),
        "pcgrad": _REDUCTION,
        "cagrad": st.fixed_dictionaries(
            {
                "c": st.sampled_from([0.0, 0.4, 0.9, 10.0]),
                "rescale": st.sampled_from([0, 1, 2]),
                "reduction": st.sampled_from(["sum", "mean"]),
            }
        ),
        "rgw": _DISTRIBUTION,
        "rlw": _DISTRIBUTION,
        "ls": st.one_of(
            _REDUCTION,
            st.lists(st.floats(0.0, 10.0), min_size=num_tasks, max_size=num_tasks)
            .filter(lambda ws: any(w > 0 for w in ws))
            .map(lambda ws: {"weights": ws}),
        ),
        "uw": st.fixed_dictionaries({"initial_log_variance": st.floats(-10.0, 10.0)}),
        "dwa": st.fixed_dictionaries(
            {
                "window": st.sampled_from([None, 1, 2]),
                "temperature": st.sampled_from([0.1, 2.0, 100.0]),
                "reduction": st.sampled_from(["sum", "mean"]),
            }
        ),
        "famo": st.fixed_dictionaries(
            {
                "min_losses": st.sampled_from([0.0, -1.0]),
                "optimizer": st.sampled_from(["adam", "sgd"]),
            }
        ),
    }.get(name)
    return st.just({}) if variants is None else st.one_of(st.just({}), variants)


def build_method(name: str, num_tasks: int, options: dict, seed: int) -> core.Method:
    return make_method(
        name, num_tasks=num_tasks, generator=torch.Generator().manual_seed(seed), **options
    )


# ------------------------------------------------------------------------------------------
# drawing Jacobians and losses
# ------------------------------------------------------------------------------------------

_ROW_EDITS = ("zero", "duplicate", "parallel", "antiparallel", "near_duplicate")


@st.composite
def exponents(draw, num_tasks: int, high: float) -> list[float]:
    """Row-norm exponents in [-30, high]: one common scale, two levels, or one per row."""
    # the edges of the range and of float32 (a squared norm of 1e-45 is its smallest subnormal)
    exponent = st.one_of(
        st.floats(-MAX_EXPONENT, high), st.sampled_from([-MAX_EXPONENT, -22.5, -19.0, 0.0, high])
    )
    mode = draw(st.sampled_from(["common", "two_levels", "per_row"]))
    if mode == "common":
        return [draw(exponent)] * num_tasks
    if mode == "two_levels":
        low_value, high_value = draw(exponent), draw(exponent)
        return [draw(st.sampled_from([low_value, high_value])) for _ in range(num_tasks)]
    return draw(st.lists(exponent, min_size=num_tasks, max_size=num_tasks))


@st.composite
def structured_jacobians(
    draw, *, dtype: torch.dtype, num_tasks: int, max_dim: int = 80
) -> torch.Tensor:
    """A K x D Jacobian (built in float64, returned in `dtype`): unit random directions of a drawn
    rank, row norms 10^e, then edits: zero rows, duplicates, (anti)parallel and nearly duplicate rows."""
    dim = draw(st.integers(1, max_dim))
    rank = draw(st.integers(1, min(num_tasks, dim)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    rows = torch.randn(num_tasks, rank, generator=generator, dtype=torch.float64) @ torch.randn(
        rank, dim, generator=generator, dtype=torch.float64
    )
    rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-300)
    high = MAX_EXPONENT if dtype == torch.float64 else FLOAT32_MAX_ROW_EXPONENT
    rows = (
        rows
        * torch.tensor([10.0**e for e in draw(exponents(num_tasks, high))], dtype=torch.float64)[
            :, None
        ]
    )
    edit = st.tuples(
        st.sampled_from(_ROW_EDITS), st.integers(0, num_tasks - 1), st.integers(0, num_tasks - 1)
    )
    for kind, i, j in draw(st.lists(edit, max_size=min(num_tasks, 6))):
        if kind == "zero":
            rows[i] = 0.0
        elif kind == "duplicate":
            rows[i] = rows[j]
        elif kind in ("parallel", "antiparallel"):
            factor = 10.0 ** draw(st.floats(-3.0, 3.0))
            rows[i] = (factor if kind == "parallel" else -factor) * rows[j]
        else:
            noise = torch.randn(dim, generator=generator, dtype=torch.float64)
            rows[i] = rows[j] * (1 + 10.0 ** draw(st.floats(-16.0, -4.0)) * noise)
    if dtype == torch.float32:  # (anti)parallel edits can push a row past the float32 Gramian range
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        limit = 10.0**FLOAT32_MAX_ROW_EXPONENT
        rows = torch.where(norms > limit, rows * (limit / norms.clamp_min(limit)), rows)
    return rows.to(dtype)


_LOSS_MAGNITUDES = st.one_of(
    st.floats(-MAX_EXPONENT, MAX_EXPONENT), st.sampled_from([-MAX_EXPONENT, 0.0, MAX_EXPONENT])
).map(lambda e: 10.0**e)


@st.composite
def loss_values(draw, dtype: torch.dtype, size: int) -> torch.Tensor:
    """Loss vectors of magnitudes 10^[-30, 30]: all positive (most often), or with zeros and negatives."""
    value = _LOSS_MAGNITUDES
    if draw(st.integers(0, 3)) == 0:
        value = st.one_of(value, st.just(0.0), value.map(lambda v: -v))
    return torch.tensor(draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype)


# ------------------------------------------------------------------------------------------
# layer (a): the methods alone
# ------------------------------------------------------------------------------------------


def _check_weights(weights: torch.Tensor, like: torch.Tensor) -> None:
    assert isinstance(weights, torch.Tensor)
    assert weights.shape == like.shape, (weights.shape, like.shape)
    assert weights.dtype == like.dtype, (weights.dtype, like.dtype)
    assert bool(torch.isfinite(weights).all()), f"non-finite weights {weights.tolist()}"


def _check_diagnostics(diagnostics: dict[str, torch.Tensor]) -> None:
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert bool(torch.isfinite(value).all()), f"diagnostic {key} = {value.tolist()}"


@st.composite
def gramian_problems(
    draw, *, name: str
) -> tuple[core.Method, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A gradient weighting and 1-3 (Gramian, losses) inputs of one K and dtype (batched sometimes)."""
    dtype = draw(st.sampled_from(DTYPES))
    num_tasks = draw(TASK_COUNTS)
    method = build_method(
        name, num_tasks, draw(hyperparameters(name, num_tasks)), draw(st.integers(0, 2**16))
    )
    batch = draw(st.sampled_from([(), (), (), (2,)]))
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        jacobians = [
            draw(structured_jacobians(dtype=dtype, num_tasks=num_tasks))
            for _ in range(math.prod(batch))
        ]
        grams = [jacobian @ jacobian.T for jacobian in jacobians]  # in `dtype`, as the engine does
        gram = torch.stack(grams).reshape(*batch, num_tasks, num_tasks)
        losses = torch.stack([draw(loss_values(dtype, num_tasks)) for _ in jacobians]).reshape(
            *batch, num_tasks
        )
        inputs.append((gram, losses))
    return method, inputs


@st.composite
def loss_problems(draw, *, name: str) -> tuple[core.Method, list[torch.Tensor]]:
    """A loss weighting and 1-4 loss vectors (sometimes batched) of one K and dtype."""
    dtype = draw(st.sampled_from(DTYPES))
    num_tasks = draw(TASK_COUNTS)
    method = build_method(
        name, num_tasks, draw(hyperparameters(name, num_tasks)), draw(st.integers(0, 2**16))
    )
    batch = draw(st.sampled_from([(), (), (), (3,)]))
    calls = [
        torch.stack([draw(loss_values(dtype, num_tasks)) for _ in range(math.prod(batch))]).reshape(
            *batch, num_tasks
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    return method, calls


@pytest.mark.parametrize("name", GRADIENT_WEIGHTINGS)
@settings(max_examples=_examples(2))
@given(data=st.data())
def test_gradient_weighting_on_extreme_gramians(name: str, data: st.DataObject) -> None:
    """Finite weights of the right shape and dtype, or an `MTLInputError`, on every Gramian."""
    INPUTS_TRIED["test_gradient_weighting_on_extreme_gramians"] += 1
    method, inputs = data.draw(gramian_problems(name=name))
    for gram, losses in inputs:
        assert bool(torch.isfinite(gram).all())  # the drawing keeps float32 Gramians in range
        try:
            weights, diagnostics = method.weights(gram, losses)
        except errors.MTLInputError:
            continue
        _check_weights(weights, losses)
        _check_diagnostics(diagnostics)


@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
@settings(max_examples=_examples(2))
@given(data=st.data())
def test_loss_weighting_on_extreme_losses(name: str, data: st.DataObject) -> None:
    """Finite weights of the right shape and dtype, or an `MTLInputError`, for every loss vector;
    every call is followed by the lifecycle hooks (FAMO's logit update, DWA's end of epoch)."""
    INPUTS_TRIED["test_loss_weighting_on_extreme_losses"] += 1
    method, calls = data.draw(loss_problems(name=name))
    previous = None
    for losses in calls:
        if previous is not None:
            try:
                method.after_step(losses)
            except errors.MTLInputError:
                pass
            for (
                key,
                value,
            ) in method.state_dict().items():  # the state stays finite (FAMO's logits, ...)
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    assert bool(torch.isfinite(value).all()), (key, value)
        try:
            weights = method(losses)
        except errors.MTLInputError:
            previous = None
            continue
        previous = losses if losses.ndim == 1 else None
        _check_weights(weights.detach(), losses)


# ------------------------------------------------------------------------------------------
# layer (b): the engine end to end
# ------------------------------------------------------------------------------------------

TASK_KINDS = (
    "quadratic", "linear", "zero", "duplicate", "antiparallel", "head_only",
    "nan", "inf", "-inf", "infinite_gradient", "overflowing_gradient",
)  # fmt: skip
"""What task i's loss is made of (see `_task_loss`). The last five make the call invalid."""

_FINITE_KINDS = TASK_KINDS[:6]


@dataclass
class EngineCase:
    dtype: torch.dtype
    num_tasks: int
    shared_sizes: list[int]
    kinds: list[str]
    partners: list[int]
    scales: list[float]
    heads: bool
    seed: int
    strategy: str
    preset_grads: list[bool]
    stacked: bool = False  # pass the losses as one tensor [K] instead of a list


@st.composite
def engine_cases(draw, *, max_shared: int) -> EngineCase:
    dtype = draw(st.sampled_from(DTYPES))
    size = round(10 ** draw(st.floats(0.0, math.log10(max_shared))))
    # the per-task Jacobian holds K x size numbers: K up to 64 for small models, fewer for big ones
    num_tasks = draw(st.integers(1, max(1, min(64, 4_000_000 // size))))
    cut = draw(st.integers(0, size))
    shared_sizes = [s for s in (cut, size - cut) if s > 0]
    invalid = draw(
        st.sampled_from([False] * 9 + [True])
    )  # one case in ten: a NaN, inf or inf-gradient task
    kinds = draw(st.lists(st.sampled_from(_FINITE_KINDS), min_size=num_tasks, max_size=num_tasks))
    if invalid:
        kinds[draw(st.integers(0, num_tasks - 1))] = draw(st.sampled_from(TASK_KINDS[6:]))
    partners = draw(st.lists(st.integers(0, num_tasks - 1), min_size=num_tasks, max_size=num_tasks))
    magnitude = st.floats(-MAX_EXPONENT, MAX_EXPONENT).map(lambda e: 10.0**e)
    scales = draw(
        st.lists(
            st.one_of(magnitude, magnitude, magnitude.map(lambda v: -v)),
            min_size=num_tasks,
            max_size=num_tasks,
        )
    )
    return EngineCase(
        dtype=dtype,
        num_tasks=num_tasks,
        shared_sizes=shared_sizes,
        kinds=kinds,
        partners=partners,
        scales=scales,
        heads=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        strategy=draw(st.sampled_from(["auto", "loop", "batched"])),
        preset_grads=draw(st.lists(st.booleans(), min_size=3, max_size=3)),
        stacked=draw(st.booleans()),
    )


def _task_loss(
    case: EngineCase,
    i: int,
    features: torch.Tensor,
    head: torch.Tensor | None,
    targets: torch.Tensor,
    depth: int = 0,
) -> torch.Tensor:
    """Task i's loss `s_i f_i` on the shared `features` (flat) and its optional `head` (2 numbers)."""
    kind, scale = case.kinds[i], case.scales[i]
    partner = case.partners[i]
    head_term = 0.0 if head is None else 1e-3 * (head**2).sum()
    if (
        kind in ("duplicate", "antiparallel")
        and depth < 2
        and case.kinds[partner] in _FINITE_KINDS
        and partner != i
    ):
        base = _task_loss(case, partner, features, head, targets, depth + 1)  # same shared gradient
        return base if kind == "duplicate" else 1.0 - 2.0 * base  # (anti)parallel to the partner's
    if kind == "zero":
        return 0.0 * features.sum() + (0.0 if head is None else head_term)
    if kind == "head_only":
        return scale * (1.0 + (head_term if head is not None else 0.0 * features.sum()))
    if kind == "nan":
        return features.sum() * float("nan") + head_term
    if kind in ("inf", "-inf"):
        return features.sum() * 0.0 + float(kind) + head_term
    if kind == "infinite_gradient":  # a finite loss whose gradient is infinite (sqrt at 0)
        first = features[0]
        return (torch.sqrt(first - first.detach()) + 1.0) * scale + head_term
    if kind == "overflowing_gradient":  # a finite loss whose gradient overflows the dtype
        first = features[0]
        return (
            ((first - first.detach()) * (torch.finfo(first.dtype).max / 2)) * 4.0
            + scale
            + head_term
        )
    if kind == "linear":
        return scale * (features * targets[i]).mean() + head_term
    return scale * ((features - targets[i]) ** 2).mean() + head_term  # "quadratic"


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def _assert_untouched(params: list[torch.Tensor], before: list[torch.Tensor | None]) -> None:
    for j, (param, old) in enumerate(zip(params, before)):
        if old is None:
            assert param.grad is None, f"parameter {j} received a .grad although the call raised"
        else:
            assert param.grad is not None and torch.equal(param.grad, old), (
                f"parameter {j}'s .grad changed"
            )


def _run_engine(name: str, case: EngineCase, options: dict, *, representation_mode: bool) -> str:
    """Build the model of `case`, run two steps of `mtl_backward` with one method; returns the outcome."""
    generator = torch.Generator().manual_seed(case.seed)
    dtype = case.dtype
    shared = [
        torch.randn(s, generator=generator, dtype=dtype).requires_grad_(True)
        for s in case.shared_sizes
    ]
    heads = (
        [
            torch.randn(2, generator=generator, dtype=dtype).requires_grad_(True)
            for _ in range(case.num_tasks)
        ]
        if case.heads
        else None
    )
    bystander = torch.randn(3, generator=generator, dtype=dtype).requires_grad_(True)
    bystander.grad = torch.randn(3, generator=generator, dtype=dtype)
    if (
        representation_mode
    ):  # a linear encoder: shared = [weight (flat), bias]; features of 4 samples x 3
        inputs = torch.randn(4, case.shared_sizes[0] // 3 or 1, generator=generator, dtype=dtype)
        out_features = 3
        weight = torch.randn(
            out_features, inputs.shape[1], generator=generator, dtype=dtype
        ).requires_grad_(True)
        bias = torch.randn(out_features, generator=generator, dtype=dtype).requires_grad_(True)
        shared = [weight, bias]
    feature_count = 12 if representation_mode else sum(case.shared_sizes)
    targets = torch.randn(case.num_tasks, feature_count, generator=generator, dtype=dtype)
    every = shared + ([] if heads is None else heads) + [bystander]
    for param, preset in zip(every, case.preset_grads):
        if preset:
            param.grad = torch.randn(param.shape, generator=generator, dtype=dtype)
    method = build_method(name, case.num_tasks, options, case.seed)

    outcome = "ok"
    for step in range(2):  # two steps: stateful methods (warm starts, histories) use their state
        if representation_mode:
            representation = inputs @ shared[0].T + shared[1]
            features = representation.reshape(-1)
        else:
            representation = None
            features = torch.cat([p.reshape(-1) for p in shared])
        losses = [
            _task_loss(case, i, features * (1 + step), None if heads is None else heads[i], targets)
            for i in range(case.num_tasks)
        ]
        before = _snapshot(every)
        try:
            info = core.mtl_backward(
                torch.stack(losses) if case.stacked else losses,
                shared,
                method,
                task_params=None if heads is None else [[h] for h in heads],
                representation=representation,
                jacobian_strategy=case.strategy,
            )
        except errors.MTLInputError as error:
            assert "returned non-finite weights" not in str(error), f"method defect: {error}"
            _assert_untouched(every, before)
            return type(error).__name__
        assert torch.equal(bystander.grad, before[-1])
        for field in (
            info.weights,
            info.losses,
            info.gramian,
            info.grad_norms,
            *info.diagnostics.values(),
        ):
            if isinstance(field, torch.Tensor) and field.is_floating_point():
                assert bool(torch.isfinite(field).all()), f"non-finite StepInfo entry {field}"
        assert info.weights.shape == (case.num_tasks,)
        for j, param in enumerate(every):
            assert param.grad is None or bool(torch.isfinite(param.grad).all()), (
                f"parameter {j} got a non-finite .grad"
            )
        with torch.no_grad():
            new_losses = torch.stack([loss.detach() * 0.5 for loss in losses])
        try:
            method.after_step(new_losses)
        except errors.MTLInputError:
            pass
    return outcome


ENGINE_OUTCOMES: Counter[str] = Counter()
"""Outcome per engine call sequence ("ok" or the `MTLInputError` subclass), for the report."""


@pytest.mark.parametrize("name", METHOD_NAMES)
@settings(max_examples=_examples(0.4))
@given(case=engine_cases(max_shared=1_000_000), data=st.data())
def test_engine_full_mode(name: str, case: EngineCase, data: st.DataObject) -> None:
    """Per-task gradients on a raw parameter vector of up to 1e6 entries."""
    INPUTS_TRIED["test_engine_full_mode"] += 1
    options = data.draw(hyperparameters(name, case.num_tasks))
    ENGINE_OUTCOMES[_run_engine(name, case, options, representation_mode=False)] += 1


@pytest.mark.parametrize("name", METHOD_NAMES)
@settings(max_examples=_examples(0.4))
@given(case=engine_cases(max_shared=1_000_000), data=st.data())
def test_engine_representation_mode(name: str, case: EngineCase, data: st.DataObject) -> None:
    """Per-task gradients on the features of a linear encoder with up to 1e6 weights."""
    INPUTS_TRIED["test_engine_representation_mode"] += 1
    options = data.draw(hyperparameters(name, case.num_tasks))
    ENGINE_OUTCOMES[_run_engine(name, case, options, representation_mode=True)] += 1


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("kind", TASK_KINDS[6:])
@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_rejects_nonfinite_losses_and_gradients(
    name: str, kind: str, dtype: torch.dtype
) -> None:
    """Every method: a NaN or infinite loss, or an infinite gradient, raises and leaves `.grad` alone.

    An infinite gradient of a finite loss (sqrt at 0) reaches the loss weightings through their
    single backward pass of the weighted sum, so they raise `NonFiniteGradientError` as well. A
    gradient `2 max` that overflows only as a per-task gradient is legitimately finite for a loss
    weighting that weighs that task below 1/2 (the weighted gradient `2 w max` is what it forms)."""
    INPUTS_TRIED["test_engine_rejects_nonfinite_losses_and_gradients"] += 1
    case = EngineCase(
        dtype,
        3,
        [5],
        ["quadratic", kind, "quadratic"],
        [0, 0, 0],
        [1.0, 2.0, 1e-3],
        True,
        0,
        "auto",
        [True, False, True],
    )
    expected = {"NonFiniteGradientError"} if kind.endswith("_gradient") else {"NonFiniteLossError"}
    if kind == "overflowing_gradient" and name in LOSS_WEIGHTINGS:
        expected.add("ok")
    representation_mode = "full" not in make_method(name, num_tasks=3).engine_modes  # RotoGrad
    assert _run_engine(name, case, {}, representation_mode=representation_mode) in expected


# ------------------------------------------------------------------------------------------
# regressions: inputs the fuzzer found (docs/DECISIONS.md, "Fuzzed inputs")
# ------------------------------------------------------------------------------------------

FOUND_MGDA_LOSS_SCALED = [
    ([[1.0]], [1e-20]),  # NaN KKT gap: G / l^2 = 1e40 overflowed float32
    ([[1.0, -1.0], [-1.0, 1.0]], [1.0, 1e-20]),  # NaN weights
    (
        [[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]],
        [1.0, 1.0, 1e-20],
    ),  # LinAlgError in pinv
    (
        [[1e38, -1e38, -1e38], [-1e38, 1e38, 1e38], [-1e38, 1e38, 1e38]],
        [1.0, 1.0, 0.1],
    ),  # LinAlgError in eigvalsh
]


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
@pytest.mark.parametrize(("gram", "losses"), FOUND_MGDA_LOSS_SCALED)
def test_found_mgda_loss_normalization_on_float32(gram, losses, normalization) -> None:
    """MGDA's "loss" normalisation formed `G / (l_i l_j)` in the Gramian's dtype: float32 overflowed
    for losses of 1e-20 (NaN weights, NaN KKT gap, or a LinAlgError inside the solver). The
    normalised Gramian is now formed overflow-safely; float32 agrees with float64."""
    INPUTS_TRIED["test_found_mgda_loss_normalization_on_float32"] += 1
    min_norms = {}
    for dtype in DTYPES:
        method = core.MGDA(normalization=normalization)
        weights, diagnostics = method.weights(
            torch.tensor(gram, dtype=dtype), torch.tensor(losses, dtype=dtype)
        )
        _check_weights(weights, torch.tensor(losses, dtype=dtype))
        _check_diagnostics(diagnostics)
        assert bool((weights >= 0).all()) and abs(float(weights.sum()) - 1) <= 1e-6
        min_norms[dtype] = float(diagnostics["min_norm"])
    # the min-norm value is unique; the weights are not where 0 is reached on several faces (the
    # last case: v_3 = 10 v_2 = -10 v_1), and there float32 rounding may pick another optimal face
    assert abs(min_norms[torch.float32] - min_norms[torch.float64]) <= 1e-5 * max(
        1.0, min_norms[torch.float64]
    )  # float32 rounding


@pytest.mark.parametrize(
    ("name", "jacobian"),
    [
        ("pcgrad", [[1e19], [-1e-20]]),  # found by the fuzzer (K = 33, rows of norm 1e19 and 1e-20)
        ("cagrad", [[1e19, 0.0], [0.0, 3e-23]]),  # found by a probe of the same regime
    ],
)
def test_found_float32_weights_beyond_range(name: str, jacobian) -> None:
    """PCGrad's and CAGrad's weights are of order `||g_i|| / ||g_j||` (here > 1e38): finite in
    float64, not representable in float32, where they came back as inf (which the engine reports as
    a method defect). They now raise `NonFiniteGradientError` (use float64), the engine's answer to
    a float32 Gramian that overflows, and float64 gives finite weights."""
    INPUTS_TRIED["test_found_float32_weights_beyond_range"] += 1
    rows = torch.tensor(jacobian, dtype=torch.float64)
    losses = torch.ones(rows.shape[0], dtype=torch.float64)
    _check_weights(make_method(name)(rows @ rows.T, losses), losses)
    low = rows.float()
    with pytest.raises(errors.NonFiniteGradientError, match="beyond the range of torch.float32"):
        make_method(name)(low @ low.T, losses.float())
    # through the engine: the same error, no .grad written
    x = torch.zeros(rows.shape[1], requires_grad=True)
    task_losses = [(low[i] * x).sum() for i in range(rows.shape[0])]
    with pytest.raises(errors.NonFiniteGradientError, match="beyond the range of torch.float32"):
        core.mtl_backward(task_losses, [x], make_method(name))
    assert x.grad is None


@pytest.mark.parametrize(
    ("num_tasks", "exponent", "normalization"),
    [(8, 19.0, "none"), (40, 15.0, "none"), (57, -15.0, "loss")],
)
def test_found_float32_eigh_failure_in_min_norm_point(
    num_tasks: int, exponent: float, normalization: str
) -> None:
    """Collinear float32 gradients, the last one opposite and 10^e times longer (or with loss 10^e):
    the unit-scaled Gramian holds entries whose squares underflow float32 (1e-38 next to 1), and
    float32 `eigh` (the FISTA step size, the active set's pseudo-inverse) failed to converge with a
    LinAlgError. The K x K decompositions now run in float64."""
    INPUTS_TRIED["test_found_float32_eigh_failure_in_min_norm_point"] += 1
    signs = torch.ones(num_tasks)
    signs[-1] = -1
    norms, losses = torch.ones(num_tasks), torch.ones(num_tasks)
    (norms if normalization == "none" else losses)[-1] = 10.0**exponent
    gram = torch.outer(signs * norms, signs * norms)
    method = core.MGDA(normalization=normalization)
    weights, diagnostics = method.weights(gram, losses)
    _check_weights(weights, losses)
    _check_diagnostics(diagnostics)
    assert bool((weights >= 0).all()) and abs(weights.sum().item() - 1) <= 1e-6
    assert diagnostics["kkt_gap"].item() <= 1e-6


def test_found_dwa_ratio_overflow_in_float32() -> None:
    """DWA with float32 losses 1e-24, then 1e14 (window 1, T = 0.1): the ratio 1e38 / T was formed
    in float32, overflowed to inf, and the softmax returned NaN. The ratios and the softmax are now
    float64 (capped), and only the weights are cast. (The window form compares the current call's
    losses with the previous call's, from the third call on.)"""
    INPUTS_TRIED["test_found_dwa_ratio_overflow_in_float32"] += 1
    method = core.DynamicWeightAverage(2, temperature=0.1, window=1)
    for losses in ([1.0, 1.0], [1e-24, 1.0], [1e14, 1.0]):
        weights = method(torch.tensor(losses))
        _check_weights(weights, torch.tensor(losses))
    torch.testing.assert_close(
        weights, torch.tensor([2.0, 0.0])
    )  # the loss that rose 1e38-fold takes all
