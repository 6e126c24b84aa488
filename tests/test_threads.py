"""CPU thread defaults and limits (skad.utils._threads): the busy-machine fix."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

import skad.detectors  # noqa: F401
from skad.detectors import PaDiM
from skad.detectors._base import BaseDetector, PatchDetectorMixin
from skad.utils import _threads, available_cores, default_n_threads, thread_limits
from skad.utils._threads import estimator_threads, prefer_passive_wait


def _blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_thread_limits_sets_and_restores_torch_and_blas():
    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    with thread_limits(1) as n:
        assert n == 1
        assert torch.get_num_threads() == 1
        assert _blas_threads() <= {1}
    assert torch.get_num_threads() == before_torch
    assert _blas_threads() == before_blas


def test_thread_limits_none_leaves_pools():
    before = torch.get_num_threads()
    with thread_limits(None) as n:
        assert n is None and torch.get_num_threads() == before


def test_minus_one_is_all_available_cores():
    with thread_limits(-1) as n:
        assert n == available_cores()


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", True])
def test_bad_thread_counts_are_clear_errors(bad):
    with pytest.raises(ValueError, match="n_threads: expected a positive int"):
        with thread_limits(bad):
            pass


class _Recorder(PatchDetectorMixin, BaseDetector):
    """Records the torch thread count its fit and scoring ran with."""

    def __init__(self, *, contamination="auto", sigma=4.0, n_jobs=None):
        self.contamination = contamination
        self.sigma = sigma
        self.n_jobs = n_jobs

    def _fit(self, X):
        self.fit_threads_ = torch.get_num_threads()

    def _score(self, X):
        self.score_threads_ = torch.get_num_threads()
        return np.zeros(len(X)), np.zeros((len(X),) + X.shape[2:])


def test_detectors_run_under_the_enclosing_limit_or_their_n_jobs():
    X = np.random.default_rng(0).normal(size=(6, 3))
    with thread_limits(1):
        det = _Recorder().fit(X)
        det.score_samples(X)
        assert det.fit_threads_ == 1 and det.score_threads_ == 1
    det = _Recorder(n_jobs=1).fit(X)
    assert det.fit_threads_ == 1
    with pytest.raises(ValueError, match="n_jobs"):
        _Recorder(n_jobs=0).fit(X)


def test_inner_auto_keeps_the_outer_count():
    with thread_limits(1):
        with estimator_threads(None) as n:
            assert n == 1 and torch.get_num_threads() == 1
        with estimator_threads(-1) as n:  # the estimator's own parameter wins
            assert n == available_cores()


def _fake_samples(monkeypatch, samples):
    it = iter(samples)
    monkeypatch.setattr(_threads, "_cpu_sample", lambda: next(it))
    monkeypatch.setattr(_threads, "available_cores", lambda: 4)
    monkeypatch.setattr(_threads, "_state", {"sample": None, "threads": None,
                                             "at": -np.inf})
    monkeypatch.setattr(_threads.time, "sleep", lambda s: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("others_busy, own, expected", [
    (0.0, 0.0, 4),      # idle machine: every core
    (1.0, 0.0, 3),      # another job holds one core
    (3.0, 0.0, 1),      # three busy cores: one left
    (6.0, 0.0, 1),      # oversubscribed: still one
    (0.0, 2.0, 4),      # this process's own work is not load
    (1.6, 0.0, 2),      # rounded: 2.4 free -> 2
])
def test_auto_counts_the_cores_others_leave_free(monkeypatch, others_busy, own, expected):
    # (wall s, busy CPU s of the allowed cores, this process's CPU s), 1 s apart
    _fake_samples(monkeypatch, [(0.0, 0.0, 0.0), (1.0, others_busy + own, own)])
    assert default_n_threads() == expected


def test_auto_never_exceeds_omp_num_threads(monkeypatch):
    _fake_samples(monkeypatch, [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_n_threads() == 2


def test_auto_never_exceeds_the_users_torch_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with thread_limits("auto") as n:
            assert n == 1
    finally:
        torch.set_num_threads(before)


def test_passive_wait_is_a_default_the_user_can_override():
    env = {}
    assert prefer_passive_wait(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not prefer_passive_wait(env) and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {"GOMP_SPINCOUNT": "10000"}
    assert not prefer_passive_wait(env) and "OMP_WAIT_POLICY" not in env


@pytest.mark.parametrize("first, expected", [("skad", "True"), ("torch", "False")])
def test_passive_wait_takes_effect_only_when_skad_comes_before_torch(first, expected):
    code = (f"import {first}, skad, torch\n"
            "from skad.utils import passive_wait_active\nprint(passive_wait_active())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split()[-1] == expected


def test_padim_fits_and_scores_the_same_with_one_thread_as_enclosed():
    X = np.random.default_rng(0).normal(size=(30, 4))
    a = PaDiM(random_state=0).fit(X)
    with thread_limits(1):
        b = PaDiM(random_state=0).fit(X)
    np.testing.assert_allclose(a.score_samples(X), b.score_samples(X), rtol=1e-5)
