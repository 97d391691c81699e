"""Jobs in real VMs: the tiny guest booted by QEMU (KVM where it works, TCG otherwise)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from bes.errors import HypervisorError
from bes.ids import new_activity_id
from bes.jsdl.parse import load_job_definition
from bes.vm.drivers.qemu import QemuDriver
from bes.vm.images import ImageError
from bes.vm.job import VmOutcome, run_vm_job
from bes.vm.repository import ImageRepository
from bes.vmjob import VmDefaults, plan

pytestmark = [pytest.mark.vm, pytest.mark.slow]

HOSTILE = 'it\'s "quoted" $HOME `id` ; exit 9 \\ *'


def jsdl(application: str, *, vm: str = "", staging: str = "") -> bytes:
    return f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
        xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
        xmlns:vm="urn:bes-grid:vm:1.0">
      <jsdl:JobDescription>
        <jsdl:Application>
          <posix:POSIXApplication>{application}</posix:POSIXApplication>
          <vm:VirtualMachine>
            <vm:Image><vm:Template>tiny</vm:Template></vm:Image>
            {vm}
          </vm:VirtualMachine>
        </jsdl:Application>
        {staging}
      </jsdl:JobDescription>
    </jsdl:JobDefinition>""".encode()


def run(
    document: bytes,
    driver: QemuDriver,
    repository: ImageRepository,
    results: Path,
    inputs: dict[str, Path] | None = None,
) -> VmOutcome:
    job = load_job_definition(document)
    vm_job = plan(job, new_activity_id(), repository=repository, inputs=inputs or {})
    return run_vm_job(vm_job, driver, results)


def test_arguments_environment_and_input_file_reach_the_job(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 512)
    script = (
        'printf "%s|" "$@"; echo; echo "GREETING=$GREETING"; '
        "sha256sum data.bin | cut -d' ' -f1 > digest.txt; echo to stderr >&2"
    )
    document = jsdl(
        f"""<posix:Executable>/bin/sh</posix:Executable>
        <posix:Argument>-c</posix:Argument>
        <posix:Argument>{escape(script)}</posix:Argument>
        <posix:Argument>sh</posix:Argument>
        <posix:Argument>two words</posix:Argument>
        <posix:Argument>{escape(HOSTILE)}</posix:Argument>
        <posix:Environment name="GREETING">hello from the host</posix:Environment>""",
        staging="""
        <jsdl:DataStaging><jsdl:FileName>data.bin</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Source><jsdl:URI>file:///data.bin</jsdl:URI></jsdl:Source></jsdl:DataStaging>
        <jsdl:DataStaging><jsdl:FileName>digest.txt</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Target><jsdl:URI>file:///digest.txt</jsdl:URI></jsdl:Target></jsdl:DataStaging>
        """,
    )
    outcome = run(document, driver, repository, tmp_path / "results", {"data.bin": data})

    assert outcome.completed, outcome.reason + "\n" + outcome.console_tail
    assert outcome.exit_code == 0
    assert outcome.results is not None
    stdout = outcome.results.stdout.read_text()
    assert stdout.splitlines()[0] == f"two words|{HOSTILE}|"
    assert "GREETING=hello from the host" in stdout
    assert outcome.results.stderr.read_text() == "to stderr\n"
    digest = outcome.results.outputs["digest.txt"].read_text().strip()
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    assert outcome.results.guest_seconds is not None


