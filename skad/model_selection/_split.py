"""Cross-validation splitters for the one-class anomaly detection protocol."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import check_random_state

from ..utils._sklearn_compat import _num_samples
from ..utils.validation import labels_from_y

__all__ = ["OneClassSplit"]


class OneClassSplit(BaseCrossValidator):
    """One-class cross-validation: train on normal samples only, test on both classes.

    Train folds hold only normal samples (label 0). Test folds hold held-out normal
    samples and anomalies. ``y`` (required) is image labels ``(n,)`` with 1 = anomalous,
    or masks ``(n, H, W)`` (an image with any positive pixel is anomalous).

    Invariants (checked in the test suite):

    - no anomalous sample is ever in a train fold;
    - with ``test_size=None`` (default) the normal samples are partitioned into
      ``n_splits`` folds (as :class:`~sklearn.model_selection.KFold`, shuffled when
      ``shuffle=True``): each normal sample is in exactly one test fold and in the train
      fold of every other split;
    - with ``test_size`` given, each split draws ``test_size`` of the normal samples at
      random (as :class:`~sklearn.model_selection.ShuffleSplit`): a normal sample may
      be tested several times or never;
    - ``anomalies="all"`` (default) puts every anomaly in every test fold (stable AUROC
      when anomalies are few); ``anomalies="split"`` partitions the anomalies into
      ``n_splits`` folds too, so with ``test_size=None`` every sample, normal or
      anomalous, is tested exactly once.

    Parameters
    ----------
    n_splits : int, default=5
        Number of splits (>= 2 with ``test_size=None``, >= 1 otherwise).
    test_size : float in (0, 1), int or None, default=None
        None: K-fold over the normal samples. A float: share of the normal samples held
        out per split; an int: their number.
    anomalies : {"all", "split"}, default="all"
        Whether every test fold holds all anomalies or a 1/n_splits share of them.
    shuffle : bool, default=True
        Shuffle samples before making K folds (random splits always shuffle).
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffling.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.model_selection import OneClassSplit
    >>> y = np.array([0, 0, 0, 0, 1, 1])
    >>> for train, test in OneClassSplit(n_splits=2, random_state=0).split(np.zeros(6), y):
    ...     print(sorted(train.tolist()), sorted(test.tolist()))
    [0, 1] [2, 3, 4, 5]
    [2, 3] [0, 1, 4, 5]
    """

    def __init__(self, n_splits=5, *, test_size=None, anomalies="all", shuffle=True,
                 random_state=None):
        self.n_splits = n_splits
        self.test_size = test_size
        self.anomalies = anomalies
        self.shuffle = shuffle
        self.random_state = random_state

    def _check_params(self):
        if not isinstance(self.n_splits, Integral) or isinstance(self.n_splits, bool):
            raise ValueError(f"n_splits: expected an int; got {self.n_splits!r}")
        min_splits = 2 if self.test_size is None else 1
        if self.n_splits < min_splits:
            raise ValueError(
                f"n_splits: expected an int >= {min_splits}"
                f"{' with test_size=None (K folds)' if min_splits == 2 else ''}; "
                f"got {self.n_splits}"
            )
        ts = self.test_size
        if ts is not None:
            if isinstance(ts, bool) or not isinstance(ts, (Integral, Real)):
                raise ValueError(f"test_size: expected None, a float in (0, 1) or an int; got {ts!r}")
            if isinstance(ts, Real) and not isinstance(ts, Integral) and not 0.0 < ts < 1.0:
                raise ValueError(f"test_size: a float must lie in (0, 1); got {ts!r}")
            if isinstance(ts, Integral) and ts < 1:
                raise ValueError(f"test_size: an int must be >= 1; got {ts!r}")
        if self.anomalies not in ("all", "split"):
            raise ValueError(f"anomalies: expected 'all' or 'split'; got {self.anomalies!r}")

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits.

        Parameters
        ----------
        X, y, groups : ignored

        Returns
        -------
        n_splits : int
        """
        return int(self.n_splits)

    def split(self, X, y=None, groups=None):
        """Generate ``(train, test)`` index arrays.

        Parameters
        ----------
        X : array-like or sequence of length n_samples
            Only its length is used (images, paths or features).
        y : array-like of shape (n_samples,) or (n_samples, H, W)
            Labels (1 = anomalous) or masks. Required.
        groups : ignored

        Yields
        ------
        train : ndarray of int
            Indices of normal samples only.
        test : ndarray of int
            Held-out normal samples followed by anomalies.
        """
        self._check_params()
        if y is None:
            raise ValueError(
                "y: OneClassSplit needs y (image labels (n,) with 1 = anomalous, or masks "
                "(n, H, W)) to keep anomalies out of the train folds; got None"
            )
        n = _num_samples(X)
        labels = labels_from_y(y, n_samples=n)
        normal = np.flatnonzero(labels == 0)
        anomal = np.flatnonzero(labels == 1)
        if normal.size == 0:
            raise ValueError(
                f"y: no normal sample (label 0) among the {n} samples; OneClassSplit needs "
                "normal samples to train on"
            )
        rng = check_random_state(self.random_state)
        k = int(self.n_splits)
        if self.test_size is None:
            if normal.size < k:
                raise ValueError(
                    f"n_splits={k} is greater than the number of normal samples "
                    f"({normal.size}); use fewer splits"
                )
            order = rng.permutation(normal) if self.shuffle else normal
            normal_folds = np.array_split(order, k)
            splits = [
                (np.concatenate(normal_folds[:i] + normal_folds[i + 1:]), normal_folds[i])
                for i in range(k)
            ]
        else:
            if isinstance(self.test_size, Integral):
                n_test = int(self.test_size)
            else:
                n_test = int(np.ceil(float(self.test_size) * normal.size))
            if not 1 <= n_test < normal.size:
                raise ValueError(
                    f"test_size={self.test_size!r} holds out {n_test} of {normal.size} normal "
                    "samples; at least one must be held out and one left to train on"
                )
            splits = []
            for _ in range(k):
                perm = rng.permutation(normal)
                splits.append((perm[n_test:], perm[:n_test]))
        if self.anomalies == "split" and anomal.size:
            order = rng.permutation(anomal) if self.shuffle else anomal
            anomal_folds = np.array_split(order, k)
        else:
            anomal_folds = [anomal] * k
        for (train, test_normal), test_anomal in zip(splits, anomal_folds):
            yield np.sort(train), np.concatenate([np.sort(test_normal), np.sort(test_anomal)])

    def _iter_test_indices(self, X=None, y=None, groups=None):  # BaseCrossValidator API
        for _, test in self.split(X, y, groups):
            yield test
