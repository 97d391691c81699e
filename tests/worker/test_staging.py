"""Data staging on the worker, against a real HTTP server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bes.jsdl import load_job_definition
from bes.jsdl.model import JobDefinition
from bes.vm.media import GuestResults
from bes.vmjob import kept_files, returned_files
from bes.worker.staging import StagingError, deliver_outputs, fetch_inputs, kept_paths
from tests.support.files import FileServer, file_server


def job(*stagings: str) -> JobDefinition:
    return load_job_definition(
        f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
          xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
          <jsdl:JobDescription><jsdl:Application><posix:POSIXApplication>
            <posix:Executable>/bin/true</posix:Executable>
          </posix:POSIXApplication></jsdl:Application>{"".join(stagings)}
          </jsdl:JobDescription></jsdl:JobDefinition>""".encode()
    )


def staging(
    name: str,
    *,
    source: str | None = None,
    target: str | None = None,
    flag: str = "overwrite",
    delete: str | None = None,
    user: tuple[str, str] | None = None,
) -> str:
    parts = [
        f"<jsdl:FileName>{name}</jsdl:FileName>",
        f"<jsdl:CreationFlag>{flag}</jsdl:CreationFlag>",
    ]
    if delete is not None:
        parts.append(f"<jsdl:DeleteOnTermination>{delete}</jsdl:DeleteOnTermination>")
    if source:
        parts.append(f"<jsdl:Source><jsdl:URI>{source}</jsdl:URI></jsdl:Source>")
    if target:
        parts.append(f"<jsdl:Target><jsdl:URI>{target}</jsdl:URI></jsdl:Target>")
    if user:
        parts.append(
            '<ac:Credential xmlns:ac="http://schemas.ogf.org/hpcp/2007/11/ac">'
            "<wsse:UsernameToken xmlns:wsse='http://docs.oasis-open.org/wss/2004/01/"
            "oasis-200401-wss-wssecurity-secext-1.0.xsd'>"
            f"<wsse:Username>{user[0]}</wsse:Username><wsse:Password>{user[1]}</wsse:Password>"
            "</wsse:UsernameToken></ac:Credential>"
        )
    return "<jsdl:DataStaging>" + "".join(parts) + "</jsdl:DataStaging>"


@pytest.fixture
def files() -> FileServer:
    with file_server() as server:
        yield server  # type: ignore[misc]


def results(tmp_path: Path, outputs: dict[str, bytes]) -> GuestResults:
    produced = {}
    for name, data in outputs.items():
        path = tmp_path / "results" / "outputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        produced[name] = path
    (tmp_path / "stdout").write_bytes(b"")
    return GuestResults(
        exit_code=0,
        stdout=tmp_path / "stdout",
        stderr=tmp_path / "stdout",
        outputs=produced,
        missing=(),
        guest_seconds=1.0,
    )


def test_inputs_come_from_http_with_creation_flags_in_document_order(
    files: FileServer, tmp_path: Path
) -> None:
    files.files.update({"/a": b"one\n", "/b": b"two\n", "/c": b"three\n"})
    document = job(
        staging("data.txt", source=f"{files.url}/a"),
        staging("data.txt", source=f"{files.url}/b", flag="append"),
        staging("other.txt", source=f"{files.url}/a"),
        staging("other.txt", source=f"{files.url}/c", flag="overwrite"),
    )
    inputs = fetch_inputs(document, tmp_path, file_roots=())
    assert inputs["data.txt"].read_bytes() == b"one\ntwo\n"
    assert inputs["other.txt"].read_bytes() == b"three\n"


def test_dont_overwrite_of_an_input_already_staged_fails_the_job(
    files: FileServer, tmp_path: Path
) -> None:
    files.files.update({"/a": b"1", "/b": b"2"})
    document = job(
        staging("x", source=f"{files.url}/a"),
        staging("x", source=f"{files.url}/b", flag="dontOverwrite"),
    )
    with pytest.raises(StagingError, match="dontOverwrite"):
        fetch_inputs(document, tmp_path, file_roots=())


