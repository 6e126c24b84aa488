"""How many CPU threads skad's torch, BLAS and OpenMP pools use, and how they wait.

Why this module exists (measured in ``benchmarks/results/busy_machine.md``): on a
2-core machine where another job holds one core, torch's default (one intra-op thread
per core, OpenMP threads that *spin* while they wait at each barrier) made skad several
times slower than one thread. Two things go wrong together:

- the OpenMP worker that shares its core with the other job is descheduled for whole
  time slices, and every parallel region (one per convolution, per distance block, per
  coreset step) waits at a barrier for it;
- the waiting threads spin (libgomp's default), burning the cycles the late thread and
  the other job need.

skad's defaults address both:

- ``import skad`` sets ``OMP_WAIT_POLICY=PASSIVE`` when the user has not set
  ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (waiting threads sleep instead of
  spinning). libgomp reads it once when it is loaded, so this takes effect only when
  ``skad`` is imported before ``torch`` (and ``faiss``); :func:`passive_wait_active`
  says whether it did;
- estimators run their CPU work under :func:`thread_limits` with ``"auto"`` threads:
  the cores this process may use (affinity mask, cgroup quota) less those other
  processes kept busy over the last moments (``/proc/stat``), never more than
  ``OMP_NUM_THREADS`` when that is set. An explicit count (the extractor's
  ``n_threads``, a detector's ``n_jobs``, an enclosing ``thread_limits(n)``) wins.
"""

from __future__ import annotations

import contextvars
import math
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from numbers import Integral

__all__ = ["available_cores", "default_n_threads", "passive_wait_active", "thread_limits"]

#: shortest window over which busy cores are measured (seconds); a first call sleeps it
_MIN_WINDOW = 0.05
#: a measurement younger than this is reused (calls in quick succession cost nothing)
_REUSE = 1.0

# the count set by an enclosing thread_limits(n) call: inner "auto" calls keep it
_EXPLICIT = contextvars.ContextVar("skad_thread_limit", default=None)
_lock = threading.Lock()
_state = {"sample": None, "threads": None, "at": -math.inf}


def prefer_passive_wait(environ=os.environ):
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy (called once
    by ``import skad``); returns whether it set it."""
    global _SET_BY_SKAD, _TORCH_FIRST
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if environ is os.environ:
        _SET_BY_SKAD, _TORCH_FIRST = True, "torch" in sys.modules
    return True


_SET_BY_SKAD = False
_TORCH_FIRST = False


def passive_wait_active():
    """Whether torch's OpenMP threads wait passively (sleep rather than spin).

    False when ``OMP_WAIT_POLICY`` is not ``PASSIVE``, or when skad set it but torch
    had been imported before skad (libgomp had already read its environment): import
    skad first, or set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python.

    Examples
    --------
    >>> import skad
    >>> from skad.utils import passive_wait_active
    >>> isinstance(passive_wait_active(), bool)
    True
    """
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        return False
    return not (_SET_BY_SKAD and _TORCH_FIRST)


def available_cores():
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota.

    Examples
    --------
    >>> from skad.utils import available_cores
    >>> available_cores() >= 1
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2 quota ("max 100000" = none; "150000 100000" = 1.5 cores)
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_sample():
    """(wall s, busy s of the allowed CPUs, this process's CPU s) or None off Linux."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *vals = line.split()
                if name not in allowed:
                    continue
                v = [int(x) for x in vals[:8]]
                # user nice system idle iowait irq softirq steal: idle + iowait is free,
                # steal (a hypervisor's other guests) is not
                busy += sum(v) - v[3] - v[4]
        ticks = os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        return None
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.monotonic(), busy / ticks, ru.ru_utime + ru.ru_stime


def _busy_elsewhere(a, b):
    """Cores kept busy by other processes between samples ``a`` and ``b``."""
    wall = b[0] - a[0]
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall)


