"""Curvature operators: an objective (model, loss, probe set) and the matrix-free maps built from it.

:class:`~sharpscope.curvature.operators.linear_operator.LinearOperator` is the interface every
algorithm consumes; the Hessian, the generalised Gauss–Newton matrix, the empirical Fisher and
preconditioned operators implement it. Nothing here imports an algorithm.
"""
