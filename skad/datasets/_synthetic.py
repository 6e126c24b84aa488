"""Generated inspection images with exact defect masks (the embedded default data set)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.utils import Bunch, check_random_state

__all__ = ["DEFECT_TYPES", "SYNTHETIC_KINDS", "make_synthetic"]

SYNTHETIC_KINDS = ("texture", "object", "mixed")
DEFECT_TYPES = ("scratch", "spot", "crack", "missing", "color")


# -- normal surfaces ---------------------------------------------------------------
def _noise(rng, shape, sigma):
    """Smooth Gaussian noise of unit standard deviation (periodic boundary).

    White noise filtered by a Gaussian of standard deviation ``sigma`` pixels (a scalar
    or (sigma_y, sigma_x)) in the Fourier domain: the cost does not grow with sigma.
    """
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * np.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2))
    n = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape)
    return n / (n.std() + 1e-12)


def _fractal(rng, shape, sigmas=(0.7, 1.5, 3.0, 6.0), gains=(0.35, 0.3, 0.2, 0.15)):
    return sum(g * _noise(rng, shape, s) for s, g in zip(sigmas, gains))


def _texture(rng, size):
    """A leather-like surface: warped periodic grain, fractal noise and dark pores.

    Every image draws its own phase, warp, grain, pores and a global gain (lighting /
    batch variation), so textures are not pixel-aligned across images and normal
    images hold small dark pores as dark as the defects: a per-pixel model of the mean
    image cannot tell them apart, a local-structure model can.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = size / 14.0 * (1.0 + 0.04 * rng.standard_normal())
    warp = size / 40.0
    wy = warp * _noise(rng, (size, size), size / 10.0)
    wx = warp * _noise(rng, (size, size), size / 10.0)
    p0, p1 = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * (xx + wx) / period + p0) * np.sin(2 * np.pi * (yy + wy) / period + p1)
    grain = _fractal(rng, (size, size))
    g_angle = rng.uniform(0, 2 * np.pi)
    light = 0.06 * ((xx - size / 2) * np.cos(g_angle) + (yy - size / 2) * np.sin(g_angle)) / size
    lum = 0.56 + 0.15 * weave + 0.08 * grain + light
    # pores: small dark dots, about 30 per 128x128
    n_pores = rng.poisson(30 * (size / 128.0) ** 2)
    centres = rng.uniform(0, size, (n_pores, 2))
    radii = rng.uniform(0.8, 1.8, n_pores)
    depth = rng.uniform(0.35, 0.6, n_pores)
    for (cy, cx), r, d in zip(centres, radii, depth):
        y0, y1 = int(max(0, cy - 3)), int(min(size, cy + 4))
        x0, x1 = int(max(0, cx - 3)), int(min(size, cx + 4))
        dist2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
        lum[y0:y1, x0:x1] *= 1.0 - (1.0 - d) * np.exp(-dist2 / (2 * (r / 1.5) ** 2))
    lum *= rng.uniform(0.88, 1.12)
    base = np.array([0.78, 0.63, 0.46]) * (1.0 + 0.03 * rng.standard_normal(3))
    img = lum[..., None] * base
    img += 0.012 * rng.standard_normal(img.shape)
    return img, np.ones((size, size), dtype=bool)


