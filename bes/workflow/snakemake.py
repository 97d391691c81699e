"""The Snakemake executor plugin: ``snakemake --executor bes`` runs every job in a VM.

Snakemake finds the plugin by its module name, ``snakemake_executor_plugin_bes``, which
re-exports what is here. Each job's rule must be a ``shell:`` rule: its formatted command runs
directly in the guest's shell (``tiny`` has busybox ``sh``), because the guest has no network
and no Snakemake of the host's version to run the job the way Snakemake's remote executors do.
``run:``, ``script:``, ``notebook:``, ``wrapper:`` and ``cwl:`` rules get a clear error instead.

Files move through the service's file store: the job's inputs are uploaded (once per content)
and named as Sources in the JSDL; its outputs and logs are kept by the service and downloaded
into the working directory when it has finished, before Snakemake is told. That is what
``CommonSettings(can_transfer_local_files=True)`` promises, so no storage flag is needed.

The endpoint and credentials are the client's (``bes submit``'s): ``--bes-url`` or
``BES_ENDPOINT`` or ``~/.config/bes/client.toml`` (:mod:`bes.client.config`).
"""

import asyncio
import shutil
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from bes.client import ActivityRef, ActivityStatus, State
from bes.client.config import load_config
from bes.client.faults import ClientError
from bes.errors import BesError
from bes.workflow.task import (
    TaskError,
    UploadCache,
    VmTask,
    ended,
    fetch_outputs,
    guest_name,
    stage_in,
    tail,
    to_jsdl,
)

# Snakemake runs shell commands with bash's strict mode; busybox sh has -e and -u, and
# pipefail only in newer builds, hence the probe.
STRICT: Final = "set -eu; (set -o pipefail) 2>/dev/null && set -o pipefail\n"
_NOT_SHELL: Final = (
    ("is_script", "script:"),
    ("is_notebook", "notebook:"),
    ("is_wrapper", "wrapper:"),
    ("is_cwl", "cwl:"),
    ("is_template_engine", "template_engine:"),
)

common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=False,
    pass_default_storage_provider_args=False,
    pass_default_resources_args=False,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    can_transfer_local_files=True,
)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """``--bes-*`` options. Field types are read by Snakemake at run time: keep them real
    classes, with ``type`` in the metadata for optional ones."""

    url: str | None = field(
        default=None,
        metadata={
            "help": "The BES endpoint (default: the client's, as `bes submit` uses it: "
            "BES_ENDPOINT or ~/.config/bes/client.toml).",
            "type": str,
        },
    )
    template: str = field(
        default="tiny",
        metadata={"help": "The VM template jobs run in (`bes images` lists them)."},
    )
    memory_mib: int | None = field(
        default=None,
        metadata={"help": "Guest memory in MiB (default: the template's).", "type": int},
    )
    wall_time_s: int | None = field(
        default=None,
        metadata={"help": "Seconds each job may run, VM boot included.", "type": int},
    )
    poll_s: float = field(
        default=1.0,
        metadata={"help": "Seconds between status checks of the running jobs."},
    )


