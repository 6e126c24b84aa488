"""Heatmap overlays and ROC / PRO curves; matplotlib is imported inside the functions."""

from __future__ import annotations

import os
import sys

import numpy as np

from ..metrics._pro import pro_curve, pro_score
from ..metrics._ranking import roc_curve

__all__ = ["plot_anomaly_overlay", "plot_pro", "plot_roc", "save_png"]


def _new_axes(figsize):
    """A fresh figure's axes.

    If the user already imported pyplot (interactive work, notebooks), use it so the
    figure shows up as usual; otherwise build a bare :class:`matplotlib.figure.Figure`,
    which needs no display and does not touch the global backend (headless servers, CI).
    """
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig.add_subplot(1, 1, 1)


def _as_display_image(image):
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ValueError(f"image: expected (H, W, 3) or (H, W); got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float64)
    if img.min() < 0 or img.max() > 1:
        raise ValueError("image: float images must lie in [0, 1] (or pass uint8 0-255)")
    return img


def heatmap_rgb(image, anomaly_map, *, vmin=None, vmax=None, alpha=0.5, cmap="jet"):
    """The image blended with its colour-mapped anomaly map, as a uint8 RGB array.

    The array form of :func:`plot_anomaly_overlay` (no figure): what ``skad predict``
    writes as PNG files. Share ``vmin`` / ``vmax`` across images to compare them.

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1.
    anomaly_map : array-like of shape (H, W)
        Higher = more anomalous.
    vmin, vmax : float, optional
        Colour scale (defaults: this map's range).
    alpha : float, default=0.5
        Weight of the heatmap.
    cmap : str, default="jet"

    Returns
    -------
    rgb : ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.plot import heatmap_rgb
    >>> amap = np.zeros((4, 4)); amap[0, 0] = 1.0
    >>> rgb = heatmap_rgb(np.zeros((4, 4, 3), np.uint8), amap)
    >>> rgb.shape, rgb.dtype.name, bool(rgb[0, 0, 0] > rgb[1, 1, 0])
    ((4, 4, 3), 'uint8', True)
    """
    from matplotlib import colormaps

    img = _as_display_image(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if amap.shape != img.shape[:2]:
        raise ValueError(
            f"anomaly_map: shape {amap.shape} differs from the image's {img.shape[:2]}"
        )
    vmin = float(amap.min()) if vmin is None else float(vmin)
    vmax = float(amap.max()) if vmax is None else float(vmax)
    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = colormaps[cmap](norm)[..., :3]
    return (np.clip((1 - alpha) * img + alpha * heat, 0, 1) * 255).round().astype(np.uint8)


def plot_anomaly_overlay(
    image,
    anomaly_map,
    mask=None,
    *,
    ax=None,
    alpha=0.5,
    cmap="jet",
    vmin=None,
    vmax=None,
    contour_color="lime",
    title=None,
    colorbar=False,
):
    """Show an anomaly map as a heatmap over its image, with the ground-truth contour.

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1.
    anomaly_map : array-like of shape (H, W)
        Higher = more anomalous (e.g. ``detector.anomaly_map(X)[i]``).
    mask : array-like of shape (H, W), optional
        Ground truth ({0, 1}, bool or 0/255), drawn as a contour.
    ax : matplotlib Axes, optional
        Where to draw; a new figure otherwise.
    alpha : float, default=0.5
        Opacity of the heatmap.
    cmap : str, default="jet"
    vmin, vmax : float, optional
        Colour scale of the map; share them across images to compare maps (defaults:
        this map's range).
    contour_color : str, default="lime"
    title : str, optional
    colorbar : bool, default=False

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skad.plot import plot_anomaly_overlay
    >>> img = np.zeros((32, 32, 3), np.uint8)
    >>> amap = np.zeros((32, 32)); amap[8:16, 8:16] = 1
    >>> ax = plot_anomaly_overlay(img, amap, mask=amap > 0)
    >>> len(ax.images)
    2
    """
    img = _as_display_image(image)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if amap.shape != img.shape[:2]:
        raise ValueError(
            f"anomaly_map: shape {amap.shape} differs from the image's {img.shape[:2]}; "
            "compute it with anomaly_map(X, output_size=image size)"
        )
    if ax is None:
        ax = _new_axes((4, 4))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    im = ax.imshow(amap, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != amap.shape:
            raise ValueError(f"mask: shape {m.shape} differs from the map's {amap.shape}")
        if np.any(m):
            ax.contour((m > 0).astype(float), levels=[0.5], colors=[contour_color], linewidths=1.2)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def plot_roc(y_true, anomaly_scores, *, ax=None, label=None, **line_kwargs):
    """Plot the ROC curve (image level for scores ``(n,)``, pixel level for maps).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
        Labels (1 = anomalous) or masks.
    anomaly_scores : array-like of shape (n,) or (n, H, W)
        Higher = more anomalous.
    ax : matplotlib Axes, optional
    label : str, optional
        Legend label; the AUROC is appended.
    **line_kwargs
        Passed to ``ax.plot``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> from skad.plot import plot_roc
    >>> ax = plot_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], label="toy")
    >>> ax.get_legend_handles_labels()[1]
    ['toy (AUROC 0.750)']
    """
    fpr, tpr, _ = roc_curve(y_true, anomaly_scores)
    auc = float(np.trapezoid(tpr, fpr))
    if ax is None:
        ax = _new_axes((4, 4))
    text = f"AUROC {auc:.3f}"
    ax.plot(fpr, tpr, label=f"{label} ({text})" if label else text, **line_kwargs)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    return ax


def plot_pro(masks, maps, *, max_fpr=0.3, ax=None, label=None, **line_kwargs):
    """Plot the per-region-overlap curve up to ``max_fpr``, with its normalised area.

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
    maps : array-like of shape (n, H, W)
    max_fpr : float, default=0.3
        Right end of the plotted FPR range (and of the area in the legend).
    ax : matplotlib Axes, optional
    label : str, optional
    **line_kwargs
        Passed to ``ax.plot``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skad.plot import plot_pro
    >>> masks = np.zeros((2, 16, 16), int); masks[0, 4:8, 4:8] = 1
    >>> maps = masks + np.random.default_rng(0).random((2, 16, 16))
    >>> ax = plot_pro(masks, maps)
    >>> [float(v) for v in ax.get_xlim()]
    [0.0, 0.3]
    """
    fpr, pro, _ = pro_curve(masks, maps)
    score = pro_score(masks, maps, max_fpr=max_fpr)
    if ax is None:
        ax = _new_axes((4, 4))
    k = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[: k + 1], pro[: k + 1]
    text = f"PRO@{max_fpr:g} {score:.3f}"
    ax.plot(x, y, label=f"{label} ({text})" if label else text, **line_kwargs)
    ax.set_xlim(0.0, max_fpr)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("per-region overlap")
    ax.legend(loc="lower right")
    return ax


def save_png(fig_or_ax, path, *, dpi=100):
    """Save a figure (or the figure of an Axes) as a PNG file; return the path.

    Works without a display: the figure is rendered with matplotlib's Agg canvas.

    Parameters
    ----------
    fig_or_ax : matplotlib Figure or Axes
    path : str or os.PathLike
        Output file; missing parent folders are created.
    dpi : int, default=100

    Returns
    -------
    path : str

    Examples
    --------
    >>> import os, tempfile
    >>> from skad.plot import plot_roc, save_png
    >>> p = save_png(plot_roc([0, 1], [0.2, 0.9]), os.path.join(tempfile.mkdtemp(), "roc.png"))
    >>> os.path.getsize(p) > 0
    True
    """
    fig = getattr(fig_or_ax, "figure", fig_or_ax)
    if not hasattr(fig, "savefig"):
        raise TypeError(
            f"fig_or_ax: expected a matplotlib Figure or Axes; got {type(fig_or_ax).__name__}"
        )
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
    return path

