"""ImageAligner: Lv et al.'s image matching module (IMM), a spatial-transformer network."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from ..utils._sklearn_compat import Interval, StrOptions, _fit_context
from sklearn.utils.validation import check_is_fitted

from .._training import record_training, seeded, train_loop, training_constraints
from ..utils import resolve_device
from ..utils._torch import cpu_state_dict
from ..utils._loading import loaded_device
from ..utils.validation import _is_path_sequence, check_images

__all__ = ["ImageAligner", "affine_matrices", "warp"]


def affine_matrices(params, image_size):
    """``affine_grid`` matrices ``(n, 2, 3)`` of rigid transforms given in pixels.

    Parameters
    ----------
    params : Tensor of shape (n, 3)
        ``(tx, ty, angle)``: the output pixel at ``p`` samples the input at
        ``R(angle) p + (tx, ty)`` (about the image centre; ``tx``, ``ty`` in pixels,
        ``angle`` in radians, counter-clockwise in array coordinates with y down).
    image_size : (int, int)
        ``(H, W)`` of the image the pixels refer to.

    Returns
    -------
    theta : Tensor of shape (n, 2, 3)
        In the normalised coordinates of ``torch.nn.functional.affine_grid``
        (``align_corners=False``), with the aspect ratio accounted for, so the same
        ``theta`` is the same rigid motion at any resolution of that image.
    """
    import torch

    h, w = image_size
    tx, ty, a = params[:, 0], params[:, 1], params[:, 2]
    c, s = torch.cos(a), torch.sin(a)
    # pixel rotation R = [[c, -s], [s, c]] written in coordinates scaled by (W/2, H/2)
    row0 = torch.stack([c, -s * (h / w), 2.0 * tx / w], dim=1)
    row1 = torch.stack([s * (w / h), c, 2.0 * ty / h], dim=1)
    return torch.stack([row0, row1], dim=1)


def warp(images, theta, *, mode="bilinear", padding_mode="reflection"):
    """Resample ``images`` ``(n, C, H, W)`` with ``affine_grid`` matrices ``theta``.

    ``f_geo`` of eq. 2: the spatial transformer's sampler (Jaderberg et al. 2015).
    """
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode,
                         align_corners=False)


def _build_networks(in_channels=3, width=16):
    """``N_P`` (shared fully convolutional features) and ``N_R`` (regressor to 3 numbers)."""
    from torch import nn

    n_p = nn.Sequential(
        nn.Conv2d(in_channels, width, 5, stride=2, padding=2), nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
    )
    head = nn.Linear(128, 3)
    n_r = nn.Sequential(
        nn.Conv2d(8 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        # a fixed 4 x 4 grid keeps where things are (the shift) at any internal size
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(4 * width * 16, 128), nn.ReLU(inplace=True), head,
    )
    # identity at initialisation (the STN paper's recipe): zero weights and bias
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.ModuleDict({"n_p": n_p, "n_r": n_r})


class ImageAligner(TransformerMixin, BaseEstimator):
    """Align images to a template by a learned shift and rotation (Lv et al.'s IMM).

    A spatial-transformer network: a small fully convolutional net ``N_P`` computes
    features of the input image ``I_O`` and of the template ``I_T`` (one training image
    picked with ``random_state``); the two maps are concatenated and a regressor ``N_R``
    outputs ``(Tx, Ty, theta)`` (eq. 2); the input is warped with that rigid
    transform (``F.affine_grid`` / ``F.grid_sample``). ``N_P`` and ``N_R`` are trained on
    the training images with ``L_reg = ||I_M - I_T||^2 / n``, the mean squared
    difference between the warped input and the template (eq. 1).

    The network runs at ``input_size`` (a reduced copy of the image, for speed); the
    transform it finds is applied to the full-resolution image, so ``transform``
    returns images of the input's shape and dtype.

    Parameters
    ----------
    template : int or None, default=None
        Index of the training image used as the template ``I_T``; ``None``: drawn with
        ``random_state`` (the paper: "randomly sampled ... using a pre-specified
        random seed").
    input_size : int or (int, int), default=64
        Size the network sees (images and template are resized to it, bilinear,
        antialiased). The loss is computed at this size.
    max_shift : float in (0, 1], default=0.25
        Largest translation, as a fraction of the image side (``tanh`` bound on the
        regressor's output).
    max_rotation : float in (0, 180], default=30.0
        Largest rotation in degrees (``tanh`` bound).
    width : int, default=16
        Channels of ``N_P``'s first layer (doubled at each of its three stride-2
        convolutions).
    padding_mode : {"reflection", "border", "zeros"}, default="reflection"
        What warped images show where they sample outside the input.
    epochs : int, default=60
        Passes over the training images (the paper: 500, by parameter).
    max_iter : int or None, default=None
        Cap on optimisation steps.
    batch_size : int, default=32
        Images per step (the paper: 32).
    lr : float, default=1e-3
        The paper: 2e-4 (with 500 epochs).
    weight_decay : float, default=0.0
    solver : {"adam", "adamw", "sgd"}, default="adam"
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the template choice, the weights and the batch order.
    verbose : bool, default=False

    Attributes
    ----------
    template_index_ : int
        The training image used as the template.
    template_ : ndarray of float32, shape (h, w, 3)
        The template at ``input_size``, in [0, 1].
    input_size_ : (int, int)
    image_size_ : (int, int)
        ``(H, W)`` of the training images.
    module_ : torch.nn.ModuleDict
        ``{"n_p": N_P, "n_r": N_R}``, on ``device_``.
    loss_history_ : list of float
        Mean ``L_reg`` of each epoch.
    n_iter_ : int
    best_epoch_ : int or None
    device_ : torch.device

    Notes
    -----
    Choices where the paper is silent:

    - Architectures: ``N_P`` three 5x5/3x3 stride-2 convolutions with ReLU (16, 32, 64
      channels); ``N_R`` one stride-2 convolution, a 4 x 4 adaptive average pooling, two
      linear layers; the last one starts at zero, so the untrained network is the
      identity (Jaderberg et al.'s initialisation).
    - Outputs are bounded: ``Tx = max_shift * W * tanh(o_0)`` (likewise ``Ty``),
      ``theta = max_rotation * tanh(o_2)``; rotations are about the image centre.
    - The warp is rigid in pixels (the aspect ratio of non-square images is
      accounted for) and resolution free, so the network's low-resolution estimate
      warps the full image.
    - Images are warped with reflection padding (no black wedges that a detector would
      call defects); masks with zeros (no defect outside the image) and nearest
      neighbour sampling, so they stay binary.
    - The template is scored against itself too (its loss is zero at the identity).

    Evaluating pixel metrics on aligned images: the maps a detector after the aligner
    returns are in the template's frame. Either warp the ground-truth masks with the
    same transforms (``masks_a = aligner.transform_masks(X, masks)``) and compare maps
    with ``masks_a``, or bring the maps back to each image's own frame
    (``aligner.inverse_transform_maps(X, maps)``) and compare with the original masks.
    The second keeps every defect pixel (a warp can push part of a defect out of the
    frame); the area the aligned image padded is then filled by reflection.

    References
    ----------
    C. Lv, Z. Zhang, F. Shen, F. Zhang. "Unsupervised Automatic Defect Inspection based
    on Image Matching and Local One-class Classification", CVPR Workshops 2022.
    M. Jaderberg, K. Simonyan, A. Zisserman. "Spatial Transformer Networks", NeurIPS 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.alignment import ImageAligner
    >>> X = np.zeros((8, 32, 32, 3), np.uint8)
    >>> for i in range(8):
    ...     X[i, 8 + i % 3:20 + i % 3, 10:18] = 255
    >>> aligner = ImageAligner(input_size=32, epochs=2, random_state=0).fit(X)
    >>> aligner.transform(X).shape, aligner.transform(X).dtype
    ((8, 32, 32, 3), dtype('uint8'))
    """

    _parameter_constraints: dict = {
        **training_constraints(),
        "template": [Interval(Integral, 0, None, closed="left"), None],
        "input_size": [Interval(Integral, 8, None, closed="left"), tuple, list],
        "max_shift": [Interval(Real, 0, 1, closed="right")],
        "max_rotation": [Interval(Real, 0, 180, closed="right")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "padding_mode": [StrOptions({"reflection", "border", "zeros"})],
    }

    def __init__(
        self,
        *,
        template=None,
        input_size=64,
        max_shift=0.25,
        max_rotation=30.0,
        width=16,
        padding_mode="reflection",
        epochs=60,
        max_iter=None,
        batch_size=32,
        lr=1e-3,
        weight_decay=0.0,
        solver="adam",
        device="auto",
        random_state=None,
        verbose=False,
    ):
        self.template = template
        self.input_size = input_size
        self.max_shift = max_shift
        self.max_rotation = max_rotation
        self.width = width
        self.padding_mode = padding_mode
        self.epochs = epochs
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.solver = solver
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_input_size(self):
        size = self.input_size
        if isinstance(size, Integral) and not isinstance(size, bool):
            size = (size, size)
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 8
                           for s in size)):
            raise ValueError(
                f"input_size: expected an int >= 8 or a pair (H, W) of ints >= 8; got "
                f"{self.input_size!r}"
            )
        return int(size[0]), int(size[1])

    def _small(self, batch):
        """float32 ``(b, H, W, 3)`` numpy -> ``(b, 3, h, w)`` tensor at ``input_size_``."""
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device_).permute(0, 3, 1, 2)
        if tuple(t.shape[-2:]) == self.input_size_:
            return t.contiguous()
        return F.interpolate(t, size=self.input_size_, mode="bilinear", align_corners=False,
                             antialias=True)

    def _params(self, small):
        """``(tx, ty, angle)`` in pixels of the input frame / radians, from ``N_R``."""
        import torch

        n_p, n_r = self.module_["n_p"], self.module_["n_r"]
        f_t = n_p(self._template_tensor)  # F_T
        f_o = n_p(small)  # F_O
        out = n_r(torch.cat([f_o, f_t.expand(len(small), -1, -1, -1)], dim=1))  # eq. 2
        out = torch.tanh(out)
        h, w = self.input_size_
        shift = self.max_shift
        return torch.stack([out[:, 0] * shift * w, out[:, 1] * shift * h,
                            out[:, 2] * math.radians(self.max_rotation)], dim=1)

    def _theta(self, small):
        return affine_matrices(self._params(small), self.input_size_)

    @property
    def _template_tensor(self):
        import torch

        t = torch.from_numpy(self.template_).to(self.device_).permute(2, 0, 1)[None]
        return t.contiguous()

    # --------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Pick the template and train ``N_P`` and ``N_R`` on ``X`` (eq. 1).

        Parameters
        ----------
        X : images
            Array ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 or float in [0, 1]) or a
            sequence of image paths; all of one size.
        y : ignored

        Returns
        -------
        self : ImageAligner
        """
        images = check_images(X)
        if len(images) < 1:
            raise ValueError("X: ImageAligner needs at least 1 training image; got 0")
        self.input_size_ = self._check_input_size()
        rng = check_random_state(self.random_state)
        n = len(images)
        if self.template is None:
            index = int(rng.randint(n))
        else:
            index = int(self.template)
            if index >= n:
                raise ValueError(
                    f"template: index {index} is out of range for {n} training images; "
                    "expected an int in [0, n) or None"
                )
        self.device_ = resolve_device(self.device)
        self.template_index_ = index
        self.image_size_ = images.image_size
        self.template_ = self._small(images.batch([index]))[0].permute(1, 2, 0).cpu().numpy()
        with seeded(rng, self.device_):
            self.module_ = _build_networks(width=self.width).to(self.device_)

        template = self._template_tensor

        def step(indices, batch, step_rng):
            self.module_.train()
            small = self._small(batch)
            aligned = warp(small, self._theta(small), padding_mode=self.padding_mode)  # I_M
            return ((aligned - template) ** 2).mean()  # L_reg, eq. 1

        try:
            result = train_loop(
                step, [self.module_], images, batch_size=self.batch_size, rng=rng,
                solver=self.solver, lr=self.lr, weight_decay=self.weight_decay,
                epochs=self.epochs, max_iter=self.max_iter, verbose=self.verbose,
                desc="ImageAligner",
            )
        finally:
            self.module_.eval()
        record_training(self, result)
        return self

    # --------------------------------------------------------------- transform
    def _batches(self, images, batch_size=32):
        for start in range(0, len(images), batch_size):
            sl = slice(start, min(start + batch_size, len(images)))
            yield sl, images.batch(sl)

    def estimate_transforms(self, X):
        """The rigid transform of each image to the template.

        Parameters
        ----------
        X : images

        Returns
        -------
        params : ndarray of float64, shape (n, 3)
            ``(tx, ty, angle)``: the aligned image's pixel ``p`` (about the centre) shows
            the input's pixel ``R(angle) p + (tx, ty)``; ``tx``, ``ty`` in pixels of the
            input, ``angle`` in degrees (counter-clockwise in array coordinates).
        """
        import torch

        check_is_fitted(self)
        images = check_images(X)
        out = np.empty((len(images), 3))
        h, w = images.image_size
        sh, sw = self.input_size_
        with torch.inference_mode():
            for sl, batch in self._batches(images):
                p = self._params(self._small(batch)).cpu().numpy().astype(np.float64)
                out[sl] = p
        out[:, 0] *= w / sw
        out[:, 1] *= h / sh
        out[:, 2] = np.degrees(out[:, 2])
        return out

    def _warp_batches(self, images, extra=None, *, inverse=False, mode="bilinear",
                      padding_mode=None):
        """Warp ``images`` (or ``extra`` maps ``(n, H, W)``) by the transforms of ``images``."""
        import torch

        padding_mode = self.padding_mode if padding_mode is None else padding_mode
        outs = []
        with torch.inference_mode():
            for sl, batch in self._batches(images):
                theta = self._theta(self._small(batch))
                if inverse:
                    full = torch.cat([theta, theta.new_tensor([0.0, 0.0, 1.0]).expand(
                        len(theta), 1, 3)], dim=1)
                    theta = torch.linalg.inv(full)[:, :2]
                if extra is None:
                    src = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
                else:
                    src = torch.from_numpy(np.ascontiguousarray(extra[sl], dtype=np.float32))
                    src = src[:, None]
                res = warp(src.to(self.device_), theta, mode=mode, padding_mode=padding_mode)
                outs.append(res.cpu().numpy())
        out = np.concatenate(outs) if outs else np.empty((0,))
        return out

    def transform(self, X):
        """Images aligned to the template, of the shape and dtype of ``X``.

        Parameters
        ----------
        X : images
            Array ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 or float) or image paths.

        Returns
        -------
        X_aligned : ndarray
            Same shape and dtype as an array ``X`` (uint8 stays uint8; float images come
            back float32 in [0, 1]); for paths, uint8 ``(n, H, W, 3)``.
        """
        check_is_fitted(self)
        images = check_images(X)
        out = self._warp_batches(images).transpose(0, 2, 3, 1)  # (n, H, W, 3) in [0, 1]
        out = np.clip(out, 0.0, 1.0)
        if _is_path_sequence(X):
            return np.round(out * 255).astype(np.uint8)
        arr = np.asarray(X)
        if arr.ndim == 3:
            out = out[..., 0]
        elif arr.shape[-1] == 1:
            out = out[..., :1]
        if arr.dtype == np.uint8:
            return np.round(out * 255).astype(np.uint8)
        return out.astype(np.float32)

    def _check_maps(self, images, maps, name):
        arr = np.asarray(maps)
        if arr.ndim != 3 or arr.shape[0] != len(images):
            raise ValueError(
                f"{name}: expected an array (n, H, W) with one map per image of X "
                f"({len(images)}); got shape {arr.shape}"
            )
        if not np.isfinite(arr.astype(np.float64)).all():
            raise ValueError(f"{name}: contains NaN or infinity")
        return arr

    def transform_masks(self, X, masks):
        """Warp ``masks`` with the transforms that align ``X`` (for pixel metrics).

        Parameters
        ----------
        X : images
            The images the masks belong to (their transforms are estimated).
        masks : array-like of shape (n, H, W)
            Binary masks (any resolution: the rigid motion is resolution free).

        Returns
        -------
        masks_aligned : ndarray of shape (n, H, W), dtype of ``masks``
            Nearest-neighbour sampling with zero padding: values stay in the set of
            the input's, nothing is added outside the image.
        """
        check_is_fitted(self)
        images = check_images(X)
        arr = self._check_maps(images, masks, "masks")
        out = self._warp_batches(images, arr, mode="nearest", padding_mode="zeros")[:, 0]
        return out.astype(arr.dtype)

    def inverse_transform_maps(self, X, maps):
        """Bring maps computed on aligned images back to the frame of each image of ``X``.

        Parameters
        ----------
        X : images
            The original (unaligned) images.
        maps : array-like of shape (n, H, W)
            E.g. ``anomaly_map`` of a detector fitted after this aligner.

        Returns
        -------
        maps_original : ndarray of float32, shape (n, H, W)
            Bilinear, with border padding (the area the aligned frame did not cover takes
            the nearest map value).
        """
        check_is_fitted(self)
        images = check_images(X)
        arr = self._check_maps(images, maps, "maps").astype(np.float32)
        out = self._warp_batches(images, arr, inverse=True, padding_mode="border")[:, 0]
        return out.astype(np.float32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = False
        return tags

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())
        module = state.pop("module_", None)
        if module is not None:
            state["_module_state_dict"] = cpu_state_dict(module)
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        state = dict(state)
        module_state = state.pop("_module_state_dict", None)
        super().__setstate__(state)
        if module_state is None:
            return
        module = _build_networks(width=self.width)
        module.load_state_dict(module_state, strict=True)
        self.device_ = loaded_device(self.device_, "ImageAligner")
        self.module_ = module.to(self.device_).eval()
