"""An acknowledged activity survives a crash: SIGKILL the server mid-stream, restart, find all."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from lxml import etree

from tests.support import soap
from tests.support.server import LiveServer


def test_acknowledged_activities_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = LiveServer(data_dir).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    request = soap.envelope(soap.create_activity())

    def submitter() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(server.endpoint, content=request)
                except httpx.HTTPError:
                    return  # the server died under us: this request was never acknowledged
                if r.status_code == 200:
                    epr = soap.xpath(soap.body_of(r.content), "bes:ActivityIdentifier")[0]
                    with lock:
                        acknowledged.append(etree.tostring(epr).decode())

    threads = [threading.Thread(target=submitter) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # while the submitters are still sending
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acknowledged) >= 300

    restarted = LiveServer(data_dir, port=server.port).start()
    try:
        body = soap.envelope(soap.vector("GetActivityStatuses", acknowledged))
        r = httpx.post(restarted.endpoint, content=body, timeout=60)
        assert r.status_code == 200
        states = soap.xpath(soap.body_of(r.content), "bes:Response/bes:ActivityStatus/@state")
        faults = soap.xpath(soap.body_of(r.content), "bes:Response/bes:Fault")
        assert not faults, f"{len(faults)} acknowledged activities were lost"
        assert states == ["Pending"] * len(acknowledged)
    finally:
        restarted.stop()
