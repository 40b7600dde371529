"""The curvature engine: an objective becomes a Hessian operator; algorithms turn operators into results."""

from sharpscope.curvature.density import slq_density
from sharpscope.curvature.exact import exact_hessian
from sharpscope.curvature.gauss_newton import EmpiricalFisherOperator, GGNOperator
from sharpscope.curvature.hessian import HessianOperator
from sharpscope.curvature.lanczos import ConvergenceWarning, lanczos
from sharpscope.curvature.layers import LayerCurvature, PerLayerCurvature, parameter_groups, per_layer_curvature
from sharpscope.curvature.linear_operator import LambdaOperator, LinearOperator, MatrixOperator
from sharpscope.curvature.objective import DropoutWarning, Objective, ReductionWarning
from sharpscope.curvature.power import power_iteration
from sharpscope.curvature.preconditioned import PreconditionedOperator, adam_preconditioner
from sharpscope.curvature.results import DensityResult, EigenResult, TraceResult
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.curvature.trace import hutchinson, hutchpp, trace_estimator

__all__ = [
    "ConvergenceWarning", "CurvatureSettings", "DensityResult", "DropoutWarning", "EigenResult",
    "EmpiricalFisherOperator", "GGNOperator",
    "HessianOperator", "LambdaOperator", "LayerCurvature", "LinearOperator", "MatrixOperator", "Objective",
    "PerLayerCurvature", "PreconditionedOperator", "ReductionWarning", "TraceResult", "adam_preconditioner",
    "exact_hessian", "hutchinson", "hutchpp", "lanczos", "parameter_groups", "per_layer_curvature",
    "power_iteration", "slq_density", "trace_estimator",
]
