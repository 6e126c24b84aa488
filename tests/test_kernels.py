"""Shared numeric kernels against brute-force references."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.utils import check_random_state

from skad._kernels.ann import NeighborIndex, build_index
from skad._kernels.coreset import greedy_coreset, random_projection
from skad._kernels.gaussian import cholesky_factors, fit_gaussians, mahalanobis
from skad._kernels.knn import knn_search, ranking_operand, same_group_counts
from skad._kernels.refine import ball_knn, ball_partition, bank_products, exact_knn, pruned_knn
from skad._kernels.reweight import reweight_factor, reweighted_image_scores


def _brute_knn(q, b, k, qg=None, bg=None):
    D = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    if qg is not None:
        D[qg[:, None] == bg[None, :]] = np.inf
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, 1), idx


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(137, 9)).astype(np.float32), rng.normal(size=(211, 9)).astype(
        np.float32
    )


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("chunks", [(None, None), (7, 13), (50, 4)])
def test_knn_matches_brute_force(data, k, chunks):
    q, b = data
    d, i = knn_search(q, b, k, chunk_size=chunks[0], bank_chunk_size=chunks[1])
    d_ref, i_ref = _brute_knn(q, b, k)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == (137, k)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(i, i_ref)
    assert np.all(np.diff(d, axis=1) >= 0)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_group_exclusion(data, k):
    q, b = data
    rng = np.random.default_rng(1)
    qg, bg = rng.integers(0, 5, len(q)), rng.integers(0, 5, len(b))
    d, i = knn_search(q, b, k, query_groups=qg, bank_groups=bg, bank_chunk_size=17)
    d_ref, i_ref = _brute_knn(q, b, k, qg, bg)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(i, i_ref)
    assert not np.any(bg[i] == qg[:, None])


def test_knn_self_exclusion():
    x = np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32)
    ids = np.arange(40)
    d, i = knn_search(x, x, 2, query_groups=ids, bank_groups=ids)
    assert not np.any(i == ids[:, None])
    d_ref, i_ref = _brute_knn(x, x, 3)  # first column is the point itself
    np.testing.assert_array_equal(i, i_ref[:, 1:])


def test_knn_torch_input_and_tensors():
    q = torch.randn(5, 4)
    d, i = knn_search(q, q, 1, return_tensors=True)
    assert isinstance(d, torch.Tensor) and torch.all(i[:, 0] == torch.arange(5))
    assert float(d.max()) < 1e-3


def test_knn_errors(data):
    q, b = data
    with pytest.raises(ValueError, match="k=212 exceeds"):
        knn_search(q, b, 212)
    with pytest.raises(ValueError, match="eligible"):
        knn_search(q[:2], b[:3], 2, query_groups=[0, 1], bank_groups=[0, 0, 1])
    with pytest.raises(ValueError, match="give both"):
        knn_search(q, b, 1, query_groups=np.zeros(len(q), int))
    with pytest.raises(ValueError, match="features"):
        knn_search(q, b[:, :3], 1)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        knn_search(q, b, 0)
    with pytest.raises(ValueError, match="2-D"):
        knn_search(q[0], b, 1)


class _ExactGraph:
    """Stand-in for the pynndescent graph with its query API (exact answers).

    The graph's own recall is measured in benchmarks/bench_bottle_baselines.py (numba
    compiles pynndescent for about a minute of CPU, too slow for the test suite); this
    checks the index's over-query-and-filter logic for group exclusion.
    """

    def __init__(self, bank):
        self.bank = bank

    def query(self, q, k, epsilon):
        d, i = knn_search(q, self.bank, k)
        return i, d


def test_index_methods_and_approx_group_filter():
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(300, 6)).astype(np.float32)
    q = bank[:40] + 0.01
    exact = build_index(bank)
    assert exact.method_ == "exact"
    d_e, i_e = exact.query(q, 3)
    np.testing.assert_array_equal(i_e, _brute_knn(q, bank, 3)[1])
    bg = np.arange(300) // 10
    qg = np.arange(40) // 10
    d_x, i_x = exact.query(q, 3, query_groups=qg, bank_groups=bg)
    index = NeighborIndex(bank, "exact")
    index.method_, index.graph_ = "nndescent", _ExactGraph(index.bank_)
    d_a, i_a = index.query(q, 3, query_groups=qg, bank_groups=bg)
    np.testing.assert_array_equal(i_a, i_x)
    np.testing.assert_allclose(d_a, d_x, rtol=1e-5)
    assert not np.any(bg[i_a] == qg[:, None])
    with pytest.raises(ValueError, match="eligible"):
        index.query(q, 295, query_groups=qg, bank_groups=bg)
    with pytest.raises(ValueError, match="method"):
        build_index(bank, method="fast")
    with pytest.raises(ValueError, match="approx_threshold"):
        build_index(bank, approx_threshold=0)
    with pytest.raises(ValueError, match="n_probe"):
        build_index(bank, method="ivf", n_probe=0)
    with pytest.raises(ValueError, match="n_lists"):
        build_index(bank, method="ivf", n_lists=301)


def test_ivf_index_exact_when_all_lists_probed_and_pickles():
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(20, 12)) * 5
    bank = (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 12))).astype(np.float32)
    q = (centers[rng.integers(0, 20, 200)] + rng.normal(size=(200, 12))).astype(np.float32)
    ivf = build_index(bank, method="auto", approx_threshold=3000, n_lists=40, n_probe=40,
                      random_state=0)
    assert ivf.method_ == "ivf" and ivf.n_lists_ == 40
    d_b, i_b = _brute_knn(q, bank, 4)
    d, i = ivf.query(q, 4)
    np.testing.assert_array_equal(i, i_b)
    np.testing.assert_allclose(d, d_b, rtol=1e-4, atol=1e-4)
    # fewer probes: recall < 1 is possible, but never a distance below the true one
    few = build_index(bank, method="ivf", n_lists=40, n_probe=2, random_state=0)
    d1, _ = few.query(q, 1)
    assert np.all(d1[:, 0] >= d_b[:, 0] - 1e-4)
    restored = pickle.loads(pickle.dumps(few))
    np.testing.assert_array_equal(restored.query(q, 1)[1], few.query(q, 1)[1])


def _group_clusters(seed):
    """10 well-separated clusters of 100 rows, group = cluster; queries from each."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, 6)) * 20
    labels = np.repeat(np.arange(10), 100)
    bank = (centers[labels] + rng.normal(size=(1000, 6))).astype(np.float32)
    return bank, labels, bank[::50] + 0.01, labels[::50]


