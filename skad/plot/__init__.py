"""Plots: anomaly heatmap overlays with ground-truth contours, ROC and PRO curves.

matplotlib is imported only when a function is called; without pyplot already imported,
figures are bare :class:`matplotlib.figure.Figure` objects (no display needed).
"""

from ._plots import heatmap_rgb, plot_anomaly_overlay, plot_pro, plot_roc, save_png

__all__ = ["heatmap_rgb", "plot_anomaly_overlay", "plot_pro", "plot_roc", "save_png"]
