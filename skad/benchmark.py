"""Benchmark runner behind ``skad benchmark``.

:func:`run_benchmark` extracts patch features once per backbone, fits every requested
detector on the shared features, scores the evaluation set (scores and full-resolution
anomaly maps), and measures accuracy (image AUROC, pixel AUROC, PRO, pixel AP), fit time,
prediction throughput and peak memory, into a :class:`BenchmarkResult`. Rendering it
(CSV, HTML, Markdown, figures) is :func:`skad.report.write_report`'s job.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

__all__ = [
    "BenchmarkResult",
    "DetectorRun",
    "PeakMemory",
    "machine_description",
    "run_benchmark",
]

SETTINGS = ("one-class", "blind", "blind-mix", "blind-test", "blind-ano")

RESULT_COLUMNS = [
    "detector",
    "image_auroc",
    "pixel_auroc",
    "pro",
    "pixel_ap",
    "fit_s",
    "predict_img_per_s",
    "score_img_per_s",
    "peak_mem_mb",
    "error",
]

_COLUMN_TITLES = {
    "detector": "detector",
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pro": "PRO (FPR<=0.3)",
    "pixel_ap": "pixel AP",
    "fit_s": "fit s",
    "predict_img_per_s": "predict images/s",
    "score_img_per_s": "detector images/s",
    "peak_mem_mb": "peak memory MB",
    "error": "error",
}


# --------------------------------------------------------------------------- memory
#: peaks below this (MB) are not resolved by the resident-memory measure (PeakMemory)
MEMORY_RESOLUTION_MB = 1.0


def _release_free_heap():
    """Return freed heap pages to the system (glibc); no-op elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager measuring the peak resident memory added inside the block (MB).

    On Linux the kernel's high-water mark of the process (``VmHWM``) is reset on entry
    (``/proc/self/clear_refs``), so the peak covers numpy *and* torch allocations; the
    result is that peak minus the resident memory on entry. Freed heap memory is handed
    back to the system first (``gc.collect`` and glibc's ``malloc_trim(0)``): otherwise
    the block reuses pages freed by earlier work (a previous detector) that are still
    resident, and its peak reads as about 0. What stays out of reach: pages of
    allocator pools kept resident anyway (small objects), so values under
    :data:`MEMORY_RESOLUTION_MB` are not resolved. Elsewhere it falls back to
    :mod:`tracemalloc` (numpy allocations only), and ``method`` says which was used.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.benchmark import PeakMemory
    >>> with PeakMemory() as mem:
    ...     a = np.ones(10_000_000); del a
    >>> mem.peak_mb > 50
    True
    """

    def __init__(self):
        self.peak_mb = float("nan")
        self.method = None

    @staticmethod
    def _status_kb(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise OSError(f"{key} not in /proc/self/status")

    def __enter__(self):
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._start_kb = self._status_kb("VmRSS")
            self.method = "rss"
        except OSError:
            tracemalloc.start()
            self.method = "tracemalloc"
        return self

    def __exit__(self, *exc):
        if self.method == "rss":
            self.peak_mb = max(0.0, (self._status_kb("VmHWM") - self._start_kb) / 1024.0)
        else:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            self.peak_mb = peak / 2**20
        return False


def machine_description():
    """One line naming the CPU, its core count and the torch thread count.

    Returns
    -------
    text : str

    Examples
    --------
    >>> from skad.benchmark import machine_description
    >>> "cores" in machine_description()
    True
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        threads = f", torch threads {torch.get_num_threads()}"
        gpu = ", CUDA" if torch.cuda.is_available() else ""
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = gpu = ""
    return f"{cpu}, {os.cpu_count()} cores{threads}{gpu}"


# --------------------------------------------------------------------------- results
@dataclass
class DetectorRun:
    """One detector's outcome in a benchmark (row of ``results.csv`` plus its outputs)."""

    name: str
    params: dict
    input: str = "patches"
    scores: np.ndarray | None = None
    maps: np.ndarray | None = None
    cases: list = field(default_factory=list)
    map_range: tuple = (None, None)
    metrics: dict = field(default_factory=dict)
    fit_s: float = float("nan")
    score_s: float = float("nan")
    peak_mem_mb: float = float("nan")
    error: str = ""
    notes: list = field(default_factory=list)


@dataclass
class BenchmarkResult:
    """Everything :func:`skad.report.write_report` needs: per-detector runs and the evaluation set.

    Attributes
    ----------
    runs : list of DetectorRun
    images : ndarray (n, H, W, 3) or (n, H, W)
        Evaluation images (for overlays).
    labels : ndarray (n,) of {0, 1} or None
    masks : ndarray (n, H, W) of {0, 1} or None
    filenames : list of str
    info : dict
        Data set, setting, backbone, timing of the shared feature extraction, machine,
        command, date.
    """

    runs: list
    images: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None
    filenames: list
    info: dict

    def table(self):
        """The results as a DataFrame, one row per detector (columns of ``results.csv``)."""
        n_eval = len(self.filenames)
        extract_per_img = self.info.get("extract_eval_s", 0.0) / max(n_eval, 1)
        rows = []
        for run in self.runs:
            score_per_img = run.score_s / max(n_eval, 1)
            # an image detector runs its own backbone inside score_s
            shared = extract_per_img if run.input == "patches" else 0.0
            rows.append(
                {
                    "detector": run.name,
                    "image_auroc": run.metrics.get("image_auroc", np.nan),
                    "pixel_auroc": run.metrics.get("pixel_auroc", np.nan),
                    "pro": run.metrics.get("pro", np.nan),
                    "pixel_ap": run.metrics.get("pixel_ap", np.nan),
                    "fit_s": run.fit_s,
                    "predict_img_per_s": 1.0 / (score_per_img + shared)
                    if np.isfinite(score_per_img)
                    else np.nan,
                    "score_img_per_s": 1.0 / score_per_img
                    if np.isfinite(score_per_img) and score_per_img > 0
                    else np.nan,
                    "peak_mem_mb": run.peak_mem_mb,
                    "error": run.error,
                }
            )
        return pd.DataFrame(rows, columns=RESULT_COLUMNS)


@contextmanager
def _clip_notes(notes):
    """Collect the :class:`~skad.detectors.ClippedParameterWarning` raised inside into
    ``notes`` (the report and the CLI show them beside the detector) instead of
    printing them; other warnings pass through unchanged.

    The benchmark chooses the data (the built-in synthetic set has fewer training images
    than SPADE's default ``n_neighbors=50``, say), so a clipped parameter is a fact about
    the run to report with its results, not a warning to the user about their settings.
    """
    from .detectors import ClippedParameterWarning

    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ClippedParameterWarning)
            yield
    finally:
        for w in caught:
            if not issubclass(w.category, ClippedParameterWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       source=w.source)
            elif str(w.message) not in notes:
                notes.append(str(w.message))