def test_a_missing_input_names_the_file_and_the_answer(files: FileServer, tmp_path: Path) -> None:
    with pytest.raises(StagingError, match=r"input 'in.dat'.*answered 404"):
        fetch_inputs(job(staging("in.dat", source=f"{files.url}/nope")), tmp_path, file_roots=())


def test_an_unreachable_host_is_a_staging_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match=r"GET http://127\.0\.0\.1:9/x failed"):
        fetch_inputs(job(staging("x", source="http://127.0.0.1:9/x")), tmp_path, file_roots=())


def test_credentials_go_as_http_basic_and_passwords_are_not_shown(tmp_path: Path) -> None:
    with file_server(credentials=("alice", "s3cret")) as server:
        server.files["/in"] = b"private"
        good = job(staging("in", source=f"{server.url}/in", user=("alice", "s3cret")))
        assert fetch_inputs(good, tmp_path, file_roots=())["in"].read_bytes() == b"private"
        bad = job(staging("in", source=f"{server.url.replace('//', '//bob:hunter2@')}/in"))
        with pytest.raises(StagingError) as refused:
            fetch_inputs(bad, tmp_path, file_roots=())
        assert "401" in str(refused.value) and "hunter2" not in str(refused.value)


def test_file_uris_only_under_the_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    allowed.mkdir()
    (allowed / "in.txt").write_text("here")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    inside = job(staging("in.txt", source=f"file://{allowed / 'in.txt'}"))
    assert fetch_inputs(inside, tmp_path, file_roots=(allowed,))["in.txt"].read_text() == "here"
    outside = job(staging("s", source=f"file://{allowed}/../secret.txt"))
    with pytest.raises(StagingError, match="allowed directories"):
        fetch_inputs(outside, tmp_path, file_roots=(allowed,))
    with pytest.raises(StagingError, match=r"allowed directories \(none\)"):
        fetch_inputs(inside, tmp_path, file_roots=())


def test_outputs_are_put_to_their_targets_and_dont_overwrite_is_kept(
    files: FileServer, tmp_path: Path
) -> None:
    files.files["/exists"] = b"old"
    document = job(
        staging("out.txt", target=f"{files.url}/new"),
        staging("out.txt", target=f"{files.url}/exists", flag="dontOverwrite"),
        staging("gone.txt", target=f"{files.url}/gone"),
        staging("out.txt", target=f"{files.url}/appended", flag="append"),
    )
    failures = deliver_outputs(document, results(tmp_path, {"out.txt": b"new"}), file_roots=())
    assert files.files["/new"] == b"new"
    assert files.files["/exists"] == b"old"
    assert len(failures) == 3
    assert "exists and CreationFlag is dontOverwrite" in failures[0]
    assert "'gone.txt' cannot be delivered: the job did not produce it" in failures[1]
    assert "append cannot be honoured with HTTP PUT" in failures[2]


def test_file_targets_append_and_respect_dont_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "log").write_text("first\n")
    document = job(
        staging("log", target=f"file://{root / 'log'}", flag="append"),
        staging("log", target=f"file://{root / 'log'}", flag="dontOverwrite"),
    )
    failures = deliver_outputs(
        document, results(tmp_path, {"log": b"second\n"}), file_roots=(root,)
    )
    assert (root / "log").read_text() == "first\nsecond\n"
    assert len(failures) == 1 and "dontOverwrite" in failures[0]


def test_which_files_come_back_and_which_the_service_keeps(tmp_path: Path) -> None:
    document = job(
        staging("in.csv", source="http://h/in.csv"),
        staging("in-kept.csv", source="http://h/in.csv", delete="false"),
        staging("delivered.txt", target="http://h/out"),
        staging("delivered-kept.txt", target="http://h/out", delete="false"),
        staging("named.txt"),
        staging("scratch.txt", delete="true"),
        staging("plots"),
    )
    assert kept_files(document) == ("in-kept.csv", "delivered-kept.txt", "named.txt", "plots")
    assert returned_files(document) == (
        "delivered.txt",
        "delivered-kept.txt",
        "in-kept.csv",
        "named.txt",
        "plots",
    )
    produced = results(tmp_path, {"named.txt": b"n", "plots/a.png": b"a", "plots/b.png": b"b"})
    assert sorted(kept_paths(produced, kept_files(document))) == [
        "outputs/named.txt",
        "outputs/plots/a.png",
        "outputs/plots/b.png",
    ]


