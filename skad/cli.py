"""The ``skad`` command line: ``benchmark``, ``fit``, ``predict`` and ``list``.

Exit codes: 0 success; 2 usage or input error (bad flag, missing folder, no images,
unreadable model file, unknown detector or parameter), with one line on stderr; 1 an
unexpected error (one line; ``--traceback`` shows the full trace), or a benchmark where
a detector failed (the report is still written, the failure is in its ``error`` column).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

import numpy as np

from .utils._threads import thread_limits

__all__ = ["main", "build_parser"]

PROG = "skad"


class UsageError(Exception):
    """An error in the user's command or input; reported in one line, exit code 2."""


# --------------------------------------------------------------------------- parsing helpers
def _literal(text):
    """A ``--param`` value: a Python literal (``ast.literal_eval``), else the bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_params(items, *, scoped):
    """``k=v`` pairs -> dict; with ``scoped`` the key is ``detector.param``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            form = "DETECTOR.NAME=VALUE" if scoped else "NAME=VALUE"
            raise UsageError(f"--param: expected {form}; got {item!r}")
        if scoped:
            det, dot, name = key.partition(".")
            if not dot or not det or not name:
                raise UsageError(
                    f"--param: expected DETECTOR.NAME=VALUE (e.g. patchcore.coreset_ratio=0.01); "
                    f"got {item!r}"
                )
            out.setdefault(det.lower(), {})[name] = _literal(value)
        else:
            out[key] = _literal(value)
    return out


def _geometry_value(text):
    """``--resize`` / ``--crop``: a positive int, ``HxW``, or ``none``."""
    t = text.strip().lower()
    if t in ("none", "0", ""):
        return None
    try:
        if "x" in t:
            h, w = (int(v) for v in t.split("x"))
            return (h, w)
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, HxW or 'none'; got {text!r}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that return exit code 2 (no usage dump)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser():
    """The ``skad`` argument parser (subcommands ``benchmark``, ``fit``, ``predict``, ``list``).

    Returns
    -------
    parser : argparse.ArgumentParser

    Examples
    --------
    >>> from skad.cli import build_parser
    >>> build_parser().parse_args(["fit", "--train", "d", "-o", "m.skad"]).detector
    'patchcore'
    """
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Industrial image anomaly detection: benchmark detectors, fit a model, "
        "score images.",
    )
    parser.add_argument("--version", action="version", version=f"skad {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(p):
        p.add_argument("--backbone", default="efficientnet_lite0",
                       help="feature backbone (default: efficientnet_lite0)")
        p.add_argument("--input-size", type=_positive_int, default=224,
                       help="backbone input size in pixels (default: 224)")
        p.add_argument("--seed", type=int, default=0,
                       help="random_state of every stochastic step (default: 0)")
        p.add_argument("--threads", type=_positive_int, default=None,
                       help="CPU threads (default: the cores other processes leave "
                            "free, see doc/scale.md)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")

    geo_help = ("images: resize (shorter side to an int, or HxW; 'none' keeps the size) then "
                "centre crop (int or HxW; 'none' keeps it); default 256 then 224, the papers' "
                "protocol")
    crop_help = ("centre crop after --resize: int or HxW, 'none' keeps the resized image "
                 "(default: 224)")

    b = sub.add_parser("benchmark", help="compare detectors on a data set and write a report",
                       description="Extract features once, fit and score every detector, and "
                       "write results.csv, scores.csv, report.html and report.md.")
    b.add_argument("--detectors", default=None,
                   help="comma-separated detector names (default: every detector; see 'skad list')")
    b.add_argument("--data", default=None,
                   help="data set folder (default: the built-in synthetic set)")
    b.add_argument("--format", choices=("mvtec", "folder", "elpv", "crackforest"),
                   default=None, help="layout of --data (default: mvtec)")
    b.add_argument("--category", default=None, help="MVTec AD category (e.g. bottle)")
    b.add_argument("--setting", default="one-class",
                   choices=("one-class", "blind", "blind-mix", "blind-test", "blind-ano"),
                   help="protocol: one-class (fit on normal training images) or blind (fit on "
                   "the scored set without labels; blind = blind-test)")
    b.add_argument("--out", default="skad-report", help="output folder (default: skad-report)")
    b.add_argument("--param", action="append", metavar="DETECTOR.NAME=VALUE",
                   help="detector parameter, value parsed as a Python literal (repeatable)")
    b.add_argument("--resize", type=_geometry_value, default=256, help=geo_help)
    b.add_argument("--crop", type=_geometry_value, default=224, help=crop_help)
    b.add_argument("--n-train", type=_positive_int, default=None,
                   help="synthetic data: number of normal training images")
    b.add_argument("--n-test", type=_positive_int, default=None,
                   help="synthetic data: number of test images")
    b.add_argument("--image-size", type=_positive_int, default=None,
                   help="synthetic data: image size in pixels")
    b.add_argument("--synthetic-kind", choices=("texture", "object", "mixed"), default=None,
                   help="synthetic data: kind of product (default: make_synthetic's)")
    common(b)

    f = sub.add_parser("fit", help="fit a detector on normal images and save the model",
                       description="Fit feature extractor + detector on a folder of normal "
                       "images (or an MVTec category folder: its train/good) and save the "
                       "whole pipeline as a skad model file (skad.save: it records the "
                       "skad / scikit-learn / torch versions and loads without running code "
                       "from the file).")
    f.add_argument("--train", required=True, metavar="DIR",
                   help="folder of normal images, or an MVTec AD category folder")
    f.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write (.skad)")
    f.add_argument("--detector", default="patchcore", help="detector name (default: patchcore)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="detector parameter, value parsed as a Python literal (repeatable)")
    f.add_argument("--resize", type=_geometry_value, default=256, help=geo_help)
    f.add_argument("--crop", type=_geometry_value, default=224, help=crop_help)
    common(f)

    p = sub.add_parser("predict", help="score images with a saved model",
                       description="Anomaly scores (higher = more anomalous), +1/-1 decisions "
                       "and optional heatmap PNGs for every image of a folder.")
    p.add_argument("--model", required=True, help="model file written by 'skad fit'")
    p.add_argument("--trust", action="append", default=[], metavar="MODULE",
                   help="module whose classes the model file may hold besides skad, "
                   "scikit-learn, numpy and scipy (your own detector's; repeatable)")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="an unreadable image: 'skip' scores the others, lists the bad files "
                   "and exits with 2 at the end; 'stop' aborts at once (default: skip)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images to score")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="scores CSV file")
    p.add_argument("--recursive", action="store_true",
                   help="also score the images in the subfolders of --images")
    p.add_argument("--maps", default=None, metavar="DIR", help="write heatmap PNGs here")
    p.add_argument("--threshold", type=float, default=None,
                   help="anomaly-score threshold for -1 (default: the model's own, from fit)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="images scored at a time (default: 32)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads (default: the cores other processes leave free)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)

    sub.add_parser("list", help="list the available detectors")
    return parser


