"""Lv et al. (ImageAligner + LocalOCC) on MVTec AD bottle and bottle-RTO.

Parts (``--part``, in priority order):

- ``oneclass``: bottle (256 -> 224 centre crop), LocalOCC with its defaults and the
  DGM pasting natural images (``../shared/data/textures/natural``): image / pixel AUROC,
  PRO, pixel AP, fit seconds, predict images/s end to end (images in, maps at 224 out).
- ``rto_align``: bottle-RTO (``make_rto(load_mvtec(resize=256, crop=None), seed 0)``):
  PaDiM and PatchCore 10 % with and without an ImageAligner in front; pixel metrics of
  the aligned runs are computed after bringing the maps back to each image's frame
  (``inverse_transform_maps``), so every run is scored against the same masks.
- ``table2``: bottle-RTO, LocalOCC variants (i) IMM+DGM, (ii) DGM, (iii) DGM+AUG,
  (iv) IMM, (v) neither, (vi) AUG, at the default budget.
- ``table1``: feature-map target vs one global vector, on bottle and bottle-RTO (no IMM).
- ``cost``: aligner + LocalOCC default fit on bottle, and end-to-end predict images/s.
- ``speed``: predict speed on an idle machine, paired: aligner + LocalOCC
  ``predict`` (images in, labels out), the same with maps at 224 px back in each
  image's frame, and the default extractor's forward pass over the same images
  (the backbone reference), timed in alternation (``--pairs`` rounds). Predict cost
  does not depend on the training budget, so this part fits with ``--epochs``
  / ``--align-epochs`` (default 1 here) to save time.
- ``synthetic_align``: where misalignment hurts a position-bound detector: skad's
  synthetic object kind (256 px, centre 224 crop vs ``make_rto``), PaDiM and LocalOCC
  with and without the aligner.

Usage (hold the shared lock for any heavy run)::

    flock /tmp/skad-bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        benchmarks/bench_local_occ.py --part oneclass
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

THREADS = 2
NATURAL = C.DATA / "textures" / "natural"



def rto_data():
    from sklearn.utils import Bunch

    path = C.CACHE / "mvtec_bottle_rto_256_s0.npz"
    if not path.exists():
        from skad.datasets import load_mvtec, make_rto

        d = make_rto(load_mvtec(C.DATA / "mvtec_ad", "bottle", resize=256, crop=None),
                     random_state=0)
        C.CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, train_images=d.train_images, test_images=d.test_images,
                 test_labels=d.test_labels, test_masks=d.test_masks)
    z = np.load(path)
    return Bunch(**{k: z[k] for k in z.files})


def dgm():
    from skad.synthesis import DefectGenerator

    return DefectGenerator(content_source=str(NATURAL) if NATURAL.is_dir() else None)


def local_occ(**params):
    from skad.detectors import LocalOCC

    params = {"random_state": 0, "device": "cpu", "dgm": dgm(), **params}
    return LocalOCC(**params)


def aligner(**params):
    from skad.alignment import ImageAligner

    return ImageAligner(**{"random_state": 0, "device": "cpu", **params})


def predict_ips(predict, images, repeats=3):
    """(best wall-clock images/s, images per CPU-second of this process)."""
    predict(images[:4])
    best, cpu = np.inf, np.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        predict(images)
        best = min(best, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return len(images) / best, len(images) / cpu


def run_model(name, data, det, align=None, speed=False):
    """Fit (aligner, then detector on aligned images), score, metrics in the original frame."""
    t0 = time.perf_counter()
    train = data.train_images
    row = {"variant": name}
    if align is not None:
        if not hasattr(align, "module_"):  # an aligner fitted earlier is reused
            align.fit(train)
            row["align_fit_s"] = time.perf_counter() - t0
        row["align_loss"] = [round(align.loss_history_[0], 5), round(align.loss_history_[-1], 5)]
        train = align.transform(train)
    t1 = time.perf_counter()
    det.fit(train)
    row["det_fit_s"] = time.perf_counter() - t1
    row["fit_s"] = time.perf_counter() - t0
    size = data.test_masks.shape[1:]

    def predict(images):
        x = images if align is None else align.transform(images)
        scores, maps = det.score_and_map(x, output_size=size)
        if align is not None:
            maps = align.inverse_transform_maps(images, maps)
        return scores, maps

    scores, maps = predict(data.test_images)
    row.update(C.metrics(scores, maps, data.test_labels, data.test_masks))
    if hasattr(det, "loss_history_"):
        row["epochs"] = len(det.loss_history_)
        row["loss"] = [round(det.loss_history_[0], 4), round(det.loss_history_[-1], 4)]
    if speed:
        row["predict_ips"], row["predict_img_per_cpu_s"] = predict_ips(predict,
                                                                       data.test_images)
    print(row, flush=True)
    return row


class FeatureDetector:
    """A patch detector behind the default extractor, as one object with score_and_map."""

    def __init__(self, det):
        from skad import make_pipeline

        self.pipe = make_pipeline(C._extractor(), det)

    def fit(self, X):
        self.pipe.fit(X)
        return self

    def score_and_map(self, X, output_size):
        return self.pipe.score_and_map(X, output_size=output_size)


def speed_rows(data, pairs, epochs, align_epochs):
    """Paired predict timings: aligner + LocalOCC (labels; maps) vs the backbone forward."""
    from skad import make_pipeline

    size = data.test_masks.shape[1:]
    pipe = make_pipeline(aligner(epochs=align_epochs), local_occ(epochs=epochs))
    pipe.fit(data.train_images)
    align = pipe[0]
    ext = C._extractor().fit(data.train_images[:1])

    def with_maps(images):
        _, maps = pipe.score_and_map(images, output_size=size)
        return align.inverse_transform_maps(images, maps)

    jobs = {"IMM + LocalOCC predict (labels)": pipe.predict,
            "LocalOCC predict, no aligner": pipe[-1].predict,
            "IMM + LocalOCC score_and_map (maps at 224, own frame)": with_maps,
            "backbone forward (default PatchFeatureExtractor.transform)": ext.transform}
    images = data.test_images
    times = {k: [] for k in jobs}
    for f in jobs.values():
        f(images[:4])
    for _ in range(pairs):
        for k, f in jobs.items():
            t = time.perf_counter()
            f(images)
            times[k].append(time.perf_counter() - t)
    ref = float(np.median(times["backbone forward (default PatchFeatureExtractor.transform)"]))
    rows = []
    for k, v in times.items():
        med = float(np.median(v))
        rows.append({"variant": k, "median_s": med, "images_per_s": len(images) / med,
                     "ratio_to_backbone": med / ref,
                     "rounds_s": [round(x, 3) for x in v]})
    return rows


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="*", default=["oneclass"],
                    help="oneclass, rto_align, table2, table1, cost, synthetic_align")
    ap.add_argument("--epochs", type=int, default=None, help="LocalOCC epochs (default: its own)")
    ap.add_argument("--align-epochs", type=int, default=None)
    ap.add_argument("--variants", nargs="*", default=None, help="table2 variants to run")
    ap.add_argument("--targets", nargs="*", default=["map", "global"],
                    help="table1 targets (the map rows equal oneclass / table2 (ii))")
    ap.add_argument("--name", default=None, help="results file name (local_occ_<part>)")
    ap.add_argument("--pairs", type=int, default=7, help="speed: alternating rounds")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    command = "python benchmarks/bench_local_occ.py " + " ".join(sys.argv[1:])
    ex = {} if args.epochs is None else {"epochs": args.epochs}
    aex = {} if args.align_epochs is None else {"epochs": args.align_epochs}
    for part in args.part:
        rows = []
        if part == "oneclass":
            data = C.bottle_data()
            rows.append(run_model("LocalOCC default", data, local_occ(**ex), speed=True))
            if not args.variants or "untrained" in args.variants:
                # N_M's residual branch starts at zero: what training adds over P F_Mixed
                rows.append(run_model("N_M untrained (1 step, lr 1e-12)", data,
                                      local_occ(max_iter=1, lr=1e-12)))
            data_desc = "MVTec AD bottle, 256 -> 224 centre crop"
        elif part == "rto_align":
            from skad.detectors import PaDiM, PatchCore

            data = rto_data()
            shared_aligner = aligner(**aex)
            for dname, make in (("PaDiM", lambda: PaDiM(random_state=0)),
                                ("PatchCore 10%", lambda: PatchCore(coreset_ratio=0.1,
                                                                   random_state=0))):
                rows.append(run_model(dname, data, FeatureDetector(make())))
                rows.append(run_model(f"IMM + {dname}", data, FeatureDetector(make()),
                                      align=shared_aligner))
            data_desc = "bottle-RTO (make_rto, seed 0, 224 px)"
        elif part == "synthetic_align":
            # a set where misalignment is known to hurt PaDiM (DESIGN.md, "where alignment
            # pays"): skad's synthetic object kind, as is and rotated/cropped
            from skad.datasets import make_rto, make_synthetic
            from skad.detectors import PaDiM

            syn = make_synthetic(n_train=100, n_test=60, image_size=256, kind="object",
                                 random_state=0)
            syn_rto = make_rto(syn, random_state=0)
            from sklearn.utils import Bunch

            # the unrotated set, centre-cropped to the same 224 px
            c = (256 - 224) // 2
            syn_c = Bunch(train_images=syn.train_images[:, c:c + 224, c:c + 224],
                          test_images=syn.test_images[:, c:c + 224, c:c + 224],
                          test_labels=syn.test_labels,
                          test_masks=syn.test_masks[:, c:c + 224, c:c + 224])
            shared_aligner = aligner(**aex)
            rows.append(run_model("PaDiM, aligned set", syn_c,
                                  FeatureDetector(PaDiM(random_state=0))))
            rows.append(run_model("PaDiM, RTO", syn_rto, FeatureDetector(PaDiM(random_state=0))))
            rows.append(run_model("IMM + PaDiM, RTO", syn_rto,
                                  FeatureDetector(PaDiM(random_state=0)), align=shared_aligner))
            if not args.variants or "local_occ" in args.variants:
                rows.append(run_model("LocalOCC, RTO", syn_rto, local_occ(**ex)))
                rows.append(run_model("IMM + LocalOCC, RTO", syn_rto, local_occ(**ex),
                                      align=shared_aligner))
            data_desc = ("skad.datasets.make_synthetic(kind='object', 256 px, 100 train, 60 "
                         "test, seed 0): centre 224 crop, and make_rto (seed 0)")
        elif part == "table2":
            data = rto_data()
            shared_aligner = aligner(**aex)
            # most informative first; results are written after every row
            variants = {
                "(i) IMM+DGM": ({}, True),
                "(ii) DGM": ({}, False),
                "(v) none": ({"use_dgm": False}, False),
                "(iv) IMM": ({"use_dgm": False}, True),
                "(vi) AUG": ({"use_dgm": False, "augment": True}, False),
                "(iii) DGM+AUG": ({"augment": True}, False),
                "T1 global (no IMM)": ({"target": "global"}, False),
            }
            for name, (params, use_imm) in variants.items():
                if args.variants and name.split()[0] not in args.variants:
                    continue
                rows.append(run_model(name, data, local_occ(**params, **ex),
                                      align=shared_aligner if use_imm else None))
                C.write_results(args.name or f"local_occ_{part}", rows, command,
                                notes="partial (rows so far)",
                                data="bottle-RTO (make_rto, seed 0, 224 px)")
            data_desc = "bottle-RTO (make_rto, seed 0, 224 px)"
        elif part == "table1":
            for dname, data in (("bottle", C.bottle_data()), ("bottle-RTO", rto_data())):
                for target in args.targets:
                    rows.append(run_model(f"{dname} target={target}", data,
                                          local_occ(target=target, **ex)))
            data_desc = "MVTec AD bottle (224 centre crop) and bottle-RTO"
        elif part == "speed":
            data = C.bottle_data()
            rows += speed_rows(data, args.pairs, args.epochs or 1, args.align_epochs or 1)
            data_desc = "MVTec AD bottle, 256 -> 224 centre crop, the 83 test images"
        elif part == "cost":
            data = C.bottle_data()
            rows.append(run_model("IMM + LocalOCC default", data, local_occ(**ex),
                                  align=aligner(**aex), speed=True))
            data_desc = "MVTec AD bottle, 256 -> 224 centre crop"
        else:
            raise SystemExit(f"unknown part {part!r}")
        notes = ("LocalOCC: defaults unless stated (EfficientNet-Lite0 blocks 1/2/4, 224 px, "
                 "downsample 2, 128-d random projection, residual N_M, DGM with natural "
                 "images pasted); ImageAligner defaults (64 px internal). random_state=0, "
                 f"{THREADS} torch threads, CPU. Aligned runs: maps warped back to each "
                 "image's frame before pixel metrics. fit_s = aligner + detector.")
        C.write_results(args.name or f"local_occ_{part}", rows, command, notes=notes,
                        data=data_desc)


if __name__ == "__main__":
    main()
