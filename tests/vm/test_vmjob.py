"""From JSDL to a VM job: what runs in the guest, and in which VM."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from bes.errors import UnsupportedFeature
from bes.jsdl import load_job_definition
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.guest import GuestLimits, GuestTask
from bes.vm.images import ImageCache
from bes.vm.job import BootImage, VmJob, run_vm_job
from bes.vm.repository import ImageRepository
from bes.vm.spec import ImageRef, KernelBoot
from bes.vmjob import VmDefaults, guest_task, plan, virtual_machine

NS = (
    'xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl" '
    'xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix" '
    'xmlns:hpcpa="http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa" '
    'xmlns:spmd="http://schemas.ogf.org/jsdl/2007/02/jsdl-spmd" '
    'xmlns:vm="urn:bes-grid:vm:1.0"'
)


def doc(body: str) -> bytes:
    return (
        f"<jsdl:JobDefinition {NS}><jsdl:JobDescription>{body}"
        "</jsdl:JobDescription></jsdl:JobDefinition>"
    ).encode()


def test_posix_application_becomes_the_guest_task() -> None:
    job = load_job_definition(
        doc(
            """<jsdl:Application><posix:POSIXApplication>
              <posix:Executable>/usr/bin/python3</posix:Executable>
              <posix:Argument>fit.py</posix:Argument>
              <posix:Input>params.in</posix:Input><posix:Output>fit.log</posix:Output>
              <posix:Error>fit.err</posix:Error>
              <posix:WorkingDirectory>/scratch/run</posix:WorkingDirectory>
              <posix:Environment name="OMP_NUM_THREADS">1</posix:Environment>
              <posix:WallTimeLimit>60</posix:WallTimeLimit>
              <posix:CoreDumpLimit>0</posix:CoreDumpLimit>
              <posix:OpenDescriptorsLimit>256</posix:OpenDescriptorsLimit>
              <posix:StackSizeLimit>8388608</posix:StackSizeLimit>
              <posix:CPUTimeLimit>30</posix:CPUTimeLimit>
              <posix:VirtualMemoryLimit>1073741824</posix:VirtualMemoryLimit>
            </posix:POSIXApplication></jsdl:Application>
            <jsdl:DataStaging><jsdl:FileName>fit.png</jsdl:FileName>
              <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
              <jsdl:Target><jsdl:URI>http://store.example.org/fit.png</jsdl:URI></jsdl:Target>
            </jsdl:DataStaging>"""
        )
    )
    assert guest_task(job) == GuestTask(
        executable="/usr/bin/python3",
        arguments=("fit.py",),
        environment=(("OMP_NUM_THREADS", "1"),),
        working_directory="/scratch/run",
        stdin="params.in",
        stdout="fit.log",
        stderr="fit.err",
        outputs=("fit.png",),
        limits=GuestLimits(
            cpu_time_s=30,
            open_files=256,
            virtual_memory_kib=1024 * 1024,
            stack_kib=8192,
            core_file_kib=1,
        ),
    )


def test_hpc_profile_application_becomes_the_guest_task() -> None:
    job = load_job_definition(
        doc(
            """<jsdl:Application><hpcpa:HPCProfileApplication>
              <hpcpa:Executable>/bin/hostname</hpcpa:Executable>
              <hpcpa:Argument>-f</hpcpa:Argument>
              <hpcpa:Output>host.txt</hpcpa:Output>
            </hpcpa:HPCProfileApplication></jsdl:Application>"""
        )
    )
    task = guest_task(job)
    assert (task.executable, task.arguments, task.stdout) == ("/bin/hostname", ("-f",), "host.txt")


@pytest.mark.parametrize(
    ("application", "feature"),
    [
        (
            '<spmd:SPMDApplication xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">'
            "<posix:Executable>/bin/mpi</posix:Executable>"
            "<spmd:SPMDVariation>http://www.ogf.org/jsdl/2007/02/jsdl-spmd/MPI</spmd:SPMDVariation>"
            "</spmd:SPMDApplication>",
            "SPMDApplication",
        ),
        ("<jsdl:ApplicationName>gromacs</jsdl:ApplicationName>", "without a POSIXApplication"),
        (
            "<posix:POSIXApplication><posix:Argument>x</posix:Argument></posix:POSIXApplication>",
            "without an Executable",
        ),
        (
            "<posix:POSIXApplication><posix:Executable>/bin/id</posix:Executable>"
            "<posix:UserName>alice</posix:UserName></posix:POSIXApplication>",
            "UserName",
        ),
    ],
)
def test_what_cannot_run_in_a_vm_is_an_unsupported_feature(application: str, feature: str) -> None:
    job = load_job_definition(doc(f"<jsdl:Application>{application}</jsdl:Application>"))
    with pytest.raises(UnsupportedFeature, match=feature):
        guest_task(job)


def test_plain_jsdl_gets_the_default_vm_sized_from_its_resources() -> None:
    job = load_job_definition(
        doc(
            """<jsdl:Application><posix:POSIXApplication>
              <posix:Executable>/bin/true</posix:Executable></posix:POSIXApplication>
            </jsdl:Application>
            <jsdl:Resources>
              <jsdl:IndividualCPUCount><jsdl:Exact>2</jsdl:Exact></jsdl:IndividualCPUCount>
              <jsdl:IndividualPhysicalMemory><jsdl:LowerBoundedRange>1000000000
              </jsdl:LowerBoundedRange></jsdl:IndividualPhysicalMemory>
            </jsdl:Resources>"""
        )
    )
    machine = virtual_machine(job, VmDefaults(template="site-default"))
    assert machine.image == ImageRef(template="site-default")
    assert machine.vcpus == 2
    assert machine.memory_mib == 954  # 10^9 bytes, rounded up to MiB


def test_plan_takes_the_smaller_wall_time_and_the_template_minimum_memory(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    job = load_job_definition(
        doc(
            f"""<jsdl:Application><posix:POSIXApplication>
              <posix:Executable>/bin/true</posix:Executable>
              <posix:WallTimeLimit>30</posix:WallTimeLimit></posix:POSIXApplication>
              <vm:VirtualMachine><vm:Image><vm:URI>{image.as_uri()}</vm:URI>
                <vm:SHA256>{sha}</vm:SHA256><vm:Format>raw</vm:Format></vm:Image>
                <vm:OSType>Debian_64</vm:OSType>
                <vm:WallTimeLimit>600</vm:WallTimeLimit></vm:VirtualMachine>
            </jsdl:Application>"""
        )
    )
    repository = ImageRepository(ImageCache(tmp_path / "cache"))
    vm_job = plan(job, "A" * 24, repository=repository, inputs={})
    assert vm_job.wall_time_s == 30
    assert vm_job.os_type == "Debian_64"
    assert vm_job.memory_mib == 256
    assert vm_job.boot.disk is not None
    assert vm_job.boot.disk.path == repository.cache.path(sha)


def test_an_output_outside_the_job_directory_is_refused() -> None:
    """The service refuses such a FileName at submission; the worker checks again, for a job
    that reaches it some other way (an older service, a hand-made job)."""
    parsed = load_job_definition(
        doc(
            """<jsdl:Application><posix:POSIXApplication>
              <posix:Executable>/bin/true</posix:Executable></posix:POSIXApplication>
            </jsdl:Application>
            <jsdl:DataStaging><jsdl:FileName>loot</jsdl:FileName>
              <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
              <jsdl:Target><jsdl:URI>http://x.example.org/loot</jsdl:URI></jsdl:Target>
            </jsdl:DataStaging>"""
        )
    )
    description = parsed.job_description
    staging = replace(description.data_staging[0], file_name="../../etc/shadow")
    job = replace(parsed, job_description=replace(description, data_staging=(staging,)))
    with pytest.raises(UnsupportedFeature, match="outside the job directory"):
        guest_task(job)


def test_extra_user_data_needs_an_image_with_cloud_init(tmp_path: Path) -> None:
    boot = BootImage(kernel=KernelBoot(tmp_path / "k", None, ""), runs_cloud_config=False)
    job = VmJob("C" * 24, boot, GuestTask("/bin/true"), 60, user_data="#cloud-config\n{}\n")
    driver = QemuDriver(tmp_path / "vms", accelerator="tcg")
    with pytest.raises(UnsupportedFeature, match="without cloud-init"):
        run_vm_job(job, driver, tmp_path / "results")
    assert list((tmp_path / "vms").iterdir()) == []
