"""Figures: label overlays, run-comparison montages, training curves, t-SNE scatter plots.

Pure functions of arrays that build matplotlib figures and write PNGs atomically. Importing this package
selects the non-interactive Agg backend, so figures render on machines without a display.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from viz.io import png_size, save_png  # noqa: E402

__all__ = ["png_size", "save_png"]
