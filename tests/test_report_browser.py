"""report.html opens in a real browser: headless Chromium renders the table and images.

Runs a tiny ``skad benchmark`` (64 px synthetic images), then asks Chromium for the DOM
after the page's load event (the report's script marks ``<body>`` once every image has
decoded) and for a screenshot, which must not be blank. Skips when Chromium is absent
(Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
"""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from skad.cli import main
from skad.registry import available_detectors

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def _chromium(url, profile, *extra, timeout=120):
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *extra, url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    specs = available_detectors()
    patch = [n for n in ("patchcore", "padim", "patchcluster", "spade") if n in specs][:1]
    names = patch + ["lof"]
    out = tmp_path_factory.mktemp("report")
    code = main(["benchmark", "--n-train", "8", "--n-test", "8", "--image-size", "64",
                 "--input-size", "64", "--detectors", ",".join(names),
                 "--param", "lof.n_neighbors=5", "--out", str(out), "--quiet"],
                stdout=io.StringIO())
    assert code == 0
    return out, names


def test_report_renders_table_and_decoded_images(report, tmp_path):
    out, names = report
    html = (out / "report.html").read_text()
    n_img = len(re.findall(r"<img ", html))
    assert n_img >= 1 + 2 * len(names)  # curves + at least two cases per detector
    dom = _chromium((out / "report.html").resolve().as_uri(), tmp_path / "p1",
                    "--virtual-time-budget=10000", "--dump-dom")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-loaded="all"' in body, body
    assert f'data-image-count="{n_img}"' in body, body
    table = re.search(r'<table id="results">.*?</table>', dom, re.S).group(0)
    rows = re.findall(r'<tr data-detector="([^"]+)"', table)
    assert rows == names


def test_report_screenshot_is_not_blank(report, tmp_path):
    out, _ = report
    shot = tmp_path / "shot.png"
    _chromium((out / "report.html").resolve().as_uri(), tmp_path / "p2",
              "--window-size=1200,1600", "--virtual-time-budget=10000",
              f"--screenshot={shot}")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert img.shape[:2] == (1600, 1200)
    non_white = (img.min(axis=-1) < 240).mean()
    assert non_white > 0.05  # text, table and figures, not an empty page
    assert img.std() > 20
