"""Lv et al.'s defect generation module (DGM): darken, lighten or paste in a region."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
from ..utils._sklearn_compat import HasMethods, Interval

from ._base import BaseSynthesizer, _check_choices, _check_range
from ._masks import REGION_KINDS, _region
from ._ops import _darken, _lighten, _paste

__all__ = ["DGM_OPERATIONS", "DefectGenerator"]

DGM_OPERATIONS = ("darken", "lighten", "paste")


class DefectGenerator(BaseSynthesizer):
    """Artificial defects of Lv et al.'s defect generation module (DGM, Sec. II.C).

    "DGM firstly random selects a region on the defect-free images, marked as M. Then,
    the regions covered by M are randomly darkened or lightened or directly replaced
    with images from VOC". For each image, 1 to ``max_regions`` regions are drawn;
    each gets one of ``operations`` with equal probability:

    - "darken": ``I * (1 - s)`` (:func:`darken`), ``s ~ U[strength_range]``;
    - "lighten": ``I + s (1 - I)`` (:func:`lighten`);
    - "paste": the region's pixels replaced with a random window of an image from
      ``content_source`` (:func:`paste`).

    Parameters
    ----------
    operations : tuple of {"darken", "lighten", "paste"}, default=all three
        Operations to draw from.
    content_source : None, str, os.PathLike or source object, default=None
        Images pasted by "paste". None: procedural textures (no file is read). A
        folder: natural images (the paper uses PASCAL VOC; any photographs work), see
        :class:`ImageFolderSource`. Or any object with ``draw(shape, rng)``.
    region : str or tuple of str, default="rectangle"
        Region shapes, drawn with equal probability from the given ones:
        "rectangle" (axis-aligned), "ellipse" (random orientation) or "perlin"
        (an irregular Perlin blob); see :func:`random_region`.
    max_regions : int, default=1
        Largest number of regions per image (uniform in ``[1, max_regions]``).
    region_size : tuple of float, default=(0.1, 0.4)
        Range of a region's bounding-box height and width, as fractions of the
        image's height and width (drawn independently).
    strength_range : tuple of float, default=(0.2, 0.6)
        Range of the darken / lighten strength ``s``.
    random_state : int, RandomState instance or None, default=None
        Used by :meth:`sample` when it is given no ``rng``.

    See Also
    --------
    AnomalySynthesizer : MemSeg's Perlin-mask texture / structure anomalies.

    Notes
    -----
    The paper gives neither the region's shape and size nor the darkening or
    lightening amounts. skad's choices: one region (the paper's "a region"),
    axis-aligned rectangles by default with ellipses and Perlin blobs as options,
    sides 10-40 % of the image's, strengths 0.2-0.6, pasted content opaque. Later
    regions of one image are applied over earlier ones; the mask is their union.
    Darkening leaves black pixels unchanged (and lightening white ones) although they
    are inside the mask.

    References
    ----------
    Lv et al., "Local one-class classification with image matching for unsupervised
    defect inspection" (image matching module, anomaly localisation module, DGM).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import DefectGenerator
    >>> X = np.full((2, 64, 64, 3), 128, np.uint8)
    >>> images, masks = DefectGenerator(operations=("darken",), random_state=0).sample(X)
    >>> bool(images[masks == 1].mean() < 128 / 255)
    True
    """

    _parameter_constraints: dict = {
        "operations": ["array-like", str],
        "content_source": [None, str, os.PathLike, HasMethods(["draw"])],
        "region": ["array-like", str],
        "max_regions": [Interval(Integral, 1, None, closed="left")],
        "region_size": ["array-like"],
        "strength_range": ["array-like"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        operations=DGM_OPERATIONS,
        content_source=None,
        region="rectangle",
        max_regions=1,
        region_size=(0.1, 0.4),
        strength_range=(0.2, 0.6),
        random_state=None,
    ):
        self.operations = operations
        self.content_source = content_source
        self.region = region
        self.max_regions = max_regions
        self.region_size = region_size
        self.strength_range = strength_range
        self.random_state = random_state

    def _check_params(self):
        ops = _check_choices(self.operations, "operations", DGM_OPERATIONS)
        size = _check_range(
            self.region_size, "region_size", 0.0, 1.0, what="fractions of the image side"
        )
        if size[0] <= 0:
            raise ValueError(f"region_size: the low end must be above 0; got {self.region_size!r}")
        return {
            "ops": ops,
            "kinds": _check_choices(self.region, "region", REGION_KINDS),
            "size": size,
            "strength": _check_range(
                self.strength_range, "strength_range", 0.0, 1.0, what="strengths"
            ),
            "source": self._source("content_source") if "paste" in ops else None,
        }

    def _synthesize(self, img, rng, settings):
        h, w = img.shape[:2]
        out = img.astype(np.float32, copy=True)
        mask = np.zeros((h, w), dtype=bool)
        kinds, ops = settings["kinds"], settings["ops"]
        for _ in range(rng.randint(1, self.max_regions + 1)):
            kind = kinds[rng.randint(len(kinds))]
            ys, xs, local = _region((h, w), kind, settings["size"], rng)  # M
            op = ops[rng.randint(len(ops))]
            sub = out[ys, xs]
            if op == "darken":
                out[ys, xs] = _darken(sub, local, rng.uniform(*settings["strength"]))
            elif op == "lighten":
                out[ys, xs] = _lighten(sub, local, rng.uniform(*settings["strength"]))
            else:
                content = settings["source"].draw(local.shape, rng)
                out[ys, xs] = _paste(sub, local, content)
            mask[ys, xs] |= local
        return out, mask
