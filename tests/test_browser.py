"""report.html in a real browser: headless Chromium, driven by Selenium, opens it from file:// and is asked
what it rendered (every table, every image decoded, the plots two to a row), and a screenshot is taken.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (the dev extra); without them
the test is skipped, unless FT_HARNESS_REQUIRE_BROWSER=1 (CI sets it, .ci/run installs both), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from harness.report import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "example"
REQUIRED = os.environ.get("FT_HARNESS_REQUIRE_BROWSER") == "1"
# A Markdown table's separator row, e.g. |---|---:|
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$", re.MULTILINE)
IMAGE = re.compile(r"^!\[([^\]]*)\]\(", re.MULTILINE)
WIDTH = 1280

RENDERED = """
const tables = Array.from(document.querySelectorAll('table'));
const images = Array.from(document.images);
return {
  tables: tables.map(t => t.querySelectorAll('tbody tr').length),
  images: images.map(i => ({alt: i.alt, complete: i.complete, natural: i.naturalWidth, shown: i.width,
                           top: Math.round(i.getBoundingClientRect().top)})),
  height: document.documentElement.scrollHeight,
};
"""


def _browser():
    """A headless Chromium under Selenium, or a skip (a failure when FT_HARNESS_REQUIRE_BROWSER=1)."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [
        name for name, found in (("chromium", chromium), ("chromedriver", driver), ("selenium", webdriver)) if not found
    ]
    if missing:
        message = f"no {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if REQUIRED:
            pytest.fail(f"FT_HARNESS_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WIDTH},1000", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver))  # both paths given: nothing is downloaded


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_html_report_renders_every_table_and_image_in_chromium(tmp_path):
    if not (EXAMPLE / "runs").is_dir():
        pytest.skip("no committed example records in results/example")
    browser = _browser()
    try:
        results = tmp_path / "example"
        shutil.copytree(EXAMPLE / "runs", results / "runs")
        shutil.copytree(EXAMPLE / "studies", results / "studies")
        assert cli.main([str(results)]) == 0
        report = results / "report"
        markdown = (report / "report.md").read_text()
        tables, images = len(SEPARATOR.findall(markdown)), IMAGE.findall(markdown)
        assert tables == 3 and len(images) == 5  # the example: its task's table, tuning, failed and pruned; 5 plots

        browser.get((report / "report.html").as_uri())
        page = browser.execute_script(RENDERED)
        assert len(page["tables"]) == tables and all(rows > 0 for rows in page["tables"]), page["tables"]
        assert [image["alt"] for image in page["images"]] == images
        for image in page["images"]:  # decoded by the browser, from the page alone (embedded, no other file)
            assert image["complete"] and image["natural"] > 0, image
            assert 0 < image["shown"] <= image["natural"], image
        tops = [image["top"] for image in page["images"]]
        assert tops[0] == tops[1] and tops[2] > tops[1], tops  # two plots to a row

        browser.set_window_size(WIDTH, page["height"])
        screenshot = tmp_path / "report.png"
        assert browser.save_screenshot(str(screenshot))
        width, height = _png_size(screenshot)
        assert width >= WIDTH * 0.9 and height >= min(page["height"], 1000) * 0.9, (width, height)
    finally:
        browser.quit()
