"""Multi-task problems with known Pareto sets and fronts, batched in torch.

Each problem maps `x [..., n_var]` to the task losses `[..., n_obj]`, treating leading dimensions
as independent batch rows, and declares `n_var`, `n_obj`, `bounds` and default starting points
(see `toy_problems.base.Problem`).
"""

from toy_problems.bargaining import Bargaining1D
from toy_problems.base import Problem
from toy_problems.families import ConvexQuadratic, RandomNonconvex
from toy_problems.fonseca_fleming import FonsecaFleming
from toy_problems.two_task_toy import DIBS_MTL_STARTS, TwoTaskToy
from toy_problems.zdt import ZDT, ZDT1, ZDT2, ZDT3, ZDT3_PARETO_INTERVALS, ZDT2Variant

__all__ = [
    "DIBS_MTL_STARTS",
    "ZDT",
    "ZDT1",
    "ZDT2",
    "ZDT3",
    "ZDT3_PARETO_INTERVALS",
    "Bargaining1D",
    "ConvexQuadratic",
    "FonsecaFleming",
    "Problem",
    "RandomNonconvex",
    "TwoTaskToy",
    "ZDT2Variant",
]
