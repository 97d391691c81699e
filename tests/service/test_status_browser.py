"""The status page in a real browser (headless Chromium) against a live ``bes serve``: what a
person sees of their activities, the filter, the way to an activity's history and files,
the factory's state, and that a job name full of markup stays text and runs nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import WAIT_S, chromium
from tests.support.grid import Worker, posix_job, submit, terminate
from tests.support.server import LiveServer, live_server

pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("browser") / "data", extra=["--backend-option=claim_wait_s=2"]
    ) as server:
        yield server


def shows(server: LiveServer, path: str, text: str) -> None:
    """Wait until the page at ``path`` shows ``text`` (workers' reports apply within moments)."""
    deadline = time.monotonic() + WAIT_S
    while text not in httpx.get(server.url + path, timeout=WAIT_S).text:
        assert time.monotonic() < deadline, f"{path} never showed {text!r}"
        time.sleep(0.1)


class Person:
    """What someone does with the page: open it, read the table, click, choose."""

    def __init__(self, browser: Any) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser = browser
        self.by = By
        self.wait = WebDriverWait(browser, WAIT_S)

    def open(self, url: str) -> None:
        self.browser.get(url)
        self.wait.until(lambda b: b.execute_script("return document.readyState") == "complete")

    def reload_until(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not check():
            assert time.monotonic() < deadline, "the page never showed it"
            time.sleep(0.2)
            self.open(self.browser.current_url)

    def find(self, css: str) -> Any:
        return self.browser.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return list(self.browser.find_elements(self.by.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def rows(self) -> list[dict[str, str]]:
        """The activity table as shown: one dict per row, keyed by column title."""
        titles = [th.text for th in self.all("#activity-table thead th")]
        return [
            dict(
                zip(
                    titles,
                    (td.text for td in tr.find_elements(self.by.TAG_NAME, "td")),
                    strict=True,
                )
            )
            for tr in self.all("#activity-table tbody tr")
        ]

    def click(self, css: str, *, leaving: bool = True) -> None:
        """Click, and wait for the next page when it navigates."""
        element = self.find(css)
        element.click()
        if leaving:
            self.wait.until(lambda _: _detached(element))
            self.wait.until(lambda b: b.execute_script("return document.readyState") == "complete")

    def choose(self, css: str, text: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_visible_text(text)


def _detached(element: Any) -> bool:
    """Whether ``element`` has left the document (its page was replaced). Chromium says so
    as a stale reference or, caught mid-navigation, as a node that "does not belong to the
    document"; any other error is one."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def test_a_person_follows_their_activities_in_a_browser(
    grid_server: LiveServer, tmp_path: Path
) -> None:
    server = grid_server
    escaped = HOSTILE.replace("<", "&lt;").replace(">", "&gt;")
    hello = submit(server, posix_job("hello"))
    waiting = submit(server, posix_job("waiting"))
    doomed = submit(server, posix_job("doomed"))
    hostile = submit(server, posix_job(escaped))
    terminate(server, doomed)
    worker = Worker(server, "browser-pc")
    worker.post("register", {"facts": {"max_vms": 2, "max_memory_mib": 2048}})
    (lease,) = worker.claim()  # the oldest: hello
    assert lease["activity"] == hello
    worker.heartbeat(lease["lease"], "Executing")
    shows(server, f"/bes/status/activities/{hello}", "Executing")
    worker.finish(lease["lease"], stdout=b"hello from the grid\n")
    (held,) = worker.claim()  # waiting: now leased to the worker, Pending
    assert held["activity"] == waiting

    downloads = tmp_path / "downloads"
    with chromium(tmp_path / "profile", downloads=downloads) as browser:
        person = Person(browser)
        person.open(server.url + "/bes/status")
        assert browser.title == "bes status"

        # The list, newest first, with what each activity is doing (the worker's report
        # arrives within moments: reload until it shows, as a person would).
        person.reload_until(lambda: person.rows()[-1]["State"] == "Finished")
        shown = {r["Name"]: r for r in person.rows()}
        assert [r["Activity"] for r in person.rows()] == [hostile, doomed, waiting, hello]
        assert shown["hello"]["Exit code"] == "0"
        assert shown["hello"]["Worker"] == "browser-pc"
        assert shown["hello"]["Files"] == "outputs"
        assert shown["doomed"]["State"] == "Cancelled"
        assert shown["waiting"]["State"] == "Pending (Provisioning)"
        assert shown["waiting"]["Worker"] == "browser-pc"
        assert all(r["Backend"] == "desktopgrid" for r in shown.values())
        # The hostile name is text on the page and ran nothing (no alert is open).
        assert shown[HOSTILE]["State"].startswith("Pending")
        assert browser.execute_script("return document.querySelectorAll('script').length") == 0
        assert person.text("h1") == "bes status"

        # The factory, and (the anonymous caller is the administrator) workers and queue.
        assert person.text("#accepting") == "yes"
        assert person.text("#total") == "4"
        assert person.text("#backends") == "desktopgrid"
        assert "(administrator)" in person.text("header")
        workers = person.text('[data-worker="browser-pc"]')
        assert workers.startswith("browser-pc") and "2 VMs, 2048 MiB" in workers
        assert person.text('[data-queue="queued"]') == "1"
        assert person.text('[data-queue="leased"]') == "1"

        # The filter: choose a state, press Show, and the list changes.
        person.choose("#state", "Cancelled")
        person.click("#show")
        assert "state=Cancelled" in browser.current_url
        assert [r["Name"] for r in person.rows()] == ["doomed"]
        person.choose("#state", "Finished")
        person.click("#show")
        assert [r["Name"] for r in person.rows()] == ["hello"]

        # From the row to the activity's page, its history, and its files.
        person.click(f'tr[data-activity="{hello}"] a.detail')
        assert person.text("h1") == "hello"
        history = person.text("#history")
        assert "accepted" in history and "Executing" in history and "Finished" in history
        # A kept file is a download (application/octet-stream).
        person.click("#activity a[href$='/outputs/stdout']", leaving=False)
        saved = downloads / "stdout"
        person.wait.until(lambda _: saved.exists() and saved.read_bytes() != b"")
        assert saved.read_text() == "hello from the grid\n"
        person.click("#outputs")
        assert '"name":"stdout"' in person.text("body")
        browser.back()
        person.wait.until(lambda b: b.title == "bes: hello")
        person.click("#back")
        assert person.rows()[0]["Activity"] == hostile

        # The hostile activity's own page: the name is its heading, as text.
        person.click(f'tr[data-activity="{hostile}"] a.detail')
        assert person.text("h1") == HOSTILE
        assert browser.execute_script("return document.querySelectorAll('script').length") == 0

        # Nothing on any page was refused by its Content-Security-Policy (the style is its own).
        refused = [
            entry["message"]
            for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]
        ]
        assert not refused
        browser.save_screenshot(str(tmp_path / "status.png"))