def test_ivf_group_exclusion_completes_short_rows_exactly():
    bank, labels, q, qg = _group_clusters(9)
    # groups = clusters: with one probe the probed list holds only the query's own
    # group, so the approximate search finds nothing eligible; those rows are exact
    ivf = build_index(bank, method="ivf", n_lists=10, n_probe=1, random_state=0)
    d, i = ivf.query(q, 2, query_groups=qg, bank_groups=labels)
    d_x, i_x = knn_search(q, bank, 2, query_groups=qg, bank_groups=labels)
    np.testing.assert_array_equal(i, i_x)
    np.testing.assert_allclose(d, d_x, rtol=1e-5)



def _clustered(seed, n_bank=3000, n_query=300, d=12):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d)) * 5
    bank = (centers[rng.integers(0, 20, n_bank)] + rng.normal(size=(n_bank, d)))
    q = centers[rng.integers(0, 20, n_query)] + rng.normal(size=(n_query, d))
    return bank.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("k", [1, 4])
def test_cells_index_exact_with_complete_lists_and_pickles(k):
    bank, q = _clustered(10)
    d_b, i_b = _brute_knn(q, bank, k)
    # every row's neighbours are the whole bank: each cell lists every row
    full = build_index(bank, method="cells", n_lists=8, n_list_neighbors=len(bank),
                       random_state=0)
    assert full.method_ == "cells" and full.n_lists_ == 8
    d, i = full.query(q, k)
    np.testing.assert_array_equal(i, i_b)
    np.testing.assert_allclose(d, d_b, rtol=1e-4, atol=1e-4)
    # one cell: exact as well
    one = build_index(bank, method="cells", n_lists=1, n_list_neighbors=0, random_state=0)
    np.testing.assert_array_equal(one.query(q, k)[1], i_b)
    restored = pickle.loads(pickle.dumps(full))
    np.testing.assert_array_equal(restored.query(q, k)[1], i)