def test_a_failing_job_returns_its_exit_code_and_output(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    document = jsdl(
        """<posix:Executable>/bin/sh</posix:Executable>
        <posix:Argument>-c</posix:Argument>
        <posix:Argument>echo partial; echo broken &gt;&amp;2; exit 42</posix:Argument>
        <posix:Output>out.log</posix:Output>""",
        staging="""<jsdl:DataStaging><jsdl:FileName>missing.dat</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Target><jsdl:URI>file:///missing.dat</jsdl:URI></jsdl:Target></jsdl:DataStaging>
          <jsdl:DataStaging><jsdl:FileName>out.log</jsdl:FileName>
          <jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
          <jsdl:Target><jsdl:URI>file:///out.log</jsdl:URI></jsdl:Target></jsdl:DataStaging>""",
    )
    outcome = run(document, driver, repository, tmp_path / "results")

    assert outcome.completed
    assert outcome.exit_code == 42
    assert outcome.results is not None
    assert outcome.results.stdout.read_text() == "partial\n"
    assert outcome.results.stderr.read_text() == "broken\n"
    assert outcome.results.outputs["out.log"].read_text() == "partial\n"  # POSIX Output file
    assert outcome.results.missing == ("missing.dat",)


def test_a_hanging_job_is_killed_at_its_wall_time_limit(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    document = jsdl(
        """<posix:Executable>/bin/sleep</posix:Executable>
        <posix:Argument>600</posix:Argument>""",
        vm="<vm:WallTimeLimit>8</vm:WallTimeLimit>",
    )
    started = time.monotonic()
    outcome = run(document, driver, repository, tmp_path / "results")
    elapsed = time.monotonic() - started

    assert not outcome.completed
    assert outcome.exit_code is None
    assert outcome.reason == "wall-time limit of 8 s exceeded"
    assert 8 <= outcome.vm_seconds < 20
    assert elapsed < 30


def test_a_missing_command_is_exit_code_127(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    outcome = run(
        jsdl("<posix:Executable>/no/such/program</posix:Executable>"),
        driver,
        repository,
        tmp_path / "results",
    )
    assert outcome.completed
    assert outcome.exit_code == 127
    assert outcome.results is not None
    assert "/no/such/program" in outcome.results.stderr.read_text()


def test_scratch_disk_becomes_the_working_directory(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    document = jsdl(
        """<posix:Executable>/bin/sh</posix:Executable>
        <posix:Argument>-c</posix:Argument>
        <posix:Argument>grep " $PWD " /proc/mounts | cut -d' ' -f1,3; df -k . | tail -1
        </posix:Argument>""",
        vm="<vm:ScratchDiskMiB>64</vm:ScratchDiskMiB>",
    )
    outcome = run(document, driver, repository, tmp_path / "results")
    assert outcome.completed, outcome.console_tail
    assert outcome.results is not None
    mount, usage = outcome.results.stdout.read_text().splitlines()
    assert mount.split()[1] in ("ext2", "ext4")
    assert 50_000 < int(usage.split()[1]) <= 65_536  # KiB of the 64 MiB disk


def test_a_user_image_with_the_wrong_checksum_never_boots(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    document = f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
        xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
        xmlns:vm="urn:bes-grid:vm:1.0"><jsdl:JobDescription><jsdl:Application>
        <posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable>
        </posix:POSIXApplication>
        <vm:VirtualMachine><vm:Image><vm:URI>{image.as_uri()}</vm:URI>
          <vm:SHA256>{"ab" * 32}</vm:SHA256><vm:Format>raw</vm:Format></vm:Image>
        </vm:VirtualMachine>
        </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>""".encode()
    with pytest.raises(ImageError, match=r"has sha256 \w+, not abab"):
        run(document, driver, repository, tmp_path / "results")
    assert not repository.cache.has("ab" * 32)


def test_an_image_that_does_not_boot_fails_at_the_boot_timeout_not_the_wall_time(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(b"\0" * (1024 * 1024))  # no boot sector: the firmware waits forever
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    document = f"""<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
        xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
        xmlns:vm="urn:bes-grid:vm:1.0"><jsdl:JobDescription><jsdl:Application>
        <posix:POSIXApplication><posix:Executable>/bin/true</posix:Executable>
        </posix:POSIXApplication>
        <vm:VirtualMachine><vm:Image><vm:URI>{image.as_uri()}</vm:URI>
          <vm:SHA256>{digest}</vm:SHA256><vm:Format>raw</vm:Format></vm:Image>
          <vm:WallTimeLimit>3600</vm:WallTimeLimit>
        </vm:VirtualMachine>
        </jsdl:Application></jsdl:JobDescription></jsdl:JobDefinition>""".encode()
    job = load_job_definition(document)
    defaults = VmDefaults(boot_timeout_s=6.0)
    vm_job = plan(job, new_activity_id(), repository=repository, inputs={}, defaults=defaults)
    started = time.monotonic()
    outcome = run_vm_job(vm_job, driver, tmp_path / "results")

    assert not outcome.completed
    assert outcome.reason.startswith("the VM did not start the job within 6 s")
    assert "does not boot, or has no cloud-init" in outcome.reason
    assert time.monotonic() - started < 30


def test_a_job_that_booted_is_not_stopped_by_the_boot_timeout(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    document = jsdl(
        """<posix:Executable>/bin/sh</posix:Executable>
        <posix:Argument>-c</posix:Argument><posix:Argument>sleep 18; echo late</posix:Argument>"""
    )
    job = load_job_definition(document)
    # tiny boots in about 3 s here: the job starts in time, then runs past the boot timeout.
    defaults = VmDefaults(boot_timeout_s=15.0)
    vm_job = plan(job, new_activity_id(), repository=repository, inputs={}, defaults=defaults)
    outcome = run_vm_job(vm_job, driver, tmp_path / "results")

    assert outcome.completed, outcome.reason
    assert outcome.results is not None
    assert outcome.results.stdout.read_text() == "late\n"


def test_a_vm_left_by_a_dead_process_is_found_and_removed(
    driver: QemuDriver, repository: ImageRepository, tmp_path: Path
) -> None:
    """A crashed worker leaves a running QEMU and its directory; the next one cleans up."""
    import subprocess
    import sys
    import textwrap

    sleeper = jsdl(
        "<posix:Executable>/bin/sleep</posix:Executable><posix:Argument>600</posix:Argument>"
    )
    code = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from bes.jsdl.parse import load_job_definition
        from bes.vm.drivers.qemu import QemuDriver
        from bes.vm.job import _prepare
        from bes.vm.images import ImageCache
        from bes.vm.repository import ImageRepository
        from bes.vmjob import VmDefaults, plan
        from bes.vm.spec import vm_name
        repo = ImageRepository(ImageCache(Path({str(repository.cache.root)!r})))
        job = load_job_definition({sleeper!r})
        vm_job = plan(job, "crashtest0000000000000000", repository=repo, inputs={{}})
        driver = QemuDriver(Path({str(driver.root)!r}), accelerator="tcg")
        name = vm_name(vm_job.job_id)
        workdir = driver.workdir_for(name)
        workdir.mkdir()
        vm = driver.create(_prepare(vm_job, name, workdir), workdir)
        driver.start(vm)
        print("started", flush=True)
        os._exit(0)  # a crash: no cleanup
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert child.stdout.strip() == "started", child.stderr
    assert len(qemu_processes_of(driver)) == 1

    stale = driver.find_stale()
    assert [vm.name for vm in stale] == ["bes-crashtest0000000000000000"]
    for vm in stale:
        driver.destroy(vm)
    assert qemu_processes_of(driver) == []
    assert driver.find_stale() == []


def test_a_vm_in_use_is_not_stale(driver: QemuDriver, tmp_path: Path) -> None:
    vm = driver._claim("bes-inuse", driver.workdir_for("bes-inuse"))
    try:
        assert driver.find_stale() == []
        with pytest.raises(HypervisorError, match="in use"):
            driver._claim("bes-inuse", driver.workdir_for("bes-inuse"))
    finally:
        driver.destroy(vm)


def qemu_processes_of(driver: QemuDriver) -> list[str]:
    from tests.support.vm import qemu_processes

    return qemu_processes(str(driver.root))
