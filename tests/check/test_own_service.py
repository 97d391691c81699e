"""``bes check`` against our own live service: every check passes (SPMD is declared
unsupported, the management checks need --admin), the reports read back as a CI tool and a
browser read them, the load test measures and cleans up, and nothing the suite created is
left running or in the user's job list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import junitparser
import pytest

from bes.check import Options, Verdict, report, run
from tests.support.browser import WAIT_S, chromium
from tests.support.server import LiveServer, live_server

# What a bes service without workers answers: jobs stay Pending (staging cannot finish).
NO_WORKER = {
    "create-staging": Verdict.WARN,
    "feature: SPMD (MPI)": Verdict.PASS,  # the none backend takes anything it can store
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("own") / "data", extra=["--backend", "none"]) as s:
        yield s


def test_every_check_passes_against_our_service(service: LiveServer, tmp_path: Path) -> None:
    found = run(service.endpoint, Options(admin=True, wait_s=3), save=tmp_path / "saved")
    verdicts = {r.id: r.verdict for r in found.results}
    expected = {key: NO_WORKER.get(key, Verdict.PASS) for key in verdicts}
    assert verdicts == expected, report.text(found)
    assert found.dialect == "GFD.108"
    assert {"wsdl", "status-vector", "terminate-again", "management-start"} <= set(verdicts)
    assert found.features["bes VM extension"] == "supported"
    assert found.cleanup.startswith(f"terminated the {found.created} activities")
    # --save keeps each request and its answer.
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert any(n.endswith("-status-vector.request") for n in saved)
    assert any(n.endswith("-status-vector.response") for n in saved)
    assert not found.failed


def test_the_draft_2007_endpoint_is_recognised(service: LiveServer) -> None:
    found = run(service.url + "/bes/draft-2007", Options(wait_s=3))
    assert found.dialect == "draft-2007"
    by_id = {r.id: r for r in found.results}
    assert by_id["terminate"].verdict is Verdict.PASS
    assert by_id["status-vector"].verdict is Verdict.PASS
    assert "InvalidActivityIdentifierFault" in by_id["status-vector"].reason
    assert "judged by shape" in report.text(found)  # and it says how it judged


def bes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bes", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_the_command_writes_junit_and_html_that_read_back(
    service: LiveServer, tmp_path: Path
) -> None:
    xdg = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    done = bes(
        "check", service.endpoint, "--wait", "3",
        "--junit", str(tmp_path / "check.xml"), "--html", str(tmp_path / "check.html"),
        env=xdg,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout.split("JSDL features")[0].replace("0 FAIL", "")
    # The activities it created are not in the user's job list.
    listed = bes("status", "--all", "--json", env=xdg)
    assert json.loads(listed.stdout or "[]") == []

    suite = junitparser.JUnitXml.fromfile(str(tmp_path / "check.xml"))
    cases = [
        case
        for one in ([suite] if isinstance(suite, junitparser.TestSuite) else suite)
        for case in one
    ]
    names = [c.name for c in cases]
    assert any(n.startswith("status-vector:") for n in names)
    skipped = [c.name for c in cases if any(isinstance(r, junitparser.Skipped) for r in c.result)]
    failed = [c.name for c in cases if any(isinstance(r, junitparser.Failure) for r in c.result)]
    assert failed == []
    assert all(n.startswith("management-") for n in skipped), skipped  # no --admin

    with chromium(tmp_path / "profile") as browser:
        browser.get((tmp_path / "check.html").as_uri())
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.ID, "results"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert len(rows) == len(cases)
        verdicts = {row.get_attribute("class") for row in rows}
        assert verdicts <= {"PASS", "SKIP", "WARN"}
        assert "status-vector" in browser.find_element(By.ID, "results").text
        assert service.endpoint in browser.title


def test_a_failing_endpoint_exits_non_zero_with_the_evidence(tmp_path: Path) -> None:
    done = bes("check", "http://127.0.0.1:9/bes", "--wait", "1")
    assert done.returncode == 1
    assert "FAIL  factory-attributes" in done.stdout
    assert "no answer: connection failed or dropped" in done.stdout


def test_the_load_test_measures_and_cleans_up(service: LiveServer) -> None:
    done = bes("check", service.endpoint, "--load", "4", "--seconds", "2", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["created"] > 0
    assert figures["creates_per_second"] > 0
    assert figures["status_1000_p50_ms"] > 0
    assert figures["errors"] == 0
    assert figures["cleanup"].startswith(f"terminated the {figures['created']} activities")


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.timeout(900)
def test_the_embedded_default_passes_everything_with_its_local_worker(tmp_path: Path) -> None:
    """As a newcomer runs it: bes serve with its local worker (jobs run in VMs), then
    bes check --admin. Only SPMD is not PASS: the desktop grid says it does not run it."""
    with live_server(tmp_path / "data", local_worker=True) as service:
        done = bes(
            "check", service.endpoint, "--admin", "--json", env={"XDG_DATA_HOME": str(tmp_path)}
        )
    found = json.loads(done.stdout)
    verdicts = {r["id"]: r["verdict"] for r in found["results"]}
    assert done.returncode == 0, done.stdout
    assert verdicts.pop("feature: SPMD (MPI)") == "SKIP"
    assert set(verdicts.values()) == {"PASS"}, verdicts
    by_id = {r["id"]: r for r in found["results"]}
    assert by_id["create-staging"]["reason"] == "staged in and out"  # it really ran
    assert by_id["terminate"]["reason"].startswith("while Running")
    assert found["cleanup"].startswith("terminated the")


def test_a_secured_site_is_checked_with_the_users_credentials(tmp_path: Path) -> None:
    """Over HTTPS with a password (WS-Security in the SOAP, HTTP Basic for the WSDL), as a
    user who is not an administrator: the management checks SKIP, nothing fails."""
    ca, data_dir = tmp_path / "ca", tmp_path / "data"
    for args in (("ca", "init", str(ca)), ("ca", "server", str(ca), "127.0.0.1")):
        assert bes(*args).returncode == 0
    (tmp_path / "alice.pw").write_text("alice-Secret-1\n")
    added = bes(
        "user", "add", "alice", "--password-file", str(tmp_path / "alice.pw"),
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    tls = ["--tls-cert", str(ca / "127.0.0.1.pem"), "--tls-key", str(ca / "127.0.0.1.key")]
    with live_server(data_dir, extra=["--backend", "none", *tls], ca_file=ca / "ca.pem") as site:
        done = bes(
            "check", site.endpoint, "--wait", "2", "--json",
            "--username", "alice", "--password-file", str(tmp_path / "alice.pw"),
            "--ca-file", str(ca / "ca.pem"),
        )  # fmt: skip
        anonymous = bes("check", site.endpoint, "--wait", "1", "--ca-file", str(ca / "ca.pem"))
    found = json.loads(done.stdout)
    verdicts = {r["id"]: r["verdict"] for r in found["results"]}
    assert done.returncode == 0, done.stdout
    assert "FAIL" not in verdicts.values()
    assert verdicts["management-stop"] == "SKIP"
    # Without credentials the site refuses: the suite says so, as failures, and ends.
    assert anonymous.returncode == 1
    assert "not authorized" in anonymous.stdout
