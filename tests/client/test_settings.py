"""Where the client's settings come from, and the job list it keeps."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from bes.client import ActivityRef, ClientCertificate, UsernameToken, X509Signature, faults
from bes.client.config import DEFAULT_ENDPOINT, config_path, load_config
from bes.client.joblist import JobList
from bes.ids import ActivityId


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return {"BES_CONFIG": str(path)}


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    env = write_config(
        tmp_path,
        'endpoint = "https://file.example.org/bes"\ntimeout_s = 7\n'
        '[auth]\nusername = "from-file"\npassword = "file-secret"\n',
    )
    assert load_config({}, env).endpoint == "https://file.example.org/bes"
    assert load_config({}, env).source == str(tmp_path / "client.toml")
    assert load_config({}, env).timeout_s == 7
    env["BES_ENDPOINT"] = "https://env.example.org/bes"
    env["BES_USERNAME"] = "from-env"
    config = load_config({"endpoint": None}, env)  # an option not given does not count
    assert (config.endpoint, config.source, config.username) == (
        "https://env.example.org/bes",
        "environment",
        "from-env",
    )
    assert config.password == "file-secret"
    assert "file-secret" not in repr(config)
    flagged = load_config({"endpoint": "https://flag.example.org/bes"}, env)
    assert (flagged.endpoint, flagged.source) == ("https://flag.example.org/bes", "flag")


def test_defaults_and_the_xdg_location(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path(env) == tmp_path / "bes" / "client.toml"
    config = load_config({}, env)
    assert (config.endpoint, config.source, config.credentials()) == (
        DEFAULT_ENDPOINT,
        "default",
        [],
    )


def test_credentials_from_settings(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "me.pem").write_text("")
    (tmp_path / "me.key").write_text("")
    env = write_config(
        tmp_path,
        f'[auth]\nusername = "alice"\npassword_file = "{tmp_path}/password"\ndigest = true\n'
        f'certificate = "{tmp_path}/me.pem"\nkey = "{tmp_path}/me.key"\nsign = true\n',
    )
    credentials = load_config({}, env).credentials()
    assert credentials == [
        UsernameToken("alice", "s3cret", digest=True),
        ClientCertificate(tmp_path / "me.pem", tmp_path / "me.key"),
        X509Signature(tmp_path / "me.key", tmp_path / "me.pem"),
    ]
    with pytest.raises(faults.ClientError, match="certificate and its key"):
        load_config({"sign": True}, {"BES_CONFIG": str(tmp_path / "none.toml")}).credentials()
    with pytest.raises(faults.ClientError, match="cannot read the password file"):
        load_config({"password_file": str(tmp_path / "missing")}, env)


def test_an_unreadable_file_is_an_error_not_a_default(tmp_path: Path) -> None:
    with pytest.raises(faults.ClientError, match="unreadable"):
        load_config({}, write_config(tmp_path, "endpoint = [unclosed\n"))


def ref(n: int) -> ActivityRef:
    activity = ActivityId(f"{n:024d}")
    address = f"http://127.0.0.1:8080/bes/activities/{activity}"
    return ActivityRef(address=address, epr=b"<wsa:EndpointReference/>", activity_id=activity)


def _append_many(path: Path, start: int) -> None:
    jobs = JobList(path)
    for n in range(start, start + 50):
        jobs.add(ref(n), endpoint="http://127.0.0.1:8080/bes", name=f"job-{n}")


def test_the_job_list_survives_concurrent_submitters_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "activities.jsonl"
    workers = [
        multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, s))
        for s in (0, 1000)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    jobs = JobList(path)
    assert len(jobs.entries()) == 100
    with path.open("a") as handle:
        handle.write('{"id": "cut short by a cra')  # a crash in the middle of a write
    assert len(jobs.entries()) == 100
    assert jobs.find("000000000000000000001042").name == "job-1042"
    assert jobs.find("00000000000000000000104") is None  # a prefix matching several
    assert jobs.find(ref(7).address).key == ref(7).activity_id
    assert jobs.forget([ref(7).activity_id, ref(8).address]) == 2
    assert len(jobs.entries()) == 98
