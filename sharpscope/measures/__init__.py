"""Sharpness measures of generalisation studies: worst-case and average-case (ρ-, adaptive, m-) sharpness,
Keskar et al.'s ε-sharpness, PAC-Bayes flatness, and the Jacobian and Gauss–Newton traces.

Each takes a :class:`~sharpscope.curvature.Objective` and :class:`SharpnessSettings` and returns a
:class:`SharpnessResult` with its uncertainty, its cost and the settings used (``docs/measures.md``).
"""

from sharpscope.measures.registry import MEASURES, TAKES_M, check_measure_names, measure
from sharpscope.measures.result import SharpnessResult
from sharpscope.measures.settings import SharpnessSettings

__all__ = ["MEASURES", "TAKES_M", "SharpnessResult", "SharpnessSettings", "check_measure_names", "measure"]
