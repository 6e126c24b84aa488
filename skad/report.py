"""Benchmark runner and report writer behind ``skad benchmark``.

:func:`run_benchmark` extracts patch features once per backbone, fits every requested
detector on the shared features, scores the evaluation set (scores and full-resolution
anomaly maps), and measures accuracy (image AUROC, pixel AUROC, PRO, pixel AP), fit time,
prediction throughput and peak memory. :func:`write_report` writes ``results.csv``,
``scores.csv``, ``report.html`` and ``report.md`` with ROC / PRO curves and heatmap
overlays of the best and worst cases of each detector (PNG files in ``figures/``, linked
relatively, so the folder can be moved or served as is).
"""

from __future__ import annotations

import gc
import html
import os
import platform
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "BenchmarkResult",
    "DetectorRun",
    "PeakMemory",
    "machine_description",
    "run_benchmark",
    "write_report",
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
class PeakMemory:
    """Context manager measuring the peak resident memory added inside the block (MB).

    On Linux the kernel's high-water mark of the process (``VmHWM``) is reset on entry
    (``/proc/self/clear_refs``), so the peak covers numpy *and* torch allocations; the
    result is that peak minus the resident memory on entry. Elsewhere it falls back to
    :mod:`tracemalloc` (numpy allocations only), and ``method`` says which was used.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.report import PeakMemory
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
        gc.collect()
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
    >>> from skad.report import machine_description
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


@dataclass
class BenchmarkResult:
    """Everything :func:`write_report` needs: per-detector runs and the evaluation set.

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
    >>> from skad.report import run_benchmark
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
            with PeakMemory() as mem:
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
_HIGHER_IS_BETTER = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "predict_img_per_s",
                     "score_img_per_s")
_LOWER_IS_BETTER = ("fit_s", "peak_mem_mb")


def _fmt(value, column):
    if isinstance(value, str):
        return value
    if value is None or not np.isfinite(value):
        return "-"
    if column in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        return f"{value:.3f}"
    if column == "fit_s":
        return f"{value:.2f}"
    return f"{value:.1f}"


def _best_rows(table):
    """Column -> index of the best finite value (for bold marking)."""
    best = {}
    for col in _HIGHER_IS_BETTER + _LOWER_IS_BETTER:
        vals = pd.to_numeric(table[col], errors="coerce")
        if vals.notna().sum() >= 2:
            best[col] = vals.idxmax() if col in _HIGHER_IS_BETTER else vals.idxmin()
    return best


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


def _short(name, parts=4):
    """The last ``parts`` components of a file path (figure titles stay readable)."""
    pieces = str(name).replace("\\", "/").split("/")
    return str(name) if len(pieces) <= parts else ".../" + "/".join(pieces[-parts:])