def _object(rng, size):
    """A machined ring part (flange) with six bolt holes on a dark background.

    Position (a few pixels) and rotation (up to 8 degrees) vary between images, as on a
    real fixture.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    bg = 0.2 + 0.03 * _fractal(rng, (size, size)) + 0.03 * (yy / size)
    img = np.repeat(bg[..., None], 3, axis=2) * np.array([0.95, 0.97, 1.0])
    cy, cx = size / 2.0 + rng.uniform(-0.025, 0.025, 2) * size
    rot = np.deg2rad(rng.uniform(-8, 8))
    dy, dx = yy - cy, xx - cx
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    r_out, r_in = 0.37 * size, 0.13 * size
    ring = (r <= r_out) & (r >= r_in)
    # brushed metal: grain stretched horizontally, shading from a light source
    grain = _noise(rng, (size, size), (0.6, 2.5))
    shade = 0.62 + 0.14 * np.cos(theta - 0.8) + 0.035 * grain
    bevel = np.clip(1.0 - np.abs(r - r_out + 0.03 * size) / (0.03 * size), 0, 1)
    shade = shade + 0.12 * bevel - 0.1 * np.clip(1.0 - (r - r_in) / (0.025 * size), 0, 1)
    metal = shade[..., None] * np.array([0.8, 0.83, 0.87])
    part = ring.copy()
    for k in range(6):
        a = rot + k * np.pi / 3
        hy, hx = cy + 0.25 * size * np.sin(a), cx + 0.25 * size * np.cos(a)
        hole = np.hypot(yy - hy, xx - hx) <= 0.035 * size
        part &= ~hole
    img = np.where(part[..., None], metal, img) * rng.uniform(0.94, 1.06)
    img += 0.01 * rng.standard_normal(img.shape)
    return img, part


# -- defects -----------------------------------------------------------------------
def _curve_mask(rng, size, start, length, width, wiggle):
    """Rasterised smooth random curve (quadratic Bezier with a random bend)."""
    a = rng.uniform(0, 2 * np.pi)
    p0 = np.asarray(start, dtype=np.float64)
    p2 = p0 + length * np.array([np.sin(a), np.cos(a)])
    p1 = (p0 + p2) / 2 + wiggle * length * rng.standard_normal(2)
    t = np.linspace(0, 1, int(4 * length) + 2)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return _draw(pts, size, width)


def _draw(pts, size, width):
    m = np.zeros((size, size), dtype=bool)
    ij = np.rint(pts).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < size) & (ij[:, 1] >= 0) & (ij[:, 1] < size)
    m[ij[ok, 0], ij[ok, 1]] = True
    if width > 1:
        m = ndimage.binary_dilation(m, iterations=int(width) - 1)
    return m


def _crack_mask(rng, size, start, length):
    """Random walk with a persistent direction and one or two branches."""
    pts = []
    heads = [(np.asarray(start, dtype=np.float64), rng.uniform(0, 2 * np.pi), length)]
    while heads:
        p, a, n = heads.pop()
        for step in range(int(n)):
            a += rng.normal(0, 0.35)
            p = p + np.array([np.sin(a), np.cos(a)])
            pts.append(p.copy())
            if step > 4 and rng.uniform() < 0.03 and len(heads) < 2:
                heads.append((p.copy(), a + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), n * 0.4))
    return _draw(np.array(pts), size, 1 + int(rng.uniform() < 0.6))


def _blob_mask(rng, size, centre, radius, roughness=0.35):
    """Irregular blob: an ellipse whose radius is modulated by smooth noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ang = rng.uniform(0, np.pi)
    ax = rng.uniform(0.6, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ax
    rho = np.hypot(u, v) / radius
    return rho + roughness * _noise(rng, (size, size), max(1.0, radius / 3)) * 0.4 < 1.0


def _apply_defect(rng, img, support, kind, size, is_object, make_background):
    """Return the defective image and its exact mask (the pixels that were changed)."""
    inside = np.argwhere(support if not is_object else ndimage.binary_erosion(support, iterations=2))
    centre = inside[rng.randint(len(inside))].astype(np.float64)
    out = img.copy()
    if kind == "scratch":
        width = 2 + int(rng.uniform() < 0.5) + (0 if is_object else 1)
        mask = _curve_mask(rng, size, centre, rng.uniform(0.15, 0.35) * size, width, 0.25)
        mask &= support
        delta = rng.choice([-1, 1]) * rng.uniform(0.12, 0.2)
        if is_object:
            out[mask] = out[mask] + delta
        else:
            # the grain is scraped off: a smooth line at the surface's local brightness,
            # within the normal range of values, so only its structure gives it away
            smooth = ndimage.gaussian_filter(img, (3, 3, 0))
            out[mask] = smooth[mask] * (1.0 + delta)
    elif kind == "crack":
        mask = _crack_mask(rng, size, centre, rng.uniform(0.15, 0.3) * size) & support
        out[mask] = out[mask] * rng.uniform(0.4, 0.6)  # as dark as the pores
    elif kind == "spot":
        mask = _blob_mask(rng, size, centre, rng.uniform(0.03, 0.07) * size) & support
        stain = np.array([rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.7)])
        out[mask] = out[mask] * stain
    elif kind == "color":
        mask = _blob_mask(rng, size, centre, rng.uniform(0.07, 0.12) * size, 0.6) & support
        tint = rng.uniform(0.0, 1.0, 3)
        tint = tint / tint.mean()
        strength = rng.uniform(0.2, 0.35)
        lum = out[mask].mean(axis=1, keepdims=True)
        out[mask] = (1 - strength) * out[mask] + strength * lum * tint
    elif kind == "missing":
        if is_object:
            # a chunk broken off the rim: the background shows through
            r_idx = np.argwhere(support & ~ndimage.binary_erosion(support, iterations=3))
            c = r_idx[rng.randint(len(r_idx))].astype(np.float64)
            mask = _blob_mask(rng, size, c, rng.uniform(0.05, 0.09) * size) & support
            background = make_background()[0]  # the same fixture without the part
            out[mask] = background[mask]
        else:
            # a hole through the material: a flat, shadowed backing replaces the grain
            mask = _blob_mask(rng, size, centre, rng.uniform(0.03, 0.06) * size) & support
            backing = out[mask].mean(axis=0) * rng.uniform(0.35, 0.5)
            out[mask] = backing + 0.01 * rng.standard_normal((int(mask.sum()), 3))
    else:  # pragma: no cover - guarded by make_synthetic
        raise ValueError(kind)
    changed = np.any(np.abs(out - img) > 1e-6, axis=-1)
    return out, changed & mask


