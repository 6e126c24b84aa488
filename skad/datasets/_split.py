"""One-class train/test split of a flat data set (images, labels, masks)."""

from __future__ import annotations

import numpy as np
from sklearn.utils import Bunch

__all__ = ["one_class_train_test"]


def one_class_train_test(data, *, test_size=0.2, random_state=None):
    """A flat loader Bunch (images, labels, masks) -> :func:`load_mvtec`'s train/test fields.

    One-class split: a random ``test_size`` share of the normal images is held out for
    testing with every defective image (:class:`~skad.model_selection.OneClassSplit`);
    the rest are the training normals. A set with fewer than 2 normal images has an
    empty training set (only the blind settings run on it).

    Parameters
    ----------
    data : Bunch
        With ``images``, ``labels`` (1 = defective), ``filenames`` and optionally
        ``masks``, as :func:`load_folder`, :func:`load_elpv` and
        :func:`load_crackforest` return.
    test_size : float in (0, 1), default=0.2
        Share of the normal images held out.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    split : Bunch
        ``train_images``, ``test_images``, ``test_labels``, ``test_masks`` (None
        without masks), ``train_filenames``, ``test_filenames``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.utils import Bunch
    >>> from skad.datasets import one_class_train_test
    >>> data = Bunch(images=np.zeros((12, 8, 8, 3), np.uint8),
    ...              labels=np.r_[np.zeros(10), np.ones(2)], filenames=list("abcdefghijkl"))
    >>> split = one_class_train_test(data, random_state=0)
    >>> len(split.train_images), len(split.test_images), int(split.test_labels.sum())
    (8, 4, 2)
    """
    from ..model_selection import OneClassSplit

    labels = np.asarray(data.labels).astype(int)
    names = list(data.filenames)
    masks = data.get("masks")
    n = len(labels)
    if (labels == 0).sum() >= 2:
        split = OneClassSplit(n_splits=1, test_size=test_size, random_state=random_state)
        train, test = next(split.split(np.zeros(n), labels))
    else:
        train, test = np.array([], dtype=int), np.arange(n)
    images = np.asarray(data.images)
    return Bunch(
        train_images=images[train],
        test_images=images[test],
        test_labels=labels[test],
        test_masks=None if masks is None else np.asarray(masks)[test],
        train_filenames=[names[i] for i in train],
        test_filenames=[names[i] for i in test],
    )
