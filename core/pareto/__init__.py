"""Pareto stationarity and continuous Pareto exploration (Ma, Du & Matusik 2020)."""

from core.pareto.hvp import HessianVectorProduct
from core.pareto.minres import MinresResult, minres
from core.pareto.stationarity import (
    MinNormSolution,
    min_norm_point,
    project_to_simplex,
    stationarity,
)

__all__ = ["HessianVectorProduct", "MinNormSolution", "MinresResult", "min_norm_point", "minres", "project_to_simplex", "stationarity"]