def default_n_threads():
    """The ``"auto"`` thread count: free cores now, at least 1.

    ``available_cores()`` less the cores other processes kept busy since the previous
    measurement (at least 50 ms, sleeping that long the first time; this process's own
    CPU time is not counted as load), rounded, and never above ``OMP_NUM_THREADS``
    when that is set. Off Linux: ``available_cores()`` (or ``OMP_NUM_THREADS``).

    Examples
    --------
    >>> from skad.utils import available_cores, default_n_threads
    >>> 1 <= default_n_threads() <= available_cores()
    True
    """
    n_avail = available_cores()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        n_avail = min(n_avail, int(cap))
    with _lock:
        now = time.monotonic()
        if now - _state["at"] < _REUSE and _state["threads"] is not None:
            return min(_state["threads"], n_avail)
        prev = _state["sample"]
        if prev is None or now - prev[0] < _MIN_WINDOW:
            prev = _cpu_sample()
            if prev is None:
                return n_avail
            time.sleep(_MIN_WINDOW)
        cur = _cpu_sample()
        if cur is None:
            return n_avail
        free = available_cores() - _busy_elsewhere(prev, cur)
        threads = int(min(n_avail, max(1, math.floor(free + 0.5))))
        _state.update(sample=cur, threads=threads, at=cur[0])
        return threads


def _check_n_threads(n_threads, name="n_threads"):
    if n_threads is None or (isinstance(n_threads, str) and n_threads == "auto"):
        return n_threads
    if isinstance(n_threads, Integral) and not isinstance(n_threads, bool) and (
            n_threads >= 1 or n_threads == -1):
        return int(n_threads)
    raise ValueError(
        f"{name}: expected a positive int, -1 (all available cores), 'auto' (the free "
        f"cores) or None; got {n_threads!r}"
    )


def _resolve(n_threads):
    if n_threads == -1:
        return available_cores()
    if n_threads == "auto":
        n = default_n_threads()
        if "torch" in sys.modules:  # a lower torch.set_num_threads(k) of the user's holds
            n = min(n, sys.modules["torch"].get_num_threads())
        return n
    return n_threads


#: modules that load their own BLAS / OpenMP pools when imported
_NATIVE = ("numpy", "scipy", "torch", "faiss", "numba")
_controller = {"key": None, "ctl": None}


def _pools():
    """A cached threadpoolctl controller (finding the pools costs ~40 ms; limiting them
    through a controller ~0.1 ms), rebuilt when a module with its own pools appears."""
    from threadpoolctl import ThreadpoolController

    key = tuple(m in sys.modules for m in _NATIVE)
    with _lock:
        if _controller["key"] != key:
            _controller.update(key=key, ctl=ThreadpoolController())
        return _controller["ctl"]


@contextmanager
def _limited(n):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    token = _EXPLICIT.set(n)
    try:
        # numpy's OpenBLAS, faiss's OpenMP and BLAS: the same count
        with _pools().limit(limits=n):
            yield n
    finally:
        _EXPLICIT.reset(token)
        torch.set_num_threads(previous)


@contextmanager
def thread_limits(n_threads="auto"):
    """Run the block with ``n_threads`` CPU threads in torch, BLAS and OpenMP pools.

    Estimators already run under ``thread_limits("auto")`` by default; use this to
    choose the count for a whole block (a grid search, a script): inside it, skad's
    estimators keep the count given here unless their own ``n_threads`` / ``n_jobs``
    parameter names another. The previous settings come back on exit.

    Parameters
    ----------
    n_threads : int, -1, "auto" or None, default="auto"
        A positive count; -1: all :func:`available_cores`; "auto":
        :func:`default_n_threads` (the free cores now, never more than torch's current
        setting); None: leave the pools as they are.

    Yields
    ------
    n : int or None
        The thread count in force inside the block (None for ``n_threads=None``).

    Examples
    --------
    >>> import torch
    >>> from skad.utils import thread_limits
    >>> with thread_limits(1) as n:
    ...     print(n, torch.get_num_threads())
    1 1
    """
    n_threads = _check_n_threads(n_threads)
    if n_threads is None:
        yield None
        return
    with _limited(_resolve(n_threads)) as n:
        yield n


@contextmanager
def estimator_threads(n_threads, name="n_threads"):
    """What an estimator's public method runs under: its own ``n_threads`` / ``n_jobs``
    parameter when given, else an enclosing :func:`thread_limits`, else ``"auto"``."""
    n_threads = _check_n_threads(n_threads, name)
    if n_threads is None:
        outer = _EXPLICIT.get()
        if outer is not None:  # keep the enclosing block's count
            yield outer
            return
        n_threads = "auto"
    with _limited(_resolve(n_threads)) as n:
        yield n
