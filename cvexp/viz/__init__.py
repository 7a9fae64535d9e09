"""Plots that need no Trainer: confusion matrices, filter grids, feature maps, curves."""
