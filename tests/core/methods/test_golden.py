"""Golden values on the canonical J = [[-4, 1, 1], [6, 1, 1]] with losses [1, 2].

G = [[18, -22], [-22, 38]], ||g_1|| = sqrt(18), ||g_2|| = sqrt(38). The expected numbers are
derived by hand in the comments (or, for the T-step loop, pinned after checking against the
parameter-space loop of tests/core/methods/test_dibs_mtl.py), so a silent numeric change fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

import core
from core.jacobian import gramian

JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
LOSSES = torch.tensor([1.0, 2.0], dtype=torch.float64)
N1, N2 = math.sqrt(18), math.sqrt(38)
COSINE = -22 / (N1 * N2)


def mgda_two(g11: float, g22: float, g12: float) -> list[float]:
    """Sener & Koltun's two-task closed form."""
    first = min(max((g22 - g12) / (g11 + g22 - 2 * g12), 0.0), 1.0)
    return [first, 1 - first]


GOLDEN = {
    # 1-step DiBS-MTL: w_i = eta r / ||g_i|| with eta r = 1e-5
    "dibsmtl": (core.DiBSMTL(), [1e-5 / N1, 1e-5 / N2]),
    "dibsmtl_mean": (core.DiBSMTL(reduction="mean"), [0.5e-5 / N1, 0.5e-5 / N2]),
    # 5-step DiBS-MTL, eta = r / 5 (reference HEAD multi-step)
    "dibsmtl_5": (core.DiBSMTL(steps=5), [2.3568729648758136e-07, 1.6221112226300144e-07]),
    "dibsmtl_10_eta_1e-2": (
        core.DiBSMTL(steps=10, inner_step=1e-2),
        [2.341230247258222e-05, 1.6113451660041053e-05],
    ),
    "normalized_sum": (core.NormalizedSum(), [1 / N1, 1 / N2]),
    # the overall scale epsilon replaces eta r = 1e-5: w_i = epsilon / ||g_i|| (1-step), and the
    # T-step weights scale by epsilon / (eta r)
    "dibsmtl_epsilon_1": (core.DiBSMTL(epsilon=1.0), [1 / N1, 1 / N2]),
    "dibsmtl_5_epsilon_1": (
        core.DiBSMTL(steps=5, epsilon=1.0),
        [2.3568729648758136e-07 / 2e-7, 1.6221112226300144e-07 / 2e-7],
    ),
    # MGDA: a_1 = ((g2 - g1) . g2) / ||g1 - g2||^2 = 60 / 100
    "mgda": (core.MGDA(), [0.6, 0.4]),
    # l2: the unit gradients have equal norms, so a = (1/2, 1/2)
    "mgda_l2": (core.MGDA(normalization="l2"), [0.5, 0.5]),
    "mgda_l2_normalized": (
        core.MGDA(normalization="l2", apply_to="normalized"),
        [0.5 / N1, 0.5 / N2],
    ),
    # loss: G / (l l^T) = [[18, -11], [-11, 9.5]] -> a_1 = 20.5 / 49.5
    "mgda_loss": (core.MGDA(normalization="loss"), [20.5 / 49.5, 29 / 49.5]),
    # loss+: unit gradients divided by the losses: [[1, c/2], [c/2, 1/4]]
    "mgda_loss+": (core.MGDA(normalization="loss+"), mgda_two(1.0, 0.25, COSINE / 2)),
    "ls": (core.LinearScalarization(), [1.0, 1.0]),
    "ls_mean": (core.LinearScalarization(reduction="mean"), [0.5, 0.5]),
    "ls_weights": (core.LinearScalarization(weights=[0.25, 3.0]), [0.25, 3.0]),
    # scale-invariant: w = 1 / l
    "scaleinvls": (core.ScaleInvariantLS(), [1.0, 0.5]),
    # Nash-MTL: G a = 1/a; with a_i = b_i / ||g_i|| and the cosine c = -22 / sqrt(684), b solves
    # b_1 + c b_2 = 1 / b_1 and c b_1 + b_2 = 1 / b_2, so b_1 = b_2 = (1 + c)^(-1/2) (the solver adds
    # a relative ridge of 1e-10 to the cosine Gramian's diagonal)
    "nashmtl": (
        core.NashMTL(),
        [(1 + 1e-10 + COSINE) ** -0.5 / N1, (1 + 1e-10 + COSINE) ** -0.5 / N2],
    ),
    # PCGrad (K = 2, one order): g1 - (-22/38) g2 and g2 - (-22/18) g1, summed: (1 + 22/18, 22/38 + 1)
    "pcgrad": (core.PCGrad(generator=torch.Generator().manual_seed(0)), [20 / 9, 30 / 19]),
    # CAGrad, c = 0.4, rescale by 1 + c^2: the dual optimum is w = e_1, so d = g0 + (c ||g0|| / ||g1||) g1
    # with g0 = [1, 1, 1], c ||g0|| / ||g1|| = 0.4 sqrt(3) / sqrt(18) = 0.4 / sqrt(6); divided by 1.16
    "cagrad": (core.CAGrad(), [(0.5 + 0.4 / math.sqrt(6)) / 1.16, 0.5 / 1.16]),
    # IMTL-G: equal projections onto u_1, u_2 give a proportional to (||g_2||, ||g_1||), summing to 1
    "imtl_g": (core.IMTLG(), [N2 / (N1 + N2), N1 / (N1 + N2)]),
    # uncertainty weighting at s = 0: w = exp(0) / 2; at s = log l (its optimum): w = 1 / (2 l)
    "uw": (core.UncertaintyWeighting(2), [0.5, 0.5]),
    "uw_at_optimum": (core.UncertaintyWeighting(2).to(dtype=torch.float64), [0.5, 0.25]),
    # DWA: the first two epochs weigh every task 1
    "dwa": (core.DynamicWeightAverage(2), [1.0, 1.0]),
    # FAMO with z uniform: w_t proportional to 1 / l_t, normalised: (1, 1/2) / (3/2)
    "famo": (core.FAMO(2, eps=0.0), [2 / 3, 1 / 3]),
    # GradNorm: the first step uses the initial weights w(0) = 1 (the update gives w(1))
    "gradnorm": (core.GradNorm(), [1.0, 1.0]),
    # IMTL-L at s = 0: w = e^0; at s = -log l (its optimum): w = 1 / l
    "imtl_l": (core.IMTLL(2), [1.0, 1.0]),
    "imtl_l_at_optimum": (core.IMTLL(2).to(dtype=torch.float64), [1.0, 0.5]),
    # IMTL at s = 0 is IMTL-G: w proportional to (||g_2||, ||g_1||), summing to 1
    "imtl": (core.IMTL(), [N2 / (N1 + N2), N1 / (N1 + N2)]),
    # MoDo: lambda = (1/2, 1/2) - 0.1 ((G + 0.1 I) lambda) = (1/2, 1/2) - 0.1 (-1.95, 8.05) = (0.695, -0.305),
    # whose projection onto the simplex is the vertex (1, 0)
    "modo": (core.MoDo(), [1.0, 0.0]),
    # SDMGrad: A = G / s^2, s = (N1 + N2) / 2; every inner step overshoots the edge (lr |v_1 - v_2| / 2 > 1),
    # so w alternates e_1, e_2, ... and is e_2 after 20 steps: weights (0 + 0.15, 1 + 0.15) / 1.3
    "sdmgrad": (core.SDMGrad(), [3 / 26, 23 / 26]),
    # -- preference methods (issue 18). PMTL, K = 2: u_k = (1, 1)/sqrt 2 and 5 reference vectors at
    # 0, 22.5, ..., 90 deg; l / ||l|| is at 63.4 deg, so only u_3 (67.5 deg) is closer: one active
    # constraint, w = u_3 - u_k. Stage 1 (a fresh instance): beta = 1, weights w ("mean": / K)
    "pmtl": (
        core.ParetoMTL(),
        [(math.cos(3 * math.pi / 8) - 0.5**0.5) / 2, (math.cos(math.pi / 8) - 0.5**0.5) / 2],
    ),
    # stage 2: the min-norm point of {g_1, g_2, v = w^T J} lies on the edge g_1-v,
    # lambda_1 = (v - g_1).v / ||v - g_1||^2; weights lambda_1 e_1 + (1 - lambda_1) w, / sum |.|;
    # Xi-L/ParetoMTL's get_d_paretomtl gives (1.1328526694639023, 0.8671473305360978) x 2/sum|w| ("sum")
    "pmtl_stage2": (core.ParetoMTL(init_epochs=0), [0.5664263347319513, 0.4335736652680488]),
    # EPO, r = (1, 1)/sqrt 2: mu > 1e-4, a balance step with J = J* = {2}: maximise alpha . C a subject to
    # (C alpha)_2 >= 0 and (C alpha)_1 >= (C a)_1; with alpha = (t, 1 - t) the optimum is the lower bound
    # t = (22 + (C a)_1) / 40, a = r (log(2 l_hat) - mu), l_hat = (1, 2)/3, mu = sum l_hat log(2 l_hat)
    "epo": (core.EPOSearch(), [0.31310428199510126, 0.6868957180048988]),
    # r = (1, 1): the same with a sqrt 2 times larger (EPO depends on the scale of r); dbmptr/EPOSearch's EPO_LP (cvxpy + GLPK)
    # gives [0.21497886272935965, 0.7850211372706402] and, for r = (1/2, 1/2), [0.3824894313646799, 0.6175105686353202]
    "epo_r11": (core.EPOSearch(preference=[1.0, 1.0]), [0.21497886272935984, 0.7850211372706402]),
    # Tchebycheff, p = (1/2, 1/2): max(l_1, l_2) / 2 is attained by task 2
    "tchebycheff": (core.Tchebycheff(), [0.0, 0.5]),
    # STCH, mu = 0.1: w = p softmax(p l / mu) = (1/2) (1, e^5) / (1 + e^5)
    "stch": (core.SmoothTchebycheff(), [0.5 / (1 + math.exp(5)), 0.5 / (1 + math.exp(-5))]),
    # PBI, theta = 5: u = (1, 1)/sqrt 2, v = l - (l . u) u = (-1/2, 1/2), w = u + 5 v / ||v|| = (-2, 3) sqrt 2
    "pbi": (core.PenaltyBoundaryIntersection(), [-2 * math.sqrt(2), 3 * math.sqrt(2)]),
    # GLS: S = sqrt(l_1 l_2) = sqrt 2, w_i = S / (2 l_i)
    "gls": (core.GeometricLossStrategy(), [math.sqrt(2) / 2, math.sqrt(2) / 4]),
    # -- dual-cone and gradient-alignment weightings (issue 18; tests/core/methods/test_dual_cone.py,
    # tests/core/methods/test_gradient_alignment.py derive them). UPGrad: g_i / 2 projected onto the other's
    # normal plane, summed: (1/2)(1 + 22/18, 22/38 + 1); DualProj: g_0 = (1, 1, 1) conflicts with g_1
    # (g_1 . g_0 = -2), so d = g_0 + (2/18) g_1
    "upgrad": (core.UPGrad(), [10 / 9, 15 / 19]),
    "dualproj": (core.DualProj(), [11 / 18, 1 / 2]),
    # Aligned-MTL: w = sqrt(lambda_min) G^(-1/2) 1, lambda_min = 28 - sqrt(584), with the 2 x 2 root
    # G^(-1/2) = sqrt(56 + 2 sqrt(det)) (G + sqrt(det) I)^(-1), det = 200: rows sums (60 + r, 40 + r) / det_r,
    # r = sqrt(200), det_r = (18 + r)(38 + r) - 484; TorchJD's mean is half of it
    "aligned_mtl": (
        core.AlignedMTL(),
        [
            math.sqrt(28 - math.sqrt(584))
            * math.sqrt(56 + 2 * math.sqrt(200))
            * (60 + math.sqrt(200))
            / ((18 + math.sqrt(200)) * (38 + math.sqrt(200)) - 484),
            math.sqrt(28 - math.sqrt(584))
            * math.sqrt(56 + 2 * math.sqrt(200))
            * (40 + math.sqrt(200))
            / ((18 + math.sqrt(200)) * (38 + math.sqrt(200)) - 484),
        ],
    ),
    # ConFIG: (U U^T)^-1 1 = 1 / (1 + c): g_u along u_1 + u_2, length sum_i g_i . g_u_hat: w = (N1 + N2) / 2 (1/N1, 1/N2)
    "config": (core.ConFIG(), [(N1 + N2) / (2 * N1), (N1 + N2) / (2 * N2)]),
    # GradVac, first call: the targets are 0, so each correction is PCGrad's projection (20/9, 30/19)
    "gradvac": (core.GradVac(generator=torch.Generator().manual_seed(0)), [20 / 9, 30 / 19]),
    # FairGrad, alpha = 1: Nash-MTL's G w = 1/w (same ridge); alpha = 2: (G + 1e-10 diag G) w = w^(-1/2)
    # solved by mpmath.findroot at 40 digits
    "fairgrad": (
        core.FairGrad(),
        [(1 + 1e-10 + COSINE) ** -0.5 / N1, (1 + 1e-10 + COSINE) ** -0.5 / N2],
    ),
    "fairgrad_alpha_2": (core.FairGrad(alpha=2.0), [0.471362922127597028, 0.319454228049985735]),
}
with torch.no_grad():
    GOLDEN["uw_at_optimum"][0].log_variances.copy_(torch.log(LOSSES))
    GOLDEN["imtl_l_at_optimum"][0].log_scales.copy_(-torch.log(LOSSES))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    method, expected = GOLDEN[name]
    if isinstance(method, core.GradientWeighting):
        weights = method(gramian(JACOBIAN), LOSSES)
    else:
        weights = method(LOSSES)
    torch.testing.assert_close(
        weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15
    )


def test_golden_mgda_update_is_the_min_norm_point() -> None:
    update = core.MGDA()(gramian(JACOBIAN), LOSSES) @ JACOBIAN
    torch.testing.assert_close(update, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))


def test_golden_seeded_random_weightings() -> None:
    """RLW and RGW with a seeded generator reproduce the same draws as torch's own sampler."""
    expected = torch.softmax(
        torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64), dim=-1
    )
    rlw = core.RandomLossWeighting(generator=torch.Generator().manual_seed(7))(LOSSES)
    rgw = core.RandomGradientWeighting(generator=torch.Generator().manual_seed(7))(
        gramian(JACOBIAN), LOSSES
    )
    torch.testing.assert_close(rlw, expected)
    torch.testing.assert_close(rgw, expected)
