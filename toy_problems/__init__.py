"""Multi-task problems with known Pareto sets and fronts, batched in torch.

Each problem maps `x [..., n_var]` to the task losses `[..., n_obj]`, treating leading dimensions
as independent batch rows, and declares `n_var`, `n_obj`, `bounds` and default starting points
(see `toy_problems.base.Problem`).
"""

from toy_problems.base import Problem
from toy_problems.families import ConvexQuadratic, RandomNonconvex
from toy_problems.two_task_toy import TwoTaskToy

__all__ = ["ConvexQuadratic", "Problem", "RandomNonconvex", "TwoTaskToy"]