class Executor(RemoteExecutor):
    """Runs each job as one BES activity."""

    def __post_init__(self) -> None:
        settings = self.workflow.executor_settings
        self.settings: ExecutorSettings = (
            settings if isinstance(settings, ExecutorSettings) else ExecutorSettings()
        )
        self.client = load_config({"endpoint": self.settings.url}).client()
        self.uploads = UploadCache()
        self.root = Path.cwd()
        self.next_seconds_between_status_checks = self.settings.poll_s

    def run_job(self, job: JobExecutorInterface) -> None:
        """Upload the job's inputs, submit its command, and report the submission (or the
        reason it cannot run, as the job's error)."""
        info = SubmittedJobInfo(job)
        try:
            task = vm_task(job, self.root, self.settings)
            document = to_jsdl(task, stage_in(self.client, task, self.uploads))
            ref = self.client.submit(document)
        except (BesError, OSError) as exc:
            self.report_job_error(info, msg=f"{exc}\n")
            return
        self._say(f"job {job.jobid} is BES activity {ref.name} at {self.client.url}")
        self.report_job_submission(
            SubmittedJobInfo(job, external_jobid=ref.name, aux={"ref": ref, "task": task})
        )

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """One status call for all running jobs; ended ones get their outputs fetched (in
        parallel) and are reported."""
        if not active_jobs:
            return
        refs = [job_info.aux["ref"] for job_info in active_jobs]
        async with self.status_rate_limiter:
            try:
                statuses = await asyncio.to_thread(self.client.status, refs)
            except ClientError as exc:
                self._say(f"cannot ask {self.client.url} for job statuses, will retry: {exc}")
                for job_info in active_jobs:
                    yield job_info
                return
        done = [(j, s) for j, s in zip(active_jobs, statuses, strict=True) if s.terminal]
        for job_info, status in zip(active_jobs, statuses, strict=True):
            if not status.terminal:
                yield job_info
        problems = await asyncio.gather(
            *(asyncio.to_thread(self._collect, job_info, status) for job_info, status in done)
        )
        for (job_info, _), problem in zip(done, problems, strict=True):
            if problem is None:
                self.report_job_success(job_info)
            else:
                self.report_job_error(job_info, msg=problem)

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        """Terminate the activities of the running jobs (Ctrl-C, or Snakemake gives up)."""
        refs: list[ActivityRef] = [j.aux["ref"] for j in active_jobs if j.aux]
        if not refs:
            return
        try:
            self.client.cancel(refs)
        except ClientError as exc:
            self._say(f"could not cancel {len(refs)} BES activities: {exc}")

    def _say(self, message: str) -> None:
        # Snakemake's logger interface takes one finished string (no %-arguments).
        self.logger.info(message)

    def _collect(self, job_info: SubmittedJobInfo, status: ActivityStatus) -> str | None:
        """Fetch an ended job's files into place; None if it succeeded, else why not."""
        ref: ActivityRef = job_info.aux["ref"]
        task: VmTask = job_info.aux["task"]
        scratch = self.root / ".snakemake" / "bes" / (ref.activity_id or str(job_info.job.jobid))
        try:
            fetched = fetch_outputs(self.client, ref, task, scratch)
        except (ClientError, OSError) as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            return f"BES activity {ref.name} {ended(status)}; its files: {exc}\n"
        try:
            errors_tail = tail(fetched.stderr)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        succeeded = status.state is State.FINISHED and status.exit_code in (None, 0)
        if succeeded and not fetched.missing:
            return None
        lines = [f"BES activity {ref.name} {ended(status)}"]
        if succeeded:
            lines.append(f"it did not write {', '.join(fetched.missing)}")
        if errors_tail:
            lines.append(f"its standard error ends with:\n{errors_tail}")
        return "\n".join(lines) + "\n"


def shell_command(job: JobExecutorInterface) -> str:
    """The job's formatted shell command.

    Raises:
        TaskError: The job is not a single ``shell:`` rule.
    """
    if job.is_group():
        raise TaskError(
            f"group job {job.name}: the bes executor runs each job in its own VM; "
            "remove the group: directive"
        )
    rule = job.rule.name
    for attribute, directive in _NOT_SHELL:
        if getattr(job, attribute, False):
            raise TaskError(_not_shell(rule, directive))
    command = getattr(job, "shellcmd", None)
    if not getattr(job, "is_shell", False) or not command:
        raise TaskError(_not_shell(rule, "run:"))
    return str(command)


def vm_task(job: JobExecutorInterface, root: Path, settings: ExecutorSettings) -> VmTask:
    """The VM task of a Snakemake job: its shell command, inputs, outputs and logs.

    Raises:
        TaskError: Not a shell rule, or a file outside the working directory, or a folder.
    """
    command = shell_command(job)
    outputs = [*job.output, *job.log]
    for path in outputs:
        if "directory" in getattr(path, "flags", {}):
            raise TaskError(
                f"rule {job.rule.name}: directory() output {path} cannot be fetched; "
                "name the files it holds instead"
            )
    resources: Mapping[str, Any] = job.resources
    return VmTask(
        name=f"snakemake-{job.rule.name}-{job.jobid}",
        command=STRICT + command,
        inputs={_name(f, root, job, "input"): root / str(f) for f in _unique(job.input)},
        outputs={_name(f, root, job, "output"): root / str(f) for f in _unique(outputs)},
        template=str(resources.get("bes_template") or settings.template),
        memory_mib=_int(resources.get("bes_memory_mib")) or settings.memory_mib,
        vcpus=job.threads if job.threads > 1 else None,
        wall_time_s=_int(resources.get("bes_wall_time_s")) or settings.wall_time_s,
    )


def _name(path: object, root: Path, job: JobExecutorInterface, kind: str) -> str:
    name = guest_name(str(path), root)
    if name is None:
        raise TaskError(
            f"rule {job.rule.name}: {kind} {path} is outside the working directory {root}; "
            "the bes executor moves files by their path relative to it"
        )
    return name


def _unique(paths: Iterable[object]) -> list[str]:
    return list(dict.fromkeys(str(p) for p in paths))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _not_shell(rule: str, directive: str) -> str:
    return (
        f"rule {rule} uses `{directive}`, but the bes executor runs only `shell:` rules, whose "
        "command runs in the VM's shell (the VM has no Snakemake to run the Snakefile's Python). "
        'Write it as a shell: rule (e.g. `shell: "python3 myscript.py {input} > {output}"` '
        "with a template that has Python), or mark the rule local with `localrules:`"
    )