def test_cells_index_approximate_never_below_exact_and_batch_independent():
    bank, q = _clustered(11)
    d_b, i_b = _brute_knn(q, bank, 5)
    cells = build_index(bank, method="cells", n_list_neighbors=4, random_state=0)
    assert cells.n_lists_ == round(np.sqrt(len(bank)))
    d, i = cells.query(q, 5)
    assert np.all(d >= d_b - 1e-4)
    assert np.all(np.diff(d, axis=1) >= 0)
    # distances are exact to the rows returned
    np.testing.assert_allclose(d, np.linalg.norm(q[:, None] - bank[i], axis=-1), rtol=1e-5,
                               atol=1e-5)
    assert np.mean(i[:, 0] == i_b[:, 0]) >= 0.85
    # more neighbours in the lists: recall does not drop
    more = build_index(bank, method="cells", n_list_neighbors=32, random_state=0)
    assert np.mean(more.query(q, 1)[1][:, 0] == i_b[:, 0]) > np.mean(i[:, 0] == i_b[:, 0])
    # coarse (each cell's own rows only): upper bounds of the full search's distances,
    # still exact to the rows returned, each row found in the cell the query is in
    d_c, i_c = more.query(q, 5, coarse=True)
    d_f = more.query(q, 5)[0]
    assert np.all(d_c >= d_f - 1e-5) and np.mean(d_c[:, 0] > d_f[:, 0] + 1e-5) > 0.02
    np.testing.assert_allclose(d_c, np.linalg.norm(q[:, None] - bank[i_c], axis=-1),
                               rtol=1e-5, atol=1e-5)
    # each bank row in the cell it is assigned to; the coarse rows in the query's cell
    np.testing.assert_array_equal(more.cell_of_, more.assign(bank))
    assert (more.list_sizes_ >= np.bincount(more.cell_of_, minlength=more.n_lists_)).all()
    assert (more.cell_of_[i_c] == more.assign(q)[:, None]).all()
    # a row's result does not depend on the other rows of the batch
    d1, i1 = cells.query(q, 1)
    for r in (0, 17, 299):
        dr, ir = cells.query(q[r:r + 1], 1)
        assert ir[0, 0] == i1[r, 0] and dr[0, 0] == pytest.approx(d1[r, 0], rel=1e-6)


def test_cells_index_groups_and_short_lists_complete_exactly():
    bank, labels, q, qg = _group_clusters(12)
    cells = build_index(bank, method="cells", n_lists=10, n_list_neighbors=0, random_state=0)
    d, i = cells.query(q, 2, query_groups=qg, bank_groups=labels)
    d_x, _ = knn_search(q, bank, 2, query_groups=qg, bank_groups=labels)
    assert not np.any(labels[i] == qg[:, None])
    assert np.all(d >= d_x - 1e-4)
    # k larger than every list: each row is completed by the exact search
    k = int(cells.list_sizes_.max()) + 1
    d, i = cells.query(q, k)
    d_b, i_b = _brute_knn(q, bank, k)
    np.testing.assert_allclose(d, d_b, rtol=1e-5, atol=1e-5)
    # the same rows, up to the order of near-ties (seen swapped on a 16-core machine)
    tie = np.isclose(np.diff(d_b, axis=1), 0, atol=1e-5)
    tie = np.pad(tie, ((0, 0), (0, 1))) | np.pad(tie, ((0, 0), (1, 0)))
    np.testing.assert_array_equal(i[~tie], i_b[~tie])
    with pytest.raises(ValueError, match="n_list_neighbors"):
        build_index(bank, method="cells", n_list_neighbors=-1)


def _naive_greedy(X, n_select, seed, projection_dim=128):
    rng = check_random_state(seed)
    Z = random_projection(X, projection_dim, random_state=rng).numpy().astype(np.float64)
    sel = [rng.randint(len(X))]
    mind = np.linalg.norm(Z - Z[sel[0]], axis=1)
    for _ in range(n_select - 1):
        mind[sel[-1]] = -1
        sel.append(int(np.argmax(mind)))
        mind = np.minimum(mind, np.linalg.norm(Z - Z[sel[-1]], axis=1))
    return np.array(sel)


@pytest.mark.parametrize("projection_dim", [None, 8])
@pytest.mark.parametrize("knobs", [
    dict(leaf_size=16),
    dict(leaf_size=16, n_candidates=1),  # one pick per batch: the naive loop
    dict(leaf_size=8, n_candidates=7, chunk_size=8),  # many lazy batches, fine chunks
    dict(leaf_size=4096, chunk_size=10**6),  # a single block: no pruning
])
def test_coreset_matches_naive_greedy(projection_dim, knobs):
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(1500, 6)) @ rng.normal(size=(6, 20))).astype(np.float32)
    got = greedy_coreset(X, 300, projection_dim=projection_dim, random_state=7, **knobs)
    np.testing.assert_array_equal(got, _naive_greedy(X, 300, 7, projection_dim))


