"""The shared training core (skad._training) and the weighted-GMM / coreset kernels."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from skad._kernels.gmm import sensitivity_coreset, weighted_gmm
from skad._training import iter_minibatches, make_optimizer, seeded, train_loop
from skad.utils import check_images


def _images(n=12, size=6, seed=0):
    return check_images(np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32))


def _linear_step(net, seen=None):
    def step(idx, batch, rng):
        if seen is not None:
            seen.append(idx.copy())
        x = torch.from_numpy(batch.reshape(len(batch), -1, 3).mean(1))
        return (net(x) - 1.0).pow(2).mean()
    return step


def _fit(seed=0, epochs=3, **kw):
    with seeded(seed):
        net = torch.nn.Linear(3, 1)
    res = train_loop(_linear_step(net), [net], _images(), batch_size=4,
                     rng=np.random.RandomState(seed), lr=0.05, epochs=epochs, **kw)
    return net, res


def test_train_loop_reproducible_and_learns():
    net_a, res_a = _fit(0)
    net_b, res_b = _fit(0)
    assert res_a.loss_history == res_b.loss_history
    assert torch.equal(net_a.weight, net_b.weight)
    assert res_a.loss_history[-1] < res_a.loss_history[0]
    assert res_a.n_iter == 9 and res_a.n_epochs == 3
    _, res_c = _fit(1)
    assert res_c.loss_history != res_a.loss_history


def test_train_loop_max_iter_stops_mid_epoch():
    _, res = _fit(epochs=10, max_iter=5)
    assert res.n_iter == 5
    assert len(res.loss_history) == 2  # one full epoch (3 steps) + a partial one


def test_train_loop_budget_required():
    with pytest.raises(ValueError, match="epochs and max_iter"):
        train_loop(lambda *a: None, [], _images(), batch_size=2, rng=np.random.RandomState(0))


def test_batches_cover_every_image_once_per_epoch():
    seen = []
    net = torch.nn.Linear(3, 1)
    train_loop(_linear_step(net, seen), [net], _images(10), batch_size=4,
               rng=np.random.RandomState(0), epochs=2)
    first = np.sort(np.concatenate(seen[:3]))
    assert first.tolist() == list(range(10))
    assert [len(s) for s in seen[:3]] == [4, 4, 2]
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))


def test_best_state_kept_by_criterion():
    values = iter([3.0, 1.0, 2.0])
    snapshots = []
    net = torch.nn.Linear(3, 1)

    def criterion():
        snapshots.append(net.weight.detach().clone())
        return next(values)

    res = train_loop(_linear_step(net), [net], _images(), batch_size=4,
                     rng=np.random.RandomState(0), lr=0.05, epochs=3, criterion=criterion)
    assert res.best_epoch == 1
    assert torch.equal(net.weight, snapshots[1])
    assert res.criterion_history == [3.0, 1.0, 2.0]


def test_keyboard_interrupt_keeps_best_state():
    net = torch.nn.Linear(3, 1)
    calls = []

    def step(idx, batch, rng):
        calls.append(1)
        if len(calls) == 5:  # in the second epoch
            raise KeyboardInterrupt
        return _linear_step(net)(idx, batch, rng)

    with pytest.warns(RuntimeWarning, match="interrupted after 4 steps"):
        res = train_loop(step, [net], _images(), batch_size=4, rng=np.random.RandomState(0),
                         lr=0.05, epochs=5)
    assert res.interrupted and res.best_epoch == 0 and res.n_iter == 4


def test_non_finite_loss_raises():
    net = torch.nn.Linear(3, 1)

    def step(idx, batch, rng):
        return net.weight.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="lower lr"):
        train_loop(step, [net], _images(), batch_size=4, rng=np.random.RandomState(0),
                   epochs=1)


def test_lazy_paths(tmp_path):
    from PIL import Image

    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    got = []
    net = torch.nn.Linear(3, 1)

    def step(idx, batch, rng):
        got.append((idx.copy(), batch[:, 0, 0, 0].copy()))
        return _linear_step(net)(idx, batch, rng)

    train_loop(step, [net], check_images(paths), batch_size=2, rng=np.random.RandomState(0),
               epochs=1)
    for idx, values in got:
        np.testing.assert_allclose(values, 40 * idx / 255.0, rtol=1e-6)


def test_make_optimizer_errors():
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(frozen.parameters())
    with pytest.raises(ValueError, match="solver"):
        make_optimizer(torch.nn.Linear(2, 1).parameters(), "lbfgs")


def test_seeded_restores_global_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(0):
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected)


def test_iter_minibatches_drop_last():
    rng = np.random.RandomState(0)
    sizes = [len(b) for b in iter_minibatches(10, 4, rng, drop_last=True)]
    assert sizes == [4, 4]
    assert [len(b) for b in iter_minibatches(3, 4, rng, drop_last=True)] == [3]


# -- weighted GMM and the sensitivity coreset ----------------------------------------
def _blobs(seed=0):
    rng = np.random.RandomState(seed)
    return np.r_[rng.normal(0, 1, (150, 4)), rng.normal(5, 2, (100, 4)),
                 rng.normal(-6, 0.5, (60, 4))]


def test_weighted_gmm_unit_weights_equal_gaussian_mixture():
    X = _blobs()
    ref = GaussianMixture(3, random_state=0).fit(X)
    weights, means, covs, converged, n_iter = weighted_gmm(X, np.ones(len(X)), 3,
                                                           random_state=0)
    np.testing.assert_allclose(means, ref.means_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(covs, ref.covariances_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights, ref.weights_, rtol=1e-10)
    assert converged == ref.converged_ and n_iter == ref.n_iter_


def test_weighted_gmm_integer_weights_equal_replicated_points():
    X = _blobs(1)
    counts = np.random.RandomState(2).randint(1, 4, len(X))
    init = X[[0, 200, 300]]
    a = weighted_gmm(X, counts, 3, means_init=init, tol=1e-8)
    b = weighted_gmm(np.repeat(X, counts, axis=0), None, 3, means_init=init, tol=1e-8)
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)
    assert a[4] == b[4]
    # and the weights matter: unit weights give another fit
    c = weighted_gmm(X, None, 3, means_init=init, tol=1e-8)
    assert not np.allclose(a[1], c[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"sample_weight": -np.ones(310)}, "sample_weight"),
    ({"n_components": 0}, "n_components"),
    ({"means_init": np.zeros((2, 4)), "n_components": 3}, "means_init"),
])
def test_weighted_gmm_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        weighted_gmm(_blobs(), **kwargs)


def test_sensitivity_coreset_unbiased_and_favours_outliers():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(0, 1, (2000, 3)), rng.normal(30, 1, (10, 3))]
    counts, sums, far = [], [], []
    for seed in range(50):
        idx, w = sensitivity_coreset(X, 200, 2, random_state=seed)
        counts.append(w.sum())
        sums.append(w @ X[idx, 0])
        far.append(np.mean(idx >= 2000))
    # weighted sums estimate sums over the data set without bias
    assert abs(np.mean(counts) / len(X) - 1) < 0.05
    assert abs(np.mean(sums) / X[:, 0].sum() - 1) < 0.1
    # a small far cluster is sampled far more often than its 0.5 % share
    assert np.mean(far) > 0.02
    idx1, w1 = sensitivity_coreset(X, 50, 2, random_state=3)
    idx2, w2 = sensitivity_coreset(X, 50, 2, random_state=3)
    assert np.array_equal(idx1, idx2) and np.array_equal(w1, w2)
    with pytest.raises(ValueError, match="n_clusters"):
        sensitivity_coreset(X, 10, 0)


def test_training_core_has_no_warnings_on_clean_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(0, epochs=1)
