"""MemSeg on MVTec AD bottle (one-class) beside PatchCore 10 % and PaDiM, plus ablations.

One run, 2 torch threads, EfficientNet-Lite0 for every method:

- ``default``: MemSeg with its default budget (training on the 209 train/good images,
  DTD textures and the foreground mask for the simulation, as the paper and its
  authors' code do for bottle): image / pixel AUROC, PRO, pixel AP, fit seconds and
  predict images/s end to end (images in, labels out);
- ``baselines``: PatchCore 10 % and PaDiM fitted on the cached default features
  (the extractor's defaults, named in the results file's header; memseg_bottle.md's
  were measured with the pre-#21 ones: blocks 2 + 4, ImageNet statistics), their predict images/s end to end timed
  in alternation with MemSeg's;
- ``table5`` / ``table3``: the paper's module and simulation ablations at a reduced
  budget (``--ablation-iter`` steps each), every row with the same seed.

Usage::

    python benchmarks/bench_memseg.py [--only default baselines table5 table3]
        [--max-iter N] [--ablation-iter N] [--name memseg_bottle]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

THREADS = 2
DTD = C.DATA / "textures" / "dtd"



def synthesizer(**params):
    from skad.synthesis import AnomalySynthesizer

    # bottle: dark bottle on a light background (the authors' code masks bottle too)
    base = {"texture_source": str(DTD), "use_foreground": True, "foreground_invert": True}
    return AnomalySynthesizer(**{**base, **params})


SEED = 0  # --seed


def memseg(synth=None, **params):
    from skad.detectors import MemSeg

    return MemSeg(synthesizer=synth or synthesizer(), random_state=SEED, device="cpu",
                  **params)


def run_memseg(name, data, synth=None, **params):
    det = memseg(synth, **params)
    t = time.perf_counter()
    det.fit(data.train_images)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    raw_scores, raw = det.score_and_map(data.test_images)
    score_s = time.perf_counter() - t
    size = data.test_masks.shape[1:]
    from skad._kernels.maps import resize_smooth

    scores, maps = raw_scores, resize_smooth(raw, size, 0.0)
    row = {"detector": name, **C.metrics(scores, maps, data.test_labels, data.test_masks),
           "fit_s": fit_s, "n_iter": det.n_iter_, "score_ips": len(maps) / score_s,
           "loss_first_last": f"{det.loss_history_[0]:.3f} -> {det.loss_history_[-1]:.3f}"}
    # smoothed maps (sigma = 4 px, as the patch detectors) from the same raw maps
    sm = resize_smooth(raw, size, 4.0)
    row["pixel_auroc_sigma4"] = C.metrics(scores, sm, data.test_labels, data.test_masks)[
        "pixel_auroc"]
    print(row, flush=True)
    return row, det


def run_patch(name, det, ext, train_feats, test_feats, data):
    from skad import make_pipeline

    t = time.perf_counter()
    det.fit(train_feats)
    fit_s = time.perf_counter() - t
    scores, maps = det.score_and_map(test_feats, output_size=data.test_masks.shape[1:])
    row = {"detector": name, **C.metrics(scores, maps, data.test_labels, data.test_masks),
           "fit_s": fit_s}
    print(row, flush=True)
    return row, make_pipeline(ext, det)



TABLE5 = [  # memory, multi-scale, spatial attention, coordinate attention
    ("T5: none", dict(use_memory=False, use_multiscale=False, use_spatial_attention=False,
                      use_coordinate_attention=False)),
    ("T5: memory", dict(use_multiscale=False, use_spatial_attention=False,
                        use_coordinate_attention=False)),
    ("T5: memory+MS+CA", dict(use_spatial_attention=False)),
    ("T5: memory+MS+SA", dict(use_coordinate_attention=False)),
    ("T5: memory+SA+CA", dict(use_multiscale=False)),
    ("T5: all", {}),
]
TABLE3 = [
    ("T3: w/o texture", dict(anomaly_types=("structure",))),
    ("T3: w/o structure", dict(anomaly_types=("texture",))),
    ("T3: w/o foreground", dict(use_foreground=False)),
]


def main():
    import torch

    from skad.detectors import PaDiM, PatchCore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None,
                    help="parts: default, baselines, table5, table3")
    ap.add_argument("--max-iter", type=int, default=None, help="default row's steps")
    ap.add_argument("--ablation-iter", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--name", default="memseg_bottle")
    ap.add_argument("--seed", type=int, default=0, help="MemSeg random_state of every row")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="ablation rows to run (their exact names); default all")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in benchmarks/results/<name>.json")
    args = ap.parse_args()
    global SEED
    SEED = args.seed
    torch.set_num_threads(THREADS)
    only = set(args.only or ["default", "baselines"])
    data = C.bottle_data()
    rows, models, notes = [], {}, []
    if args.append and (C.RESULTS / f"{args.name}.json").exists():
        import json

        old = json.loads((C.RESULTS / f"{args.name}.json").read_text())
        rows = old["rows"]
        notes = old.get("notes", [])
    extra = {} if args.max_iter is None else {"max_iter": args.max_iter}
    if "default" in only:
        row, det = run_memseg("MemSeg (defaults)" if not extra else
                              f"MemSeg max_iter={args.max_iter}", data, **extra)
        rows.append(row)
        models["MemSeg"] = det
    if "baselines" in only:
        ext = C._extractor().fit(data.train_images[:1])
        train = C.cached_features(data.train_images, "bottle_train")
        test = C.cached_features(data.test_images, "bottle_test")
        for name, det in (("PatchCore 10%", PatchCore(coreset_ratio=0.1, random_state=0,
                                                       device="cpu")),
                          ("PaDiM (100 ch)", PaDiM(random_state=0, device="cpu"))):
            row, pipe = run_patch(name, det, ext, train, test, data)
            rows.append(row)
            models[name] = pipe
    if models:
        ips, times = C.paired_predict(models, data.test_images, args.pairs)
        for r in rows:
            key = "MemSeg" if r["detector"].startswith("MemSeg") else r["detector"]
            if key in ips:
                r["predict_ips_end_to_end"] = ips[key]
        notes.append(f"predict images/s end to end: median of {args.pairs} alternating "
                     "rounds over the 83 test images; per-round seconds: " + "; ".join(
                         f"{k}: " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    for part, table, to_synth in (("table5", TABLE5, False), ("table3", TABLE3, True)):
        if part not in only:
            continue
        note = f"{part}: every row max_iter={args.ablation_iter}."
        if note not in notes:
            notes.append(note)
        for name, params in table:
            if args.rows is not None and name not in args.rows:
                continue
            if to_synth:
                row, _ = run_memseg(name, data, synthesizer(**params),
                                    max_iter=args.ablation_iter)
            else:
                row, _ = run_memseg(name, data, max_iter=args.ablation_iter, **params)
            row["seed"] = SEED
            rows.append(row)
            _write(args, rows, notes)  # a partial run leaves its rows
    _write(args, rows, notes)


def _write(args, rows, notes):
    import json
    import shlex

    command = "python benchmarks/bench_memseg.py " + shlex.join(sys.argv[1:])
    notes = list(notes)
    if args.append:  # one table from several invocations: list each, in order
        if f"ran: `{command}`" not in notes:
            n_ran = sum(n.startswith("ran: ") for n in notes)
            notes.insert(n_ran, f"ran: `{command}`")
        command = "the invocations listed under 'ran:' below, in that order"
    fixed = ("MemSeg rows: synthesizer = AnomalySynthesizer(texture_source=DTD, "
             "use_foreground=True, foreground_invert=True) unless a T3 row says "
             "otherwise; maps (160 px) upsampled bilinearly to 224 px, "
             "unsmoothed (sigma=0); "
             "pixel_auroc_sigma4 = the same maps Gaussian-smoothed with sigma 4 px. "
             "score_ips = score_and_map images/s inside the benchmark process.")
    C.write_results(args.name, rows, command, notes="\n\n".join(notes + [fixed]))
    path = C.RESULTS / f"{args.name}.json"
    blob = json.loads(path.read_text())
    blob["notes"] = notes
    path.write_text(json.dumps(blob, indent=1, default=str))


if __name__ == "__main__":
    main()