def test_coreset_reproducible_and_distinct():
    X = np.random.default_rng(5).normal(size=(800, 30)).astype(np.float32)
    a = greedy_coreset(X, 100, projection_dim=16, random_state=0)
    b = greedy_coreset(X, 100, projection_dim=16, random_state=0)
    c = greedy_coreset(X, 100, projection_dim=16, random_state=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and len(np.unique(a)) == 100
    # duplicates: never the same row twice
    Xd = np.repeat(X[:5], 4, axis=0)
    assert len(np.unique(greedy_coreset(Xd, 20, random_state=0))) == 20
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(X, 0)
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(X, 801)
    with pytest.raises(ValueError, match="n_candidates"):
        greedy_coreset(X, 5, n_candidates=0)
    np.testing.assert_array_equal(np.sort(greedy_coreset(X, 800, random_state=0)), np.arange(800))


def test_coreset_progress_bar(capsys):
    X = np.random.default_rng(5).normal(size=(800, 30)).astype(np.float32)
    quiet = greedy_coreset(X, 100, projection_dim=16, random_state=0)
    assert capsys.readouterr().err == ""
    shown = greedy_coreset(X, 100, projection_dim=16, random_state=0, verbose="my coreset")
    np.testing.assert_array_equal(shown, quiet)  # the bar changes nothing
    err = capsys.readouterr().err
    assert "my coreset" in err and "/100" in err


def test_coreset_covers_better_than_random():
    rng = np.random.default_rng(6)
    X = np.r_[rng.normal(size=(990, 5)), rng.normal(size=(10, 5)) + 20].astype(np.float32)
    sel = greedy_coreset(X, 20, projection_dim=None, random_state=0)
    assert np.any(sel >= 990)  # the far cluster is always covered
    radius = knn_search(X, X[sel], 1)[0].max()
    rand = rng.choice(len(X), 20, replace=False)
    assert radius < knn_search(X, X[rand], 1)[0].max()


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_gaussians_against_numpy(two_threads, shrinkage):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 7, 5)) @ rng.normal(size=(5, 5))
    mu, cov = fit_gaussians(X, shrinkage=shrinkage, eps=0.01, chunk_size=3)
    for p in range(7):
        S = np.cov(X[:, p].T)
        S = (1 - shrinkage) * S + shrinkage * np.trace(S) / 5 * np.eye(5) + 0.01 * np.eye(5)
        np.testing.assert_allclose(mu[p], X[:, p].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cov[p], S, rtol=1e-4, atol=1e-4)
    L = cholesky_factors(cov)
    np.testing.assert_allclose(L @ np.swapaxes(L, 1, 2), cov, rtol=1e-4, atol=1e-4)
    Xq = rng.normal(size=(9, 7, 5))
    got = mahalanobis(Xq, mu, L, chunk_size=4)
    ref = np.empty((9, 7))
    for p in range(7):
        diff = Xq[:, p] - mu[p]
        ref[:, p] = np.sqrt(np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov[p]), diff))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


def test_gaussians_many_positions_two_threads(two_threads):
    # the shape that makes batched torch.linalg.inv abort with 2 threads (oneMKL SLASWP)
    rng = np.random.default_rng(8)
    X = rng.normal(size=(20, 196, 152)).astype(np.float32)
    mu, cov = fit_gaussians(X)
    L = cholesky_factors(cov)
    d = mahalanobis(X[:2], mu, L)
    assert d.shape == (2, 196) and np.all(np.isfinite(d))
    p = 100
    diff = X[1, p] - mu[p]
    ref = np.sqrt(diff @ np.linalg.inv(cov[p].astype(np.float64)) @ diff)
    np.testing.assert_allclose(d[1, p], ref, rtol=1e-3)


