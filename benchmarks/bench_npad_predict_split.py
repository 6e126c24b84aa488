"""Where N-pad's predict time goes: CPU time per image of each scoring kernel (issue #19).

Fits N-pad (defaults, in-sample calibration: no timing depends on it) on bottle's
cached training features, then times ``score_samples`` of the first ``--n-images``
test images (``broken_large``) ``--rounds`` times in CPU time (``time.process_time``,
so a loaded machine inflates it less than wall time), with the time spent inside
module A's and module B's tap kernels (``whitened_tap_norms``) and the
nearest-centroid search (``nearest_rows``) recorded separately. One thread unless
``--threads``; a quick profile, not a speed claim (those are paired ratios:
``bench_predict_ratio.py``).

Usage::

    python benchmarks/bench_npad_predict_split.py --n-images 16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import time

import _common as C


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="npad_predict_split")
    args = ap.parse_args(argv)
    import torch

    import skad.detectors.npad as npad_module
    from skad.detectors import NPad

    torch.set_num_threads(args.threads)
    data = C.bottle_data()
    p = {"n_threads": args.threads}
    train = C.cached_features(data.train_images, "bottle_train", **p)
    test = C.cached_features(data.test_images, "bottle_test", **p)[:args.n_images]
    det = NPad(random_state=0, device="cpu", calibration="in_sample").fit(train)
    spent = {}

    def timed(label_of, f):
        def wrapper(*a, **k):
            t = time.process_time()
            out = f(*a, **k)
            label = label_of(a)
            spent[label] = spent.get(label, 0.0) + time.process_time() - t
            return out
        return wrapper

    module_of = {id(det.means_a_): "module A (+C, D) tap kernel",
                 id(det.means_b_): "module B tap kernel"}
    npad_module.whitened_tap_norms = timed(lambda a: module_of[id(a[1])],
                                           npad_module.whitened_tap_norms)
    npad_module.nearest_rows = timed(lambda a: "nearest centroid (E)", npad_module.nearest_rows)
    det.score_samples(test)  # compiled kernels loaded, taps built
    spent.clear()
    t = time.process_time()
    for _ in range(args.rounds):
        det.score_samples(test)
    total = time.process_time() - t
    per = 1000.0 / (args.rounds * len(test))
    row = {"channels": int(train.shape[1]), "centroids": int(len(det.centroids_)),
           "threads": args.threads, "score_samples cpu ms / image": total * per}
    row.update({f"{k} cpu ms / image": v * per for k, v in spent.items()})
    row["rest cpu ms / image"] = (total - sum(spent.values())) * per
    print(json.dumps(row), flush=True)
    command = "python benchmarks/bench_npad_predict_split.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    C.write_results(args.name, [row], command,
                    notes="CPU time (process_time) per image of score_samples on the "
                          "first test images (broken_large), split by kernel.")


if __name__ == "__main__":
    main()
