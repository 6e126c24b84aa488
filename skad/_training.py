"""The training core every trained skad estimator uses (SMCC, MemSeg, Lv et al.).

One small loop over torch, no framework: shuffled mini-batches of images (an in-memory
array or lazily decoded paths), an optimiser named by the estimator's parameters, a
budget in epochs or iterations, a per-epoch loss history, the best state kept by a
criterion the method names, a tqdm bar under ``verbose`` and a clean stop on
``KeyboardInterrupt`` that keeps the best state reached so far.

A method supplies only ``step(batch, rng) -> loss`` (its forward pass and loss on one
batch of images) and the modules to optimise; the loop does the rest. Randomness comes
from one ``numpy.random.RandomState`` (``check_random_state(random_state)`` in the
estimator's ``fit``): batch order and whatever the method draws in ``step``; weights
of new layers are initialised under :func:`seeded`, which restores torch's global
generator afterwards. CPU fits with the same ``random_state`` give the same weights.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from .utils._torch import cpu_state_dict, seed_from

__all__ = ["OPTIMIZERS", "TrainResult", "iter_minibatches", "make_optimizer", "seeded",
           "record_training", "train_loop", "training_constraints", "warmup_cosine"]

#: optimisers a ``solver`` parameter may name
OPTIMIZERS = ("adam", "adamw", "sgd")


def training_constraints():
    """``_parameter_constraints`` entries of the training parameters, declared once."""
    import torch
    from .utils._sklearn_compat import Interval, StrOptions

    return {
        "epochs": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions(set(OPTIMIZERS))],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }


@contextmanager
def seeded(random_state, device=None):
    """Seed torch's global generator from ``random_state`` inside the block, then restore it.

    For building layers whose constructors draw from the global generator (``nn.Conv2d``
    initialisation): the weights are reproducible and the caller's torch random state is
    unchanged afterwards.

    Examples
    --------
    >>> import torch
    >>> from skad._training import seeded
    >>> with seeded(0):
    ...     a = torch.nn.Linear(2, 2).weight.detach().clone()
    >>> with seeded(0):
    ...     b = torch.nn.Linear(2, 2).weight.detach().clone()
    >>> bool((a == b).all())
    True
    """
    import torch

    devices = []
    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device)]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed_from(random_state))
        yield


def make_optimizer(params, solver="adam", lr=1e-3, weight_decay=0.0, momentum=0.9):
    """A torch optimiser named by ``solver`` ("adam", "adamw" or "sgd" with momentum).

    Examples
    --------
    >>> import torch
    >>> from skad._training import make_optimizer
    >>> type(make_optimizer(torch.nn.Linear(2, 1).parameters(), "sgd", 0.1)).__name__
    'SGD'
    """
    import torch

    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if solver == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if solver == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if solver == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"solver: expected one of {OPTIMIZERS}; got {solver!r}")


def warmup_cosine(warmup_ratio=0.1, min_factor=0.0):
    """A ``lr_schedule`` for :func:`train_loop`: linear warm-up, then cosine decay.

    The factor rises linearly from 0 to 1 over the first ``warmup_ratio`` of the
    steps, then follows a half cosine down to ``min_factor`` at the last step.

    Examples
    --------
    >>> from skad._training import warmup_cosine
    >>> f = warmup_cosine(0.1, 0.0)
    >>> [round(f(i, 10), 3) for i in (0, 1, 5, 9)]
    [0.0, 1.0, 0.5, 0.0]
    """
    def factor(step, total):
        warm = int(round(warmup_ratio * total))
        if step < warm:
            return step / warm
        span = max(total - 1 - warm, 1)
        t = min((step - warm) / span, 1.0)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def iter_minibatches(n, batch_size, rng, *, shuffle=True, drop_last=False):
    """Index arrays of one epoch's mini-batches (a permutation drawn from ``rng``).

    ``drop_last`` drops a last batch smaller than ``batch_size`` unless it is the only
    one (so an epoch always has at least one batch).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._training import iter_minibatches
    >>> [b.tolist() for b in iter_minibatches(5, 2, np.random.RandomState(0), shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    order = rng.permutation(n) if shuffle else np.arange(n)
    starts = range(0, n, batch_size)
    for start in starts:
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size and start > 0:
            return
        yield idx


@dataclass
class TrainResult:
    """What :func:`train_loop` returns (the estimator copies it to fitted attributes).

    Attributes
    ----------
    loss_history : list of float
        Mean training loss of each epoch (a partial last epoch included).
    criterion_history : list of float
        The selection criterion after each epoch (lower = better).
    n_iter : int
        Optimisation steps taken.
    n_epochs : int
        Epochs started.
    best_epoch : int or None
        Index into ``criterion_history`` of the state kept (None: no epoch finished).
    interrupted : bool
        True if a ``KeyboardInterrupt`` stopped training.
    """

    loss_history: list = field(default_factory=list)
    criterion_history: list = field(default_factory=list)
    n_iter: int = 0
    n_epochs: int = 0
    best_epoch: int | None = None
    interrupted: bool = False


def record_training(estimator, result):
    """Set the fitted training attributes of ``estimator`` from a :class:`TrainResult`:
    ``loss_history_``, ``n_iter_`` and ``best_epoch_`` (the names every trained skad
    estimator uses)."""
    estimator.loss_history_ = result.loss_history
    estimator.n_iter_ = result.n_iter
    estimator.best_epoch_ = result.best_epoch


def _snapshot(modules):
    return [cpu_state_dict(m) for m in modules]


def train_loop(step, modules, images, *, batch_size, rng, solver="adam", lr=1e-3,
               weight_decay=0.0, epochs=None, max_iter=None, criterion="loss",
               parameters=None, on_epoch_end=None, drop_last=False, verbose=False,
               desc="training", lr_schedule=None):
    """Train ``modules`` with ``step`` over shuffled mini-batches of ``images``.

    Parameters
    ----------
    step : callable ``step(indices, batch, rng) -> torch scalar``
        The method's forward pass and loss on one batch: ``indices`` (int array into
        ``images``), ``batch`` (float32 ``(b, H, W, 3)`` in [0, 1], loaded lazily for
        paths) and the loop's ``rng`` (for synthesis or sampling inside the step).
    modules : list of torch.nn.Module
        What is trained (put in train mode by ``step`` as it needs; the loop snapshots
        and restores their ``state_dict``).
    images : ImageSet
        Training images (:func:`skad.utils.check_images`).
    batch_size : int
    rng : numpy.random.RandomState
    solver, lr, weight_decay :
        See :func:`make_optimizer`.
    epochs, max_iter : int or None
        Budget: at most ``epochs`` passes and at most ``max_iter`` steps (at least one
        must be given; training stops at whichever comes first).
    criterion : "loss", "last" or callable
        How the kept state is chosen after each epoch, lower = better: ``"loss"`` is
        the epoch's mean training loss; ``"last"`` keeps the final state (no snapshot;
        for losses too noisy to rank epochs, e.g. on freshly synthesised batches); a
        callable ``criterion() -> float`` is evaluated after the epoch (the method's
        own measure).
    parameters : iterable of torch.nn.Parameter, optional
        What the optimiser updates (default: every parameter of ``modules`` with
        ``requires_grad``).
    on_epoch_end : callable ``(epoch, mean_loss)``, optional
    drop_last : bool, default=False
    verbose : bool or int
        A tqdm bar over the steps, with the running loss.
    desc : str
        The bar's label.
    lr_schedule : callable ``(step, total) -> float``, optional
        Multiplies ``lr`` before each step (``step`` counts from 0, ``total`` is the
        number of steps the budget allows), e.g. :func:`warmup_cosine`; None: constant.

    Returns
    -------
    result : TrainResult
        The modules hold the best state when it returns (also after an interrupt).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skad._training import train_loop
    >>> from skad.utils import check_images
    >>> net = torch.nn.Linear(3, 1)
    >>> def step(idx, batch, rng):
    ...     x = torch.from_numpy(batch.reshape(len(batch), -1, 3).mean(1))
    ...     return net(x).pow(2).mean()
    >>> images = check_images(np.random.RandomState(0).rand(8, 4, 4, 3).astype(np.float32))
    >>> res = train_loop(step, [net], images, batch_size=4, rng=np.random.RandomState(0),
    ...                  lr=0.1, epochs=3)
    >>> len(res.loss_history), res.n_iter, res.loss_history[-1] < res.loss_history[0]
    (3, 6, True)
    """
    import torch

    if epochs is None and max_iter is None:
        raise ValueError("epochs and max_iter: give at least one budget")
    n = len(images)
    steps_per_epoch = len(list(iter_minibatches(n, batch_size, np.random.RandomState(0),
                                                shuffle=False, drop_last=drop_last)))
    if epochs is None:
        epochs = math.ceil(max_iter / steps_per_epoch)
    total = epochs * steps_per_epoch if max_iter is None else min(max_iter,
                                                                   epochs * steps_per_epoch)
    if parameters is None:
        parameters = [p for m in modules for p in m.parameters()]
    optimizer = make_optimizer(parameters, solver, lr, weight_decay)
    result = TrainResult()
    best_value = math.inf
    best_state = None
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="step")
    try:
        for epoch in range(epochs):
            result.n_epochs = epoch + 1
            losses = []
            for idx in iter_minibatches(n, batch_size, rng, drop_last=drop_last):
                if result.n_iter >= total:
                    break
                batch = images.batch(idx)
                if lr_schedule is not None:
                    factor = float(lr_schedule(result.n_iter, total))
                    for group in optimizer.param_groups:
                        group["lr"] = lr * factor
                optimizer.zero_grad(set_to_none=True)
                loss = step(idx, batch, rng)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{desc}: the training loss became {float(loss.detach())} at step "
                        f"{result.n_iter + 1}; lower lr (now {lr})"
                    )
                loss.backward()
                optimizer.step()
                result.n_iter += 1
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4g}", epoch=epoch + 1)
            if not losses:
                break
            mean_loss = float(np.mean(losses))
            result.loss_history.append(mean_loss)
            if criterion == "last":
                result.criterion_history.append(mean_loss)
                result.best_epoch = len(result.criterion_history) - 1
                if on_epoch_end is not None:
                    on_epoch_end(epoch, mean_loss)
                continue
            value = mean_loss if criterion == "loss" else float(criterion())
            result.criterion_history.append(value)
            if value < best_value:
                best_value, best_state = value, _snapshot(modules)
                result.best_epoch = len(result.criterion_history) - 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, mean_loss)
    except KeyboardInterrupt:
        result.interrupted = True
        warnings.warn(
            f"{desc}: interrupted after {result.n_iter} steps; keeping the best state "
            f"reached (epoch {result.best_epoch})", RuntimeWarning, stacklevel=2,
        )
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        for module, state in zip(modules, best_state):
            module.load_state_dict(state)
    return result