def test_gaussian_errors():
    with pytest.raises(ValueError, match="positive definite"):
        cholesky_factors(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        fit_gaussians(np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_gaussians(np.ones((3, 2, 3)), shrinkage=2.0)
    with pytest.raises(ValueError, match="3-D"):
        fit_gaussians(np.ones((3, 2)))
    with pytest.raises(ValueError, match="expected shapes"):
        mahalanobis(np.ones((3, 2, 3)), np.zeros((2, 4)), np.ones((2, 4, 4)))


def testpruned_knn_is_exact():
    # exact k-NN of a few rows by lower bounds in the principal subspace: the same
    # neighbours as a full search, with a tight and a loose upper bound, with groups
    rng = np.random.default_rng(3)
    bank = (rng.normal(size=(3000, 40)) * np.linspace(3, 0.1, 40)).astype(np.float32)
    products = bank_products(bank)
    rows = rng.choice(len(bank), 50, replace=False)
    d, expected = knn_search(bank[rows], bank, 9)
    for upper, resolved in ((d[:, -1], 1.0), (1.2 * d[:, -1], 0.5)):
        dist, got = pruned_knn(bank[rows], bank, 9, upper, products)
        done = got[:, 0] >= 0  # the others are left to a full search
        assert done.mean() >= resolved
        assert [set(a) for a in got[done]] == [set(a) for a in expected[done]]
        np.testing.assert_allclose(dist[done], d[done], rtol=1e-5, atol=1e-5)
    q = bank[rows] + 0.05 * rng.normal(size=(50, 40)).astype(np.float32)
    qg, bg = rng.integers(0, 4, 50), rng.integers(0, 4, len(bank))
    d1, e1 = knn_search(q, bank, 1, query_groups=qg, bank_groups=bg)
    dist, got = pruned_knn(q, bank, 1, 1.5 * d1[:, 0], products, (qg, bg))
    done = got[:, 0] >= 0
    assert done.mean() > 0.5
    np.testing.assert_array_equal(got[done], e1[done])
    # a useless bound leaves every row to the full search (-1)
    assert (pruned_knn(q, bank, 1, np.full(50, 1e9), products)[1] == -1).all()


@pytest.mark.parametrize("k", [1, 4])
def test_exact_knn_matches_brute_force_with_and_without_bounds(k):
    rng = np.random.default_rng(5)
    bank = (rng.normal(size=(800, 48)) * np.linspace(2, 0.1, 48)).astype(np.float32)
    q = bank[:40] + 0.1 * rng.normal(size=(40, 48)).astype(np.float32)
    q = np.r_[q, 10 * rng.normal(size=(10, 48)).astype(np.float32)]  # far: no pruning
    products = bank_products(bank)
    d_ref, i_ref = _brute_knn(q, bank, k)
    for upper in (None, 1.01 * d_ref[:, -1]):
        d, i = exact_knn(q, bank, k, products, upper=upper)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)
    qg, bg = rng.integers(0, 3, len(q)), rng.integers(0, 3, len(bank))
    d_ref, i_ref = _brute_knn(q, bank, k, qg, bg)
    d, i = exact_knn(q, bank, k, products, groups=(qg, bg))
    np.testing.assert_array_equal(i, i_ref)


def _allowed_brute(q, bank, k, qg, bg, allowed):
    """k smallest distances of each query among its allowed bank rows (brute force)."""
    d = np.linalg.norm(q[:, None].astype(np.float64) - bank[None], axis=2)
    d[~allowed[qg][:, bg]] = np.inf
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("k", [1, 3, 40])
def test_ball_knn_is_exact(k):
    # the pruned restricted search returns the brute-force distances: near and far
    # queries, exact duplicates of bank rows (distance 0), tied rows, k above a cell's
    # size, one cell and as many cells as rows
    rng = np.random.default_rng(7)
    bank = (rng.normal(size=(1200, 37)) * np.linspace(3, 0.1, 37)).astype(np.float32)
    bank[600:650] = bank[550:600]  # ties: equal rows in other groups
    bg = np.repeat(np.arange(12), 100)
    q = np.r_[bank[:30], bank[:30] + 0.2 * rng.normal(size=(30, 37)).astype(np.float32),
              8 * rng.normal(size=(10, 37)).astype(np.float32), bank[560:570]]
    qg = rng.integers(0, 5, len(q))
    allowed = rng.random((5, 12)) < 0.4
    allowed[:, 6] = True
    ref = _allowed_brute(q, bank, k, qg, bg, allowed)
    for n_cells in (None, 1, 7, len(bank)):
        part = ball_partition(bank, bg, n_cells=n_cells, random_state=0)
        d, i = ball_knn(q, bank, k, part, qg, allowed)
        np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
        assert allowed[qg[:, None], bg[i]].all()  # only allowed rows come back
        np.testing.assert_allclose(np.linalg.norm(q[:, None] - bank[i], axis=2), d,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4])