# --------------------------------------------------------------------------- data
def _image_files(folder, recursive=False, flag="--images"):
    from .datasets._io import IMAGE_EXTENSIONS

    try:
        found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError as exc:  # an unreadable folder (permissions, a vanished mount)
        raise UsageError(f"{flag}: cannot list the folder {os.fspath(folder)}: "
                         f"{exc.strerror or exc}") from None


def _require_writable(folder, flag, what):
    folder = Path(folder)
    if not folder.exists():
        raise UsageError(f"{flag}: folder of the {what} not found: {os.fspath(folder)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write the {what} in {os.fspath(folder)} "
                         "(no permission)")


def _require_dir(path, flag):
    if not Path(path).exists():
        raise UsageError(f"{flag}: folder not found: {os.fspath(path)}")
    if not Path(path).is_dir():
        raise UsageError(f"{flag}: not a folder: {os.fspath(path)}")
    return Path(path)


def _training_files(folder):
    """Normal images of ``folder``: its images, or ``train/good`` / ``good`` inside it."""
    folder = _require_dir(folder, "--train")
    for sub in (Path("train") / "good", Path("good"), Path(".")):
        cand = folder / sub
        if cand.is_dir():
            files = _image_files(cand, flag="--train")
            if files:
                return files, cand
    from .datasets._io import IMAGE_EXTENSIONS

    raise UsageError(
        f"--train: no images ({', '.join(IMAGE_EXTENSIONS)}) in {os.fspath(folder)} "
        "(nor in its train/good/ or good/ subfolder)"
    )


