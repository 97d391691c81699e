"""JSDL from Python arguments: valid against the official schemas, parsed by the service into
exactly the job that was asked for; and the check every document gets before it is sent."""

from __future__ import annotations

import pytest

from bes.client import faults, jsdl
from bes.jsdl.model import CreationFlag
from bes.jsdl.parse import load_job_definition
from tests.support.standards import assert_valid, corpus_dir, official_schema

SHA = "a" * 64


def official(document: bytes) -> None:
    """The official JSDL schemas judge it (our VM element sits in a lax ##other slot there)."""
    assert_valid(official_schema(), document, "a built JSDL document")


@pytest.mark.parametrize("commented", [False, True], ids=["plain", "commented"])
def test_a_vm_job_with_files(commented: bool) -> None:
    document = jsdl.build(
        ["/usr/bin/python3", "analyse.py", "--events", "1000"],
        name="analysis",
        image="cernvm",
        memory_mib=2048,
        vcpus=2,
        wall_time_s=3600,
        environment={"ATLAS_LOCAL": "1"},
        working_directory="/scratch",
        inputs={"analyse.py": "https://data.example.org/analyse.py"},
        outputs={"histograms.root": "https://store.example.org/out/histograms.root"},
        keep=["summary.txt"],
        commented=commented,
    )
    official(document)
    job = load_job_definition(document)  # the service's own parser and schemas
    posix = job.job_description.application.posix
    assert posix.executable.path == "/usr/bin/python3"
    assert [a.value for a in posix.argument] == ["analyse.py", "--events", "1000"]
    assert [(e.name, e.value) for e in posix.environment] == [("ATLAS_LOCAL", "1")]
    assert posix.working_directory.path == "/scratch"
    assert (posix.output.path, posix.error.path) == ("stdout", "stderr")
    vm = job.job_description.virtual_machine
    assert (vm.image.template, vm.memory_mib, vm.vcpus, vm.wall_time_s) == (
        "cernvm",
        2048,
        2,
        3600,
    )
    staging = {s.file_name: s for s in job.job_description.data_staging}
    assert staging["analyse.py"].source == "https://data.example.org/analyse.py"
    assert staging["histograms.root"].target == "https://store.example.org/out/histograms.root"
    kept = staging["summary.txt"]
    assert kept.source is None and kept.target is None and kept.delete_on_termination is False
    assert {s.creation_flag for s in staging.values()} == {CreationFlag.OVERWRITE}
    assert job.job_name == "analysis"
    if commented:
        assert b"<!--" in document and b"bes images" in document


def test_plain_jsdl_for_any_bes() -> None:
    document = jsdl.build(["/bin/hostname"], vm=False, wall_time_s=60)
    official(document)
    assert b"urn:bes-grid:vm" not in document
    job = load_job_definition(document)
    assert job.job_description.virtual_machine is None
    assert job.job_description.application.posix.limits.wall_time_limit_s == 60


def test_a_users_own_image() -> None:
    document = jsdl.build(
        ["/bin/true"], image=jsdl.ImageURI(uri="https://img.example.org/u.qcow2", sha256=SHA)
    )
    image = load_job_definition(document).job_description.virtual_machine.image
    assert (image.uri, image.sha256, image.format.value) == (
        "https://img.example.org/u.qcow2",
        SHA,
        "qcow2",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"command": []}, "command is empty"),
        (
            {"command": ["/bin/true"], "image": jsdl.ImageURI(uri="https://x/y", sha256="12")},
            "SHA256",
        ),
        (
            {
                "command": ["/bin/true"],
                "image": jsdl.ImageURI(uri="https://x", sha256=SHA, format="ova"),
            },
            "ova",
        ),
        ({"command": ["/bin/true"], "memory_mib": 0}, "MemoryMiB"),
    ],
)
def test_arguments_that_make_invalid_jsdl_fail_here(kwargs: dict, message: str) -> None:
    command = kwargs.pop("command")
    with pytest.raises(faults.InvalidJsdl, match=message):
        jsdl.build(command, **kwargs)


def test_check_forgives_what_the_service_normalizes_and_reports_the_rest() -> None:
    tolerated = (corpus_dir() / "jsdl" / "unicore-ems-ls-with-stagein.jsdl").read_bytes()
    warnings = jsdl.check(tolerated)  # out of order, no CreationFlag: warnings, not errors
    assert any("CreationFlag" in w for w in warnings)

    broken = b"""<?xml version="1.0"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl">
  <jsdl:JobDescription>
    <jsdl:Resources>
      <jsdl:TotalCPUCount><jsdl:Exact>many</jsdl:Exact></jsdl:TotalCPUCount>
    </jsdl:Resources>
  </jsdl:JobDescription>
</jsdl:JobDefinition>"""
    with pytest.raises(faults.InvalidJsdl) as invalid:
        jsdl.check(broken)
    [(line, path, message)] = invalid.value.problems
    assert line == 5
    assert path.endswith("jsdl:TotalCPUCount/jsdl:Exact")
    assert "many" in message

    with pytest.raises(faults.InvalidJsdl, match="line 2"):
        jsdl.check(b"<jsdl:JobDefinition\n <unclosed>")
    with pytest.raises(faults.InvalidJsdl, match="not a jsdl:JobDefinition"):
        jsdl.check(b"<JobDefinition/>")
    with pytest.raises(faults.InvalidJsdl, match="DOCTYPE"):
        jsdl.check(b'<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>')
