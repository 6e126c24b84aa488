"""N-pad on MVTec AD bottle (one-class) against PaDiM and PatchCore on the same features.

Reproduces, on one category and the extractor's defaults of the time npad.md was
measured (EfficientNet-Lite0 blocks 2+4, ImageNet statistics, pinned in ``features``;
256 -> 224, 3x3 local pooling), the N-pad paper's comparison (image AUROC, pixel
AUROC, PRO), its Table 3 ablation (A, B, A+B, A+C, A+B+C, full = A+B+C+shifting), the
shift-size sweep (Fig. 2c), the choices the paper leaves open (channel ranking
direction, role of beta, score neighbourhood, shift aggregation, top-k), and the
rotated/cropped variant of bottle (MAD-RTO, ``skad.datasets.make_rto``, seed 0).

Run from the repository root::

    python benchmarks/bench_npad.py                 # everything (about an hour on 2 cores)
    python benchmarks/bench_npad.py --part main     # NPad vs PaDiM vs PatchCore only

Scoring-only variants (modules subset, shifts, score neighbourhood, top-k) reuse the
fitted full model (their fitted state is the same) and only re-score the test set;
variants that change what fit learns (channels, beta) are refitted. Results go to
benchmarks/results/npad.md and npad.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skad.datasets import load_mvtec, make_rto  # noqa: E402
from skad.detectors import PaDiM, PatchCore  # noqa: E402
from skad.detectors.npad import NPad, window_offsets  # noqa: E402
from skad.features import PatchFeatureExtractor  # noqa: E402
from skad.metrics import image_auroc, pixel_auroc, pro_score  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------- helpers
def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms."""

    def __enter__(self):
        self.base = _rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self):
        return (self.peak - self.base) / 2**20


def features(root, variant):
    """Cached patch features of bottle: 'std' (256 -> 224 centre crop) or 'rto'."""
    path = CACHE / f"npad_bottle_{variant}.npz"
    if path.exists():
        z = np.load(path)
        return z["train"], z["test"], z["labels"], z["masks"]
    if variant == "std":
        data = load_mvtec(root, "bottle", resize=256, crop=224)
    else:  # MAD-RTO: random rotation (<= 15 deg) and random 224 crop of the 256 image
        data = make_rto(load_mvtec(root, "bottle", resize=256, crop=None), random_state=0)
    # pinned: the features results/npad.md was measured on (the defaults before #21);
    # the cache file's name does not hold the parameters
    ext = PatchFeatureExtractor(backbone="efficientnet_lite0", layers=("blocks.2", "blocks.4"),
                                normalize="imagenet").fit(data.train_images[:1])
    train, test = ext.transform(data.train_images), ext.transform(data.test_images)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=train, test=test, labels=data.test_labels, masks=data.test_masks)
    return train, test, data.test_labels, data.test_masks


def evaluate(det, test, labels, masks):
    """Scores + maps at the image size; metrics and predict speed."""
    t0 = time.perf_counter()
    scores, maps = det.score_and_map(test, output_size=masks.shape[1:])
    dt = time.perf_counter() - t0
    return {
        "image_auroc": float(image_auroc(labels, scores)),
        "pixel_auroc": float(pixel_auroc(masks, maps)),
        "pro": float(pro_score(masks, maps)),
        "predict_s": dt,
        "predict_img_s": len(test) / dt,
    }


def fit_and_evaluate(name, det, data):
    train, test, labels, masks = data
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        det.fit(train)
        fit_s = time.perf_counter() - t0
        row = evaluate(det, test, labels, masks)
    row.update(name=name, fit_s=fit_s, fit_img_s=len(train) / fit_s, peak_mib=mem.mib)
    print(json.dumps(row), flush=True)
    return row


def rescore(name, fitted, data, **params):
    """Score-time variant of a fitted NPad (shares its fitted state)."""
    v = copy.copy(fitted)
    v.set_params(**params)
    if "modules" in params:
        mods = frozenset(params["modules"])
        if not mods <= fitted.modules_:
            raise ValueError(f"{name}: modules {sorted(mods)} not fitted")
        v.modules_ = mods
    _, test, labels, masks = data
    row = evaluate(v, test, labels, masks)
    row.update(name=name, **{k: str(p) for k, p in params.items()})
    print(json.dumps(row), flush=True)
    return row


