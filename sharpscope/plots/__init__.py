"""Figures from run directories and curvature results (matplotlib, no pyplot state).

Every figure function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it
as PNG and PDF with the plotted data (and the command that made it) beside it as JSON.
"""
