"""The pixels of a figure, to tell whether two drawings are the same."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def pixels(fig: Figure) -> np.ndarray:
    """``fig`` rendered by Agg at its own size and dpi, as an RGBA array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()
