"""The HTML report in a real browser (headless Chromium): it renders, logs nothing to the console, and the
screenshot shows the page and its ECG image."""
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest

from ecgkt.data.wfdb_io import STANDARD_LEADS
from ecgkt.predict import report
from ecgkt.predict.display import Display
from ecgkt.predict.explanations import ExplanationGate, gate_config
from predict_helpers import synthetic_ecg
from test_report import fake_result

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless browser (Debian: apt-get install chromium)")


def _open(page, png, size=(1400, 2200)):
    """Screenshot of ``page``; returns the browser's console lines."""
    r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--enable-logging=stderr", "--v=0", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={png}", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    return [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]


def test_the_console_check_sees_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><body><script>console.error("broken page")</script></body></html>')
    assert any("broken page" in ln for ln in _open(page, tmp_path / "bad.png"))


def test_report_renders_in_a_browser(tmp_path):
    result = fake_result()
    gate = ExplanationGate.from_config(gate_config({"potassium_high": 0.91, "calcium_low": 0.62}))
    _, page = report.write_report(result, synthetic_ecg(10, 500, seed=1), 500.0, STANDARD_LEADS, tmp_path, "rec",
                                  display=Display.for_result(result, gate))
    shot = tmp_path / "screenshot.png"
    assert _open(page, shot) == []  # no console messages: no script errors, nothing failed to load
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2200, 1400)
    assert img.std() > 0.05  # not blank
    dark = (img.max(-1) < 0.3).mean()  # text and the ECG trace
    pink = ((img[..., 0] > 0.85) & (img[..., 1] < 0.85) & (img[..., 2] < 0.9)).mean()  # the ECG paper grid
    assert dark > 0.002 and pink > 0.01, (dark, pink)  # the embedded PNG was loaded and drawn
