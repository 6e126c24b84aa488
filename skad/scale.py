"""Large data and clusters: fit from image paths in chunks, score a folder on dask.

- :func:`fit_streaming`: fit an ``extractor -> detector`` pipeline on image paths chunk
  by chunk (``partial_fit``), never holding the whole feature tensor: memory is one
  chunk's features plus the detector's state (PaDiM: running moments of fixed size;
  PatchCore: the coreset bank, ``coreset_ratio`` of the patches seen). ``offset_`` is
  then set split-conformally from held-out normal images.
- :func:`score_streaming`: anomaly scores (and optionally maps) of image paths, chunk by
  chunk.
- :func:`score_on_dask`: the same on a dask cluster: the fitted model is sent once to
  each worker, the paths are split into partitions, each worker scores its partitions.

User guide: ``doc/scale.md``.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .utils.validation import _is_path_sequence

__all__ = ["fit_streaming", "score_on_dask", "score_streaming"]


def _check_paths(paths, name="paths"):
    paths = list(paths) if not isinstance(paths, str) else paths
    if isinstance(paths, str) or not _is_path_sequence(paths) or len(paths) == 0:
        raise TypeError(f"{name}: expected a non-empty sequence of image file paths; "
                        f"got {type(paths).__name__}")
    return paths


def _check_chunk(chunk_size):
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or (
            chunk_size < 2):
        raise ValueError(f"chunk_size: expected an int >= 2 (images per chunk); "
                         f"got {chunk_size!r}")
    return int(chunk_size)


def _split(pipeline):
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        raise TypeError(f"pipeline: expected an AnomalyPipeline (extractor -> detector); "
                        f"got {type(pipeline).__name__}")
    return pipeline[:-1], pipeline[-1]


def _chunks(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def fit_streaming(pipeline, paths, *, chunk_size=256, calibration=0.1, random_state=None,
                  verbose=False):
    """Fit ``pipeline`` on image files chunk by chunk, in bounded memory.

    The steps before the detector (a :class:`~skad.features.PatchFeatureExtractor`)
    are fitted on the first chunk (the extractor learns nothing from data); each chunk
    of ``chunk_size`` training paths is transformed and given to the detector's
    ``partial_fit``; a random ``calibration`` fraction of the paths is held out and
    scored at the end to set the detector's ``offset_`` (split-conformal, with the
    detector's ``contamination`` / ``false_alarm_rate``).

    Parameters
    ----------
    pipeline : AnomalyPipeline
        Feature steps then a detector with ``partial_fit`` (PaDiM, PatchCore). Fitted
        in place (and returned).
    paths : sequence of str or os.PathLike
        Normal training images.
    chunk_size : int, default=256
        Images per chunk: the features of one chunk are in memory at a time.
    calibration : float in (0, 1) or None, default=0.1
        Fraction of ``paths`` held out to set ``offset_``; None: keep the detector's
        streamed calibration scores (see its ``partial_fit``).
    random_state : int, RandomState instance or None
        Which paths are held out.
    verbose : bool, default=False
        Print one line per chunk.

    Returns
    -------
    pipeline : AnomalyPipeline

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skad import make_pipeline
    >>> from skad.detectors import PaDiM
    >>> from skad.features import PatchFeatureExtractor
    >>> from skad.scale import fit_streaming, score_streaming
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rng = np.random.default_rng(0)
    >>> paths = []
    >>> for i in range(12):
    ...     Image.fromarray(rng.integers(100, 120, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    ...     paths.append(str(d / f"{i}.png"))
    >>> pipe = make_pipeline(PatchFeatureExtractor(input_size=32, device="cpu"),
    ...                      PaDiM(n_features=8, random_state=0))
    >>> pipe = fit_streaming(pipe, paths[:10], chunk_size=4, calibration=0.2, random_state=0)
    >>> score_streaming(pipe, paths[10:], chunk_size=4).shape
    (2,)
    """
    paths = _check_paths(paths)
    chunk_size = _check_chunk(chunk_size)
    features, detector = _split(pipeline)
    if not hasattr(detector, "partial_fit"):
        raise TypeError(f"pipeline: its last step {type(detector).__name__} has no "
                        "partial_fit; streaming fits PaDiM or PatchCore")
    order = check_random_state(random_state).permutation(len(paths))
    if calibration is None:
        n_cal = 0
    elif not 0.0 < float(calibration) < 1.0:
        raise ValueError(f"calibration: expected a float in (0, 1) or None; got {calibration!r}")
    else:
        n_cal = max(1, int(round(float(calibration) * len(paths))))
    train = [paths[i] for i in np.sort(order[n_cal:])]
    held = [paths[i] for i in np.sort(order[:n_cal])]
    if len(train) < 2:
        raise ValueError(f"paths: {len(paths)} paths leave {len(train)} for training after "
                         f"holding out calibration={calibration!r}; need at least 2")
    chunks = _chunks(train, chunk_size)
    if len(chunks) > 1 and len(chunks[-1]) < 2:  # partial_fit needs 2 samples per chunk
        chunks[-2] = chunks[-2] + chunks.pop()
    detector.__dict__.pop("n_images_seen_", None)  # a new fit, not a continuation
    for i, chunk in enumerate(chunks):
        Xt = features.fit_transform(chunk) if i == 0 else features.transform(chunk)
        detector.partial_fit(Xt)
        del Xt
        if verbose:
            print(f"fit_streaming: chunk {i + 1}/{len(chunks)} "
                  f"({detector.n_images_seen_} images)", flush=True)
    if held:
        normality = -score_streaming(pipeline, held, chunk_size=chunk_size)
        detector.calibration_ = "held_out"
        detector.calibration_scores_ = detector.train_scores_ = normality
        detector.offset_ = float(detector._offset_from(normality))
    return pipeline


def score_streaming(pipeline, paths, *, chunk_size=256, maps=False, output_size=None):
    """Anomaly scores (higher = more anomalous) of image files, chunk by chunk.

    Parameters
    ----------
    pipeline : fitted AnomalyPipeline
    paths : sequence of str or os.PathLike
    chunk_size : int, default=256
        Images per chunk.
    maps : bool, default=False
        Also return anomaly maps (at ``output_size``, or the detector's resolution).
    output_size : int or (H, W), optional

    Returns
    -------
    scores : ndarray of shape (n,)
    maps : ndarray of float32, shape (n, h, w)
        Only with ``maps=True``.
    """
    paths = _check_paths(paths)
    chunk_size = _check_chunk(chunk_size)
    check_is_fitted(pipeline)
    features, detector = _split(pipeline)
    scores, out_maps = [], []
    for chunk in _chunks(paths, chunk_size):
        Xt = features.transform(chunk)
        if maps:
            s, m = detector.score_and_map(Xt, output_size=output_size)
            out_maps.append(m)
        else:
            s = detector.anomaly_score(Xt)
        scores.append(np.asarray(s, dtype=np.float64))
    scores = np.concatenate(scores)
    return (scores, np.concatenate(out_maps)) if maps else scores


def _score_partition(paths, model, maps, output_size, chunk_size):
    return score_streaming(model, paths, chunk_size=chunk_size, maps=maps,
                           output_size=output_size)


def score_on_dask(pipeline, paths, client, *, partition_size=64, chunk_size=32,
                  maps=False, output_size=None):
    """Score image files on a dask cluster: the model sent once per worker, paths split.

    The fitted ``pipeline`` is scattered to every worker once (``broadcast=True``), the
    paths are cut into partitions of ``partition_size``, and each task scores one
    partition with :func:`score_streaming` on the worker's copy (images are read on
    the workers: every worker must see the paths). Results come back in input order.
    Within a worker, torch uses the threads skad's defaults give it (dask's nanny sets
    ``OMP_NUM_THREADS=1`` per worker process by default; start one worker per core).

    Parameters
    ----------
    pipeline : fitted AnomalyPipeline (or any fitted extractor -> detector pipeline)
    paths : sequence of str or os.PathLike
    client : dask.distributed.Client
    partition_size : int, default=64
        Paths per task.
    chunk_size : int, default=32
        Images per forward batch group within a task.
    maps : bool, default=False
        Also return anomaly maps.
    output_size : int or (H, W), optional

    Returns
    -------
    scores : ndarray of shape (n,)
    maps : ndarray of float32
        Only with ``maps=True``.

    Examples
    --------
    >>> from dask.distributed import Client, LocalCluster   # doctest: +SKIP
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \\
    ...         Client(cluster) as client:                    # doctest: +SKIP
    ...     scores = score_on_dask(pipe, paths, client)        # doctest: +SKIP
    """
    paths = _check_paths(paths)
    check_is_fitted(pipeline)
    _split(pipeline)
    if not isinstance(partition_size, (int, np.integer)) or partition_size < 1:
        raise ValueError(f"partition_size: expected a positive int; got {partition_size!r}")
    model = client.scatter(pipeline, broadcast=True)
    futures = [client.submit(_score_partition, part, model, maps, output_size,
                             _check_chunk(chunk_size), pure=False)
               for part in _chunks(paths, int(partition_size))]
    results = client.gather(futures)
    scores = np.concatenate([r[0] if maps else r for r in results])
    return (scores, np.concatenate([r[1] for r in results])) if maps else scores

