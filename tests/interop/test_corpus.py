"""Every JSDL document of the shared corpus through CreateActivity on a live service, against
the verdict table kept beside this test; then the ones that must show it at run time, with a
worker and real VMs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.interop import corpus
from tests.support import soap
from tests.support.files import FileServer, file_server, ftp_server
from tests.support.server import LiveServer, live_server
from tests.support.standards import assert_official, corpus_dir
from tests.support.vm import qemu_processes, tiny_repository
from tests.support.worker import WorkerProcess, issue_token

TABLE = Path(__file__).with_name("corpus_verdicts.tsv")


def verdicts() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, verdict, why = line.split("\t")
        rows[name] = (verdict, why)
    return rows


VERDICTS = verdicts()
CORPUS = sorted((corpus_dir() / "jsdl").iterdir())


def test_the_table_has_one_row_per_corpus_file() -> None:
    assert sorted(VERDICTS) == [p.name for p in CORPUS]


def status_of(server: LiveServer, activity_id: str) -> etree._Element:
    answer = server.post(
        soap.envelope(soap.vector("GetActivityStatuses", [soap.epr(activity_id=activity_id)])),
        "GetActivityStatuses",
    )
    assert_official(answer.content, "GetActivityStatuses response")
    (status,) = soap.xpath(soap.body_of(answer.content), "//bes:ActivityStatus")
    return status


def verdict_of(server: LiveServer, response: httpx.Response) -> str:
    if response.status_code != 200:
        fault = soap.fault_of(response.content)
        detail = fault.find("detail")
        assert detail is not None and len(detail), response.text
        return etree.QName(detail[0]).localname
    (activity_id,) = soap.xpath(soap.body_of(response.content), "//besa:ActivityId/text()")
    status = status_of(server, str(activity_id))
    children = soap.xpath(status, "besa:Child")
    if children:
        return f"sweep:{len(children)}"
    return "normalized" if soap.xpath(status, "besa:Warning") else "accepted"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("corpus") / "data") as server:
        yield server


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_each_corpus_document_gets_its_verdict(service: LiveServer, path: Path) -> None:
    expected, why = VERDICTS[path.name]
    response = service.post(corpus.create_activity(path), "CreateActivity")
    assert_official(response.content, f"answer to {path.name}")
    assert verdict_of(service, response) == expected, why
    if path.name.split(".")[0].endswith("-NEG") and expected in ("accepted", "normalized"):
        assert "runtime" in why, "a -NEG document that is taken must fail at run time"


def test_strict_mode_takes_documents_only_as_they_are(tmp_path: Path) -> None:
    with live_server(tmp_path / "data", extra=["--strict-jsdl"]) as strict:
        for name, (expected, _) in VERDICTS.items():
            if expected != "normalized":
                continue
            response = strict.post(
                corpus.create_activity(corpus_dir() / "jsdl" / name), "CreateActivity"
            )
            refused = verdict_of(strict, response)
            assert refused in ("InvalidRequestMessageFault", "UnsupportedFeatureFault"), name


def test_a_normalized_document_says_what_was_rewritten(tmp_path: Path) -> None:
    # Its stage-in is file:///etc/hosts: taken only where the site gave /etc as a file root.
    with live_server(tmp_path / "data", extra=["--file-root", "/etc"]) as service:
        check_normalized_document(service)


def check_normalized_document(service: LiveServer) -> None:
    response = service.post(
        corpus.create_activity(corpus_dir() / "jsdl" / "unicore-ems-ls-with-stagein.jsdl"),
        "CreateActivity",
    )
    assert response.status_code == 200, response.text
    (activity_id,) = soap.xpath(soap.body_of(response.content), "//besa:ActivityId/text()")
    warnings = soap.xpath(status_of(service, str(activity_id)), "besa:Warning/text()")
    assert any("put in the order of the schema" in w for w in warnings)
    assert any("CreationFlag (required) was missing; overwrite assumed" in w for w in warnings)
    # GetActivityDocuments gives the document back as it was sent.
    documents = service.post(
        soap.envelope(
            soap.vector("GetActivityDocuments", [soap.epr(activity_id=str(activity_id))])
        ),
        "GetActivityDocuments",
    )
    assert b"CreationFlag" not in documents.content.split(b"<jsdl:DataStaging")[1].split(b"</")[0]


# ------------------------------------------------------------------------------ at run time

RUNTIME = {
    # file: (the state it must reach, a fragment of the reason)
    "gridsam-failed-stagein-cleanup-NEG.jsdl": ("Failed", "filenotExist"),
    "gridsam-invalid-output-staging-http-NEG.jsdl": ("Failed", "readonly.txt"),
    "gridsam-unknown-output-staging-NEG.jsdl": ("Failed", "did not produce"),
    "gridsam-wrong-executable-NEG.jsdl": ("Failed", "status 127"),
    "arc-test-range-exact-epsilon-NEG.jsdl": ("Failed", "status 127"),
    "arc-test-range-two-exact-NEG.jsdl": ("Failed", "status 127"),
    "bespp-sleep-hpcpa-many-ns.jsdl": ("Finished", ""),
    "unicore-ems-empty.jsdl": ("Finished", ""),
    "gridsam-purestaging-same-filename.jsdl": ("Failed", "allowed directories"),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileServer, str]]:
    """Loopback stand-ins for the corpus's hosts: an HTTP server (readonly.txt refuses
    writes) and an FTP server holding what the GridSAM jobs fetch."""
    root = tmp_path_factory.mktemp("ftp")
    for path in (
        "home/omii/stage-in/1G",
        "home/ftpuser/testfile/file1.txt",
        "home/ftpuser/testfile/file2.txt",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(f"content of {path}\n")
    with file_server() as http, ftp_server(root) as ftp:
        http.files["/stage-in/1G"] = b"a small stand-in for a gigabyte\n"
        http.files["/input-file.txt"] = b"input\n"
        http.files["/test_data/download/helloworld.txt"] = b"hello world\n"
        http.read_only.add("/readonly.txt")
        yield http, ftp


@pytest.mark.slow
@pytest.mark.vm
def test_documents_that_must_fail_fail_and_plain_jobs_run_in_the_default_vm(
    tmp_path: Path, stores: tuple[FileServer, str]
) -> None:
    tiny_repository()
    http, ftp = stores
    with live_server(
        tmp_path / "data",
        # file: URIs pass the service's submission check (so the worker's own check, which
        # allows none, is what refuses gridsam-purestaging-same-filename at run time).
        extra=[
            "--backend-option=lease_s=10",
            "--backend-option=heartbeat_s=1",
            "--file-root=/tmp",
            "--file-root=/home/gos",
        ],
    ) as server:
        worker = WorkerProcess(
            server.url, issue_token(server.data_dir, "corpus"), tmp_path / "w", "--max-vms=2"
        ).start()
        try:
            worker.wait_for_log("registered with")
            submitted = {}
            for name in RUNTIME:
                body = corpus.create_activity(corpus_dir() / "jsdl" / name, http=http.url, ftp=ftp)
                response = server.post(body, "CreateActivity")
                assert response.status_code == 200, (name, response.text)
                (activity_id,) = soap.xpath(
                    soap.body_of(response.content), "//besa:ActivityId/text()"
                )
                submitted[name] = str(activity_id)
            ended = {}
            deadline = time.monotonic() + 300
            while len(ended) < len(submitted) and time.monotonic() < deadline:
                for name, activity_id in submitted.items():
                    if name in ended:
                        continue
                    status = status_of(server, activity_id)
                    if status.get("state") in ("Finished", "Failed", "Cancelled"):
                        message = soap.xpath(status, "besa:Message/text()")
                        ended[name] = (status.get("state"), message[0] if message else "")
                time.sleep(0.5)
        finally:
            worker.stop()
    assert qemu_processes(str(tmp_path)) == []
    for name, (state, reason) in RUNTIME.items():
        assert name in ended, f"{name} did not end"
        assert ended[name][0] == state, (name, ended[name])
        assert reason in ended[name][1], (name, ended[name])