def test_ftp_inputs_and_outputs_with_the_jobs_credentials(tmp_path: Path) -> None:
    from tests.support.files import ftp_server

    root = tmp_path / "ftp"
    (root / "in").mkdir(parents=True)
    (root / "in" / "data.txt").write_text("from ftp\n")
    (root / "out").mkdir()
    (root / "out" / "kept.txt").write_text("old\n")
    with ftp_server(root) as url:
        host = url.removeprefix("ftp://")
        document = job(
            staging("data.txt", source=f"{url}/in/data.txt", user=("grid", "secret")),
            staging("anon.txt", source=f"ftp://anonymous:x@{host}/in/data.txt"),
        )
        inputs = fetch_inputs(document, tmp_path / "inputs", file_roots=())
        assert inputs["data.txt"].read_text() == "from ftp\n"
        assert inputs["anon.txt"].read_text() == "from ftp\n"

        outputs = job(
            staging("result.txt", target=f"{url}/out/result.txt", user=("grid", "secret")),
            staging(
                "result.txt",
                target=f"{url}/out/kept.txt",
                flag="dontOverwrite",
                user=("grid", "secret"),
            ),
            staging(
                "result.txt", target=f"{url}/out/log.txt", flag="append", user=("grid", "secret")
            ),
            staging(
                "result.txt", target=f"{url}/out/log.txt", flag="append", user=("grid", "secret")
            ),
            staging("result.txt", target=f"{url}/out/denied.txt"),  # anonymous: read-only
        )
        failures = deliver_outputs(
            outputs, results(tmp_path, {"result.txt": b"42\n"}), file_roots=()
        )
    assert (root / "out" / "result.txt").read_text() == "42\n"
    assert (root / "out" / "kept.txt").read_text() == "old\n"
    assert (root / "out" / "log.txt").read_text() == "42\n42\n"
    assert len(failures) == 2
    assert "exists and CreationFlag is dontOverwrite" in failures[0]
    assert "STOR" in failures[1] and "denied.txt" in failures[1]


def unicore_job(url: str) -> JobDefinition:
    return load_job_definition(
        f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
          xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
          xmlns:u="http://www.unicore.eu/unicore/jsdl-extensions"
          xmlns:ac="http://schemas.ogf.org/hpcp/2007/11/ac">
          <jsdl:JobDescription><jsdl:Application><posix:POSIXApplication>
            <posix:Executable>/bin/sh</posix:Executable></posix:POSIXApplication>
          </jsdl:Application>
          <jsdl:DataStaging><jsdl:FileName>script.sh</jsdl:FileName>
            <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
            <jsdl:Source><jsdl:URI>inline://script</jsdl:URI></jsdl:Source>
            <u:InlineData>#!/bin/sh
echo inline</u:InlineData>
          </jsdl:DataStaging>
          <jsdl:DataStaging><jsdl:FileName>private.txt</jsdl:FileName>
            <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
            <jsdl:Source><jsdl:URI>{url}/private</jsdl:URI></jsdl:Source>
            <ac:Credential><u:BearerToken>tok-123</u:BearerToken></ac:Credential>
          </jsdl:DataStaging>
          </jsdl:JobDescription></jsdl:JobDefinition>""".encode()
    )


def test_unicore_inline_data_and_bearer_tokens(tmp_path: Path) -> None:
    with file_server(credentials=None) as server:
        server.files["/private"] = b"secret data"
        handler = server._server.RequestHandlerClass  # type: ignore[attr-defined]
        original = handler.do_GET
        seen: list[str | None] = []

        def do_get(self):  # type: ignore[no-untyped-def]
            seen.append(self.headers.get("Authorization"))
            return original(self)

        handler.do_GET = do_get
        document = unicore_job(server.url)
        assert "tok-123" not in repr(document), "tokens never reach a log line"
        inputs = fetch_inputs(document, tmp_path, file_roots=())
    assert inputs["script.sh"].read_text() == "#!/bin/sh\necho inline"
    assert inputs["private.txt"].read_bytes() == b"secret data"
    assert seen == ["Bearer tok-123"]
