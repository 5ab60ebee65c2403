"""Task-balancing methods: gradient weightings (on the Gramian) and loss weightings (on losses)."""

from core.methods.base import (
    CLAIMS,
    GradientWeighting,
    HeadGradient,
    LossWeighting,
    Method,
    WeightsResult,
)
from core.methods.dibs_mtl import DiBSMTL, NormalizedSum
from core.methods.linear import LinearScalarization, ScaleInvariantLS
from core.methods.loss_balancing import FAMO, DynamicWeightAverage, UncertaintyWeighting
from core.methods.mgda import MGDA
from core.methods.nash_mtl import NashMTL
from core.methods.projection import IMTLG, CAGrad, PCGrad
from core.methods.random_weighting import RandomGradientWeighting, RandomLossWeighting

__all__ = [
    "CLAIMS",
    "WeightsResult",
    "IMTLG",
    "CAGrad",
    "PCGrad",
    "FAMO",
    "MGDA",
    "DiBSMTL",
    "DynamicWeightAverage",
    "GradientWeighting",
    "HeadGradient",
    "LinearScalarization",
    "LossWeighting",
    "Method",
    "NashMTL",
    "NormalizedSum",
    "RandomGradientWeighting",
    "RandomLossWeighting",
    "ScaleInvariantLS",
    "UncertaintyWeighting",
]