def _load_benchmark_data(args):
    """(Bunch with load_mvtec's fields, description) for ``skad benchmark``."""
    from . import datasets

    synthetic = {"n_train": args.n_train, "n_test": args.n_test,
                 "image_size": args.image_size, "kind": args.synthetic_kind}
    synthetic = {k: v for k, v in synthetic.items() if v is not None}
    if args.data is None:
        if args.format or args.category:
            raise UsageError("--format/--category need --data PATH")
        data = datasets.make_synthetic(**synthetic, random_state=args.seed)
        shown = ", ".join(f"{k}={v!r}" for k, v in {**synthetic, "random_state": args.seed}.items())
        return data, f"built-in synthetic set: skad.datasets.make_synthetic({shown})"
    if synthetic:
        flag = next(iter(synthetic)).replace("_", "-")
        flag = "synthetic-kind" if flag == "kind" else flag
        raise UsageError(f"--{flag} applies to the built-in synthetic data only, not to --data")
    root = _require_dir(args.data, "--data")
    fmt = args.format or "mvtec"
    geometry = {"resize": args.resize, "crop": args.crop}
    where = f"resize {args.resize}, centre crop {args.crop}"
    if fmt == "mvtec":
        category = args.category
        if category is None:
            if (root / "train").is_dir() and (root / "test").is_dir():
                root, category = root.parent, root.name
            else:
                raise UsageError(
                    f"--category: needed for --format mvtec (a subfolder of {os.fspath(root)}, "
                    "e.g. bottle), or pass the category folder itself as --data"
                )
        data = datasets.load_mvtec(root, category, **geometry)
        return data, f"MVTec AD {category} ({os.fspath(root)}), {where}"
    loader = {"folder": datasets.load_folder, "elpv": datasets.load_elpv,
              "crackforest": datasets.load_crackforest}[fmt]
    data = datasets.one_class_train_test(loader(root, **geometry), random_state=args.seed)
    split = (f"{len(data.train_images)} normal images for training, the other normals and "
             f"every defective image for testing (seed {args.seed})")
    return data, f"{fmt} {os.fspath(root)}, {where}; one-class split: {split}"


# --------------------------------------------------------------------------- commands
def _cmd_list(args, out):
    from .registry import available_detectors

    specs = available_detectors()
    width = max(len(n) for n in specs)
    for name, spec in specs.items():
        defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        extra = f"  [{defaults}]" if defaults else ""
        maps = "" if spec.has_maps or "image level" in spec.summary else " (image level)"
        print(f"{name:<{width}}  {spec.summary}{maps}{extra}", file=out)
    return 0


def _cmd_benchmark(args, out):
    from .registry import available_detectors, get_detector
    from .benchmark import run_benchmark
    from .report import write_report

    specs = available_detectors()
    if args.detectors:
        names = [n.strip() for n in args.detectors.split(",") if n.strip()]
        if not names:
            raise UsageError("--detectors: expected comma-separated names; got an empty list")
    else:
        names = list(specs)
    names = [get_detector(n, specs).name for n in names]
    params = _parse_params(args.param, scoped=True)
    for det in params:
        if det not in names:
            get_detector(det, specs)  # unknown name -> did-you-mean
            raise UsageError(f"--param: detector {det!r} is not in --detectors ({', '.join(names)})")
    # validate parameter names before any work
    from .registry import make_detector_steps

    for det, p in params.items():
        make_detector_steps(det, params=p, specs=specs)

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out: {os.fspath(out_dir)} exists and is not a folder")
    data, desc = _load_benchmark_data(args)
    command = " ".join([PROG, *args._argv])
    t0 = time.perf_counter()
    result = run_benchmark(
        data,
        names,
        backbone=args.backbone,
        input_size=args.input_size,
        setting=args.setting,
        random_state=args.seed,
        params=params,
        specs=specs,
        data_description=desc,
        command=command,
        verbose=not args.quiet,
    )
    result.info["total_s"] = time.perf_counter() - t0
    paths = write_report(result, out_dir)
    table = result.table()
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.3f}".format):
        shown = table.drop(columns="error") if not table["error"].any() else table
        print(shown.to_string(index=False), file=out)
    # parameters the data made a detector clip (the report has them too)
    for run in result.runs:
        for note in run.notes:
            print(f"note: {run.name}: {note}", file=out)
    print(
        f"\n{len(names)} detectors, {result.info['n_eval']} images scored in "
        f"{result.info['total_s']:.1f} s; report: {paths['html']}",
        file=out,
    )
    failed = table.loc[table["error"] != "", "detector"].tolist()
    if failed:
        print(f"{PROG} benchmark: error: detector(s) failed: {', '.join(failed)} "
              "(see the error column)", file=sys.stderr)
        return 1
    return 0


