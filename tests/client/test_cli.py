"""The client commands as a user types them, against a real ``bes serve``: output, job list,
errors and the documented exit statuses."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.server import LiveServer, free_port

ID = re.compile(r"^[A-Za-z0-9_-]{24}$")


class Shell:
    """``bes`` in a subprocess with its own home (job list, configuration)."""

    def __init__(self, home: Path, endpoint: str | None) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BES_")},
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "HOME": str(home),
        }
        if endpoint:
            self.env["BES_ENDPOINT"] = endpoint

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bes", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.home,
            timeout=120,
            check=False,
        )


@pytest.fixture
def bes(server: LiveServer, tmp_path: Path) -> Shell:
    return Shell(tmp_path, server.endpoint)


def test_write_submit_watch_cancel_forget(bes: Shell) -> None:
    written = bes("jsdl", "new", "-o", "job.jsdl", "--name", "hello", "--keep", "result.txt",
                  "/bin/sh", "-c", "echo hi > result.txt")  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert "bes submit job.jsdl" in written.stderr
    assert (
        b"<jsdl-posix:Argument>echo hi &gt; result.txt</jsdl-posix:Argument>"
        in (bes.home / "job.jsdl").read_bytes()
    )

    submitted = bes("submit", "job.jsdl")
    assert submitted.returncode == 0, submitted.stderr
    activity = submitted.stdout.strip()
    assert ID.match(activity), submitted.stdout  # only the id on stdout, for $(bes submit …)

    shown = bes("status", activity[:8])  # a unique prefix is enough
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "STATE", "EXIT"]
    assert row.split()[:3] == [activity, "hello", row.split()[2]]
    assert row.split()[2].startswith("Pending/")

    listed = json.loads(bes("status", "--all", "--json").stdout)
    assert [(s["id"], s["name"], s["state"]) for s in listed] == [(activity, "hello", "Pending")]

    cancelled = bes("cancel", activity)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "terminated" in cancelled.stdout
    waited = bes("wait", activity, "--timeout", "20")
    assert waited.returncode == 1  # it ended, but not Finished
    assert "Cancelled" in waited.stdout and "not all finished" in waited.stderr

    forgotten = bes("forget", activity)
    assert forgotten.returncode == 0 and "removed 1" in forgotten.stderr
    assert json.loads(bes("status", "--all", "--json").stdout) == []


def test_factory_attributes_and_images(bes: Shell, server: LiveServer) -> None:
    attributes = bes("attrs")
    assert attributes.returncode == 0, attributes.stderr
    assert re.search(r"^accepting\s+True$", attributes.stdout, re.M)
    assert f"endpoint             {server.endpoint}" in attributes.stdout
    found = json.loads(bes("attrs", "--json").stdout)
    assert found["accepting"] is True and found["endpoint"] == server.endpoint

    images = bes("images")
    assert images.returncode == 0, images.stderr
    assert re.search(r"^tiny\s+site\s+Linux_64\s+128\s", images.stdout, re.M)
    assert re.search(r"^debian-12\s+site\s+Linux_64\s+512\s", images.stdout, re.M)
    listed = json.loads(bes("images", "--json").stdout)
    assert [(t["name"], t["kind"]) for t in listed] == [("debian-12", "site"), ("tiny", "site")]


def test_errors_read_like_a_person_wrote_them(bes: Shell, server: LiveServer) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/bes"
    refused = bes("attrs", "-e", nowhere)
    assert refused.returncode == 4
    assert f"cannot connect to {nowhere}: connection refused" in refused.stderr
    assert "Traceback" not in refused.stderr

    wrong_path = bes("attrs", "-e", server.url + "/nothing")
    assert wrong_path.returncode == 4
    assert "HTTP 404" in wrong_path.stderr and "ours ends in /bes" in wrong_path.stderr

    (bes.home / "bad.jsdl").write_text(
        '<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl">\n'
        "  <jsdl:JobDescription>\n"
        "    <jsdl:Colour>blue</jsdl:Colour>\n"
        "  </jsdl:JobDescription>\n"
        "</jsdl:JobDefinition>\n"
    )
    invalid = bes("submit", "bad.jsdl")
    assert invalid.returncode == 5
    assert "bad.jsdl" in invalid.stderr and "line 3" in invalid.stderr
    assert "jsdl:Colour" in invalid.stderr

    (bes.home / "foreign.jsdl").write_bytes(
        (bes.home / "bad.jsdl")
        .read_bytes()
        .replace(
            b"<jsdl:Colour>blue</jsdl:Colour>",
            b'<jsdl:Application><x:Licence xmlns:x="urn:example">matlab</x:Licence>'
            b"</jsdl:Application>",
        )
    )
    unsupported = bes("submit", "foreign.jsdl")
    assert unsupported.returncode == 3
    assert "the service refused: UnsupportedFeatureFault:" in unsupported.stderr

    unknown = bes("status", "A" * 24)
    assert unknown.returncode == 3
    assert "UnknownActivityIdentifierFault" in unknown.stdout

    not_an_id = bes("status", "yesterdays-job")
    assert not_an_id.returncode == 2
    assert "not in the job list" in not_an_id.stderr

    pending = bes("submit", str(Path(__file__).parents[2] / "examples" / "hello-vm.jsdl"))
    late = bes("wait", pending.stdout.strip(), "--timeout", "1")  # no worker: stays Pending
    assert late.returncode == 6
    assert "had not ended" in late.stderr
    bes("cancel", pending.stdout.strip())


def test_endpoint_from_flag_then_environment_then_config_file(
    server: LiveServer, tmp_path: Path
) -> None:
    bes = Shell(tmp_path, endpoint=None)
    (tmp_path / "config" / "bes").mkdir(parents=True)
    (tmp_path / "config" / "bes" / "client.toml").write_text(f'endpoint = "{server.endpoint}"\n')
    assert json.loads(bes("attrs", "--json").stdout)["endpoint"] == server.endpoint

    elsewhere = f"http://127.0.0.1:{free_port()}/bes"
    from_environment = bes("attrs", BES_ENDPOINT=elsewhere)
    assert from_environment.returncode == 4 and elsewhere in from_environment.stderr

    from_flag = bes("attrs", "--json", "-e", server.endpoint, BES_ENDPOINT=elsewhere)
    assert from_flag.returncode == 0, from_flag.stderr

    (tmp_path / "config" / "bes" / "client.toml").write_text("endpoint = \n")
    broken = bes("attrs")
    assert broken.returncode == 2 and "client.toml is unreadable" in broken.stderr


def test_progress_is_live_on_a_terminal_and_silent_elsewhere(bes: Shell) -> None:
    example = str(Path(__file__).parents[2] / "examples" / "hello-vm.jsdl")
    activity = bes("submit", example).stdout.strip()
    quiet = bes("wait", activity, "--timeout", "2")
    assert quiet.returncode == 6
    assert "waiting" not in quiet.stderr  # a pipe gets no progress line

    controller, terminal = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "bes", "wait", activity, "--timeout", "3"],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=bes.env,
        cwd=bes.home,
    )
    os.close(terminal)
    seen = b""
    while time.monotonic() - started < 60:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(30) == 6
    lines = [line for line in seen.decode().split("\r") if line.startswith("waiting")]
    assert len(lines) >= 2, seen
    assert all("Pending/" in line for line in lines)
    assert lines[0].startswith("waiting 0:00")
    bes("cancel", activity)


def test_bes_why_says_why_a_job_waits_and_the_status_page_too(
    bes: Shell, server: LiveServer
) -> None:
    import httpx
    from lxml import html

    written = bes("jsdl", "new", "-o", "wait.jsdl", "--name", "waiter", "/bin/true")
    assert written.returncode == 0, written.stderr
    activity = bes("submit", "wait.jsdl").stdout.strip()
    deadline = time.monotonic() + 20
    shown = bes("why", activity)
    while "no worker is registered" not in shown.stdout and time.monotonic() < deadline:
        time.sleep(0.3)  # the service hands it to the desktop grid in its own loop
        shown = bes("why", activity)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"{activity}: Pending/Submitted"
    assert lines[1].strip().startswith("no worker is registered; start one with bes worker")
    assert lines[2].startswith("pool: volunteers (this service's pools: volunteers)")
    assert lines[3].startswith("needs: 256 MiB, 1 vCPU(s)")
    assert "queue position in its pool: " in shown.stdout
    assert "workers: none registered" in shown.stdout
    as_json = json.loads(bes("why", activity, "--json").stdout)
    assert as_json["pool"] == "volunteers" and as_json["analysis"]["needs"]["vcpus"] == 1

    header, *rows = bes("status", activity).stdout.splitlines()
    assert "POOL" in header.split() and " volunteers " in rows[0]

    page = html.fromstring(httpx.get(server.url + "/bes/status", timeout=10).text)
    [row] = page.cssselect(f'tr[data-activity="{activity}"]')
    assert "no worker is registered" in row.cssselect(".why")[0].text_content()
    assert bes("cancel", activity).returncode == 0
