"""Task-balancing methods: gradient weightings (on the Gramian) and loss weightings (on losses)."""

from core.methods.base import (
    CLAIMS,
    AggregationResult,
    GradientWeighting,
    HeadGradient,
    JacobianAggregation,
    LossWeighting,
    Method,
    WeightsResult,
)
from core.methods.dibs_mtl import DiBSMTL, NormalizedSum
from core.methods.dual_cone import DualProj, UPGrad
from core.methods.gradient_alignment import AlignedMTL, ConFIG, FairGrad, GradVac
from core.methods.gradient_vectors import DBMTL, ExcessMTL, GradDrop, MoCo
from core.methods.learned_weights import IMTL, IMTLL, GradNorm
from core.methods.linear import LinearScalarization, ScaleInvariantLS
from core.methods.loss_balancing import FAMO, DynamicWeightAverage, UncertaintyWeighting
from core.methods.mgda import MGDA
from core.methods.nash_mtl import NashMTL
from core.methods.preference import EPOSearch, ParetoMTL
from core.methods.projection import IMTLG, CAGrad, PCGrad
from core.methods.random_weighting import RandomGradientWeighting, RandomLossWeighting
from core.methods.rotograd import RotoGrad
from core.methods.scalarization import (
    GeometricLossStrategy,
    PenaltyBoundaryIntersection,
    SmoothTchebycheff,
    Tchebycheff,
)
from core.methods.stochastic_weights import MoDo, SDMGrad

__all__ = [
    "UPGrad",
    "DualProj",
    "AlignedMTL",
    "ConFIG",
    "GradVac",
    "FairGrad",
    "AggregationResult",
    "JacobianAggregation",
    "GradDrop",
    "MoCo",
    "DBMTL",
    "ExcessMTL",
    "RotoGrad",
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
    "GradNorm",
    "IMTLL",
    "IMTL",
    "MoDo",
    "SDMGrad",
    "ParetoMTL",
    "EPOSearch",
    "Tchebycheff",
    "PenaltyBoundaryIntersection",
    "SmoothTchebycheff",
    "GeometricLossStrategy",
]