def _cmd_fit(args, out):
    from ._persist import save
    from .features import PatchFeatureExtractor
    from .pipeline import AnomalyPipeline
    from .preprocessing import ResizeCrop
    from .registry import available_detectors, get_detector, make_model

    specs = available_detectors()
    name = get_detector(args.detector, specs).name
    extractor = PatchFeatureExtractor(
        backbone=args.backbone, input_size=args.input_size, verbose=not args.quiet
    )
    # checks the detector's parameter names before any image is read
    core = make_model(name, extractor, params=_parse_params(args.param, scoped=False),
                      random_state=args.seed, specs=specs)
    detector = core.steps[-1][1]
    if "verbose" in detector.get_params(deep=False):  # e.g. PatchCore's coreset bar
        detector.set_params(verbose=not args.quiet)
    files, folder = _training_files(args.train)
    out_path = Path(args.output)
    _require_writable(out_path.parent, "-o", "model file")
    # the loaders' geometry goes inside the model, so predict needs nothing else
    model = AnomalyPipeline(
        [("resizecrop", ResizeCrop(resize=args.resize, crop=args.crop)), *core.steps]
    )
    t0 = time.perf_counter()
    model.fit([os.fspath(f) for f in files])
    fit_s = time.perf_counter() - t0
    # progress bars are for interactive runs; the saved model stays quiet when reloaded
    _quiet(model)
    save(model, out_path)
    print(
        f"fitted {name} on {len(files)} images from {os.fspath(folder)} in {fit_s:.1f} s; "
        f"model saved to {os.fspath(out_path)}",
        file=out,
    )
    return 0


def _quiet(model):
    """Switch off the progress bars of every step that has a ``verbose`` parameter."""
    for _, step in model.steps:
        if "verbose" in step.get_params(deep=False):
            step.set_params(verbose=False)


def _load_model(path, trusted=()):
    from ._persist import ModelFileError, load

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--model: model file not found: {os.fspath(path)}")
    try:
        model = load(path, trusted=trusted)
    except ModelFileError as exc:
        raise UsageError(f"--model: cannot read model file: {_one_line(exc)}") from None
    if not (hasattr(model, "steps") and hasattr(model, "score_samples")):
        raise UsageError(
            f"--model: {os.fspath(path)} does not hold a skad model (found "
            f"{type(model).__name__}); write one with 'skad fit'"
        )
    return model


