"""Pareto stationarity and (later) continuous Pareto exploration."""

from core.pareto.stationarity import (
    MinNormSolution,
    min_norm_point,
    project_to_simplex,
    stationarity,
)

__all__ = ["MinNormSolution", "min_norm_point", "project_to_simplex", "stationarity"]
