"""MemSeg's anomaly simulation (after DRAEM): Perlin mask x foreground, texture or
structural noise, blended with a random opacity."""

from __future__ import annotations

import os
from numbers import Real

from ..utils._sklearn_compat import HasMethods, Interval

from ._base import BaseSynthesizer, _check_choices, _check_range
from ._masks import foreground_mask
from ._noise import _perlin_mask
from ._ops import _blend, _check_grid, _structural_noise

__all__ = ["ANOMALY_TYPES", "AnomalySynthesizer"]

ANOMALY_TYPES = ("texture", "structure")

# DRAEM's Perlin scales 2**u, u in [0, 6): 1 to 32 lattice cells per axis
_PERLIN_SCALES = (0, 6)


class AnomalySynthesizer(BaseSynthesizer):
    """Simulated anomalies of MemSeg (Yang et al. 2023, Sec. 3.1), after DRAEM.

    For each image ``I``:

    1. mask ``M = M_P * M_I``: ``M_P`` is 2-D Perlin noise binarised at
       ``perlin_threshold`` (:func:`perlin_mask`), ``M_I`` the foreground
       (:func:`foreground_mask`) when ``use_foreground`` is on;
    2. noise image ``I_n``: a texture from ``texture_source`` (textural anomaly) or the
       image itself flipped, rotated, colour-jittered, cut into a ``structure_grid``
       and shuffled (structural anomaly, :func:`structural_noise`), one of
       ``anomaly_types`` with equal probability;
    3. ``I_A = (1 - M) I + delta (M I_n) + (1 - delta) (M I)`` (eq. 1-2,
       :func:`blend`), ``delta ~ U[delta_range]``.

    Parameters
    ----------
    texture_source : None, str, os.PathLike or source object, default=None
        Textures for textural anomalies. None: procedural textures
        (:func:`procedural_texture`; no file is read). A folder: its images (searched
        recursively, e.g. DTD's ``dtd/<class>/*.jpg`` as in the paper), see
        :class:`ImageFolderSource`. Or any object with ``draw(shape, rng)`` returning
        float32 ``(H, W, 3)`` in [0, 1].
    anomaly_types : tuple of {"texture", "structure"}, default=("texture", "structure")
        Noise images to draw from, with equal probability (MemSeg: "most categories
        have an equal probability"). ``("structure",)`` is Table 3's "w/o Texture",
        ``("texture",)`` its "w/o Structure".
    use_foreground : bool, default=False
        Restrict the mask to the image's foreground (MemSeg's foreground enhancement,
        chosen per category in the paper; off = Table 3's "w/o Foreground"). When the
        foreground of an image is empty, its mask is drawn over the whole image.
    foreground_threshold : float in [0, 1] or None, default=None
        Gray level of the binarisation; None = Otsu's threshold of each image.
    foreground_invert : bool, default=False
        Foreground = pixels darker than the threshold (a dark part on a light
        background) instead of brighter.
    perlin_threshold : float in (-1, 1), default=0.5
        ``T`` of MemSeg's step 1 (DRAEM's 0.5); larger gives smaller defects.
    delta_range : tuple of float, default=(0.15, 1.0)
        Range of the opacity ``delta`` (MemSeg: U[0.15, 1]).
    structure_grid : tuple of int, default=(4, 8)
        ``(rows, columns)`` of the structural shuffle; MemSeg's "4x8" read as 4 rows by
        8 columns.
    random_state : int, RandomState instance or None, default=None
        Used by :meth:`sample` when it is given no ``rng``.

    See Also
    --------
    DefectGenerator : Lv et al.'s darken / lighten / paste defects.

    Notes
    -----
    Choices where the papers are silent:

    - Perlin masks follow DRAEM: scales ``2**u`` per axis with ``u`` in [0, 6), a
      rotation uniform in [-90, 90) degrees (applied to the sampling grid, so rotated
      corners are not empty), threshold 0.5. An empty Perlin mask (or one that misses
      the foreground) is redrawn up to 8 times; then the top 10 % of the last field
      (within the foreground) is used, so the mask is never empty.
    - Foreground: Otsu binarisation of the luma, opening then closing with 5x5 squares.
      If the foreground is empty (a uniform image) the whole image is used instead.
    - Textures from a folder: a random window of the image's aspect ratio, resized
      bilinearly, randomly flipped; DRAEM's extra augmentations of the texture (gamma,
      solarise, posterise, ...) are not applied.
    - Structural noise: horizontal/vertical flips (p = 1/2 each), a random multiple of
      90 degrees, brightness and saturation factors in [0.8, 1.2], hue shift within
      +-0.05 turn.
    - The mask is the ground truth of the blend: where the noise equals the image
      (e.g. a shuffled cell of uniform background) a masked pixel can keep its value.

    References
    ----------
    M. Yang, P. Wu, H. Feng, "MemSeg: A semi-supervised method for image surface defect
    detection using differences and commonalities", Eng. Appl. Artif. Intell. 119, 2023.
    V. Zavrtanik, M. Kristan, D. Skocaj, "DRAEM - A discriminatively trained
    reconstruction embedding for surface anomaly detection", ICCV 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import AnomalySynthesizer
    >>> X = np.full((2, 64, 64, 3), 0.5, np.float32)
    >>> images, masks = AnomalySynthesizer(random_state=0).sample(X)
    >>> images.shape, masks.shape, images.dtype
    ((2, 64, 64, 3), (2, 64, 64), dtype('float32'))
    >>> bool(np.all(np.abs(images - X).max(axis=-1)[masks == 0] == 0))
    True
    """

    _parameter_constraints: dict = {
        "texture_source": [None, str, os.PathLike, HasMethods(["draw"])],
        "anomaly_types": ["array-like", str],
        "use_foreground": ["boolean"],
        "foreground_threshold": [None, Interval(Real, 0, 1, closed="both")],
        "foreground_invert": ["boolean"],
        "perlin_threshold": [Interval(Real, -1, 1, closed="neither")],
        "delta_range": ["array-like"],
        "structure_grid": ["array-like"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        texture_source=None,
        anomaly_types=ANOMALY_TYPES,
        use_foreground=False,
        foreground_threshold=None,
        foreground_invert=False,
        perlin_threshold=0.5,
        delta_range=(0.15, 1.0),
        structure_grid=(4, 8),
        random_state=None,
    ):
        self.texture_source = texture_source
        self.anomaly_types = anomaly_types
        self.use_foreground = use_foreground
        self.foreground_threshold = foreground_threshold
        self.foreground_invert = foreground_invert
        self.perlin_threshold = perlin_threshold
        self.delta_range = delta_range
        self.structure_grid = structure_grid
        self.random_state = random_state

    def _check_params(self):
        types = _check_choices(self.anomaly_types, "anomaly_types", ANOMALY_TYPES)
        return {
            "types": types,
            "delta": _check_range(self.delta_range, "delta_range", 0.0, 1.0, what="opacities"),
            "grid": _check_grid(self.structure_grid, name="structure_grid"),
            "source": self._source("texture_source") if "texture" in types else None,
        }

    def _synthesize(self, img, rng, settings):
        h, w = img.shape[:2]
        grid = _check_grid(settings["grid"], (h, w), name="structure_grid")
        kind = settings["types"][rng.randint(len(settings["types"]))]
        within = None
        if self.use_foreground:
            fg = foreground_mask(
                img, threshold=self.foreground_threshold, invert=self.foreground_invert
            )
            within = fg if fg.any() else None  # empty foreground: whole image (documented)
        lo, hi = _PERLIN_SCALES
        mask = _perlin_mask((h, w), float(self.perlin_threshold), lo, hi, True, rng, within=within)
        if kind == "texture":
            noise = settings["source"].draw((h, w), rng)  # I_n: textural anomaly
        else:
            # I_n: structural anomaly (flips, right angles, jitter 0.2 / 0.2 / 0.05 turn)
            noise = _structural_noise(img, rng, grid, True, "right", 0.2, 0.2, 0.05)
        delta = rng.uniform(*settings["delta"])  # delta ~ U[0.15, 1] (eq. 1)
        return _blend(img, mask, noise, delta), mask
