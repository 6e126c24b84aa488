"""Scale-out: the same GridSearchCV on a dask.distributed LocalCluster via joblib."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

pytest.importorskip("dask.distributed", reason="dask[distributed] is a test extra")


def _search(n_jobs):
    from skad import make_pipeline
    from skad.detectors import PatchCore
    from skad.features import PatchFeatureExtractor
    from skad.metrics import image_auroc_scorer, pixel_auroc_scorer
    from skad.model_selection import OneClassSplit

    # n_threads=1: two single-threaded workers do not oversubscribe two cores
    pipe = make_pipeline(
        PatchFeatureExtractor(input_size=48, device="cpu", n_threads=1, batch_size=8),
        PatchCore(random_state=0, device="cpu"),
    )
    return GridSearchCV(
        pipe, {"patchcore__coreset_ratio": [0.05, 1.0]},
        scoring={"image": image_auroc_scorer, "pixel": pixel_auroc_scorer},
        refit="pixel", cv=OneClassSplit(n_splits=2, random_state=0), n_jobs=n_jobs,
        error_score="raise",
    )


def test_gridsearch_on_local_dask_cluster():
    import joblib
    from dask.distributed import Client, LocalCluster

    from skad.datasets import make_synthetic

    data = make_synthetic(n_train=8, n_test=6, image_size=48, kind="object", random_state=1)
    X = np.concatenate([data.train_images, data.test_images])
    masks = np.concatenate([np.zeros((8, 48, 48), np.uint8), data.test_masks])

    sequential = _search(n_jobs=None).fit(X, masks)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with joblib.parallel_backend("dask"):
            distributed = _search(n_jobs=2).fit(X, masks)
        assert len(client.scheduler_info()["workers"]) == 2
    assert distributed.best_params_ == sequential.best_params_
    for key in ("mean_test_image", "mean_test_pixel"):
        np.testing.assert_allclose(distributed.cv_results_[key], sequential.cv_results_[key])


def test_score_on_dask_scores_a_folder_like_one_process(tmp_path):
    from dask.distributed import Client, LocalCluster
    from PIL import Image

    from skad import make_pipeline
    from skad.detectors import PatchCore
    from skad.features import PatchFeatureExtractor
    from skad.scale import score_on_dask, score_streaming

    rng = np.random.default_rng(0)
    paths = []
    for i in range(14):
        img = rng.integers(90, 140, (40, 40, 3), dtype=np.uint8)
        if i >= 12:
            img[10:25, 10:25] = 255
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
        paths.append(str(tmp_path / f"{i:02d}.png"))
    pipe = make_pipeline(
        PatchFeatureExtractor(input_size=40, device="cpu", n_threads=1, batch_size=4),
        PatchCore(random_state=0, device="cpu"),
    ).fit(paths[:8])
    ref_scores, ref_maps = score_streaming(pipe, paths, chunk_size=4, maps=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        scores = score_on_dask(pipe, paths, client, partition_size=3, chunk_size=2)
        scores2, maps = score_on_dask(pipe, paths, client, partition_size=5, maps=True)
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    np.testing.assert_allclose(scores2, ref_scores, rtol=1e-5)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-5)
    assert scores[12:].min() > scores[:8].max()  # the defects score highest