# --------------------------------------------------------------------------- protocol
def _protocol(data, setting):
    """Fit set, evaluation set (images, labels, masks, file names) and a description."""
    labels = getattr(data, "test_labels", None)
    masks = getattr(data, "test_masks", None)
    test_names = list(getattr(data, "test_filenames", None) or range(len(data.test_images)))
    if setting == "one-class":
        train = data.train_images
        if train is None or len(train) == 0:
            raise ValueError(
                "setting: the data set has no normal training images, so the one-class "
                "setting cannot run; use a blind setting (--setting blind)"
            )
        desc = f"one-class: fit on {len(train)} normal images, score {len(data.test_images)}"
        return train, data.test_images, labels, masks, test_names, desc
    from .datasets import blind_setting

    which = {"blind": "test", "blind-test": "test", "blind-mix": "mix", "blind-ano": "ano"}[
        setting
    ]
    images, labels, masks = blind_setting(data, which)
    if which == "mix":
        train_names = list(getattr(data, "train_filenames", None) or range(len(data.train_images)))
        names = [f"train/{n}" for n in train_names] + [f"test/{n}" for n in test_names]
    elif which == "ano":
        names = [n for n, lab in zip(test_names, np.asarray(data.test_labels)) if lab == 1]
    else:
        names = test_names
    desc = f"blind ({which}): fit on the {len(images)} scored images themselves, no labels"
    return images, images, labels, masks, names, desc


