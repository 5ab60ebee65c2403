"""DiBS reaches the fair point where the normalised-gradient sum stalls (DiBS paper, Example 2).

Losses `l1 = x^2`, `l2 = (x - 1)^2` on [0, 1], preferred states `x*_1 = 0`, `x*_2 = 1`. Inside
(0, 1) the unit gradients are `u1 = +1`, `u2 = -1`, so:

- the naive normalised sum `x <- x - alpha (u1 + u2)` never moves: every point is a fixed point;
- DiBS `x <- x - alpha_k (|x - 0| u1 + |x - 1| u2) = x - alpha_k (2x - 1)` contracts to 1/2,
  where both agents are equally far from their preferred states, with the exact error
  `|x_k - 1/2| = |x_0 - 1/2| prod_{j<k} |1 - 2 alpha_j|`;
- 1-step DiBS-MTL updates by `eps (u1 + u2)`, the naive sum: it stops at once at any point of
  the Pareto set [0, 1]. It keeps DiBS's stationarity guarantee, not its choice of the fair point;
- replacing `l1` by `x^4` (a strictly increasing transform of `x^2` on [0, 1]) changes no iterate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import core
from core.dibs import StepSchedule
from proofs_numeric.claim import ClaimResult, single_thread

NAME = "dibs_fairness"
STATEMENT = (
    "On l1 = x^2, l2 = (x-1)^2 over (0,1): DiBS with Robbins-Monro steps converges to the fair point 1/2 from every "
    "start, following |x_k - 1/2| = |x_0 - 1/2| prod |1 - 2 alpha_j|; the normalised-gradient sum and 1-step "
    "DiBS-MTL do not move; the x^4 variant gives the same DiBS iterates."
)
TOLERANCE = 1e-3
"""The largest accepted final distance to 1/2."""


class LossPairs:
    """The games `l1 = x^p`, `l2 = (x - 1)^2` on [0, 1], one per power p of `powers` (2: the example,
    4: its transformed variant), stacked: `x [len(powers), ..., 1] -> [len(powers), ..., 2]`, so that
    DiBS runs on all of them as one batch.

    `values_and_jacobian` gives the gradients `p x^(p - 1)` and `2 (x - 1)` in closed form, bit for bit
    autograd's: the products that pow's backward forms (`2 x^1` is `2 x` exactly), times the exact 1
    that flows back from the selected loss."""

    def __init__(self, powers: tuple[int, ...]) -> None:
        self.powers = powers

    def __call__(self, x: Tensor, /) -> Tensor:
        return self.values_and_jacobian(x)[0]

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        x = x.detach()
        offsets = x - 1
        first = torch.stack([x[game] ** power for game, power in enumerate(self.powers)])
        slopes = torch.stack(
            [power * x[game].pow(power - 1) for game, power in enumerate(self.powers)]
        )
        return torch.cat([first, offsets**2], dim=-1), torch.cat([slopes, 2 * offsets], dim=-1)[
            ..., None
        ]


def trajectories(
    starts: Tensor, preferred: Tensor, schedule: StepSchedule, num_steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The iterates `[num_steps + 1, S, 1]` of DiBS and of the naive sum on the example, and of DiBS on
    its x^4 variant, from `starts [S, 1]`: three games of one batch."""
    games = LossPairs((2, 2, 4))
    runs = core.dibs(
        games,
        starts.expand(3, -1, -1),
        preferred,
        num_steps=num_steps,
        step_size=schedule,
        distance_weighted=torch.tensor([[True], [False], [True]]),
    )
    return runs.unbind(dim=1)


def predicted_errors(starts: torch.Tensor, schedule, num_steps: int) -> torch.Tensor:
    """`|x_0 - 1/2| prod_{j<k} |1 - 2 alpha_j|` for k = 0..num_steps, shape `[num_steps + 1, starts]`."""
    factors = torch.tensor(
        [abs(1 - 2 * schedule(j)) for j in range(num_steps)], dtype=torch.float64
    )
    products = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(factors, dim=0)])
    return products[:, None] * (starts[:, 0] - 0.5).abs()[None, :]


