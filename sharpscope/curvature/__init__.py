"""The curvature engine: an objective becomes a Hessian operator; algorithms turn operators into results."""

from sharpscope.curvature.algorithms.density import slq_density
from sharpscope.curvature.algorithms.exact import exact_hessian
from sharpscope.curvature.algorithms.lanczos import lanczos
from sharpscope.curvature.algorithms.power import power_iteration
from sharpscope.curvature.algorithms.ritz import ConvergenceWarning
from sharpscope.curvature.algorithms.trace import hutchinson, hutchpp, trace_estimator
from sharpscope.curvature.layers import LayerCurvature, PerLayerCurvature, parameter_groups, per_layer_curvature
from sharpscope.curvature.operators.gauss_newton import EmpiricalFisherOperator, GGNOperator
from sharpscope.curvature.operators.hessian import HessianOperator
from sharpscope.curvature.operators.linear_operator import LambdaOperator, LinearOperator, MatrixOperator
from sharpscope.curvature.operators.objective import DropoutWarning, Objective, ReductionWarning
from sharpscope.curvature.operators.preconditioned import PreconditionedOperator, adam_preconditioner
from sharpscope.curvature.operators.probe_set import ProbeSet
from sharpscope.curvature.operators.sharded import ShardedHessianOperator, shard_per_block
from sharpscope.curvature.results import DensityResult, EigenResult, TraceResult
from sharpscope.curvature.settings import CurvatureSettings

__all__ = [
    "ConvergenceWarning", "CurvatureSettings", "DensityResult", "DropoutWarning", "EigenResult",
    "EmpiricalFisherOperator", "GGNOperator",
    "HessianOperator", "LambdaOperator", "LayerCurvature", "LinearOperator", "MatrixOperator", "Objective",
    "PerLayerCurvature", "PreconditionedOperator", "ProbeSet", "ReductionWarning", "ShardedHessianOperator", "TraceResult",
    "adam_preconditioner", "exact_hessian", "hutchinson", "hutchpp", "lanczos", "parameter_groups",
    "per_layer_curvature", "power_iteration", "shard_per_block", "slq_density", "trace_estimator",
]
