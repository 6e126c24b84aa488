"""Detector registry: short names -> estimators with fast, sensible defaults.

The command line (``skad benchmark``, ``skad fit``) and the benchmark scripts build their
detectors here. The registry discovers the detectors that exist in
:mod:`skad.detectors` (every public :class:`~skad.detectors.BaseDetector` subclass), so a
new detector module is benchmarked by default as soon as it is exported, and adds the
classical baseline ``lof``: scikit-learn's :class:`~sklearn.neighbors.LocalOutlierFactor`
on globally pooled patch features (image level only, no maps).

A registered detector is a list of *steps* that follow the feature extractor: a patch
detector is one step on the ``(n, C, h, w)`` patch tensors; ``lof`` is
``[GlobalPool(), LocalOutlierFactor(novelty=True)]``. :func:`make_model` puts the
extractor in front and returns a full :class:`~skad.pipeline.AnomalyPipeline` that holds
all preprocessing, so a saved model scores new images exactly as the benchmark did.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field

from sklearn.base import clone

__all__ = [
    "DetectorSpec",
    "UnknownDetectorError",
    "available_detectors",
    "default_detectors",
    "get_detector",
    "make_detector_steps",
    "make_model",
    "recipe_extractor",
    "suggest",
]

# Short names of the detectors the registry knows by class name; a detector exported by
# skad.detectors that is not listed here gets the snake_case of its class name.
_CLASS_NAMES = {
    "PatchCore": "patchcore",
    "PaDiM": "padim",
    "SPADE": "spade",
    "PatchOutlierDetector": "patch_lof",
    "PatchCluster": "patchcluster",
    "NPad": "npad",
    "SMCC": "smcc",
    "MemSeg": "memseg",
    "LocalOCC": "local_occ",
}

# Report order: the baselines, then the seed methods, then anything new (lof is last).
_ORDER = ["PatchCore", "PaDiM", "SPADE", "PatchOutlierDetector", "PatchCluster", "NPad", "SMCC",
          "MemSeg", "LocalOCC"]

# Fast defaults for `skad benchmark` with no flags (the whole default run must finish in
# under 10 minutes on 2 CPU cores). Only parameters the detector has are applied, so a
# renamed parameter never breaks the registry; every value is visible in the report.
_FAST_DEFAULTS = {
    "patchcore": {"coreset_ratio": 0.1},
    "patchcluster": {"coreset_ratio": 0.25},
    "memseg": {"max_iter": 100},
    "local_occ": {"epochs": 2},
}

# Features a detector's method expects, where they differ from the extractor's defaults
# (its paper's features, chosen by measurement on every shared data set:
# benchmarks/results/defaults.md). make_model and skad.report.run_benchmark set them on a
# clone of the run's extractor, so a plain `skad benchmark` gives each detector its
# configuration; pass ``recipe=False`` to use the extractor as given.
_FEATURE_RECIPES: dict = {
    # none at present. PaDiM's paper fusion (pooling=1, upsample="nearest") of the default
    # layers wins bottle's pixel AUROC (0.9821 vs 0.9786 at 100 channels) but loses 0.125
    # image AUROC on bottle_rto (0.860 vs 0.986) and 0.032 on ELPV mono against the
    # default features (benchmarks/results/defaults.md)
}

_SUMMARIES = {
    "patchcore": "PatchCore: greedy-coreset memory bank of patch features, kNN distance",
    "padim": "PaDiM: a Gaussian per patch position (random channel subset), Mahalanobis",
    "spade": "SPADE: image-level kNN, then pixel kNN among the nearest images",
    "patch_lof": "LocalOutlierFactor on every patch vector (PatchOutlierDetector)",
    "patchcluster": "PatchCluster: blind kNN on the scored set itself, no self-matches",
    "npad": "N-pad: Gaussians from neighbouring positions plus k-means centroids",
    "smcc": "SMCC: backbone self-updated towards GMM centers, one-batch memory, kNN",
    "local_occ": "LocalOCC (Lv et al.): mapping net to per-position centers, generated defects",
    "memseg": "MemSeg: U-Net segmenting simulated defects, guided by a normal-image memory",
    "lof": "LocalOutlierFactor on globally pooled features (image level, no maps)",
}


class UnknownDetectorError(ValueError):
    """A detector name the registry does not know (the message suggests close names)."""


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one registered detector.

    Parameters
    ----------
    name : str
        Short name used on the command line.
    estimator : estimator
        Unfitted final estimator with the registry's defaults (cloned on every build).
    pre : tuple of estimators
        Steps between the feature extractor and ``estimator`` (``GlobalPool`` for
        image-level baselines).
    summary : str
        One line for ``skad list`` and the report.
    defaults : dict
        The parameters the registry sets on top of the estimator's own defaults.
    input : {"patches", "images"}
        What the detector consumes: patch tensors from the shared feature extractor
        (every :class:`~skad.detectors.PatchDetectorMixin` detector), or images (a
        detector that holds its own extractor, e.g. one that fine-tunes it).
    features : dict
        The detector's feature recipe: :class:`~skad.features.PatchFeatureExtractor`
        parameters its method expects where they differ from the extractor's defaults
        (e.g. ``{"pooling": 1, "upsample": "nearest"}`` for PaDiM's paper features);
        empty when the defaults suit it (every detector at present). :func:`make_model` applies it (see :func:`recipe_extractor`).
    """

    name: str
    estimator: object
    pre: tuple = ()
    summary: str = ""
    defaults: dict = field(default_factory=dict)
    input: str = "patches"
    features: dict = field(default_factory=dict)

    @property
    def has_maps(self) -> bool:
        """Whether the final estimator produces pixel-level anomaly maps."""
        return hasattr(self.estimator, "score_and_map")


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