def test_ball_knn_capped_is_an_upper_bound(k):
    # a cap on the cells visited: distances never below the exact ones, equal where the
    # search ended by the exact criterion and everywhere once the cap reaches the cells
    rng = np.random.default_rng(9)
    bank = (rng.normal(size=(1500, 24)) * np.linspace(2, 0.2, 24)).astype(np.float32)
    bg = np.repeat(np.arange(15), 100)
    q = np.r_[bank[:40] + 0.3 * rng.normal(size=(40, 24)).astype(np.float32),
              6 * rng.normal(size=(20, 24)).astype(np.float32)]
    qg = rng.integers(0, 3, len(q))
    allowed = rng.random((3, 15)) < 0.5
    allowed[:, 0] = True
    part = ball_partition(bank, bg, n_cells=30, random_state=0)
    ref, _, ex = ball_knn(q, bank, k, part, qg, allowed, return_exact=True)
    assert ex.all()
    np.testing.assert_allclose(ref, _allowed_brute(q, bank, k, qg, bg, allowed),
                               rtol=1e-5, atol=1e-5)
    fewer = 0
    for cap in (1, 2, 5):
        d, i, exact = ball_knn(q, bank, k, part, qg, allowed, max_cells=cap,
                               return_exact=True)
        assert allowed[qg[:, None], bg[i]].all()
        assert np.all(d >= ref - 1e-5)
        np.testing.assert_allclose(d[exact], ref[exact], rtol=1e-5, atol=1e-5)
        fewer += (~exact).sum()
    assert fewer > 0  # the caps did stop some searches
    d, _, exact = ball_knn(q, bank, k, part, qg, allowed, max_cells=30, return_exact=True)
    assert exact.all()
    np.testing.assert_allclose(d, ref, rtol=1e-6)
    for bad in (0, 1.5, True, -2):
        with pytest.raises(ValueError, match="max_cells"):
            ball_knn(q, bank, k, part, qg, allowed, max_cells=bad)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_ball_knn_capped_sweeps(k, monkeypatch):
    # the capped search's own paths: k above a cell's allowed rows (pass 1 takes more
    # cells), a cap at or above the cells (exact), query groups in several chunks, one
    # query group split over several parts, and a partition pickled without its sweep
    # tables: the same answers every way, never below the exact ones
    import skad._kernels.refine as refine

    rng = np.random.default_rng(11)
    bank = (rng.normal(size=(1600, 20)) * np.linspace(2, 0.2, 20)).astype(np.float32)
    bank[800:830] = bank[770:800]  # ties across groups
    bg = np.repeat(np.arange(16), 100)
    q = np.r_[bank[:50] + 0.3 * rng.normal(size=(50, 20)).astype(np.float32),
              6 * rng.normal(size=(15, 20)).astype(np.float32), bank[770:775]]
    qg = rng.integers(0, 4, len(q))
    allowed = rng.random((4, 16)) < 0.4
    allowed[:, 3] = True
    ref = _allowed_brute(q, bank, k, qg, bg, allowed)
    part = ball_partition(bank, bg, n_cells=40, random_state=0)
    d, i, exact = ball_knn(q, bank, k, part, qg, allowed, max_cells=3, return_exact=True)
    assert allowed[qg[:, None], bg[i]].all()
    assert np.all(d >= ref - 1e-5) and np.all(np.diff(d, axis=1) >= 0)
    np.testing.assert_allclose(d[exact], ref[exact], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q[:, None] - bank[i], axis=2), d,
                               rtol=1e-5, atol=1e-5)
    full, _, full_exact = ball_knn(q, bank, k, part, qg, allowed, max_cells=40,
                                   return_exact=True)
    assert full_exact.all()
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(refine, "CAPPED_ROWS", 7)  # a few query groups per chunk
    old = {key: v for key, v in part.items() if key not in refine._sweep_tables(part)}
    for p_ in (part, old):
        d2, i2, x2 = ball_knn(q, bank, k, p_, qg, allowed, max_cells=3, return_exact=True)
        np.testing.assert_allclose(d2, d, rtol=1e-6)
        np.testing.assert_array_equal(x2, exact)
    # one query group: its allowed groups split over the parts
    one = ball_knn(q, bank, k, part, np.zeros(len(q), int), allowed[3:], max_cells=3)[0]
    assert np.all(one >= _allowed_brute(q, bank, k, np.zeros(len(q), int), bg,
                                        allowed[3:]) - 1e-5)
    with pytest.raises(ValueError, match="allowed: expected shape"):
        ball_knn(q, bank, k, part, qg, allowed[:, :5], max_cells=3)


def test_ball_knn_edge_cases():
    rng = np.random.default_rng(8)
    bank = rng.normal(size=(50, 4)).astype(np.float32)
    part = ball_partition(bank, np.zeros(50, int), random_state=1)
    q = rng.normal(size=(6, 4)).astype(np.float32)
    one = np.ones((1, 1), bool)
    # one group, k = every row: all distances, sorted
    d, _ = ball_knn(q, bank, 50, part, np.zeros(6, int), one)
    np.testing.assert_allclose(d, _allowed_brute(q, bank, 50, np.zeros(6, int),
                                                 np.zeros(50, int), one), rtol=1e-5, atol=1e-5)
    assert ball_knn(q[:0], bank, 1, part, np.zeros(0, int), one)[0].shape == (0, 1)
    # a constant bank: every distance ties
    flat = np.ones((20, 3), np.float32)
    d, _ = ball_knn(np.zeros((2, 3), np.float32), flat, 2,
                    ball_partition(flat, np.zeros(20, int)), np.zeros(2, int), one)
    np.testing.assert_allclose(d, np.sqrt(3), rtol=1e-6)
    with pytest.raises(ValueError, match="k=51 exceeds"):
        ball_knn(q, bank, 51, part, np.zeros(6, int), one)
    with pytest.raises(ValueError, match="groups: expected shape"):
        ball_partition(bank, np.zeros(3, int))
    with pytest.raises(ValueError, match="n_cells"):
        ball_partition(bank, np.zeros(50, int), n_cells=51)