def one_step_dibs_mtl_updates(starts: torch.Tensor) -> torch.Tensor:
    """The shared update `sum_i w_i g_i` of 1-step DiBS-MTL at every start, from the exact gradients."""
    values, gradients = LossPairs((2,)).values_and_jacobian(starts[None])  # [1, S, K], [1, S, K, 1]
    weights = core.DiBSMTL()(core.gramian(gradients), values)
    return (weights[..., None] * gradients).sum(dim=-2)


def run(*, quick: bool) -> ClaimResult:
    num_starts, num_steps = (16, 2000) if quick else (64, 20000)
    starts = torch.linspace(0.01, 0.99, num_starts, dtype=torch.float64)[:, None]
    preferred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    schedule = core.robbins_monro_step(0.2, power=0.75)

    with single_thread():
        dibs, naive, quartic = trajectories(starts, preferred, schedule, num_steps)
    errors = (dibs[..., 0] - 0.5).abs()
    predicted = predicted_errors(starts, schedule, num_steps)

    final_error = float(errors[-1].max())
    formula_gap = float((errors - predicted).abs().max())
    naive_motion = float((naive[..., 0] - starts[:, 0]).abs().max())
    dibs_mtl_motion = float(one_step_dibs_mtl_updates(starts).abs().max())
    transform_gap = float((quartic - dibs).abs().max())
    checks = {
        "dibs_final_error": (final_error, TOLERANCE),
        "dibs_error_vs_formula": (formula_gap, 1e-12),
        "naive_sum_motion": (naive_motion, 1e-12),
        "one_step_dibs_mtl_update": (dibs_mtl_motion, 1e-15),
        "x4_transform_gap": (transform_gap, 1e-12),
    }
    passed = all(value <= bound and math.isfinite(value) for value, bound in checks.values())
    # log-spaced iterations for the figure and the JSON: every early step, fewer later
    shown = torch.unique(torch.logspace(0, math.log10(num_steps + 1), 300).long() - 1)
    return ClaimResult(
        name=NAME,
        statement=STATEMENT,
        passed=passed,
        measured=", ".join(f"{key} {value:.1e}" for key, (value, _) in checks.items()),
        bound=", ".join(f"<= {bound:.0e}" for _, bound in checks.values()),
        data={
            "num_starts": num_starts,
            "num_steps": num_steps,
            "schedule": "alpha_k = 0.2 / (k + 1)^0.75",
            "checks": {
                key: {"value": value, "bound": bound} for key, (value, bound) in checks.items()
            },
            "iterations": shown.tolist(),
            "dibs_iterates": dibs[shown, :, 0].T.tolist(),
            "naive_iterates": naive[shown, :, 0].T.tolist(),
        },
        figure=_figure(shown, dibs[shown, :, 0], naive[shown, :, 0], predicted[shown]),
    )


def _figure(shown: torch.Tensor, dibs: torch.Tensor, naive: torch.Tensor, predicted: torch.Tensor):
    from matplotlib.figure import Figure

    iterations = (shown + 1).numpy()  # iteration k + 1 on log axes
    figure = Figure(figsize=(10, 3.6))
    (left, right) = figure.subplots(1, 2)
    left.plot(iterations, dibs.numpy(), color="tab:blue", lw=0.8)
    left.plot(iterations, naive.numpy(), color="tab:gray", lw=0.8, ls="--")
    left.set(
        xlabel="iteration k + 1",
        ylabel="x_k",
        title="DiBS (solid) vs normalised sum (dashed)",
        xscale="log",
    )
    right.loglog(
        iterations, (dibs - 0.5).abs().max(dim=1).values.numpy(), label="DiBS, worst start"
    )
    right.loglog(
        iterations,
        predicted.max(dim=1).values.numpy(),
        ls=":",
        color="k",
        label="|x0 - 1/2| prod |1 - 2 alpha_j|",
    )
    right.set(xlabel="iteration k + 1", ylabel="|x_k - 1/2|", title="distance to the fair point")
    right.legend(fontsize=8)
    figure.tight_layout()
    return figure
