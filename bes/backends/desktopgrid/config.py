"""How the desktop grid runs: lease and heartbeat periods, retries, what it keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bes.vmjob import VmDefaults


@dataclass(frozen=True, slots=True, kw_only=True)
class DesktopGridConfig:
    """Settings of the desktop-grid backend.

    Attributes:
        outputs_dir: A directory of their own for the files that jobs produced, kept for
            their owners; None: ``outputs/`` in the storage the backend is given
            (:attr:`~bes.backends.base.BackendContext.storage`).
        catalog_path: The site's template catalog (``templates.json``); None for only the
            built-in ``tiny``.
        lease_s: How long a claim or a heartbeat keeps a job a worker's. A worker that is
            silent for longer loses the job, which goes back to the queue.
        heartbeat_s: How often workers are told to send heartbeats (well under ``lease_s``).
        max_attempts: Claims of one job before it fails (a worker that vanishes, a hypervisor
            that breaks); a job's own failure is never retried.
        claim_wait_s: The longest a claim waits for work before answering "none" (long poll,
            so idle workers neither spin nor wait long when work arrives).
        max_output_bytes: Most bytes of files one attempt of a job may upload.
        vm_defaults: The VM of jobs that name none, and defaults for what a VM leaves out.
    """

    outputs_dir: Path | None = None
    catalog_path: Path | None = None
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    max_attempts: int = 3
    claim_wait_s: float = 20.0
    max_output_bytes: int = 1024**3
    vm_defaults: VmDefaults = field(default_factory=VmDefaults)
