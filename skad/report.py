"""Report writer behind ``skad benchmark``: a :class:`~skad.benchmark.BenchmarkResult`
rendered as ``results.csv``, ``scores.csv``, ``report.html`` and ``report.md``.

:func:`write_report` adds ROC / PRO curves and heatmap overlays of the best and worst
cases of each detector (PNG files in ``figures/``, linked relatively, so the folder can be
moved or served as is). The run itself is :mod:`skad.benchmark` (its names are
re-exported here, where they lived before).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from .benchmark import (
    RESULT_COLUMNS,
    _COLUMN_TITLES,
    BenchmarkResult,
    MEMORY_RESOLUTION_MB,
    DetectorRun,
    PeakMemory,
    machine_description,
    run_benchmark,
)

__all__ = [
    "BenchmarkResult",
    "DetectorRun",
    "PeakMemory",
    "machine_description",
    "run_benchmark",
    "write_report",
]

_HIGHER_IS_BETTER = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "predict_img_per_s",
                     "score_img_per_s")
# peak memory is a lower bound (resident pages added; PeakMemory): shown, not ranked
_LOWER_IS_BETTER = ("fit_s",)


def _fmt(value, column):
    if isinstance(value, str):
        return value
    if value is None or not np.isfinite(value):
        return "-"
    if column in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        return f"{value:.3f}"
    if column == "fit_s":
        return f"{value:.2f}"
    if column == "peak_mem_mb" and value < MEMORY_RESOLUTION_MB:
        return f"<{MEMORY_RESOLUTION_MB:g}"
    return f"{value:.1f}"


def _best_rows(table):
    """Column -> index of the best finite value (for bold marking)."""
    best = {}
    for col in _HIGHER_IS_BETTER + _LOWER_IS_BETTER:
        vals = pd.to_numeric(table[col], errors="coerce")
        if vals.notna().sum() >= 2:
            best[col] = vals.idxmax() if col in _HIGHER_IS_BETTER else vals.idxmin()
    return best


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
    "peak resident memory added while the detector fitted and scored ({method}; a lower "
    "bound, '<1' below its 1 MB resolution, not ranked). "
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
        # parameters the data made the detector clip (skad.benchmark._clip_notes)
        notes = "".join(f'<p class="note">note: {esc(n)}</p>' for n in run.notes)
        sections.append(
            f'<section class="detector" id="det-{esc(_slug(run.name))}"><h3>{esc(run.name)}</h3>'
            f'<p class="params">{esc(p or "(default parameters)")}</p>{notes}'
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
.note {{ font-size: 0.85em; color: #7a5200; }}
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
        "rss": "process high-water mark after freed heap is returned to the system, Linux",
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
        lines += [f"note: {n}  " for n in run.notes] + ([""] if run.notes else [])
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
