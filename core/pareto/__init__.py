"""Pareto stationarity and continuous Pareto exploration (Ma, Du & Matusik 2020)."""

from core.pareto.explore import EvaluationCounts, Expansion, expand, mgda_correct
from core.pareto.hvp import FunctionalHessianVectorProduct, HessianVectorProduct
from core.pareto.local_set import LocalParetoSet, simplex_tangent_basis
from core.pareto.merge import MergedFront, merge_fronts
from core.pareto.minres import MinresResult, minres
from core.pareto.stationarity import (
    MinNormSolution,
    min_norm_point,
    project_to_simplex,
    stationarity,
)
from core.pareto.tangent import TangentDirections, loss_jacobian, tangent_directions
from core.pareto.walk import WalkStep, tangent_walk

__all__ = [
    "FunctionalHessianVectorProduct",
    "WalkStep",
    "tangent_walk",
    "LocalParetoSet",
    "simplex_tangent_basis",
    "MergedFront",
    "merge_fronts",
    "EvaluationCounts",
    "Expansion",
    "expand",
    "mgda_correct",
    "HessianVectorProduct",
    "MinNormSolution",
    "MinresResult",
    "min_norm_point",
    "minres",
    "project_to_simplex",
    "stationarity",
    "TangentDirections",
    "loss_jacobian",
    "tangent_directions",
]
