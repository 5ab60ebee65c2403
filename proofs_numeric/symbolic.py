"""Symbolic (sympy) derivations behind the methods' formulas, each returning what a test asserts.

(i) `unit_gradient_invariance`: the chain rule `grad h(l) = h'(l) grad l`, so for h' > 0 the unit
    gradient of `h o l` equals that of l (DiBS paper Prop. 2 / Thm 2.2; spec dibs.md §4). Without
    the sign condition the difference is `(sign(h') - 1) u`, not 0.
(ii) DiBS-MTL's inner loop (spec dibs.md §3.2-3.3): one step from `delta_0 = 0` with preferred
    states `p_i = -r u_i` has `d_i^0 = r` and moves to `-sum_i (eta r / ||g_i||) g_i`, the 1-step
    weights `w_i = eta r / ||g_i||` of `core.DiBSMTL`; the distances of later steps, written with the
    Gramian as the code does (`||delta - p_i||^2 = (c - r e_i)^T U (c - r e_i)` for
    `delta = -sum_j c_j u_j`), equal their vector definition; and the vector-form loop, run in
    50-digit arithmetic on random integer gradients (radius check and rejected step as the spec
    describes), gives the T-step weights `core.DiBSMTL(steps=T)` computes from the Gramian.
(iii) For K = 2 symbolic gradients `g1, g2 in R^3`, the update each method builds from the
    Gramian `G = J J^T` (the code's formula for `weights(G)`, then `sum_i w_i g_i`) equals the update
    its paper defines from the vectors: MGDA's two-task closed form (and that it is the stationary
    point of `||a g1 + (1-a) g2||^2`), the normalised sum `sum_i g_i/||g_i||`, 1-step DiBS-MTL,
    Nash-MTL's K = 2 closed form (`b = (1 + cos)^-1/2`, `alpha_i = b/||g_i||` solves
    `G alpha = 1/alpha`), IMTL-G (paper closed form vs the bordered unit-Gramian system; equal
    projections), PCGrad's two projections and CAGrad with c = 0 (the mean gradient). Where
    practical the actual `core` method is also evaluated on random integer gradients and compared
    with the formula (`*_numeric` gaps), and CAGrad with c > 0 is compared with a 50-digit
    minimisation of its two-task dual.

Every symbolic function returns a list of simplified expressions that are all 0 when the
derivation holds (0 only ever comes from sympy's simplification or an exact polynomial reduction;
a nonzero entry may be a numeric witness, the value at a random point); most take the code-side
formula as an argument, so a test can pass a wrong one and see a nonzero result.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import mpmath
import sympy as sp
import torch

import core

Vector = sp.Matrix
GramianFormula = Callable[[sp.Matrix], list[sp.Expr]]


def nonzero_witness(expression: sp.Expr, /, *, trials: int = 2) -> sp.Float | None:
    """The value of `expression` at a seeded random rational point where it is clearly nonzero
    (|value| > 1e-20 at 30 digits), which proves it is not identically 0; None if none is found.

    Symbols declared negative get values in [-5/2, -1/2], all others in [1/2, 5/2] (so positive,
    nonzero and real assumptions hold)."""
    symbols = sorted(expression.free_symbols, key=str)
    for trial in range(trials):
        generator = random.Random(trial)
        values = {}
        for symbol in symbols:
            value = sp.Rational(generator.randint(5, 25), 10)
            values[symbol] = -value if symbol.is_negative else value
        number = sp.N(expression.subs(values), 30)
        if number.is_number and number.is_finite and abs(number) > sp.Float("1e-20"):
            return number
    return None


def simplified(expressions: Sequence[sp.Expr] | sp.Matrix) -> list[sp.Expr]:
    """Each entry (a Matrix is flattened) simplified: a nonzero numeric witness if one is found
    at a random point (fast, and proof enough that it is not 0), else `sympy.simplify` of it."""
    results: list[sp.Expr] = []
    for expression in list(expressions):
        if expression == 0:
            results.append(sp.Integer(0))
            continue
        witness = nonzero_witness(expression)
        results.append(
            witness if witness is not None else sp.simplify(sp.radsimp(sp.together(expression)))
        )
    return results


def all_zero(expressions: Sequence[sp.Expr]) -> bool:
    return all(e == 0 for e in expressions)


def reduce_with_norms(
    expressions: Sequence[sp.Expr] | sp.Matrix, vectors: Sequence[Vector]
) -> list[sp.Expr]:
    """Exact zero test for expressions in the components of `vectors` and their norms.

    Each `sqrt(g_i . g_i)` becomes a positive symbol `n_i`; the expression is brought to one
    fraction, and its numerator is reduced modulo the relations `n_i^2 - g_i . g_i` (a Groebner
    basis: the leading terms `n_i^2` are coprime). The remainder is the unique normal form, 0
    exactly when the expression vanishes for all vectors (where its denominator does not)."""
    norms = [sp.Symbol(f"n_{i + 1}", positive=True) for i in range(len(vectors))]
    squares = [v.dot(v) for v in vectors]
    components = sorted(set().union(*[v.free_symbols for v in vectors]), key=str)
    remainders = []
    for expression in list(expressions):
        for n, square in zip(norms, squares):
            expression = expression.subs(sp.sqrt(square), n)
        numerator, _ = sp.fraction(sp.together(expression))
        numerator = sp.expand(numerator)
        if numerator == 0:
            remainders.append(sp.Integer(0))
            continue
        _, remainder = sp.reduced(
            numerator,
            [n**2 - square for n, square in zip(norms, squares)],
            *norms,
            *components,
            order="lex",
        )
        remainders.append(sp.expand(remainder))
    return remainders


# ---- (i) unit gradients under h with h' > 0 ---------------------------------------------------


def unit_gradient_invariance(*, derivative_sign: str = "positive") -> list[sp.Expr]:
    """`grad(h o l)/||grad(h o l)|| - grad l/||grad l||` for an arbitrary `l(x1, x2)`, simplified.

    sympy differentiates `h(l(x1, x2))` by the chain rule; the factor `h'(l)` it produces is then
    replaced by a symbol that is positive (`derivative_sign="positive"`, the theorem's condition),
    only real and nonzero (`"real"`), or negative (`"negative"`)."""
    x1, x2 = sp.symbols("x1 x2", real=True)
    loss = sp.Function("l")(x1, x2)
    transform = sp.Function("h")
    composite_gradient = [sp.diff(transform(loss), v) for v in (x1, x2)]
    plain_gradient = [sp.diff(loss, v) for v in (x1, x2)]
    derivative = sp.Derivative(transform(loss), loss)
    if not all(g.has(derivative) for g in composite_gradient):
        raise AssertionError(f"sympy's chain rule did not produce h'(l): {composite_gradient}")
    assumptions = {
        "positive": {"positive": True},
        "real": {"real": True, "nonzero": True},
        "negative": {"negative": True},
    }
    slope = sp.Symbol("hprime", **assumptions[derivative_sign])
    # the partial derivatives of l become real symbols (they are real numbers at any point)
    a, b = sp.symbols("a b", real=True)
    partials = {sp.Derivative(loss, x1): a, sp.Derivative(loss, x2): b}
    composite = [g.subs(derivative, slope).subs(partials) for g in composite_gradient]
    plain = [g.subs(partials) for g in plain_gradient]
    composite_norm = sp.sqrt(sum(c**2 for c in composite))
    plain_norm = sp.sqrt(sum(c**2 for c in plain))
    return simplified([c / composite_norm - p / plain_norm for c, p in zip(composite, plain)])


def unit_gradient_invariance_concrete() -> list[sp.Expr]:
    """For a concrete nonconvex `l(x1, x2) = x1^2 + x1 x2 + 3 sin(x2)` and the increasing maps exp,
    `t + t^3` and softplus `log(1 + e^t)`: per map, the chain-rule residuals
    `d/dx_j h(l) - h'(l) d/dx_j l` (simplified, 0) and `h'(t) > 0` as sympy decides it for real t
    (returned as `1 - [h' > 0]`, i.e. 0 when sympy proves it). With (i), the unit gradients agree."""
    x1, x2 = sp.symbols("x1 x2", real=True)
    loss = x1**2 + x1 * x2 + 3 * sp.sin(x2)
    t = sp.Symbol("t", real=True)
    results: list[sp.Expr] = []
    for transform in (sp.exp(t), t + t**3, sp.log(1 + sp.exp(t))):
        slope = sp.diff(transform, t)
        for v in (x1, x2):
            results.append(
                sp.simplify(
                    sp.diff(transform.subs(t, loss), v) - slope.subs(t, loss) * sp.diff(loss, v)
                )
            )
        results.append(sp.Integer(0) if slope.is_positive is True else sp.Integer(1))
    return results


# ---- shared symbols ---------------------------------------------------------------------------


def symbolic_gradients(num_tasks: int = 2, dimension: int = 3) -> list[Vector]:
    """K real symbolic gradient vectors `g_i = (g_i0, ..., g_i{n-1})`."""
    return [
        sp.Matrix(sp.symbols(f"g{i}_0:{dimension}", real=True)) for i in range(1, num_tasks + 1)
    ]


def gramian_of(vectors: Sequence[Vector]) -> sp.Matrix:
    """`G_ij = g_i . g_j`."""
    return sp.Matrix(len(vectors), len(vectors), lambda i, j: vectors[i].dot(vectors[j]))


def norm(vector: Vector) -> sp.Expr:
    return sp.sqrt(vector.dot(vector))


def combine(weights: Sequence[sp.Expr], vectors: Sequence[Vector]) -> Vector:
    """`sum_i w_i g_i`."""
    return sum((w * v for w, v in zip(weights, vectors)), sp.zeros(vectors[0].rows, 1))


def random_integer_vectors(
    num_tasks: int, dimension: int, *, seed: int, low: int = -9, high: int = 9
) -> list[Vector]:
    """Seeded random integer gradients (exact Gramian, irrational norms); none is zero."""
    generator = random.Random(seed)
    vectors = []
    while len(vectors) < num_tasks:
        vector = sp.Matrix([generator.randint(low, high) for _ in range(dimension)])
        if any(vector):
            vectors.append(vector)
    return vectors


def torch_gramian(vectors: Sequence[Vector]) -> torch.Tensor:
    """The exact integer Gramian as a float64 tensor."""
    return torch.tensor([[float(v.dot(w)) for w in vectors] for v in vectors], dtype=torch.float64)


def relative_gap(computed: torch.Tensor, expected: Sequence[sp.Expr]) -> float:
    """`max_i |computed_i - expected_i| / max_i |expected_i|`, the expected values evaluated to 30 digits."""
    exact = torch.tensor([float(sp.N(e, 30)) for e in expected], dtype=torch.float64)
    return float(
        (computed.to(torch.float64) - exact).abs().max() / exact.abs().max().clamp_min(1e-300)
    )


# ---- (ii) DiBS-MTL inner loop -----------------------------------------------------------------


def dibs_mtl_one_step(
    num_tasks: int = 2, dimension: int = 3, *, code_weights: GramianFormula | None = None
) -> list[sp.Expr]:
    """One inner step from `delta_0 = 0`: `[d_i^0 - r for each i] + [entries of delta_1 + sum_i w_i g_i]`,
    simplified, with `w_i = eta r / sqrt(G_ii)` (the code's 1-step weights) unless `code_weights`."""
    vectors = symbolic_gradients(num_tasks, dimension)
    radius, step = sp.symbols("r eta", positive=True)
    units = [v / norm(v) for v in vectors]
    preferred = [-radius * u for u in units]
    delta = sp.zeros(dimension, 1)
    distances = [norm(delta - p) for p in preferred]
    moved = delta - step * combine(distances, units)
    gram = gramian_of(vectors)
    weights = (
        code_weights(gram)
        if code_weights
        else [step * radius / sp.sqrt(gram[i, i]) for i in range(num_tasks)]
    )
    return simplified([d - radius for d in distances] + list(moved + combine(weights, vectors)))


def gramian_distance_identity(
    num_tasks: int = 3, dimension: int = 3, *, code_shift_sign: int = -1
) -> list[sp.Expr]:
    """`||delta - p_i||^2 - (c - r e_i)^T U (c - r e_i)` for `delta = -sum_j c_j u_j`, `p_i = -r u_i`,
    `U_jk = u_j . u_k` written with the Gramian (`G_jk / sqrt(G_jj G_kk)`), simplified, per task i:
    the identity `DiBSMTL.inner_coefficients` evaluates the distances with (`c - r e_i`: its
    `differences = coefficients - radius * eye`; `code_shift_sign=+1` tests the wrong `c + r e_i`)."""
    vectors = symbolic_gradients(num_tasks, dimension)
    radius = sp.Symbol("r", positive=True)
    coefficients = sp.symbols(f"c0:{num_tasks}", real=True)
    units = [v / norm(v) for v in vectors]
    gram = gramian_of(vectors)
    unit_gram = sp.Matrix(
        num_tasks, num_tasks, lambda j, k: gram[j, k] / sp.sqrt(gram[j, j] * gram[k, k])
    )
    delta = -combine(coefficients, units)
    results = []
    for i in range(num_tasks):
        difference = delta + radius * units[i]
        shifted = sp.Matrix(
            [
                coefficients[j] + (code_shift_sign * radius if j == i else 0)
                for j in range(num_tasks)
            ]
        )
        results.append(
            sp.expand(difference.dot(difference) - (shifted.T * unit_gram * shifted)[0, 0])
        )
    return simplified(results)


def inner_loop_weights(
    vectors: Sequence[Vector],
    *,
    radius: sp.Expr,
    step: sp.Expr,
    steps: int,
    digits: int = 50,
    count_rejected: bool = True,
) -> tuple[list[sp.Float], int, Vector]:
    """The spec's vector-form inner loop (dibs.md §3.2 step 4-5), in `digits`-digit arithmetic.

    From `delta_0 = 0`: `d_i^k = ||delta_k - p_i||`, `delta_{k+1} = delta_k - eta sum_i d_i^k u_i`,
    accumulating `w_i += eta d_i^k / ||g_i||`; stop after a step with `||delta_{k+1}|| > r` (that
    step stays counted, delta_k is kept; `count_rejected=False` drops it instead, which is NOT what
    the spec says). Returns the weights, T' (the steps counted) and the last displacement computed,
    accepted or rejected (spec §3.2 step 5: it equals `-sum_i w_i g_i`)."""
    units = [(v / norm(v)).evalf(digits) for v in vectors]
    norms = [norm(v).evalf(digits) for v in vectors]
    preferred = [-radius * u for u in units]
    delta = candidate = sp.zeros(vectors[0].rows, 1)
    weights = [sp.Float(0, digits)] * len(vectors)
    counted = 0
    for _ in range(steps):
        distances = [norm(delta - p).evalf(digits) for p in preferred]
        candidate = (delta - step * combine(distances, units)).evalf(digits)
        rejected = norm(candidate).evalf(digits) > radius
        if count_rejected or not rejected:
            weights = [w + step * d / n for w, d, n in zip(weights, distances, norms)]
            counted += 1
        if rejected:
            break
        delta = candidate
    return [w.evalf(digits) for w in weights], counted, candidate


def dibs_mtl_weights_numeric(
    *,
    seed: int,
    num_tasks: int,
    dimension: int,
    steps: int,
    radius: str,
    step: str | None,
    count_rejected: bool = True,
) -> dict[str, float]:
    """`core.DiBSMTL(steps, radius, inner_step).weights(G)` against `inner_loop_weights` on random
    integer gradients: the relative gap, T' (the steps the loop counted) and the closed-form gap
    `||delta_last + sum_i w_i g_i|| / ||delta_last||` (0 when the loop is the linear scalarisation)."""
    vectors = random_integer_vectors(num_tasks, dimension, seed=seed)
    radius_value = sp.Rational(radius)
    method = core.DiBSMTL(
        steps=steps,
        radius=float(radius_value),
        inner_step=None if step is None else float(sp.Rational(step)),
    )
    step_value = (
        sp.Rational(step) if step is not None else sp.nsimplify(method.inner_step, rational=True)
    )
    expected, counted, displacement = inner_loop_weights(
        vectors, radius=radius_value, step=step_value, steps=steps, count_rejected=count_rejected
    )
    closed_form = displacement + combine(expected, vectors)
    gram = torch_gramian(vectors)
    computed = method(gram, torch.ones(num_tasks, dtype=torch.float64))
    return {
        "gap": relative_gap(computed, expected),
        "counted_steps": counted,
        "closed_form_gap": float(sp.N(norm(closed_form) / norm(displacement), 30)),
    }


# ---- (iii) Gramian formulas vs vector definitions, K = 2 ----------------------------------------


def _two_tasks() -> tuple[Vector, Vector, sp.Matrix]:
    g1, g2 = symbolic_gradients(2, 3)
    return g1, g2, gramian_of([g1, g2])


def mgda_code_weight(gram: sp.Matrix) -> list[sp.Expr]:
    """`core.pareto.min_norm_point`'s K = 2 form: `a_1 = (G22 - G12) / (G11 + G22 - 2 G12)` (unclipped)."""
    first = (gram[1, 1] - gram[0, 1]) / (gram[0, 0] + gram[1, 1] - 2 * gram[0, 1])
    return [first, 1 - first]


def mgda_two_task(code_weights: GramianFormula = mgda_code_weight) -> list[sp.Expr]:
    """[stationary point of `||a g1 + (1-a) g2||^2` minus the paper's `(g2 - g1).g2 / ||g1 - g2||^2`,
    paper minus code, update difference (3 entries)], simplified."""
    g1, g2, gram = _two_tasks()
    a = sp.Symbol("a", real=True)
    combination = a * g1 + (1 - a) * g2
    (stationary,) = sp.solve(sp.diff(combination.dot(combination), a), a)
    paper = (g2 - g1).dot(g2) / (g1 - g2).dot(g1 - g2)
    code = code_weights(gram)
    update_difference = combine([paper, 1 - paper], [g1, g2]) - combine(code, [g1, g2])
    return reduce_with_norms(
        [stationary - paper, paper - code[0]] + list(update_difference), [g1, g2]
    )


def normalized_sum_two_task(code_weights: GramianFormula | None = None) -> list[sp.Expr]:
    """`sum_i g_i/||g_i||` minus `sum_i w_i g_i` with `w_i = 1/sqrt(G_ii)` (NormalizedSum), simplified."""
    g1, g2, gram = _two_tasks()
    weights = code_weights(gram) if code_weights else [1 / sp.sqrt(gram[i, i]) for i in range(2)]
    return reduce_with_norms(
        list(g1 / norm(g1) + g2 / norm(g2) - combine(weights, [g1, g2])), [g1, g2]
    )


def nash_closed_form(gram: sp.Matrix) -> list[sp.Expr]:
    """The K = 2 Nash-MTL weights `alpha_i = b / ||g_i||`, `b = (1 + cos)^-1/2` (core.NashMTL's closed form, ridge 0)."""
    norms = [sp.sqrt(gram[i, i]) for i in range(2)]
    b = 1 / sp.sqrt(1 + gram[0, 1] / (norms[0] * norms[1]))
    return [b / norms[0], b / norms[1]]


def nash_mtl_two_task(code_weights: GramianFormula = nash_closed_form) -> list[sp.Expr]:
    """[`alpha_i (G alpha)_i - 1` (the Nash system `G alpha = 1/alpha`), `alpha^T G alpha - 2`
    (`||d||^2 = K`), and, for `d = sum_j alpha_j g_j` built from vectors with free weights,
    `d . g_i - (G alpha)_i` and `d . d - alpha^T G alpha`], simplified.

    The Gramian is the general two-task one, `[[n1^2, c n1 n2], [c n1 n2, n2^2]]` with norms
    `n_i > 0` and cosine `c = s - 1 > -1` (s > 0 symbolic): every pair of nonzero, not opposite,
    gradients has this form, and keeping the norms as symbols keeps the radicals simple."""
    n1, n2, s = sp.symbols("n1 n2 s", positive=True)
    cosine = s - 1
    gram = sp.Matrix([[n1**2, cosine * n1 * n2], [cosine * n1 * n2, n2**2]])
    alpha = sp.Matrix(code_weights(gram))
    products = gram * alpha
    nash = [sp.simplify(alpha[i] * products[i] - 1) for i in range(2)] + [
        sp.simplify((alpha.T * gram * alpha)[0, 0] - 2)
    ]
    g1, g2 = symbolic_gradients(2, 3)
    a1, a2 = sp.symbols("alpha1 alpha2", real=True)
    direction = a1 * g1 + a2 * g2
    vector_gram = gramian_of([g1, g2])
    free_products = vector_gram * sp.Matrix([a1, a2])
    links = [sp.expand(direction.dot(g) - free_products[i]) for i, g in enumerate((g1, g2))]
    links.append(
        sp.expand(direction.dot(direction) - (sp.Matrix([[a1, a2]]) * free_products)[0, 0])
    )
    return nash + links


def imtlg_code_weights(gram: sp.Matrix) -> list[sp.Expr]:
    """The code's Gramian form: beta solves `[[U, 1], [1^T, 0]] [beta; nu] = [0; 1]` with the unit
    Gramian U, then `alpha_i = (beta_i/||g_i||) / sum_j beta_j/||g_j||`."""
    norms = [sp.sqrt(gram[i, i]) for i in range(2)]
    unit = sp.Matrix(
        2, 2, lambda i, j: 1 if i == j else gram[i, j] / (norms[i] * norms[j])
    )  # exact unit diagonal, as the code
    bordered = unit.row_join(sp.ones(2, 1)).col_join(sp.Matrix([[1, 1, 0]]))
    solution = bordered.LUsolve(sp.Matrix([0, 0, 1]))  # [beta_1, beta_2, nu]
    scaled = [solution[0] / norms[0], solution[1] / norms[1]]
    return [s / (scaled[0] + scaled[1]) for s in scaled]


def imtlg_two_task(code_weights: GramianFormula = imtlg_code_weights) -> list[sp.Expr]:
    """[paper's `alpha_2 = g1 U^T (D U^T)^-1` minus the code's, the same for alpha_1, and the
    projection difference `g.u1 - g.u2` of the code's update], simplified."""
    g1, g2, gram = _two_tasks()
    u1, u2 = g1 / norm(g1), g2 / norm(g2)
    second = g1.dot(u1 - u2) / (g1 - g2).dot(u1 - u2)
    paper = [1 - second, second]
    code = code_weights(gram)
    update = combine(code, [g1, g2])
    return reduce_with_norms(
        [paper[0] - code[0], paper[1] - code[1], update.dot(u1) - update.dot(u2)], [g1, g2]
    )


def pcgrad_code_weights(gram: sp.Matrix) -> list[sp.Expr]:
    """`w = sum_i C_i` of `pcgrad_coefficients` for two conflicting tasks: `(1 - G12/G11, 1 - G12/G22)`."""
    return [1 - gram[0, 1] / gram[0, 0], 1 - gram[0, 1] / gram[1, 1]]


def pcgrad_two_task(code_weights: GramianFormula = pcgrad_code_weights) -> list[sp.Expr]:
    """With `g1 . g2 < 0`: `(g1 - (g1.g2/||g2||^2) g2) + (g2 - (g2.g1/||g1||^2) g1)` (Yu et al. Alg. 1)
    minus `sum_i w_i g_i`, simplified."""
    g1, g2, gram = _two_tasks()
    projected_1 = g1 - g1.dot(g2) / g2.dot(g2) * g2
    projected_2 = g2 - g2.dot(g1) / g1.dot(g1) * g1
    return reduce_with_norms(
        list(projected_1 + projected_2 - combine(code_weights(gram), [g1, g2])), [g1, g2]
    )


def cagrad_two_task_c0(code_weights: GramianFormula | None = None) -> list[sp.Expr]:
    """CAGrad with c = 0: `d* = g0 + (sqrt(phi)/||g_w||) g_w` with `phi = c^2 ||g0||^2 = 0`, rescaled
    by `1/(1 + c^2)`, minus `sum_i w_i g_i` with the code's `w = 1/K` (reduction "mean"), simplified."""
    g1, g2, gram = _two_tasks()
    c = sp.Integer(0)
    w = sp.Symbol("w", positive=True)  # any dual weight: with phi = 0 it does not matter
    mean = (g1 + g2) / 2
    g_w = w * g1 + (1 - w) * g2
    phi = c**2 * mean.dot(mean)
    direction = (mean + sp.sqrt(phi) / norm(g_w) * g_w) / (1 + c**2)
    weights = code_weights(gram) if code_weights else [sp.Rational(1, 2), sp.Rational(1, 2)]
    return reduce_with_norms(list(direction - combine(weights, [g1, g2])), [g1, g2])


# ---- numeric comparisons with the core methods -------------------------------------------------


def two_task_numeric(*, seed: int, conflicting: bool | None = None) -> dict[str, float]:
    """On two random integer gradients in R^3, the relative gap between each `core` method's
    weights and the K = 2 formula above, evaluated exactly (30 digits). `conflicting` forces the
    sign of `g1 . g2` (PCGrad's two regimes); None takes the draw as it comes."""
    attempt = seed
    while True:
        vectors = random_integer_vectors(2, 3, seed=attempt)
        product = vectors[0].dot(vectors[1])
        parallel = vectors[0].cross(vectors[1]) == sp.zeros(3, 1)
        if not parallel and product != 0 and (conflicting is None or (product < 0) == conflicting):
            break
        attempt += 1000
    gram_exact = gramian_of(vectors)
    gram = torch_gramian(vectors)
    losses = torch.ones(2, dtype=torch.float64)
    mgda = [min(max(e, 0), 1) for e in [mgda_code_weight(gram_exact)[0]]]
    expected = {
        "MGDA": [mgda[0], 1 - mgda[0]],
        "NormalizedSum": [1 / sp.sqrt(gram_exact[i, i]) for i in range(2)],
        "DiBSMTL": [sp.Rational(1, 100000) / sp.sqrt(gram_exact[i, i]) for i in range(2)],
        "NashMTL": nash_closed_form(gram_exact),
        "IMTLG": imtlg_code_weights(gram_exact),
        "PCGrad": pcgrad_code_weights(gram_exact) if product < 0 else [1, 1],
        "CAGrad(c=0)": [sp.Rational(1, 2), sp.Rational(1, 2)],
    }
    methods = {
        "MGDA": core.MGDA(),
        "NormalizedSum": core.NormalizedSum(),
        "DiBSMTL": core.DiBSMTL(),
        "NashMTL": core.NashMTL(),
        "IMTLG": core.IMTLG(),
        "PCGrad": core.PCGrad(generator=torch.Generator().manual_seed(0)),
        "CAGrad(c=0)": core.CAGrad(c=0.0),
    }
    gaps = {name: relative_gap(methods[name](gram, losses), expected[name]) for name in methods}
    gaps["conflicting"] = 1.0 if bool(product < 0) else 0.0
    return gaps


def cagrad_two_task_numeric(
    *, seed: int, c: float = 0.4, reference_c: float | None = None, digits: int = 50
) -> float:
    """CAGrad (c > 0, rescale 1, mean) on two random integer gradients against a `digits`-digit
    minimisation of the dual `F(a) = g_a . g0 + c ||g0|| ||g_a||` over `a in [0, 1]`
    (`g_a = a g1 + (1-a) g2`), with `d* = g0 + c ||g0|| g_a*/||g_a*||` divided by `1 + c^2`.
    Returns the relative gap of the weights (`reference_c` != c: a deliberately wrong reference)."""
    vectors = random_integer_vectors(2, 3, seed=seed)
    gram = [[mpmath.mpf(int(v.dot(w))) for w in vectors] for v in vectors]
    with mpmath.workdps(digits):
        ratio = mpmath.mpf(c if reference_c is None else reference_c)
        mean_sq = (gram[0][0] + 2 * gram[0][1] + gram[1][1]) / 4
        radius = ratio * mpmath.sqrt(mean_sq)

        def weighted(a):  # g_a . g0 and ||g_a||
            w = (a, 1 - a)
            dot_mean = sum(w[i] * (gram[i][0] + gram[i][1]) / 2 for i in range(2))
            norm_sq = sum(w[i] * w[j] * gram[i][j] for i in range(2) for j in range(2))
            return dot_mean, mpmath.sqrt(norm_sq)

        def objective(a):
            dot_mean, length = weighted(a)
            return dot_mean + radius * length

        low, high = mpmath.mpf(0), mpmath.mpf(1)
        golden = (mpmath.sqrt(5) - 1) / 2
        for _ in range(400):  # golden-section search of the convex F on [0, 1]
            left, right = high - golden * (high - low), low + golden * (high - low)
            if objective(left) <= objective(right):
                high = right
            else:
                low = left
        a = (low + high) / 2
        _, length = weighted(a)
        kappa = radius / length
        weights = [
            (mpmath.mpf(1) / 2 + kappa * a) / (1 + ratio**2),
            (mpmath.mpf(1) / 2 + kappa * (1 - a)) / (1 + ratio**2),
        ]
    computed = core.CAGrad(c=c)(torch_gramian(vectors), torch.ones(2, dtype=torch.float64))
    return relative_gap(computed, [sp.Float(str(w), 30) for w in weights])