def _discover_detector_classes():
    from . import detectors
    from .detectors._base import BaseDetector

    found = []
    for attr in getattr(detectors, "__all__", ()):
        obj = getattr(detectors, attr, None)
        if (
            inspect.isclass(obj)
            and issubclass(obj, BaseDetector)
            and obj is not BaseDetector
            and not inspect.isabstract(obj)
            and not attr.startswith("_")
        ):
            found.append(obj)
    return found


def _with_defaults(estimator, defaults):
    params = estimator.get_params(deep=True)
    applied = {k: v for k, v in defaults.items() if k in params}
    if applied:
        estimator.set_params(**applied)
    return estimator, applied


def _patch_lof():
    from sklearn.neighbors import LocalOutlierFactor

    from .detectors import PatchOutlierDetector

    params = PatchOutlierDetector().get_params()
    kwargs = {}
    if "estimator" in params:
        kwargs["estimator"] = LocalOutlierFactor(novelty=True)
    return PatchOutlierDetector(**kwargs)


def available_detectors():
    """The detectors that exist in this installation, by short name.

    Returns
    -------
    specs : dict of str -> DetectorSpec
        Every public detector of :mod:`skad.detectors` (with the registry's fast
        defaults) followed by ``lof`` (LocalOutlierFactor on globally pooled features).

    Examples
    --------
    >>> from skad.registry import available_detectors
    >>> "lof" in available_detectors()
    True
    """
    from sklearn.neighbors import LocalOutlierFactor

    from .detectors._base import PatchDetectorMixin
    from .features import GlobalPool

    specs = {}
    classes = sorted(
        _discover_detector_classes(),
        key=lambda c: (_ORDER.index(c.__name__) if c.__name__ in _ORDER else len(_ORDER)),
    )
    for cls in classes:
        name = _CLASS_NAMES.get(cls.__name__, _snake(cls.__name__))
        estimator = _patch_lof() if name == "patch_lof" else cls()
        estimator, applied = _with_defaults(estimator, _FAST_DEFAULTS.get(name, {}))
        summary = _SUMMARIES.get(name) or (inspect.getdoc(cls) or cls.__name__).splitlines()[0]
        kind = "patches" if issubclass(cls, PatchDetectorMixin) else "images"
        specs[name] = DetectorSpec(name, estimator, (), summary, applied, kind,
                                   dict(_FEATURE_RECIPES.get(name, {})))
    specs["lof"] = DetectorSpec(
        "lof",
        LocalOutlierFactor(novelty=True),
        (GlobalPool(),),
        _SUMMARIES["lof"],
        {"novelty": True},
    )
    return specs


def default_detectors():
    """Names of every available detector (the default set of ``skad benchmark``).

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skad.registry import default_detectors
    >>> default_detectors()[-1]
    'lof'
    """
    return list(available_detectors())


def suggest(name, choices):
    """The closest names to ``name`` among ``choices`` (difflib), best first.

    Parameters
    ----------
    name : str
    choices : iterable of str

    Returns
    -------
    matches : list of str

    Examples
    --------
    >>> from skad.registry import suggest
    >>> suggest("patchcor", ["patchcore", "padim"])
    ['patchcore']
    """
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, n=3, cutoff=0.5)]


def get_detector(name, specs=None):
    """The :class:`DetectorSpec` registered as ``name`` (case-insensitive).

    Parameters
    ----------
    name : str
    specs : dict, optional
        Output of :func:`available_detectors` (computed when omitted).

    Returns
    -------
    spec : DetectorSpec

    Raises
    ------
    UnknownDetectorError
        With the closest known names ("did you mean ...?").

    Examples
    --------
    >>> from skad.registry import get_detector
    >>> get_detector("LOF").name
    'lof'
    """
    specs = available_detectors() if specs is None else specs
    key = str(name).strip().lower()
    if key in specs:
        return specs[key]
    close = suggest(key, specs)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownDetectorError(
        f"unknown detector {name!r}{hint} (available: {', '.join(specs)})"
    )


def _set_checked_params(estimator, params, name):
    valid = estimator.get_params(deep=True)
    for key in params:
        if key not in valid:
            close = suggest(key, valid)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown parameter {key!r} for detector {name!r}{hint} "
                f"(parameters: {', '.join(sorted(valid))})"
            )
    if params:
        estimator.set_params(**params)
    return estimator