def _background_only(rng, size):
    yy = np.mgrid[0:size, 0:size][0].astype(np.float64)
    bg = 0.2 + 0.03 * _fractal(rng, (size, size)) + 0.03 * (yy / size)
    img = np.repeat(bg[..., None], 3, axis=2) * np.array([0.95, 0.97, 1.0])
    return img + 0.01 * rng.standard_normal(img.shape), None


def _to_uint8(img):
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def make_synthetic(
    *,
    n_train=40,
    n_test=30,
    image_size=128,
    kind="texture",
    anomaly_ratio=0.5,
    defect_types=DEFECT_TYPES,
    random_state=0,
):
    """Generate an inspection data set with exact defect masks (nothing is stored).

    Two kinds of product: a woven, leather-like **texture** (every image has its own
    weave phase, warp and grain, so images are not pixel-aligned) and a machined ring
    **object** with six bolt holes on a dark background (small shifts and rotations
    between images). Defective test images carry one defect: a thin **scratch**
    (brighter or darker), a dark **spot** (stain), a branching **crack**, a
    **missing** piece (a hole in the texture, a chunk broken off the part's rim) or a
    subtle **color** change. The mask is exactly the set of pixels the defect changed.

    The returned :class:`~sklearn.utils.Bunch` has the fields of
    :func:`load_mvtec`, so anything that runs on MVTec AD runs on it.

    Parameters
    ----------
    n_train : int, default=40
        Normal training images.
    n_test : int, default=30
        Test images, ``round(anomaly_ratio * n_test)`` of them defective.
    image_size : int, default=128
        Side of the square images (>= 32).
    kind : {"texture", "object", "mixed"}, default="texture"
        "mixed": a normal class of both products, half each (a multi-modal normal
        class).
    anomaly_ratio : float in [0, 1], default=0.5
        Share of defective test images.
    defect_types : sequence of str, default=("scratch", "spot", "crack", "missing", "color")
        Defects used, assigned to the defective images in turn.
    random_state : int, RandomState instance or None, default=0
        The same value always gives the same images and masks.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``train_images`` uint8 (n_train, S, S, 3), ``test_images`` uint8
        (n_test, S, S, 3), ``test_labels`` (n_test,) with 1 = defective, ``test_masks``
        uint8 (n_test, S, S) {0, 1}, ``test_defect_types`` (``"good"`` for normal
        images), ``defect_types``, ``train_filenames`` / ``test_filenames`` (generated
        names), ``test_mask_filenames`` (None), ``category`` (= ``kind``), ``DESCR``.

    Notes
    -----
    Difficulty: a per-pixel model of the mean normal image fails on the texture (its
    phase changes from image to image) and is blurred on the object (it moves), while
    local-patch detectors on CNN features are not bothered by either; the colour
    changes and thin cracks are low-contrast. ``benchmarks/results/synthetic_difficulty.md``
    records a trivial baseline's scores.

    Examples
    --------
    >>> from skad.datasets import make_synthetic
    >>> data = make_synthetic(n_train=4, n_test=4, image_size=64, random_state=0)
    >>> data.train_images.shape, data.test_masks.shape, data.test_labels.tolist()
    ((4, 64, 64, 3), (4, 64, 64), [0, 0, 1, 1])
    >>> data.test_defect_types
    ['good', 'good', 'scratch', 'spot']
    """
    for name, val, lo in (("n_train", n_train, 1), ("n_test", n_test, 1), ("image_size", image_size, 32)):
        if isinstance(val, bool) or not isinstance(val, Integral) or val < lo:
            raise ValueError(f"{name}: expected an int >= {lo}; got {val!r}")
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"kind: expected one of {SYNTHETIC_KINDS}; got {kind!r}")
    if isinstance(anomaly_ratio, bool) or not isinstance(anomaly_ratio, Real) or not 0 <= anomaly_ratio <= 1:
        raise ValueError(f"anomaly_ratio: expected a float in [0, 1]; got {anomaly_ratio!r}")
    defect_types = [defect_types] if isinstance(defect_types, str) else list(defect_types)
    bad = [d for d in defect_types if d not in DEFECT_TYPES]
    if not defect_types or bad:
        raise ValueError(
            f"defect_types: expected a non-empty subset of {DEFECT_TYPES}; got {defect_types!r}"
        )
    rng = check_random_state(random_state)
    size = int(image_size)

    def product(i):
        is_obj = kind == "object" or (kind == "mixed" and i % 2 == 1)
        return (_object if is_obj else _texture), is_obj

    train = []
    for i in range(n_train):
        gen, _ = product(i)
        train.append(_to_uint8(gen(rng, size)[0]))
    n_anom = int(round(anomaly_ratio * n_test))
    n_good = n_test - n_anom
    test, masks, types = [], [], []
    for i in range(n_test):
        gen, is_obj = product(i)
        img, support = gen(rng, size)
        if i < n_good:
            test.append(_to_uint8(img))
            masks.append(np.zeros((size, size), dtype=np.uint8))
            types.append("good")
            continue
        dtype = defect_types[(i - n_good) % len(defect_types)]
        for _ in range(20):  # redraw the rare defect that changes (almost) no pixel
            out, mask = _apply_defect(
                rng, img, support, dtype, size, is_obj, lambda: _background_only(rng, size)
            )
            out8 = _to_uint8(out)
            mask &= np.any(out8 != _to_uint8(img), axis=-1)
            if mask.sum() >= 4:
                break
        test.append(out8)
        masks.append(mask.astype(np.uint8))
        types.append(dtype)
    labels = np.array([t != "good" for t in types], dtype=np.int64)
    descr = (
        f"Synthetic inspection set, kind={kind!r}, {size}x{size} px, random_state="
        f"{random_state!r}: {n_train} normal training images; {n_test} test images "
        f"({n_good} good, {n_anom} defective: {', '.join(sorted(set(types) - {'good'})) or 'none'}). "
        "Generated by skad.datasets.make_synthetic; masks are exact."
    )
    return Bunch(
        train_images=np.stack(train),
        test_images=np.stack(test),
        test_labels=labels,
        test_masks=np.stack(masks),
        test_defect_types=types,
        defect_types=sorted(set(types) - {"good"}),
        train_filenames=[f"synthetic/{kind}/train/good/{i:03d}" for i in range(n_train)],
        test_filenames=[f"synthetic/{kind}/test/{t}/{i:03d}" for i, t in enumerate(types)],
        test_mask_filenames=[None] * n_test,
        category=kind,
        DESCR=descr,
    )