def _changed_params(estimator):
    """Parameters that differ from the estimator's own defaults (what the report shows)."""
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(type(estimator).__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    out = {}
    for key, value in estimator.get_params(deep=False).items():
        default = defaults.get(key, inspect.Parameter.empty)
        if hasattr(value, "get_params"):
            out[key] = value  # nested estimators are shown with their own repr
        elif default is inspect.Parameter.empty or repr(value) != repr(default):
            out[key] = value
    return out


def _metrics(labels, masks, scores, maps):
    from . import metrics as M

    out = {}
    if labels is not None and len(np.unique(labels)) == 2 and scores is not None:
        out["image_auroc"] = float(M.image_auroc(labels, scores))
    if masks is not None and maps is not None and masks.any() and not masks.all():
        out["pixel_auroc"] = float(M.pixel_auroc(masks, maps))
        out["pro"] = float(M.pro_score(masks, maps))
        out["pixel_ap"] = float(M.pixel_ap(masks, maps))
    return out


def _cases(scores, labels):
    """Indices (and captions) of the best and worst cases of one detector.

    Best detection: the anomalous image scored highest; worst miss: the anomalous image
    scored lowest; worst false alarm: the normal image scored highest. Without labels,
    the highest and lowest scored images.
    """
    if labels is not None and (labels == 1).any():
        anom = np.flatnonzero(labels == 1)
        order = anom[np.argsort(-scores[anom], kind="stable")]
        cases = [("best detection (highest-scored defective image)", order[0]),
                 ("worst miss (lowest-scored defective image)", order[-1])]
        normal = np.flatnonzero(labels == 0)
        if normal.size:
            cases.append(("worst false alarm (highest-scored normal image)",
                          normal[np.argmax(scores[normal])]))
        return cases
    order = np.argsort(-scores, kind="stable")
    return [("highest score", order[0]), ("lowest score", order[-1])]


def _progress(iterable, *, desc, disable, total=None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=disable, total=total, leave=False)


def run_benchmark(
    data,
    detectors,
    *,
    backbone="efficientnet_lite0",
    input_size=224,
    setting="one-class",
    random_state=0,
    params=None,
    specs=None,
    data_description="",
    command="",
    verbose=True,
    extractor_params=None,
    recipes=True,
):
    """Fit and score every detector on features extracted once, and measure them.

    Parameters
    ----------
    data : Bunch
        As returned by :mod:`skad.datasets` loaders: ``train_images``, ``test_images``,
        ``test_labels``, ``test_masks`` (or None), ``test_filenames``.
    detectors : list of str
        Registered names (:func:`skad.registry.available_detectors`).
    backbone : str, default="efficientnet_lite0"
        Backbone of the shared :class:`~skad.features.PatchFeatureExtractor`.
    input_size : int, default=224
        Extractor input size.
    setting : {"one-class", "blind", "blind-mix", "blind-test", "blind-ano"}
        ``one-class``: fit on the training normals, score the test set. ``blind``
        (= ``blind-test``): fit on the test set without labels and score it;
        ``blind-mix``: train + test together; ``blind-ano``: the defective test images
        only (PatchCluster's settings, :func:`skad.datasets.blind_setting`).
    random_state : int, default=0
        Set on every detector with a ``random_state``.
    params : dict of str -> dict, optional
        Extra parameters per detector name.
    specs : dict, optional
        Registry (:func:`skad.registry.available_detectors`).
    data_description, command : str
        Written into the report.
    verbose : bool, default=True
        Progress bars (feature extraction, detectors).
    extractor_params : dict, optional
        Extra :class:`~skad.features.PatchFeatureExtractor` parameters.
    recipes : bool, default=True
        Give a patch detector with a feature recipe (``DetectorSpec.features``, e.g.
        PaDiM's ``pooling=1, upsample="nearest"``) features extracted with it (once per
        distinct recipe; shown in its row's parameters as ``features``); ``False``:
        every patch detector gets the shared features.

    Returns
    -------
    result : BenchmarkResult
        A detector that raises is recorded with its error message (``run.error``) and
        the others still run.

    Examples
    --------
    >>> from skad.datasets import make_synthetic
    >>> from skad.benchmark import run_benchmark
    >>> data = make_synthetic(n_train=8, n_test=8, image_size=64, random_state=0)
    >>> res = run_benchmark(data, ["lof"], input_size=64, verbose=False)
    >>> list(res.table()["detector"])
    ['lof']
    """
    from .features import PatchFeatureExtractor
    from .pipeline import make_pipeline
    from .registry import (available_detectors, get_detector, make_detector_steps,
                           recipe_extractor)

    if setting not in SETTINGS:
        raise ValueError(f"setting: expected one of {SETTINGS}; got {setting!r}")
    specs = available_detectors() if specs is None else specs
    for name in detectors:  # fail fast on unknown names, before any work
        get_detector(name, specs)
    params = dict(params or {})
    fit_images, eval_images, labels, masks, names, protocol = _protocol(data, setting)
    blind = setting != "one-class"

    extractor = PatchFeatureExtractor(
        backbone=backbone, input_size=input_size, verbose=verbose, **(extractor_params or {})
    )
    t0 = time.perf_counter()
    extractor.fit(fit_images)  # builds the backbone and loads its weights
    backbone_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_feats = extractor.transform(fit_images)
    extract_fit_s = time.perf_counter() - t0
    same_set = blind and fit_images is eval_images
    if same_set:
        # the scored set is the fitted set: its extraction is part of "predict" too
        eval_feats, extract_eval_s = fit_feats, extract_fit_s
    else:
        t0 = time.perf_counter()
        eval_feats = extractor.transform(eval_images)
        extract_eval_s = time.perf_counter() - t0
    eval_images = np.asarray(eval_images)
    output_size = tuple(int(s) for s in eval_images.shape[1:3])
    labels = None if labels is None else np.asarray(labels).astype(int)
    masks = None if masks is None else np.asarray(masks).astype(np.uint8)

    shared = {(): (fit_feats, eval_feats)}  # features per feature recipe

    def recipe_features(name):
        ext = recipe_extractor(name, extractor, specs)
        key = tuple(sorted((k, repr(v)) for k, v in get_detector(name, specs).features.items()))
        if ext is extractor:
            key = ()
        if key not in shared:
            ext.fit(fit_images)
            fit = ext.transform(fit_images)
            shared[key] = (fit, fit if same_set else ext.transform(eval_images))
        return key, shared[key]

    runs = []
    memory_method = None
    bar = _progress(detectors, desc="detectors", disable=not verbose)
    for name in bar:
        if verbose:
            bar.set_postfix_str(name)
        steps = make_detector_steps(
            name, params=params.get(name), random_state=random_state, blind=blind, specs=specs,
            extractor=extractor,
        )
        spec = get_detector(name, specs)
        run = DetectorRun(spec.name, _changed_params(steps[-1]), input=spec.input)
        head = make_pipeline(*steps) if len(steps) > 1 else steps[0]
        # patch detectors share the features (one set per feature recipe); image
        # detectors hold their own extractor
        X_fit, X_eval = fit_images, eval_images
        if spec.input == "patches":
            key, (X_fit, X_eval) = recipe_features(name) if recipes else ((), shared[()])
            if key:
                run.params["features"] = ", ".join(f"{k}={v}" for k, v in key)
        try:
            with PeakMemory() as mem, _clip_notes(run.notes):
                t0 = time.perf_counter()
                head.fit(X_fit)
                run.fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                if hasattr(head, "score_and_map"):
                    scores, maps = head.score_and_map(X_eval, output_size=output_size)
                else:
                    scores, maps = -np.asarray(head.score_samples(X_eval)), None
                run.score_s = time.perf_counter() - t0
            run.peak_mem_mb = mem.peak_mb
            memory_method = mem.method
            run.scores = np.asarray(scores, dtype=np.float64)
            maps = None if maps is None else np.asarray(maps, dtype=np.float32)
            run.metrics = _metrics(labels, masks, run.scores, maps)
            # the report shows a few cases; all maps are kept only for the PRO curve
            run.cases = [(cap, idx, None if maps is None else maps[idx])
                         for cap, idx in _cases(run.scores, labels)]
            if maps is not None:
                run.map_range = (float(maps.min()), float(maps.max()))
                run.maps = maps if masks is not None and masks.any() else None
        except (ValueError, TypeError, RuntimeError, MemoryError, np.linalg.LinAlgError) as exc:
            run.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        runs.append(run)

    info = {
        "data": data_description,
        "setting": setting,
        "protocol": protocol,
        "n_fit": len(fit_images),
        "n_eval": len(eval_images),
        "n_anomalous": None if labels is None else int(labels.sum()),
        "image_size": output_size,
        "backbone": backbone,
        "input_size": input_size,
        "feature_shape": tuple(int(s) for s in np.shape(fit_feats)[1:]),
        "backbone_load_s": backbone_load_s,
        "extract_fit_s": extract_fit_s,
        "extract_eval_s": extract_eval_s,
        "random_state": random_state,
        "machine": machine_description(),
        "memory_method": memory_method,
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return BenchmarkResult(runs, eval_images, labels, masks, [str(n) for n in names], info)


# --------------------------------------------------------------------------- report