def machine():
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in cpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{os.cpu_count()} cores ({model}), torch {torch.__version__}, " \
           f"{torch.get_num_threads()} torch threads"


# --------------------------------------------------------------------------- parts
def part_main(data, seed):
    npad = NPad(random_state=seed)
    rows = [fit_and_evaluate("NPad (default)", npad, data)]
    rows.append(fit_and_evaluate("PaDiM (100 random ch.)", PaDiM(random_state=seed), data))
    rows.append(fit_and_evaluate("PaDiM (all 152 ch.)",
                                 PaDiM(n_features=152, random_state=seed), data))
    rows.append(fit_and_evaluate("PatchCore (1 % coreset)",
                                 PatchCore(coreset_ratio=0.01, random_state=seed), data))
    return rows, npad


def part_ablation(data, seed, fitted=None, calibration="auto"):
    # calibration sets offset_ only (no AUROC depends on it): "in_sample" saves the
    # five cross-fits of the default
    if fitted is None:
        fitted = NPad(random_state=seed, calibration=calibration).fit(data[0])
    rows = []
    for name, mods, shift in [("A (Exp. 1)", "A", 0), ("B (Exp. 2)", "B", 0),
                              ("A+B (Exp. 3)", "AB", 0), ("A+C (Exp. 4)", "AC", 0),
                              ("A+B+C (Exp. 5)", "ABC", 0), ("full: A+B+C+D", "ABC", 4)]:
        rows.append(rescore(name, fitted, data, modules=mods, max_shift=shift))
    for k in (1, 2, 3):
        rows.append(rescore(f"A+B+C, shift {k}", fitted, data, max_shift=k))
    rows.append(rescore("A+B+C, shift 4, min", fitted, data, max_shift=4,
                        shift_aggregation="min"))
    rows.append(rescore("A+B+C, shift 4, axes", fitted, data, max_shift=4,
                        shift_directions="axes"))
    rows.append(rescore("A+B+C, shift 1 x 1.0 pos.", fitted, data, max_shift=1,
                        shift_step=1.0))
    for s in (1, 3, 5):  # score-time choices, without shifting (cheaper)
        rows.append(rescore(f"A+B+C, score_neighborhood={s}", fitted, data, max_shift=0,
                            score_neighborhood=s))
    for k in (1, 50):
        rows.append(rescore(f"A+B+C, top_k={k}", fitted, data, max_shift=0, top_k=k))
    return rows, fitted


def part_choices(data, seed):
    # fit-time choices, on module A + C without shifting (no k-means: cheaper refits)
    kw = dict(modules="AC", max_shift=0, random_state=seed)
    rows = [fit_and_evaluate("A+C, all 152 ch., beta temperature", NPad(**kw), data)]
    for order in ("fewest_nonzero", "most_nonzero"):
        rows.append(fit_and_evaluate(f"A+C, d=100 {order}",
                                     NPad(n_channels=100, channel_order=order, **kw), data))
    rows.append(fit_and_evaluate("A+C, beta_role=scale", NPad(beta_role="scale", **kw), data))
    rows.append(fit_and_evaluate("A+C, neighborhood_size=1 (no re-estimation)",
                                 NPad(neighborhood_size=1, **kw), data))
    return rows


def part_beta(data, seed):
    # neighbour weights exp(-D_B / beta): D_B between neighbouring positions is large
    # (median ~70 on bottle), so beta must be large before neighbours get weight;
    # beta = 1e6 is Table 5's uniform 1/n weighting.
    rows = []
    for beta in (4.0, 32.0, 256.0, 1e6):
        det = NPad(modules="AC", max_shift=0, beta=beta, random_state=seed)
        row = fit_and_evaluate(f"A+C, beta={beta:g} (temperature)", det, data)
        inner = det.weights_[1:-1, 1:-1]
        centre = window_offsets(det.neighborhood_size).index((0, 0))
        row["centre_weight"] = float(inner[..., centre].mean())
        rows.append(row)
    return rows


