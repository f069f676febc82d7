"""The HTML report renders in a real browser: headless Chromium screenshots it (images
drawn, not blank) and dumps its DOM (the sorting script ran); every <img> carries a
decodable PNG data URI. Skipped, with the reason, where no Chromium is installed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpm_lib.masks import encode_rle
from bpm_lib.report import render_report
from bpm_lib.types import RunSummary, Sample, SampleScore

MAGENTA = (255, 0, 255)  # every source image
ORANGE = (255, 128, 0)  # every edited image outside its edit region
# Inside the edit region the overlay tints the edit red: 0.55·orange + 0.45·red.
TINTED = (255, round(0.55 * 128), 0)
WINDOW = (1600, 1200)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium/chromium-browser binary on PATH (CI installs Debian's chromium in .ci/run)")
    return exe


def _run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", "--disable-extensions", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    samples, scores, edits = {}, [], {"cand": {}}
    mask = np.zeros((500, 500), dtype=bool)
    mask[100:400, 100:400] = True
    for i, bpm in enumerate((0.4, 1.6, 0.9)):
        sid = f"s{i}"
        src, ed = root / f"{sid}.png", root / f"{sid}-ed.png"
        Image.new("RGB", (300, 200), MAGENTA).save(src)
        Image.new("RGB", (300, 200), ORANGE).save(ed)
        samples[sid] = Sample(sid, f"Make thing {i} orange.", str(src))
        edits["cand"][sid] = str(ed)
        scores.append(SampleScore(sid, "cand", case="standard", edit_type="change color", s_region=2.0,
                                  s_modify=0.1 * i, s_preserve=0.05, bpm=bpm, extra={"edit_mask": encode_rle(mask)}))
    samples["s3"] = Sample("s3", "Remove everything.", str(root / "absent.png"))
    scores.append(SampleScore("s3", "cand", status="error", error="localize source: image not found"))
    summary = RunSummary("cand", 4, 3, 1, "cal-x", "pool", 0.7, "tiny-random", {"bpm": 0.97}, {}, {})
    html = render_report("Screenshot report", samples, scores, edits, [summary], notes=["a note"])
    path = root / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_every_image_is_an_embedded_decodable_png(report: Path) -> None:
    parser = _Images()
    parser.feed(report.read_text(encoding="utf-8"))
    assert len(parser.srcs) == 3 * 3  # source, edited, overlay for each of the 3 scored samples
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert payload
        img = Image.open(io.BytesIO(payload))
        img.load()
        assert img.format == "PNG" and max(img.size) == 160


def test_report_renders_its_images_in_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = _run_chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", report.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert img.std() > 20  # not a blank page

    def pixels_near(colour: tuple[int, int, int]) -> int:
        return int((np.abs(img - np.array(colour)).max(axis=2) <= 12).sum())

    thumb = 160 * round(160 * 200 / 300)  # one 160×107 thumbnail
    assert pixels_near(MAGENTA) >= 2 * thumb  # source thumbnails drawn
    assert pixels_near(ORANGE) >= thumb // 2  # edited thumbnails (and the overlay's untinted border)
    assert pixels_near(TINTED) >= thumb // 4  # the mask overlay is drawn in its tint
    # A thumbnail is a solid block: find one magenta 100×60 block somewhere on the page.
    magenta = (np.abs(img - np.array(MAGENTA)).max(axis=2) <= 12).astype(np.int32)
    integral = magenta.cumsum(0).cumsum(1)
    h, w = 60, 100
    block = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    assert block.max() == h * w


def test_sorting_script_runs_in_chromium(report: Path) -> None:
    proc = _run_chromium("--dump-dom", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert re.search(r'<th data-numeric="1" data-default-sort="" class="sorted-desc">bpm</th>', dom), dom[:3000]
    rows = re.findall(r"<td>(s\d)</td>", dom.split('id="samples"', 1)[1])
    assert rows == ["s1", "s2", "s0", "s3"]  # BPM descending; the failed sample (no BPM) last
