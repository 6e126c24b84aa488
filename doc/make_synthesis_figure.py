"""Draw doc/images/synthesis_samples.png: skad.synthesis on the built-in data.

Run from the repository root: ``python doc/make_synthesis_figure.py``. Uses only
``skad.datasets.make_synthetic`` images and the procedural texture default (no
third-party images).
"""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from skad.datasets import make_synthetic  # noqa: E402
from skad.synthesis import AnomalySynthesizer, DefectGenerator  # noqa: E402

OUT = Path(__file__).resolve().parent / "images" / "synthesis_samples.png"


def main():
    texture = make_synthetic(random_state=0).train_images[:2]
    objects = make_synthetic(kind="object", random_state=0).train_images[:2]
    X = np.concatenate([texture, objects])
    rows = [
        ("input", None),
        ("MemSeg: texture noise",
         AnomalySynthesizer(anomaly_types=("texture",), random_state=0)),
        ("MemSeg: structural noise",
         AnomalySynthesizer(anomaly_types=("structure",), random_state=1)),
        ("MemSeg: texture, foreground",
         AnomalySynthesizer(anomaly_types=("texture",), use_foreground=True, random_state=2)),
        ("DGM: darken / lighten / paste",
         DefectGenerator(region=("rectangle", "ellipse", "perlin"), max_regions=2,
                         random_state=3)),
    ]
    fig, axes = plt.subplots(len(rows), len(X), figsize=(2.0 * len(X), 2.05 * len(rows)))
    for r, (title, synth) in enumerate(rows):
        if synth is None:
            images, masks = X.astype(np.float32) / 255.0, None
        else:
            images, masks = synth.sample(X)
        for c in range(len(X)):
            ax = axes[r, c]
            ax.imshow(images[c], interpolation="nearest")
            if masks is not None:
                ax.contour(masks[c], levels=[0.5], colors="red", linewidths=0.4, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=6.5)
    fig.suptitle("skad.synthesis on make_synthetic images (red: mask outline)", fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    # a 128-colour palette keeps the file small (< 300 KB) with no visible loss here
    Image.open(buf).convert("RGB").quantize(colors=128).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