def part_rto(data, seed):
    fitted = NPad(random_state=seed)
    rows = [fit_and_evaluate("NPad (default)", fitted, data)]
    rows.append(fit_and_evaluate("NPad A, neighborhood_size=1 (PaDiM-like, all ch.)",
                                 NPad(modules="A", neighborhood_size=1, max_shift=0), data))
    for name, mods, shift in [("NPad A only", "A", 0), ("NPad A+C", "AC", 0),
                              ("NPad A+B+C", "ABC", 0)]:
        rows.append(rescore(name, fitted, data, modules=mods, max_shift=shift))
    rows.append(rescore("NPad, score_neighborhood=3", fitted, data, score_neighborhood=3))
    rows.append(fit_and_evaluate("PaDiM (100 random ch.)", PaDiM(random_state=seed), data))
    rows.append(fit_and_evaluate("PaDiM (all 152 ch.)",
                                 PaDiM(n_features=152, random_state=seed), data))
    rows.append(fit_and_evaluate("PatchCore (1 % coreset)",
                                 PatchCore(coreset_ratio=0.01, random_state=seed), data))
    return rows


def _table(rows, extra=()):
    head = ["variant", "I-AUROC", "P-AUROC", "PRO", *[e[0] for e in extra]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['image_auroc']:.4f}", f"{r['pixel_auroc']:.4f}",
                 f"{r['pro']:.4f}"]
        cells += [fmt(r) for _, fmt in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_SPEED = (
    ("fit img/s", lambda r: f"{r['fit_img_s']:.2f}" if "fit_img_s" in r else "-"),
    ("fit s", lambda r: f"{r['fit_s']:.0f}" if "fit_s" in r else "-"),
    ("predict img/s", lambda r: f"{r['predict_img_s']:.2f}"),
    ("peak MiB (fit+predict)", lambda r: f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"),
)


def report(paths, out):
    """Markdown tables of the JSON results (analysis is written below them by hand)."""
    parts = []
    for path in paths:
        res = json.loads(Path(path).read_text())
        parts.append(f"Run: `{res['command']}` ({res['date']}; {res['machine']}).")
        for key, title in [("main", "bottle, one-class: N-pad vs PaDiM vs PatchCore"),
                           ("ablation", "bottle: Table 3 ablation, shifts and score-time "
                                        "choices (re-scoring the fitted default model)"),
                           ("choices", "bottle: fit-time choices (module A + C, no shift)"),
                           ("beta", "bottle: beta sweep (module A + C, no shift)"),
                           ("rto", "bottle MAD-RTO (make_rto, seed 0)")]:
            if key in res:
                extra = _SPEED if key != "ablation" else _SPEED[2:3]
                if key == "beta":
                    extra = (("mean centre weight",
                              lambda r: f"{r['centre_weight']:.3f}"), *_SPEED[:2])
                parts.append(f"### {title}\n\n{_table(res[key], extra)}")
    Path(out).write_text("\n\n".join(parts) + "\n")
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    parser.add_argument("--part", nargs="+",
                        default=["main", "ablation", "choices", "beta", "rto"],
                        choices=["main", "ablation", "choices", "beta", "rto"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", default="auto",
                        help="NPad calibration in --part ablation without main")
    parser.add_argument("--out", default=str(RESULTS / "npad.json"))
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="only write the Markdown tables of these result files")
    args = parser.parse_args(argv)
    if args.report:
        return report(args.report, RESULTS / "npad_tables.md")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    results["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["command"] = "python benchmarks/bench_npad.py " + " ".join(argv or sys.argv[1:])
    std = features(args.root, "std")
    fitted = None
    if "main" in args.part:
        results["main"], fitted = part_main(std, args.seed)
    if "ablation" in args.part:
        results["ablation"], fitted = part_ablation(std, args.seed, fitted, args.calibration)
    if "choices" in args.part:
        results["choices"] = part_choices(std, args.seed)
    if "beta" in args.part:
        results["beta"] = part_beta(std, args.seed)
    if "rto" in args.part:
        results["rto"] = part_rto(features(args.root, "rto"), args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
