"""The README's secure deployment, as written: ``bes ca``, password files, ``bes user add``,
``bes serve`` with TLS and a client CA, then the client commands (a password, a certificate, a
signature, curl with Basic) against it, with a real VM job run by the local worker over HTTPS.
Only the host name and port are changed, to loopback ones."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port
from tests.support.worker import shared_image_cache

pytestmark = [pytest.mark.slow, pytest.mark.vm]

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def section() -> str:
    text = README.read_text()
    return text[text.index("## Secure deployment") : text.index("## Benchmark")]


def sh(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-ec", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_secure_deployment_section_works_as_written(tmp_path: Path) -> None:
    setup, client = re.findall(r"```sh\n(.*?)```", section(), re.S)[:2]
    site = tmp_path / "site"
    site.mkdir()
    (site / ".venv").symlink_to(ROOT / ".venv")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    env.pop("BES_ENDPOINT", None)
    port = free_port()
    serve = None
    for line in setup.strip().splitlines():
        if line.startswith(".venv/bin/bes serve"):
            assert "--host 0.0.0.0 --port 8443" in line
            serve = line.replace("--host 0.0.0.0 --port 8443", f"--host 127.0.0.1 --port {port}")
            continue
        done = sh(line, site, env)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    assert serve is not None
    assert (site / "root.pw").stat().st_mode & 0o077 == 0
    assert (site / "root.pw").read_text() != (site / "alice.pw").read_text()
    shared_image_cache(site / "bes-data" / "worker")
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", "exec " + serve],
        cwd=site,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        trust = ssl.create_default_context(cafile=site / "site-ca" / "ca.pem")
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                health = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "bes serve did not answer in 60 s"
            time.sleep(0.2)
        # Anyone without credentials is refused, even on this machine.
        assert httpx.get(f"https://127.0.0.1:{port}/bes/status", verify=trust).status_code == 401
        script = client.replace("bes.example.org:8443", f"127.0.0.1:{port}")
        done = sh(script, site, env)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert "Finished" in done.stdout, done.stdout  # the local worker ran it, over HTTPS
        assert 'Signed in as <strong id="caller">alice' in done.stdout
        submitted = re.findall(r"^([A-Za-z0-9_-]{24})(?=\s|$)", done.stdout, re.M)
        assert len(set(submitted)) == 2, done.stdout
        served = (tmp_path / "serve.log").read_text()
        assert (site / "alice.pw").read_text().strip() not in served
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
