"""sharpscope: sharpness of neural-network loss landscapes.

An objective (model + loss + fixed probe set) becomes a Hessian operator; algorithms turn the
operator into results that carry their uncertainty and cost:

    >>> import torch
    >>> from sharpscope import Objective, HessianOperator, lanczos, hutchpp
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> H = HessianOperator(Objective(model, torch.nn.CrossEntropyLoss(), (x, y), bn="eval"))
    >>> top = lanczos(H, k=2, tol=1e-3, seed=0)    # .eigenvalues .error_bounds .residuals .hvps .seconds
    >>> bool(top.converged), top.eigenvalues.shape
    (True, torch.Size([2]))
    >>> tr = hutchpp(H, num_matvecs=30, seed=0)    # .estimate .stderr
    >>> tr.stderr >= 0
    True
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
