# %% [markdown]
# # Continuous Pareto exploration: the ZDT2 variant and MultiMNIST
#
# Ma, Du & Matusik (ICML 2020) explore a Pareto set from one Pareto-stationary point `x*` instead
# of training one model per trade-off. Differentiating the stationarity condition
# `sum_i alpha_i grad f_i(x) = 0` along a curve of stationary points gives the tangent system
#
#     H v = G^T beta,    H = sum_i alpha_i grad^2 f_i(x*),  G the Jacobian,
#
# solved with MINRES on Hessian-vector products (`core.pareto.tangent_directions`), never forming
# `H`. Two uses of it:
#
# 1. On the ZDT2 variant (R^3, analytic Pareto set: the cylinder `x2^2 + x3^2 = pi`, front
#    `f2 = 1 - f1^2`), the predictor-corrector `core.pareto.expand`: step along tangents, correct
#    back to stationarity with MGDA (`mgda_correct`), repeat breadth-first.
# 2. On MultiMNIST, the network tangent walk (`core.pareto.tangent_walk`) from weighted-sum
#    models, along `beta = e1` and `beta = e2`, scored by the hypervolume of the test errors.
#
# The ZDT2 part reads the numeric check `python -m proofs_numeric` runs for this claim
# (`proofs_numeric.tangent_accuracy`) from the result store, or runs and stores it; the MultiMNIST
# part runs `python -m benchmarks pareto_multimnist` on the same store, so finished runs are read,
# not retrained.

# %%
import json
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.experiments import pareto_multimnist
from notebooks.support import QUICK, RESULTS, experiment, markdown, pick, report_body, save
from notebooks.support import claim as stored_claim
from proofs_numeric import tangent_accuracy
from toy_problems import ConvexQuadratic
from toy_problems.zdt import ZDT2Variant

F64 = torch.float64
claim = stored_claim(tangent_accuracy)
print(
    f"{'quick' if QUICK else 'full'} mode; claim {claim.name}: {'passed' if claim.passed else 'FAILED'}"
)
print(f"measured: {claim.measured}\nbound:    {claim.bound}")

# %% [markdown]
# ## Tangents vs gradients
#
# From a Pareto-stationary point, step a length `s` along the unit tangent (random `beta`) and
# along task 0's normalised gradient, and measure how far the step leaves the Pareto set.
#
# - Left, the ZDT2 variant, from the claim's regular Pareto points (`regular_pareto_point`, away
#   from the ends of the front): the distance to the Pareto cylinder, `|sqrt(x2^2 + x3^2) - sqrt(pi)|`.
# - Right, random convex quadratics (K = 3, n = 6, condition 5, the claim's problems) at the
#   equal-weight Pareto point: the stationarity residual `min ||sum_i alpha_i g_i||`, whose
#   log-log slopes the claim fits (tangent >= 1.8, gradient <= 1.3).

# %%
steps = torch.logspace(
    -3, -0.5, 11, dtype=F64
)  # below 1e-3 the min-norm solver's precision (~1e-8) shows
seeds = range(pick(quick=3, full=10))


def beta(seed: int, num_tasks: int) -> torch.Tensor:
    return torch.randn(num_tasks, generator=torch.Generator().manual_seed(seed), dtype=F64)


zdt2 = ZDT2Variant()
zdt2_curves = [
    tangent_accuracy.residual_curves(
        zdt2, tangent_accuracy.regular_pareto_point(s), steps, beta(s, 2)
    )
    for s in seeds
]
quadratics = [ConvexQuadratic.random(6, 3, seed=s, condition=5.0) for s in seeds]
equal = torch.full((3,), 1 / 3, dtype=F64)
quadratic_curves = [
    tangent_accuracy.residual_curves(q, q.pareto_point(equal), steps, beta(s, 3))
    for s, q in zip(seeds, quadratics, strict=True)
]

# %%
FLOOR = 1e-17  # exact zeros drawn here, below the float64 rounding band
STYLE = {
    "tangent": ("tab:blue", "o", "tangent (H v = G^T beta)"),
    "gradient": ("tab:red", "s", "task 0's gradient"),
}


def cylinder_distance(points: torch.Tensor) -> np.ndarray:
    return (points[:, 1:].norm(dim=1) - math.sqrt(math.pi)).abs().numpy()