def test_ranking_operand_ranks_like_distances():
    rng = np.random.default_rng(6)
    q, b = rng.normal(size=(7, 5)), rng.normal(size=(30, 5)).astype(np.float32)
    op = ranking_operand(b)
    assert op.shape == (6, 30) and op.dtype == np.float32 and op.flags.c_contiguous
    rank = np.c_[q, np.ones(7)] @ op
    d2 = ((q[:, None] - b[None]) ** 2).sum(-1)
    np.testing.assert_allclose(rank, d2 - (q ** 2).sum(1)[:, None], rtol=1e-5, atol=1e-5)
    t = ranking_operand(torch.from_numpy(b))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), op, rtol=1e-6, atol=1e-6)


def test_same_group_counts():
    bg = np.array([3, 1, 3, 3, 0])
    assert same_group_counts(np.array([3, 0, 2, 1, 9]), bg).tolist() == [3, 1, 0, 1, 0]


def test_reweight_factor_is_eq7():
    rng = np.random.default_rng(7)
    d = rng.uniform(0, 50, size=(6, 9))
    u = d[:, 0]
    expected = 1 - np.exp(u) / np.exp(d).sum(1)
    np.testing.assert_allclose(reweight_factor(u, d), expected, rtol=1e-12, atol=1e-12)
    assert np.all((reweight_factor(u, d) >= 0) & (reweight_factor(u, d) < 1))
    # large distances: no overflow
    assert np.isfinite(reweight_factor(u + 1000, d + 1000)).all()
    # the image score: s* times the factor of its top patch
    bank = np.array([[0.0], [1.0], [10.0]], np.float32)
    feats = np.array([[[0.0], [3.0]]], np.float32)
    s = reweighted_image_scores(np.array([[0.0, 2.0]]), feats, np.array([[0, 1]]), bank, 2)
    np.testing.assert_allclose(s, 2 * (1 - np.exp(2) / (np.exp(2) + np.exp(3))), rtol=1e-6)


