"""JSDL documents become the typed model; bad ones become precise errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bes.errors import InvalidRequest, JsdlError, UnsupportedFeature
from bes.jsdl import load_job_definition
from bes.jsdl.model import (
    Argument,
    CPUArchitectureName,
    CreationFlag,
    EnvironmentVariable,
    FileName,
    FileSystemType,
)
from bes.jsdl.parse import file_name_problem
from tests.support.standards import corpus_dir

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jsdl"
J = 'xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"'
P = 'xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"'


def doc(description: str, extra_ns: str = "") -> bytes:
    return (
        f"<jsdl:JobDefinition {J} {P} {extra_ns}><jsdl:JobDescription>{description}"
        "</jsdl:JobDescription></jsdl:JobDefinition>"
    ).encode()


def load(name: str):
    return load_job_definition((FIXTURES / name).read_bytes())


def test_posix_application_every_element() -> None:
    job = load("valid/posix-full.jsdl")
    assert job.id == "posix-full"
    ident = job.job_description.job_identification
    assert ident is not None
    assert ident.job_name == "posix full"
    assert ident.job_annotation == ("first", "second")
    assert ident.job_project == ("bes",)
    app = job.job_description.application
    assert app is not None and app.posix is not None
    assert app.application_name == "analysis" and app.application_version == "2.1"
    posix = app.posix
    assert posix.name == "main"
    assert posix.executable == FileName(path="/usr/bin/analysis")
    assert posix.argument == (
        Argument(value="--input"),
        Argument(value="data/in.dat", filesystem_name="scratch"),
        Argument(value="two words"),  # xsd:normalizedString: the tab becomes a space
    )
    assert posix.input == FileName(path="stdin.txt")
    assert posix.working_directory == FileName(path="run", filesystem_name="scratch")
    assert posix.environment == (
        EnvironmentVariable(name="MODE", value="fast"),
        EnvironmentVariable(name="EMPTY", value=""),
    )
    limits = posix.limits
    assert limits.wall_time_limit_s == 3600
    assert limits.memory_limit_bytes == 2 * 1024**3
    assert limits.core_dump_limit_bytes == 0
    assert limits.thread_count_limit == 16
    assert limits.virtual_memory_limit_bytes == 4 * 1024**3
    assert (posix.user_name, posix.group_name) == ("alice", "physics")
    assert app.executable_part is posix


def test_data_staging_and_file_systems() -> None:
    job = load("valid/posix-full.jsdl")
    resources = job.job_description.resources
    assert resources is not None
    (scratch,) = resources.file_system
    assert scratch.name == "scratch" and scratch.file_system_type is FileSystemType.TEMPORARY
    assert scratch.mount_point == "/scratch"
    assert scratch.disk_space_bytes is not None and scratch.disk_space_bytes.contains(2e9)
    stage_in, stage_out = job.job_description.data_staging
    assert stage_in.name == "input"
    assert stage_in.file_name == "data/in.dat" and stage_in.filesystem_name == "scratch"
    assert stage_in.creation_flag is CreationFlag.DONT_OVERWRITE
    assert stage_in.delete_on_termination is True
    assert stage_in.source == "http://data.example.org/in.dat" and stage_in.target is None
    assert stage_out.delete_on_termination is False
    assert stage_out.target == "ftp://results.example.org/out.txt" and stage_out.source is None


def test_every_resources_element() -> None:
    r = load("valid/resources-all.jsdl").job_description.resources
    assert r is not None
    assert r.candidate_hosts == ("node1.example.org", "node2")
    assert [fs.name for fs in r.file_system] == ["home", "swap"]
    assert r.exclusive_execution is True
    assert r.operating_system is not None
    assert r.operating_system.operating_system_name == "LINUX"
    assert r.operating_system.operating_system_version == "6.1"
    assert r.cpu_architecture is CPUArchitectureName.X86_64
    assert r.individual_cpu_speed_hz is not None and r.individual_cpu_speed_hz.contains(2e9)
    assert r.individual_cpu_time_s is not None and not r.individual_cpu_time_s.contains(3600)
    assert r.individual_cpu_count is not None and r.individual_cpu_count.contains(4.5)
    bandwidth = r.individual_network_bandwidth_bps
    assert bandwidth is not None and bandwidth.contains(1e6) and not bandwidth.contains(1e9)
    for name in (
        "individual_physical_memory_bytes",
        "individual_virtual_memory_bytes",
        "individual_disk_space_bytes",
        "total_cpu_time_s",
        "total_cpu_count",
        "total_physical_memory_bytes",
        "total_virtual_memory_bytes",
        "total_disk_space_bytes",
        "total_resource_count",
    ):
        assert getattr(r, name) is not None, name


def test_hpc_profile_application_and_credentials() -> None:
    job = load("valid/hpcpa-staging-credential.jsdl")
    app = job.job_description.application
    assert app is not None and app.hpc_profile is not None and app.posix is None
    hpc = app.hpc_profile
    assert hpc.executable == "/usr/bin/sort" and hpc.argument == ("-r",)
    assert (hpc.input, hpc.output, hpc.error) == ("numbers.txt", "sorted.txt", "errors.txt")
    assert hpc.working_directory == "/tmp/work" and hpc.user_name == "bob"
    assert hpc.environment == (EnvironmentVariable(name="LC_ALL", value="C"),)
    first, second = job.job_description.data_staging
    assert first.credential is not None and first.credential.username_token is not None
    assert first.credential.username_token.username == "ftpuser"
    assert first.credential.username_token.password == "secret-word"
    assert "secret-word" not in repr(job), "passwords must never reach a log line through repr"
    assert second.creation_flag is CreationFlag.APPEND and second.credential is None


def test_spmd_application() -> None:
    spmd = load("valid/spmd-mpi.jsdl").job_description.application.spmd  # type: ignore[union-attr]
    assert spmd is not None
    assert spmd.executable == FileName(path="/opt/bin/solver")
    assert [a.value for a in spmd.argument] == ["-n", "100"]
    assert spmd.number_of_processes is None and spmd.actual_total_cpu_count is True
    assert spmd.processes_per_host == 4
    assert spmd.threads_per_process == 2 and spmd.actual_individual_cpu_count is False
    assert spmd.spmd_variation == "http://www.ogf.org/jsdl/2007/02/jsdl-spmd/OpenMPI"


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "invalid").glob("*.jsdl")))
def test_schema_invalid_documents_name_the_offending_element(name: str) -> None:
    with pytest.raises(JsdlError) as info:
        load(f"invalid/{name}")
    assert info.value.invalid_elements
    assert info.value.line is not None
    assert "line" in info.value.message


def test_invalid_element_paths_are_readable() -> None:
    with pytest.raises(JsdlError) as info:
        load("invalid/creationflag-unknown.jsdl")
    assert info.value.invalid_elements == (
        "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging/jsdl:CreationFlag",
    )
    assert "'replace' is not an element of the set" in info.value.message


def test_wrong_root_namespace() -> None:
    with pytest.raises(JsdlError, match="urn:wrongnamespace"):
        load_job_definition(
            (corpus_dir() / "jsdl/gridsam-invalid-wrong-namespace-NEG.jsdl").read_bytes()
        )


def test_unknown_extensions_are_listed_not_ignored() -> None:
    data = doc(
        "<jsdl:Application><x:Magic/><posix:POSIXApplication/></jsdl:Application>"
        "<jsdl:Resources><y:GPU>1</y:GPU></jsdl:Resources>",
        'xmlns:x="urn:example:x" xmlns:y="urn:example:y"',
    )
    with pytest.raises(UnsupportedFeature) as info:
        load_job_definition(data)
    assert info.value.features == (
        "{urn:example:x}Magic in /jsdl:JobDefinition/jsdl:JobDescription/jsdl:Application",
        "{urn:example:y}GPU in /jsdl:JobDefinition/jsdl:JobDescription/jsdl:Resources",
    )


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (
            "<jsdl:Resources><jsdl:TotalCPUCount><jsdl:Range><jsdl:LowerBound>8</jsdl:LowerBound>"
            "<jsdl:UpperBound>2</jsdl:UpperBound></jsdl:Range></jsdl:TotalCPUCount></jsdl:Resources>",
            "empty range from 8.0 to 2.0",
        ),
        (
            "<jsdl:Resources><jsdl:TotalCPUCount><jsdl:Exact epsilon='-1'>2</jsdl:Exact>"
            "</jsdl:TotalCPUCount></jsdl:Resources>",
            "epsilon -1.0 is negative",
        ),
        ("<jsdl:Resources><jsdl:TotalCPUCount/></jsdl:Resources>", "holds no value"),
        (
            "<jsdl:Resources><jsdl:TotalCPUTime><jsdl:Exact>NaN</jsdl:Exact></jsdl:TotalCPUTime>"
            "</jsdl:Resources>",
            "not a usable number",
        ),
        (
            "<jsdl:DataStaging><jsdl:FileName>a</jsdl:FileName><jsdl:FilesystemName>nowhere"
            "</jsdl:FilesystemName><jsdl:CreationFlag>overwrite</jsdl:CreationFlag></jsdl:DataStaging>",
            "file system 'nowhere' is not declared",
        ),
        (
            "<jsdl:Resources><jsdl:FileSystem name='a'/><jsdl:FileSystem name='a'/>"
            "</jsdl:Resources>",
            "declared more than once",
        ),
        (
            "<jsdl:Application><posix:POSIXApplication/><h:HPCProfileApplication "
            "xmlns:h='http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa'/></jsdl:Application>",
            "more than one of POSIXApplication",
        ),
    ],
    ids=[
        "inverted-range",
        "negative-epsilon",
        "empty-range-value",
        "nan",
        "undeclared-filesystem",
        "duplicate-filesystem",
        "two-executables",
    ],
)
def test_semantic_errors(description: str, expected: str) -> None:
    with pytest.raises(JsdlError, match=expected) as info:
        load_job_definition(doc(description))
    assert info.value.invalid_elements


def test_empty_job_description_is_a_valid_job() -> None:
    job = load_job_definition(doc(""))
    assert job.job_description.application is None and job.job_name is None


def staging(file_name: str, uri: str = "http://example.org/in") -> bytes:
    return doc(
        f"<jsdl:DataStaging><jsdl:FileName>{file_name}</jsdl:FileName>"
        "<jsdl:CreationFlag>overwrite</jsdl:CreationFlag>"
        f"<jsdl:Source><jsdl:URI>{uri}</jsdl:URI></jsdl:Source></jsdl:DataStaging>"
    )


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("../outside", "climbs out"),
        ("a/../../outside", "climbs out"),
        ("a/..", "climbs out"),
        ("..\\outside", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("\\\\server\\share\\x", "absolute path"),
        ("C:\\Windows\\x", "absolute path"),
        ("", "empty"),
        ("   ", "empty"),
        ("a&#9;b", "control character U+0009"),
        ("a&#x7f;b", "control character U+007F"),
        ("a&#x85;b", "control character U+0085"),
    ],
)
def test_unsafe_file_names_are_refused_naming_the_element(file_name: str, expected: str) -> None:
    with pytest.raises(JsdlError, match=re.escape(expected)) as info:
        load_job_definition(staging(file_name))
    assert info.value.invalid_elements == (
        "/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging/jsdl:FileName",
    )


def test_a_nul_in_a_file_name_is_refused() -> None:
    # XML 1.0 cannot carry a NUL (not even as &#0;), so the parser refuses the document...
    with pytest.raises(InvalidRequest):
        load_job_definition(staging("a&#0;b"))
    # ...and a name that reached the model some other way is refused by the same rule.
    assert "U+0000" in (file_name_problem("a\0b") or "")


@pytest.mark.parametrize(
    "file_name", ["out.txt", "dir2/subdir1/file2.txt", "swissprot/", "a..b", "..hidden", "./x"]
)
def test_ordinary_file_names_are_taken(file_name: str) -> None:
    job = load_job_definition(staging(file_name))
    assert job.job_description.data_staging[0].file_name == file_name
