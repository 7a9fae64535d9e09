"""Plots that need no Trainer: confusion matrices, filter grids, feature maps, attention, curves.

Figures are drawn off-screen (the Agg backend), so they work on machines without a display.
"""

import matplotlib

matplotlib.use("Agg")