def test_as_tensor_dtypes_copies_and_errors():
    from skad._kernels._convert import as_tensor

    ro = np.arange(6, dtype=np.float64).reshape(2, 3)
    ro.flags.writeable = False
    t = as_tensor(ro, "x", ndim=2)  # read-only: copied, float64 kept
    assert t.dtype == torch.float64 and t.shape == (2, 3)
    assert as_tensor(ro, "x", dtype=torch.float32).dtype == torch.float32
    assert as_tensor(np.arange(3), "x").dtype == torch.float32
    shared = np.zeros((2, 2), np.float32)
    as_tensor(shared, "x", dtype=torch.float32)[0, 0] = 1.0  # no copy when not needed
    assert shared[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \(n, d\); got shape \(3,\)"):
        as_tensor(np.zeros(3), "x", ndim=2)
    with pytest.raises(TypeError, match="numeric"):
        as_tensor(np.array(["a"]), "x")


def test_neighbour_index_matches_brute_force():
    from skad._kernels.spatial import neighbour_index, window_offsets

    h, w = 3, 4
    offsets = window_offsets(3)
    idx, valid = neighbour_index(h, w, offsets)
    assert idx.shape == valid.shape == (9, h * w)
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                ok = 0 <= y + dy < h and 0 <= x + dx < w
                assert bool(valid[k, y * w + x]) == ok
                if ok:
                    assert int(idx[k, y * w + x]) == (y + dy) * w + x + dx


def test_whitened_distances_match_mahalanobis_on_strided_views():
    from skad._kernels.gaussian import whitened_distances, whitening_factors

    rng = np.random.default_rng(11)
    maps = rng.normal(size=(30, 6, 4, 5)).astype(np.float32)  # (n, d, h, w)
    # (n, P, d) view of channels-first maps: d-stride P (the layout N-pad passes)
    view = torch.from_numpy(maps).permute(0, 2, 3, 1).reshape(30, 20, 6)
    assert view.stride(2) != 1
    mu, cov = fit_gaussians(view, eps=0.01)
    mu_c, cov_c = fit_gaussians(view.contiguous(), eps=0.01)
    np.testing.assert_allclose(cov, cov_c, rtol=1e-5, atol=1e-6)
    L = cholesky_factors(cov)
    W = whitening_factors(L)
    np.testing.assert_allclose(W @ L, np.broadcast_to(np.eye(6), W.shape), atol=1e-4)
    assert np.all(np.triu(W, 1) == 0)
    q = torch.from_numpy(rng.normal(size=(7, 6, 4, 5)).astype(np.float32))
    q = q.permute(0, 2, 3, 1).reshape(7, 20, 6)
    got = whitened_distances(q, mu, W).numpy()
    np.testing.assert_allclose(got, mahalanobis(q.contiguous(), mu, L), rtol=1e-4, atol=1e-5)
    # batch-size independent up to float32 rounding
    np.testing.assert_allclose(whitened_distances(q, mu, W, working_memory=1e-4).numpy(), got,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected shapes"):
        whitened_distances(q, mu[:3], W)


def test_lloyd_and_partitioned_kmeans():
    from sklearn.cluster import MiniBatchKMeans

    from skad._kernels.kmeans import lloyd, partitioned_kmeans

    rng = np.random.default_rng(12)
    centres = rng.normal(scale=20, size=(8, 3))
    X = (centres[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 3))).astype(np.float32)
    c, lab = lloyd(X, 8, n_iter=10, random_state=0)
    assert c.shape == (8, 3) and lab.shape == (4000,)
    # labels: the last assignment, before the last move (nearly converged: almost all
    # rows' nearest centre); more iterations from the same start lower the inertia
    d = ((X[:, None] - c[None]) ** 2).sum(-1)
    assert np.mean(d.argmin(1) == lab) > 0.99
    c1, _ = lloyd(X, 8, n_iter=1, random_state=0)
    d1 = ((X[:, None] - c1[None]) ** 2).sum(-1)
    assert d.min(1).sum() <= d1.min(1).sum()
    # cells: the requested count, deterministic, quantisation close to one global run
    X = rng.normal(size=(6000, 5)).astype(np.float32)
    a = partitioned_kmeans(X, 600, cell_size=1000, random_state=0)
    b = partitioned_kmeans(X, 600, cell_size=1000, random_state=0)
    assert a.shape == (600, 5)
    np.testing.assert_array_equal(a, b)
    glob = partitioned_kmeans(X, 600, cell_size=None, random_state=0)
    ref = MiniBatchKMeans(n_clusters=600, init="random", n_init=1, batch_size=4096, max_iter=1,
                          compute_labels=True, random_state=np.random.RandomState(0)).fit(X)
    np.testing.assert_array_equal(glob, ref.cluster_centers_.astype(np.float32))
    Xt = rng.normal(size=(2000, 5)).astype(np.float32)
    err_cells = knn_search(Xt, a, 1)[0].mean()
    err_glob = knn_search(Xt, glob, 1)[0].mean()
    assert err_cells < 1.1 * err_glob
    with pytest.raises(ValueError, match="n_clusters"):
        partitioned_kmeans(X, 0)
    with pytest.raises(ValueError, match="cell_size"):
        partitioned_kmeans(X, 10, cell_size=0)


@pytest.mark.parametrize("method", ["exact", "cells"])
def test_index_query_allowed_pairs(method):
    from skad._kernels.ann import build_index

    rng = np.random.default_rng(13)
    bank = rng.normal(size=(3000, 8)).astype(np.float32)
    bg = np.repeat(np.arange(30), 100)  # 30 "images" of 100 rows
    q = (bank[rng.choice(3000, 400)] + 0.05 * rng.normal(size=(400, 8))).astype(np.float32)
    qg = np.repeat(np.arange(4), 100)
    allowed = np.zeros((4, 30), bool)
    for g in range(4):
        allowed[g, rng.choice(30, 7, replace=False)] = True
    index = build_index(bank, method=method, random_state=0)
    d, i = index.query(q, 2, query_groups=qg, bank_groups=bg, allowed=allowed)
    assert np.all(allowed[qg[:, None], bg[i]])  # only allowed rows
    ref = np.empty_like(d)
    for g in range(4):
        cols = np.flatnonzero(allowed[g][bg])
        ref[qg == g] = knn_search(q[qg == g], bank[cols], 2)[0]
    # exact distances to the rows returned, never below the true ones
    np.testing.assert_allclose(d, np.linalg.norm(q[:, None] - bank[i], axis=2), rtol=1e-5)
    assert np.all(d >= ref - 1e-5)
    recall = np.mean(np.isclose(d[:, 0], ref[:, 0], rtol=1e-5))
    assert recall == 1.0 if method == "exact" else recall > 0.8
    with pytest.raises(ValueError, match="allowed"):
        index.query(q, 2, query_groups=qg, bank_groups=bg, allowed=allowed[:2])
    with pytest.raises(ValueError, match="exceeds"):
        index.query(q, 800, query_groups=qg, bank_groups=bg, allowed=allowed)
