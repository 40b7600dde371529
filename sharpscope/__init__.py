"""sharpscope: sharpness of neural-network loss landscapes.

An objective (model + loss + fixed probe set) becomes a Hessian operator; algorithms turn the
operator into results that carry their uncertainty and cost::

    from sharpscope import Objective, HessianOperator, lanczos, hutchpp
    H = HessianOperator(Objective(model, torch.nn.CrossEntropyLoss(), (x, y), bn="eval"))
    top = lanczos(H, k=5, tol=1e-3, seed=0)        # .eigenvalues .error_bounds .residuals .hvps .seconds
    tr = hutchpp(H, num_matvecs=99, seed=0)        # .estimate .stderr
"""

from sharpscope.curvature import (
    ConvergenceWarning,
    DensityResult,
    EigenResult,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    LambdaOperator,
    LinearOperator,
    MatrixOperator,
    Objective,
    PreconditionedOperator,
    TraceResult,
    adam_preconditioner,
    exact_hessian,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
)
from sharpscope.errors import CheckpointError, ConfigError, DataError, ObjectiveError, SharpscopeError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "ConvergenceWarning", "DataError", "DensityResult", "EigenResult",
    "EmpiricalFisherOperator", "GGNOperator", "HessianOperator", "LambdaOperator", "LinearOperator", "MatrixOperator",
    "Objective", "ObjectiveError", "PreconditionedOperator", "SharpscopeError", "TraceResult", "adam_preconditioner", "exact_hessian",
    "hutchinson", "hutchpp", "lanczos", "power_iteration", "slq_density",
]
