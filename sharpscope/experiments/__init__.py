"""Experiment recipes (single runs, :mod:`~sharpscope.experiments.recipes`) and studies (ordered,
dependent runs with their claims checked, :mod:`~sharpscope.experiments.studies`)."""

from sharpscope.experiments.recipes import (
    RECIPES,
    SCALES,
    demo,
    eos_adam,
    eos_ce,
    eos_gd,
    eos_momentum,
    get_recipe,
    landscape_resnet18,
    parse_overrides,
    sam_edge,
    sam_edge_cnn,
    sam_flatness,
)

__all__ = ["RECIPES", "SCALES", "demo", "eos_adam", "eos_ce", "eos_gd", "eos_momentum", "get_recipe",
           "landscape_resnet18", "parse_overrides",
           "sam_edge", "sam_edge_cnn", "sam_flatness"]