def make_detector_steps(name, *, params=None, random_state=None, blind=False, specs=None,
                        extractor=None):
    """Fresh steps (after the feature extractor) for the detector ``name``.

    Parameters
    ----------
    name : str
        A registered name (see :func:`available_detectors`).
    params : dict, optional
        Parameters of the final estimator (nested ones with ``__``, e.g.
        ``estimator__n_neighbors`` for ``patch_lof``); applied after the defaults.
    random_state : int or None
        Set on every step that has a ``random_state`` parameter (unless ``params``
        sets it).
    blind : bool, default=False
        Blind setting (the scored set is the fitted set): sets ``exclude="self"`` on
        detectors that have the blind-mode switch
        (:class:`~skad.detectors.BlindModeMixin`), so a patch never matches itself.
    specs : dict, optional
        Output of :func:`available_detectors`.
    extractor : transformer, optional
        The run's feature extractor: a detector that takes images, has an
        ``extractor`` parameter and works on any extractor's features (class attribute
        ``_shares_run_extractor``, e.g. SMCC) gets an unfitted clone of it (unless
        ``params`` sets one), so every detector of a run sees the same features.

    Returns
    -------
    steps : list of estimators
        Unfitted; the last one is the detector.

    Raises
    ------
    UnknownDetectorError, ValueError
        Unknown detector, or a parameter the detector does not have.

    Examples
    --------
    >>> from skad.registry import make_detector_steps
    >>> steps = make_detector_steps("lof", params={"n_neighbors": 5})
    >>> [type(s).__name__ for s in steps]
    ['GlobalPool', 'LocalOutlierFactor']
    >>> steps[-1].n_neighbors
    5
    """
    spec = get_detector(name, specs)
    steps = [clone(s) for s in spec.pre] + [clone(spec.estimator)]
    params = dict(params or {})
    final = steps[-1]
    own = final.get_params(deep=True)
    if random_state is not None and "random_state" not in params:
        for step in steps:
            if "random_state" in step.get_params(deep=False):
                step.set_params(random_state=random_state)
    if (blind and "exclude" in own and "exclude" not in params
            and "exclude_self" not in params):
        final.set_params(exclude="self")  # the blind-mode switch (BlindModeMixin)
    if (extractor is not None and getattr(final, "_shares_run_extractor", False)
            and "extractor" not in params):
        final.set_params(extractor=clone(extractor))
    _set_checked_params(final, params, spec.name)
    return steps


def recipe_extractor(name, extractor, specs=None):
    """``extractor`` with the feature recipe of detector ``name`` applied.

    Parameters
    ----------
    name : str
        Registered detector name.
    extractor : PatchFeatureExtractor
        The run's extractor (fitted or not; not modified).

    Returns
    -------
    extractor : PatchFeatureExtractor
        ``extractor`` itself when the detector has no recipe (or the extractor already
        follows it), else an unfitted clone with the recipe's parameters set.

    Examples
    --------
    >>> from skad.features import PatchFeatureExtractor
    >>> from skad.registry import recipe_extractor
    >>> base = PatchFeatureExtractor()
    >>> recipe_extractor("patchcore", base) is base
    True
    """
    recipe = get_detector(name, specs).features
    own = extractor.get_params(deep=False)
    if not recipe or all(own.get(k) == v for k, v in recipe.items()):
        return extractor
    return clone(extractor).set_params(**recipe)


def make_model(name, extractor, *, params=None, random_state=None, blind=False, specs=None,
               recipe=True):
    """A full :class:`~skad.pipeline.AnomalyPipeline`: ``extractor`` then the detector.

    A detector whose spec takes images (``input="images"``) holds its own extractor:
    an unfitted clone of ``extractor`` becomes its ``extractor`` parameter (unless
    ``params`` sets one), so every detector of a run sees the same features.

    Parameters
    ----------
    name : str
        Registered detector name.
    extractor : transformer
        Image -> patch tensor transformer (a :class:`~skad.features.PatchFeatureExtractor`),
        fitted or not.
    params, random_state, blind, specs
        As :func:`make_detector_steps`.
    recipe : bool, default=True
        Apply the detector's feature recipe (``DetectorSpec.features``, e.g. PaDiM's
        ``pooling=1, upsample="nearest"``) to a clone of ``extractor``
        (:func:`recipe_extractor`); ``False`` uses ``extractor`` as given.

    Returns
    -------
    pipeline : AnomalyPipeline

    Examples
    --------
    >>> from skad.features import PatchFeatureExtractor
    >>> from skad.registry import make_model
    >>> pipe = make_model("lof", PatchFeatureExtractor())
    >>> [n for n, _ in pipe.steps]
    ['patchfeatureextractor', 'globalpool', 'localoutlierfactor']
    """
    from .pipeline import make_pipeline

    if recipe and get_detector(name, specs).input == "patches":
        extractor = recipe_extractor(name, extractor, specs)
    steps = make_detector_steps(
        name, params=params, random_state=random_state, blind=blind, specs=specs,
        extractor=extractor,
    )
    if get_detector(name, specs).input == "images":
        return make_pipeline(*steps)
    return make_pipeline(extractor, *steps)
