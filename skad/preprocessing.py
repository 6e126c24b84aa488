"""Image preprocessing steps that belong inside a saved model.

:class:`ResizeCrop` applies the data loaders' geometry (resize, then centre crop; the
papers' 256 -> 224 protocol) as the first step of a pipeline, so a model fitted on
image files scores new files exactly as :func:`skad.datasets.load_mvtec` prepares them:
the saved model holds all of its preprocessing.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .utils.validation import _is_path_sequence, check_images

__all__ = ["ResizeCrop"]


class ResizeCrop(TransformerMixin, BaseEstimator):
    """Resize then centre-crop images (file paths or arrays), as the data loaders do.

    Parameters
    ----------
    resize : int, (H, W) or None, default=256
        An int resizes the shorter side to it keeping the aspect ratio; ``(H, W)``
        resizes to exactly that; None keeps the size.
    crop : int, (H, W) or None, default=224
        Centre crop after resizing (an int is a square); None keeps the whole image.
    interpolation : {"bilinear", "bicubic", "lanczos", "nearest"}, default="bilinear"
        Pillow filter used for resizing (the loaders' default is bilinear).

    Notes
    -----
    File paths are decoded and transformed by the loaders' own reader
    (:mod:`skad.datasets`), so ``ResizeCrop().transform(paths)`` equals the images of
    ``load_mvtec(..., resize=256, crop=224)`` bit for bit. uint8 arrays go through the
    same Pillow geometry; float arrays (0-1) are resized channel by channel in Pillow's
    32-bit float mode (no quantisation) and stay float32.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.preprocessing import ResizeCrop
    >>> X = np.zeros((2, 300, 400, 3), dtype=np.uint8)
    >>> ResizeCrop(resize=256, crop=224).fit_transform(X).shape
    (2, 224, 224, 3)
    """

    def __init__(self, resize=256, crop=224, interpolation="bilinear"):
        self.resize = resize
        self.crop = crop
        self.interpolation = interpolation

    def _geometry(self):
        from .datasets._io import check_geometry

        return check_geometry(self.resize, self.crop, self.interpolation)

    def fit(self, X=None, y=None):
        """Check the parameters (nothing is learned).

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self : ResizeCrop
        """
        self._geometry()
        self.fitted_ = True
        return self

    def transform(self, X):
        """Resize and centre-crop every image.

        Parameters
        ----------
        X : sequence of image file paths, or images (n, H, W, 3) / (n, H, W)

        Returns
        -------
        images : ndarray (n, h, w, 3)
            uint8 for paths and uint8 arrays, float32 for float arrays.
        """
        from PIL import Image

        from .datasets._io import _apply_geometry, read_image, stack_images

        resize, crop, interpolation = self._geometry()
        if _is_path_sequence(X):
            paths = list(X)
            images = [
                read_image(p, resize=resize, crop=crop, interpolation=interpolation)
                for p in paths
            ]
            return stack_images(images, paths, what="X: images after ResizeCrop")
        images = check_images(X)
        resample = {
            "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS,
            "nearest": Image.NEAREST,
        }[interpolation]
        out = []
        for i, img in enumerate(np.asarray(images.array)):
            name = f"X[{i}]"
            if img.dtype == np.uint8:
                pil = Image.fromarray(img)
                out.append(np.asarray(_apply_geometry(pil, resize, crop, resample, name)))
                continue
            chans = img[..., None] if img.ndim == 2 else img
            planes = [
                np.asarray(
                    _apply_geometry(
                        Image.fromarray(np.ascontiguousarray(chans[..., c], np.float32)),
                        resize, crop, resample, name,
                    )
                )
                for c in range(chans.shape[-1])
            ]
            out.append(planes[0] if img.ndim == 2 else np.stack(planes, axis=-1))
        return np.stack(out)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
