"""Headless Chromium for the tests that check what a person sees in a browser: Debian's
``chromium`` and ``chromedriver``, driven by selenium, which is given both paths so that it
never looks for (or downloads) a browser or driver of its own.

``.ci/run`` installs the packages and sets ``BES_REQUIRE_BROWSER=1``, which turns a missing
browser into a failure instead of a skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As root, on a machine with no network but loopback: no sandbox (it refuses root), no GPU,
# and nothing that phones home (component updates, sync, QUIC probes).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
WAIT_S = 10.0
"""The longest any page or element is waited for."""


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is not installed (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium(profile: Path, *, downloads: Path | None = None) -> Iterator[Any]:
    """A headless Chromium with a fresh profile in ``profile`` that saves downloads in
    ``downloads`` without asking; quit afterwards."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("BES_REQUIRE_BROWSER") == "1":
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        downloads.mkdir(parents=True, exist_ok=True)
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(profile.with_suffix(".driver.log"))
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(WAIT_S * 3)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()
