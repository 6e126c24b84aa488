"""Plots: lazy matplotlib import, headless PNG output, content of the axes."""

import subprocess
import sys

import numpy as np
import pytest

from skad.plot import plot_anomaly_overlay, plot_pro, plot_roc, save_png


def test_matplotlib_imported_lazily():
    code = "import sys, skad.plot, skad.metrics, skad.datasets; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _case():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 5:12, 5:12] = 1
    masks[1, 20:24, 2:30] = 1
    maps = rng.random(masks.shape) + masks
    return masks, maps


def test_overlay_and_save_png(tmp_path):
    masks, maps = _case()
    img = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    ax = plot_anomaly_overlay(img, maps[0], masks[0], title="sample 0", colorbar=True)
    assert len(ax.images) == 2 and ax.get_title() == "sample 0"
    assert len(ax.collections) >= 1  # the ground-truth contour
    path = save_png(ax, tmp_path / "sub" / "overlay.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    gray = plot_anomaly_overlay(img[..., 0] / 255.0, maps[2])  # no mask, float grayscale
    assert len(gray.collections) == 0


def test_roc_and_pro_curves(tmp_path):
    from matplotlib.figure import Figure

    masks, maps = _case()
    ax = Figure().add_subplot()
    plot_roc(masks, maps, ax=ax, label="pixel")
    plot_roc([0, 1, 1], [0.1, 0.3, 0.2], ax=ax, label="image")
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0].startswith("pixel (AUROC") and labels[1] == "image (AUROC 1.000)"
    ax2 = plot_pro(masks, maps, max_fpr=0.2, label="toy")
    line = ax2.get_lines()[0]
    assert line.get_xdata()[0] == 0.0 and line.get_xdata()[-2] <= 0.2
    assert ax2.get_legend_handles_labels()[1][0].startswith("toy (PRO@0.2")
    assert save_png(ax2.figure, tmp_path / "pro.png").endswith("pro.png")


def test_plot_errors():
    masks, maps = _case()
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="anomaly_map: shape"):
        plot_anomaly_overlay(img, maps[0, :16])
    with pytest.raises(ValueError, match="mask: shape"):
        plot_anomaly_overlay(img, maps[0], masks[0, :16])
    with pytest.raises(ValueError, match="image: expected"):
        plot_anomaly_overlay(np.zeros((32, 32, 4)), maps[0])
    with pytest.raises(ValueError, match="float images"):
        plot_anomaly_overlay(np.full((32, 32), 2.0), maps[0])
    with pytest.raises(TypeError, match="Figure or Axes"):
        save_png("not a figure", "x.png")


def test_heatmap_rgb_blends_the_colour_mapped_map():
    from matplotlib import colormaps

    from skad.plot import heatmap_rgb

    img = np.full((6, 5, 3), 200, np.uint8)
    amap = np.linspace(0, 1, 30).reshape(6, 5)
    out = heatmap_rgb(img, amap, vmin=0.0, vmax=1.0, alpha=0.25)
    expected = 0.75 * 200 / 255 + 0.25 * colormaps["jet"](amap)[..., :3]
    np.testing.assert_array_equal(out, (expected * 255).round().astype(np.uint8))
    # shared scale: values outside [vmin, vmax] saturate; grayscale images are expanded
    gray = heatmap_rgb(np.zeros((6, 5)), amap * 10, vmin=0.0, vmax=1.0)
    assert gray.shape == (6, 5, 3) and (gray[-1, -1] == gray[-1, -2]).all()
    with pytest.raises(ValueError, match="anomaly_map: shape"):
        heatmap_rgb(img, amap[:3])
