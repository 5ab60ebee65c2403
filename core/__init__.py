"""core: task-balancing methods for multi-task learning and the engine that applies them.

Public API (everything is importable from `core` directly):
- `mtl_backward`, `StepInfo`: the engine, a drop-in for `loss.backward()`;
- gradient weightings `DiBSMTL`, `NormalizedSum`, `MGDA`, `NashMTL`, `PCGrad`, `CAGrad`, `IMTLG`,
  `RandomGradientWeighting`;
- loss weightings `LinearScalarization`, `ScaleInvariantLS`, `RandomLossWeighting`,
  `UncertaintyWeighting`, `DynamicWeightAverage`, `FAMO`;
- preference-based methods: gradient weightings `ParetoMTL`, `EPOSearch`; scalarisations
  (loss weightings) `Tchebycheff`, `PenaltyBoundaryIntersection`, `SmoothTchebycheff`,
  `GeometricLossStrategy`;
- dual-cone and gradient-alignment weightings `UPGrad`, `DualProj`, `AlignedMTL`, `ConFIG`,
  `GradVac`, `FairGrad`;
- Jacobian aggregations (an update from the per-task gradient vectors) `GradDrop`, `MoCo`,
  `DBMTL`, `ExcessMTL`, and `RotoGrad` (representation mode, with per-task rotations the model
  applies through `RotoGrad.rotate`);
- `core.dibs` (the DiBS bargaining iteration), `core.transforms`, `core.pareto`, `core.errors`;
- `make_method` / `available_methods` / `describe_method`: one vocabulary of `name:key=value`
  specs for every command line; `CLAIMS` the vocabulary of claims methods declare.
"""

from core import errors, transforms
from core.accumulation import TaskGradientAccumulator
from core.dibs import (
    constant_step,
    dibs,
    preferred_states_by_normalized_descent,
    robbins_monro_step,
)
from core.engine import StepInfo, mtl_backward
from core.jacobian import (
    batched_task_gradients,
    flatten,
    gramian,
    task_jacobians,
    unflatten,
    values_and_jacobian,
)
from core.methods import (
    CLAIMS,
    DBMTL,
    FAMO,
    IMTL,
    IMTLG,
    IMTLL,
    MGDA,
    AggregationResult,
    CAGrad,
    DiBSMTL,
    DynamicWeightAverage,
    ExcessMTL,
    GradDrop,
    GradientWeighting,
    GradNorm,
    HeadGradient,
    JacobianAggregation,
    LinearScalarization,
    LossWeighting,
    Method,
    MoCo,
    MoDo,
    NashMTL,
    NormalizedSum,
    PCGrad,
    RandomGradientWeighting,
    RandomLossWeighting,
    ScaleInvariantLS,
    SDMGrad,
    UncertaintyWeighting,
    WeightsResult,
)
from core.methods.dual_cone import DualProj, UPGrad
from core.methods.gradient_alignment import AlignedMTL, ConFIG, FairGrad, GradVac
from core.methods.preference import EPOSearch, ParetoMTL
from core.methods.rotograd import RotoGrad
from core.methods.scalarization import (
    GeometricLossStrategy,
    PenaltyBoundaryIntersection,
    SmoothTchebycheff,
    Tchebycheff,
)
from core.pareto import MinNormSolution, min_norm_point, stationarity
from core.registry import (
    available_methods,
    canonical_spec,
    describe_method,
    make_method,
    parse_method_specs,
)
from core.transforms import (
    Affine,
    Arcsinh,
    Compose,
    Exp,
    Log,
    MonotoneTransform,
    SignedPower,
    Softplus,
    parse_transform,
)

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
    "canonical_spec",
    "describe_method",
    "parse_method_specs",
    "IMTLG",
    "CAGrad",
    "PCGrad",
    "FAMO",
    "MGDA",
    "DynamicWeightAverage",
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
    "Affine",
    "Arcsinh",
    "Compose",
    "DiBSMTL",
    "Exp",
    "GradientWeighting",
    "HeadGradient",
    "LinearScalarization",
    "Log",
    "LossWeighting",
    "Method",
    "MinNormSolution",
    "MonotoneTransform",
    "NashMTL",
    "NormalizedSum",
    "RandomGradientWeighting",
    "RandomLossWeighting",
    "ScaleInvariantLS",
    "SignedPower",
    "Softplus",
    "StepInfo",
    "TaskGradientAccumulator",
    "available_methods",
    "batched_task_gradients",
    "constant_step",
    "dibs",
    "errors",
    "flatten",
    "gramian",
    "make_method",
    "min_norm_point",
    "mtl_backward",
    "parse_transform",
    "preferred_states_by_normalized_descent",
    "robbins_monro_step",
    "stationarity",
    "task_jacobians",
    "transforms",
    "unflatten",
    "values_and_jacobian",
]
