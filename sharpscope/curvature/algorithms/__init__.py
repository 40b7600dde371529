"""Curvature algorithms: functions of a :class:`~sharpscope.curvature.operators.linear_operator.LinearOperator`.

Lanczos (single-vector, block and thick-restarted), power iteration, stochastic trace estimators,
stochastic Lanczos quadrature and dense Hessians. They see an operator only through ``matmat``,
its ``dim``, ``dtype`` and ``device``, so every algorithm runs on every operator.
"""