panels = {
    "ZDT2 variant: distance to the Pareto set": {
        d: [cylinder_distance(c[f"{d}_points"]) for c in zdt2_curves] for d in STYLE
    },
    "convex quadratics (K = 3, n = 6): stationarity residual": {
        d: [c[d].numpy() for c in quadratic_curves] for d in STYLE
    },
}
figure = Figure(figsize=(11, 4.3), layout="constrained")
for ax, (title, curves) in zip(figure.subplots(1, 2), panels.items(), strict=True):
    for direction, values in curves.items():
        colour, marker, label = STYLE[direction]
        above = [v for v in values if (v > 1e-14).all()]
        slope = (
            np.median([np.polyfit(np.log10(steps.numpy()), np.log10(v), 1)[0] for v in above])
            if above
            else None
        )
        label += (
            f": slope {slope:.2f}"
            if slope is not None
            else f": on the set (max {max(v.max() for v in values):.0e})"
        )
        for index, value in enumerate(values):
            ax.loglog(
                steps.numpy(),
                np.clip(value, FLOOR, None),
                color=colour,
                marker=marker,
                markersize=3,
                linewidth=1,
                alpha=0.6,
                label=label if index == 0 else None,
            )
    if min(v.min() for values in curves.values() for v in values) < 1e-14:
        ax.axhspan(
            FLOOR / 3,
            1e-15,
            color="grey",
            alpha=0.12,
            label="float64 rounding (zeros at the bottom)",
        )
    ax.set_xlabel("step length s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
figure.suptitle(
    f"A step along a tangent vs along a gradient, {len(seeds)} Pareto points each (median fitted slopes)",
    fontsize=10,
)
save(figure, "zdt2_tangents")

# %% [markdown]
# What to look for: along a gradient the departure grows like `s` (slope 1) on both problems. On
# the convex quadratics the tangent's residual grows like `s^2` (slope 2): the tangent is exact to
# first order and the curvature of the Pareto set is what is left. On the ZDT2 variant the tangent
# MINRES finds is the `x1` axis, and the Pareto cylinder contains every line parallel to it, so a
# tangent step stays on the set exactly (distance at float64 rounding for every `s`), not only to
# first order. The claim's own slope fits over all its seeds:

# %%
for key in ("tangent", "values", "gradient"):
    values = [s[key] for s in claim.data["slopes"]]
    print(
        f"{key:>8}: slopes {min(values):.2f} .. {max(values):.2f} over {len(values)} random quadratics"
    )

# %% [markdown]
# ## The explored front on the ZDT2 variant
#
# The claim's expansion (`core.pareto.expand` with the paper's toy settings: 2 directions per
# point, 10 new points, step 0.1, MINRES maxiter 2) from each regular start, once with the tangent
# predictor and once with the baseline of the same notebook, a descent step along perturbed MGDA
# weights. Both use the same MGDA corrector; the legend counts the corrector's Jacobian
# evaluations (the expensive part) summed over the starts.

# %%
expansions = claim.data["expansions"]
front = np.linspace(0, 1, 200)
figure = Figure(figsize=(11, 4.5), layout="constrained")
for ax, predictor in zip(figure.subplots(1, 2, sharey=True), ("tangent", "weights"), strict=True):
    ax.plot(
        front,
        1 - front**2,
        color="black",
        linewidth=1,
        label="analytic front f2 = 1 - f1^2",
        zorder=1,
    )
    for index, expansion in enumerate(expansions):
        values = np.array(expansion[f"{predictor}_points"])
        colour = f"C{index % 10}"
        ax.scatter(values[1:, 0], values[1:, 1], s=18, color=colour, alpha=0.7, zorder=2)
        ax.scatter(*values[0], marker="*", s=180, color=colour, edgecolor="black", zorder=3)
    jacobians = sum(e[f"{predictor}_corrector_jacobians"] for e in expansions)
    worst = max(e[f"{predictor}_front_error"] for e in expansions)
    ax.scatter(
        [],
        [],
        marker="*",
        s=120,
        color="white",
        edgecolor="black",
        label="start (one colour per start)",
    )
    ax.scatter(
        [],
        [],
        s=18,
        color="grey",
        label=f"explored: {int(jacobians)} corrector Jacobians, max |f2 - (1 - f1^2)| {worst:.1g}",
    )
    ax.set_title(f"{predictor} predictor, {len(expansions)} starts", fontsize=10)
    ax.set_xlabel("f0")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
figure.axes[0].set_ylabel("f1")
save(figure, "zdt2_front")

# %% [markdown]
# What to look for: the tangent predictor's points lie on the analytic front around their start
# (front error 0 in float64), and the corrector needs one Jacobian per point, the check that the
# prediction is already stationary. The perturbed-weight predictor steps off the set, and the
# corrector then needs many Jacobians per point and often stops at stationary points off the
# front: at `f1 = 0` the gradient of `f1` vanishes, so every point there is Pareto-stationary
# whatever its `f2`. Per start:

# %%
for index, e in enumerate(expansions):
    ratio = e["weights_corrector_jacobians"] / e["tangent_corrector_jacobians"]
    print(
        f"start {index}: corrector Jacobians tangent {e['tangent_corrector_jacobians']:.0f}, weights {e['weights_corrector_jacobians']:.0f} "
        f"({ratio:.1f}x); front error tangent {e['tangent_front_error']:.0e}, weights {e['weights_front_error']:.2g}"
    )
print(f"median saving {claim.data['corrector_saving_median']:.1f}x")

# %% [markdown]
# ## MultiMNIST: tangent walks from weighted-sum models
#
# Five weighted-sum LeNets (preferences `w = k/6`, 30 epochs of SGD on the 4,000 embedded training
# pairs), then from each a tangent walk along `e1` and along `e2` (10 steps of 0.1, damping 0.1,
# MINRES 50 on a 2,048-sample HVP batch). Quick mode trains 2 starts for 1 epoch on 20 batches
# and takes 2 steps per direction: the models are near chance level, so it shows the mechanics,
# not the paper's front.

# %%
config = pareto_multimnist.Config(
    **pick(quick={"quick": True, "epochs": 1, "starts": 2, "steps": 2, "threads": 1}, full={}),
    progress=False,
)
records = experiment(pareto_multimnist, config).records
folder = pareto_multimnist.report_folder(RESULTS, quick=config.quick)
report = json.loads((folder / "pareto_multimnist.json").read_text())
seed, data = next(iter(report["seeds"].items()))
print(
    f"{len(records)} runs ({sum(r['spec']['method'] == 'ls' for r in records)} starts); report in {folder}"
)

# %% [markdown]
# The report's hypervolume and cost tables (`summary.md` in the report folder also lists every
# point). The hypervolume is in test top-1 error space (%^2), with the reference point at each
# task's largest error plus 1 point; the cost compares the wall clock of a walk step with that of
# training one more weighted-sum model, both measured by the stored runs.

# %%
summary = report_body(folder / "summary.md")
markdown(summary.split("\n| start | weights |")[0])

# %% [markdown]
# ## The explored MultiMNIST front
#
# Left, test errors: every start (star) and walk point (circles along `e1`, squares along `e2`),
# one colour per start, black edges on the non-dominated points; the shaded regions are what the
# hypervolume measures, grey for the starts alone and green for what the walk points add. Right,
# the same points in training loss, the space the walk steps in.


# %%
def dominated(ax, points: np.ndarray, reference: list[float], **style) -> None:
    """Shade the region `points` dominate up to `reference` (minimisation)."""
    order = points[np.argsort(points[:, 0])]
    xs = np.append(order[:, 0], reference[0])
    ys = np.minimum.accumulate(order[:, 1])
    ax.fill_between(xs, np.append(ys, ys[-1]), reference[1], step="post", linewidth=0, **style)


points, hv = data["points"], data["hypervolume"]
colours = [f"C{i}" for i in range(len({p["start"] for p in points}))]
figure = Figure(figsize=(12, 5), layout="constrained")
errors_ax, loss_ax = figure.subplots(1, 2)
errors = np.array([p["test_error"] for p in points])
is_start = np.array([p["step"] == 0 for p in points])
dominated(
    errors_ax,
    errors,
    hv["reference"],
    color="#b7dfb7",
    label=f"starts + walks: HV {hv['starts_and_walk']:.1f}",
)
dominated(
    errors_ax,
    errors[is_start],
    hv["reference"],
    color="#d4d4d4",
    label=f"starts alone: HV {hv['starts']:.1f}",
)
starts = [p for p in points if p["step"] == 0]
paths = {
    (s["start"], d): [s]
    + [p for p in points if p["start"] == s["start"] and p["direction"] == d and p["step"] > 0]
    for s in starts
    for d in (1, 2)
}
for ax, key in ((errors_ax, "test_error"), (loss_ax, "train_loss")):
    for (start, direction), path in paths.items():
        ax.plot(
            *np.array([p[key] for p in path]).T,
            color=colours[start],
            linewidth=0.8,
            alpha=0.6,
            linestyle="-" if direction == 1 else "--",
            zorder=1,
        )
    for p in points:
        at_start = p["step"] == 0
        marker = "*" if at_start else "o" if p["direction"] == 1 else "s"
        ax.scatter(
            *p[key],
            marker=marker,
            s=200 if at_start else 22,
            color=colours[p["start"]],
            edgecolor="black" if at_start or p["non_dominated"] else "none",
            linewidth=1 if at_start else 0.6,
            zorder=3 if at_start else 2,
        )
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
for p in starts:
    loss_ax.scatter(
        [],
        [],
        marker="*",
        s=120,
        color=colours[p["start"]],
        edgecolor="black",
        label=f"start w = ({p['weights'][0]:.2f}, {p['weights'][1]:.2f})",
    )
loss_ax.plot([], [], marker="o", markersize=4, color="grey", label="walk along e1 (favours left)")
loss_ax.plot(
    [],
    [],
    marker="s",
    markersize=4,
    color="grey",
    linestyle="--",
    label="walk along e2 (favours right)",
)
errors_ax.scatter(
    [],
    [],
    s=22,
    color="white",
    edgecolor="black",
    label=f"non-dominated ({int(data['front']['non_dominated_points'])} of {len(points)})",
)
errors_ax.set(
    xlabel="left (upper-left digit) test error (%)",
    ylabel="right (lower-right digit) test error (%)",
    xlim=(errors[:, 0].min() - 0.5, hv["reference"][0]),
    ylim=(errors[:, 1].min() - 0.5, hv["reference"][1]),
)
errors_ax.set_title(
    f"test top-1 error, seed {seed}: hypervolume {hv['starts']:.1f} -> {hv['starts_and_walk']:.1f} ({hv['gain_percent']:+.0f}%)",
    fontsize=10,
)
loss_ax.set(xlabel="left training loss", ylabel="right training loss")
loss_ax.set_title("training loss (full pass)", fontsize=10)
errors_ax.legend(fontsize=8, loc="upper right")
loss_ax.legend(fontsize=8, loc="upper right")
save(figure, "pareto_multimnist_front")

# %% [markdown]
# What to look for: each walk lowers the training loss of the task its `beta` favours while the
# other task's loss barely moves, so the walks fan out from every start along the front; in test
# error the walk points fill the gaps between the starts and the hypervolume grows. Cost: in the
# full run (5 starts, 30 epochs, one thread) a walk step gave fewer points per minute than training
# one more weighted-sum model (about 0.5x): on the 4,000 embedded training pairs a model trains in
# about 20 s, and a walk step spends nearly all its time in the HVP graph and MINRES. The numbers
# (quick mode: near-chance models, only the mechanics):

# %%
cost = data["cost"]
print(
    f"hypervolume: starts {hv['starts']:.2f}, starts + walks {hv['starts_and_walk']:.2f} ({hv['gain_percent']:+.1f}%), reference {hv['reference']}"
)
print(
    f"points: {len(points)}, non-dominated {data['front']['non_dominated_points']}, of them starts {sum(p['non_dominated'] for p in points if p['step'] == 0)}"
)
print(
    f"cost: walk {cost['walk_points_per_minute']:.2f} points/min vs weighted sum {cost['weighted_sum_points_per_minute']:.2f} models/min: "
    f"{cost['ratio_walk_to_weighted_sum']:.2f}x (least-disturbed runs {cost['ratio_fastest']:.2f}x)"
)