def _cmd_predict(args, out):
    import pandas as pd
    from PIL import Image
    from tqdm.auto import tqdm

    from .plot import heatmap_rgb
    from .preprocessing import ResizeCrop
    from .utils.validation import load_image

    # cheap checks first: loading a model takes seconds
    if not Path(args.model).is_file():
        raise UsageError(f"--model: model file not found: {os.fspath(args.model)}")
    folder = _require_dir(args.images, "--images")
    files = _image_files(folder, recursive=args.recursive)
    if not files:
        from .datasets._io import IMAGE_EXTENSIONS

        where = " or its subfolders" if args.recursive else ""
        raise UsageError(
            f"--images: no images ({', '.join(IMAGE_EXTENSIONS)}) in {os.fspath(folder)}{where}"
        )
    out_csv = Path(args.output)
    _require_writable(out_csv.parent, "-o", "scores file")
    if args.maps:
        existing = Path(os.path.abspath(args.maps))
        while not existing.exists():  # the folder is created (with its parents) later
            existing = existing.parent
        _require_writable(existing, "--maps", "heatmaps")
    model = _load_model(args.model, trusted=args.trust)
    _quiet(model)

    pre = model.steps[0][1] if isinstance(model.steps[0][1], ResizeCrop) else None
    rest = model[1:] if pre is not None else model
    final = model.steps[-1][1]
    with_maps = hasattr(rest, "score_and_map")
    if args.maps and not with_maps:
        raise UsageError(
            f"--maps: the model's detector {type(final).__name__} gives image scores only, "
            "no anomaly maps"
        )
    threshold = args.threshold if args.threshold is not None else -float(final.offset_)

    def score(chunk):
        X = pre.transform(chunk) if pre is not None else chunk
        if with_maps:
            s, m = rest.score_and_map(X)
            if args.maps:
                m = m.astype(np.float16)
                im = X if pre is not None else [load_image(c) for c in chunk]
                return np.asarray(s, dtype=np.float64), list(m), list(im)
            return np.asarray(s, dtype=np.float64), [], []
        return np.asarray(rest.anomaly_score(X), dtype=np.float64), [], []

    scores, maps, shown, done, bad = [], [], [], [], []
    bar = tqdm(total=len(files), desc="scoring", disable=args.quiet, leave=False)
    for start in range(0, len(files), args.batch_size):
        chunk = [os.fspath(f) for f in files[start:start + args.batch_size]]
        try:
            parts = [(chunk, score(chunk))]
        except (ValueError, OSError):
            if args.on_error == "stop":
                raise
            parts = []  # one file at a time, to keep the readable ones
            for c in chunk:
                try:
                    parts.append(([c], score([c])))
                except (ValueError, OSError) as exc:
                    bad.append((c, _one_line(exc)))
        for names, (s, m, im) in parts:
            done.extend(names)
            scores.extend(s)
            maps.extend(m)
            shown.extend(im)
        bar.update(len(chunk))
    bar.close()
    if not done:
        raise UsageError(f"--images: no image could be scored; first error: {bad[0][1]}")
    files = [Path(f) for f in done]
    scores = np.asarray(scores)
    table = pd.DataFrame(
        {
            "file": [os.fspath(f) for f in files],
            "anomaly_score": scores,
            "prediction": np.where(scores > threshold, -1, 1),
        }
    )
    if args.maps:
        map_dir = Path(args.maps)
        map_dir.mkdir(parents=True, exist_ok=True)
        stacked = np.stack([np.asarray(m, np.float32) for m in maps])
        vmin, vmax = (float(v) for v in np.percentile(stacked, [1, 99.9]))
        paths = []
        for f, img, amap in zip(files, shown, stacked):
            # the path below --images names the file, so equal names in subfolders differ
            rel = Path(f).relative_to(folder).with_suffix("")
            p = map_dir / ("__".join(rel.parts) + "_heatmap.png")
            Image.fromarray(heatmap_rgb(img, amap, vmin=vmin, vmax=vmax)).save(p)
            paths.append(os.fspath(p))
        table["heatmap"] = paths
    tmp_csv = out_csv.with_name(f".{out_csv.name}.tmp")
    table.to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, out_csv)  # never a partial scores file
    n_anom = int((table["prediction"] == -1).sum())
    print(
        f"scored {len(files)} images: {n_anom} anomalous (anomaly_score > {threshold:.4g}); "
        f"scores written to {os.fspath(out_csv)}"
        + (f"; heatmaps in {args.maps} (colour scale {vmin:.4g}..{vmax:.4g}, shared)"
           if args.maps else ""),
        file=out,
    )
    if bad:
        print(f"{PROG} predict: {len(bad)} image(s) could not be scored (not in "
              f"{os.fspath(out_csv)}):", file=sys.stderr)
        for name, why in bad:
            print(f"  {name}: {why}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- entry point
def main(argv=None, *, stdout=None):
    """Run the ``skad`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    stdout : file, optional
        Where results are printed (default: ``sys.stdout``); errors go to stderr.

    Returns
    -------
    code : int
        0 success, 2 usage or input error, 1 unexpected error or failed detector.

    Examples
    --------
    >>> from skad.cli import main
    >>> main(["list"]) == 0  # doctest: +ELLIPSIS
    patchcore ...
    True
    """
    from .registry import UnknownDetectorError
    from .utils._sklearn_compat import InvalidParameterError

    out = sys.stdout if stdout is None else stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"{PROG} {command}" if command in ("benchmark", "fit", "predict", "list") else PROG
    show_tb = "--traceback" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args._argv = argv
        if args.command is None:
            parser.print_help(out)
            return 2
        handler = {"benchmark": _cmd_benchmark, "fit": _cmd_fit, "predict": _cmd_predict,
                   "list": _cmd_list}[args.command]
        # --threads: every estimator's count (skad.utils.thread_limits); without it each
        # estimator takes the cores other processes leave free ("auto")
        with thread_limits(getattr(args, "threads", None)):
            return handler(args, out)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    except (UsageError, UnknownDetectorError, InvalidParameterError, FileNotFoundError,
            NotADirectoryError, PermissionError, ValueError) as exc:
        if show_tb:
            raise
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if show_tb:
            raise
        print(
            f"{prefix}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --traceback for details)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
