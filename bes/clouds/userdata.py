"""The cloud-init user-data that turns a worker image instance into a worker of one pool.

It writes the instance's own worker token (minted for it alone, revoked when it goes), the
service's URL and CA, and the worker's limits, then starts ``bes-worker.service``, the unit
the worker image holds (bes.vm.workerimage). The token is the only secret in it: the
provider keeps user-data with the instance, so it is readable by whoever administers the
cloud project, as the instance itself is.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from bes.vm.workerimage import CA_FILE, ENV_FILE, SERVICE, TOKEN_FILE


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """What the worker on an instance is told.

    Attributes:
        service_url: Where instances reach the service (for libvirt's user-mode networking,
            ``http://10.0.2.2:PORT``: the host's loopback as the guest sees it).
        ca_pem: The CA (or certificate) that signs the service's TLS certificate, if HTTPS.
        tls_server_name: The name to check the service's certificate against, when the URL's
            host is not in it (10.0.2.2 never is).
        max_memory_mib: Memory the worker offers to jobs.
        max_vcpus: vCPUs one job may have.
        max_vms: Jobs at once.
        allow_network: Whether job VMs may have a network.
    """

    service_url: str
    ca_pem: str | None = None
    tls_server_name: str | None = None
    max_memory_mib: int
    max_vcpus: int
    max_vms: int
    allow_network: bool = False


def worker_arguments(settings: WorkerSettings) -> list[str]:
    """``bes worker`` options for an instance (besides the service, its token file and its CA
    file, which the image's unit passes when ``/etc/bes/ca.pem`` exists)."""
    args = [
        "--max-memory-mib",
        str(settings.max_memory_mib),
        "--max-vcpus",
        str(settings.max_vcpus),
        "--max-vms",
        str(settings.max_vms),
        "--allow-network" if settings.allow_network else "--no-network",
    ]
    if settings.tls_server_name is not None:
        args += ["--tls-server-name", settings.tls_server_name]
    return args


def user_data(settings: WorkerSettings, *, token: str) -> str:
    """The ``#cloud-config`` of an instance whose worker token is ``token`` (the contract of
    the worker image, bes.vm.workerimage)."""
    env = {
        "BES_SERVICE": settings.service_url,
        "BES_WORKER_ARGS": shlex.join(worker_arguments(settings)),
    }
    files = [
        {
            "path": ENV_FILE,
            "permissions": "0644",
            "content": "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()),
        },
        {"path": TOKEN_FILE, "permissions": "0600", "content": token + "\n"},
    ]
    if settings.ca_pem is not None:
        files.append({"path": CA_FILE, "permissions": "0644", "content": settings.ca_pem})
    # JSON is YAML: no YAML library needed, and no quoting surprises in the values.
    config = {
        "write_files": files,
        "runcmd": [["systemctl", "start", "--no-block", SERVICE]],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"
