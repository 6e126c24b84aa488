"""Shared pytest fixtures: real data from ../shared/data when present."""

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SKAD_SHARED_DATA", _REPO.parent / "shared" / "data"))


def _require(sub):
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set SKAD_SHARED_DATA or provide ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """Root of the real data sets (../shared/data); skips the test when absent."""
    return _require("")


@pytest.fixture(scope="session")
def mvtec_root():
    """MVTec AD root holding the ``bottle`` category; skips when absent."""
    _require("mvtec_ad/bottle")
    return SHARED_DATA / "mvtec_ad"


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    """Keep torch to the machine's cores so parallel tests do not oversubscribe, and fix
    the count for the session: estimators' "auto" threads (the free cores) could change
    from one call to the next on a busy machine, and with them the last bits of results
    that some tests compare exactly (tests/test_threads.py covers "auto" itself)."""
    try:
        import torch

        from skad.utils import thread_limits

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:
        yield
        return
    with thread_limits(torch.get_num_threads()):
        yield