def _slug(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _axes(figsize):
    # a bare Figure: no pyplot, no display, the global backend untouched
    from matplotlib.figure import Figure

    return Figure(figsize=figsize).add_subplot(1, 1, 1)


def _make_figures(result, fig_dir):
    """Write the ROC / PRO curves and the case overlays as PNG; return relative paths."""
    from . import plot

    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in [*fig_dir.glob("*_case*.png"), fig_dir / "roc.png", fig_dir / "pro.png"]:
        old.unlink(missing_ok=True)  # figures of an earlier run in the same folder
    ok = [r for r in result.runs if not r.error]
    figures = {"curves": [], "cases": {}}
    labels, masks = result.labels, result.masks

    if labels is not None and len(np.unique(labels)) == 2 and ok:
        ax = _axes((5, 4.5))
        for run in ok:
            plot.plot_roc(labels, run.scores, ax=ax, label=run.name)
        ax.set_title("Image-level ROC")
        ax.figure.tight_layout()
        plot.save_png(ax, fig_dir / "roc.png")
        figures["curves"].append(("Image-level ROC", "figures/roc.png"))
    with_maps = [r for r in ok if r.maps is not None]
    if masks is not None and masks.any() and not masks.all() and with_maps:
        ax = _axes((5, 4.5))
        for run in with_maps:
            plot.plot_pro(masks, run.maps, ax=ax, label=run.name)
        ax.set_title("Per-region overlap (PRO), FPR <= 0.3")
        ax.figure.tight_layout()
        plot.save_png(ax, fig_dir / "pro.png")
        figures["curves"].append(("Per-region overlap (PRO) curve", "figures/pro.png"))

    for run in ok:
        entries = []
        # one colour scale per detector, so its best and worst cases compare directly
        vmin, vmax = run.map_range
        for j, (caption, idx, amap) in enumerate(run.cases):
            fname = f"{_slug(run.name)}_case{j}.png"
            ax = _axes((3.2, 3.4))
            mask = None if masks is None else masks[idx]
            title = f"{_short(result.filenames[idx])}\nscore {run.scores[idx]:.4g}"
            if amap is not None:
                plot.plot_anomaly_overlay(result.images[idx], amap, mask=mask, ax=ax,
                                          vmin=vmin, vmax=vmax)
            else:
                img = result.images[idx]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                if mask is not None and mask.any():  # ground truth only: no map to show
                    ax.contour(mask.astype(float), levels=[0.5], colors=["lime"], linewidths=1.2)
                ax.set_axis_off()
            ax.set_title(title, fontsize=8)
            ax.figure.tight_layout()
            plot.save_png(ax, fig_dir / fname, dpi=90)
            entries.append((caption, f"figures/{fname}", result.filenames[idx]))
        figures["cases"][run.name] = entries
    return figures


def _info_lines(info):
    feat = info.get("feature_shape")
    lines = [
        ("date", info.get("date", "")),
        ("command", info.get("command", "")),
        ("data", info.get("data", "")),
        ("protocol", info.get("protocol", "")),
        ("images", f"{info.get('n_eval')} scored ({info.get('n_anomalous')} defective), "
                   f"{info.get('image_size', ('?', '?'))[0]}x{info.get('image_size', ('?', '?'))[1]} px"),
        ("features", f"{info.get('backbone')} at {info.get('input_size')} px -> patch tensors "
                     f"{feat} (C, h, w), extracted once and shared by every detector"),
        ("feature extraction", f"{info.get('extract_fit_s', 0):.1f} s for the fitted images, "
                               f"{info.get('extract_eval_s', 0):.1f} s for the scored images "
                               f"(backbone loaded in {info.get('backbone_load_s', 0):.1f} s)"),
        ("machine", info.get("machine", "")),
        ("seed", str(info.get("random_state"))),
    ]
    if "total_s" in info:
        lines.append(("total time", f"{info['total_s']:.1f} s"))
    return lines


_COLUMN_NOTES = (
    "fit s: detector fit on the shared features (the backbone's share is in 'feature "
    "extraction'); predict images/s: end to end per scored image, backbone included; "
    "detector images/s: scoring and full-size maps on the shared features; peak memory MB: "
    "peak resident memory added while the detector fitted and scored ({method}). "
    "Bold: best in the column. '-': undefined (e.g. pixel metrics of an image-level detector)."
)


def _html(result, table, figures, params):
    esc = html.escape
    best = _best_rows(table)
    cols = [c for c in RESULT_COLUMNS if c != "error" or table["error"].any()]
    head = "".join(f"<th>{esc(_COLUMN_TITLES[c])}</th>" for c in cols)
    body = []
    for i, row in table.iterrows():
        cells = []
        for c in cols:
            text = esc(_fmt(row[c], c))
            if best.get(c) == i:
                text = f"<b>{text}</b>"
            cls = ' class="num"' if c not in ("detector", "error") else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f'<tr data-detector="{esc(row["detector"])}">{"".join(cells)}</tr>')
    info = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in _info_lines(result.info)
    )
    curves = "".join(
        f'<figure><img src="{esc(src)}" alt="{esc(title)}" width="500"><figcaption>'
        f"{esc(title)}</figcaption></figure>"
        for title, src in figures["curves"]
    )
    sections = []
    for run in result.runs:
        p = ", ".join(f"{k}={v!r}" for k, v in sorted(params.get(run.name, {}).items()))
        if run.error:
            content = f'<p class="error">failed: {esc(run.error)}</p>'
        else:
            content = "".join(
                f'<figure><img src="{esc(src)}" alt="{esc(run.name)}: {esc(cap)}" width="288">'
                f"<figcaption>{esc(cap)}</figcaption></figure>"
                for cap, src, _ in figures["cases"].get(run.name, [])
            )
        sections.append(
            f'<section class="detector" id="det-{esc(_slug(run.name))}"><h3>{esc(run.name)}</h3>'
            f'<p class="params">{esc(p or "(default parameters)")}</p>'
            f'<div class="cases">{content}</div></section>'
        )
    note = esc(_COLUMN_NOTES.format(method=_memory_note(result.info)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>skad benchmark report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
#results th {{ background: #f0f0f0; }}
.info th {{ background: #fafafa; font-weight: normal; color: #555; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 288px; }}
.params {{ font-family: monospace; font-size: 0.85em; color: #555; }}
.error {{ color: #b00; }}
.note {{ font-size: 0.85em; color: #555; max-width: 900px; }}
</style></head>
<body>
<h1>skad benchmark report</h1>
<table class="info">{info}</table>
<h2>Results</h2>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<p class="note">{note}</p>
<h2>Curves</h2>
<div class="curves">{curves or "<p>No curve: the scored set lacks two classes or masks.</p>"}</div>
<h2>Best and worst cases</h2>
{"".join(sections)}
<script>
// marks the page once every figure has decoded (used by the headless-browser test)
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.length > 0 && imgs.every(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-loaded", ok ? "all" : "missing");
  document.body.setAttribute("data-image-count", String(imgs.length));
}});
</script>
</body></html>
"""


def _memory_note(info):
    return {
        "rss": "process high-water mark, Linux",
        "tracemalloc": "tracemalloc, numpy allocations only",
    }.get(info.get("memory_method"), "not measured")


def _markdown(result, table, figures, params):
    cols = [c for c in RESULT_COLUMNS if c != "error" or table["error"].any()]
    best = _best_rows(table)
    lines = ["# skad benchmark report", ""]
    lines += [f"- **{k}**: {v}" for k, v in _info_lines(result.info)]
    lines += ["", "## Results", "", "| " + " | ".join(_COLUMN_TITLES[c] for c in cols) + " |",
              "|" + "|".join("---" if c in ("detector", "error") else "---:" for c in cols) + "|"]
    for i, row in table.iterrows():
        cells = []
        for c in cols:
            text = _fmt(row[c], c).replace("|", "\\|")
            cells.append(f"**{text}**" if best.get(c) == i else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _COLUMN_NOTES.format(method=_memory_note(result.info)), ""]
    if figures["curves"]:
        lines += ["## Curves", ""]
        lines += [f"![{title}]({src})" for title, src in figures["curves"]]
        lines.append("")
    lines += ["## Best and worst cases", ""]
    for run in result.runs:
        p = ", ".join(f"{k}={v!r}" for k, v in sorted(params.get(run.name, {}).items()))
        lines += [f"### {run.name}", "", f"`{p}`" if p else "(default parameters)", ""]
        if run.error:
            lines += [f"failed: {run.error}", ""]
            continue
        for cap, src, fname in figures["cases"].get(run.name, []):
            lines.append(f"![{run.name}: {cap}]({src}) {cap}: `{fname}`  ")
        lines.append("")
    return "\n".join(lines)


def write_report(result, out_dir):
    """Write ``results.csv``, ``scores.csv``, ``report.html``, ``report.md`` and figures.

    Parameters
    ----------
    result : BenchmarkResult
        From :func:`run_benchmark`.
    out_dir : str or os.PathLike
        Created if needed; PNG figures go to ``out_dir/figures/`` and are linked
        relatively from both reports.

    Returns
    -------
    paths : dict
        ``{"csv", "scores", "html", "md", "figures"}`` -> path.

    Examples
    --------
    >>> import tempfile
    >>> from skad.datasets import make_synthetic
    >>> from skad.report import run_benchmark, write_report
    >>> data = make_synthetic(n_train=8, n_test=8, image_size=64, random_state=0)
    >>> res = run_benchmark(data, ["lof"], input_size=64, verbose=False)
    >>> sorted(write_report(res, tempfile.mkdtemp()))
    ['csv', 'figures', 'html', 'md', 'scores']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    table = result.table()
    params = {r.name: r.params for r in result.runs}
    figures = _make_figures(result, fig_dir)

    paths = {
        "csv": out_dir / "results.csv",
        "scores": out_dir / "scores.csv",
        "html": out_dir / "report.html",
        "md": out_dir / "report.md",
        "figures": fig_dir,
    }
    table.to_csv(paths["csv"], index=False)
    scores = pd.DataFrame({"file": result.filenames})
    if result.labels is not None:
        scores["label"] = result.labels
    for run in result.runs:
        if run.scores is not None:
            scores[run.name] = run.scores
    scores.to_csv(paths["scores"], index=False)
    paths["html"].write_text(_html(result, table, figures, params), encoding="utf-8")
    paths["md"].write_text(_markdown(result, table, figures, params), encoding="utf-8")
    return paths
