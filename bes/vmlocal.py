"""Run one JSDL document's VM job on this machine (``bes vm run``): no service, no database.

Inputs named by DataStaging Source URIs (file, http, https, or paths relative to the
document) are fetched first; outputs with a file Target are copied there afterwards, and all
of them are in the results directory in any case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bes import ids
from bes.errors import BesError
from bes.jsdl.model import JobDefinition
from bes.vm.drivers import choose_driver
from bes.vm.drivers.base import HostInfo
from bes.vm.images import ImageCache
from bes.vm.job import VmOutcome, run_vm_job
from bes.vm.repository import Catalog, ImageRepository
from bes.vm.spec import Hypervisor
from bes.vmjob import VmDefaults, plan, staged_inputs, staged_outputs, virtual_machine

log = logging.getLogger(__name__)

_FETCH_TIMEOUT_S = 60.0


class StagingError(BesError):
    """An input cannot be fetched or an output cannot be delivered."""


@dataclass(frozen=True)
class LocalRun:
    job_id: str
    outcome: VmOutcome
    host: HostInfo
    results_dir: Path
    delivered: tuple[Path, ...]


IMAGE_CACHE_ENV = "BES_IMAGE_CACHE"
"""The environment variable naming the node's image cache (default: CACHE/bes/images)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bes`` (``~/.cache/bes``): VM directories of ``bes vm run``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bes"


def default_image_cache() -> Path:
    """The node's one image cache, shared by ``bes vm run``, the local worker of ``bes serve``
    and every ``bes worker`` of this user (it is locked for concurrent use): a template such
    as tiny is built once per machine, not once per tool."""
    named = os.environ.get(IMAGE_CACHE_ENV)
    return Path(named) if named else default_cache_dir() / "images"


def run_local(
    job: JobDefinition,
    *,
    document_dir: Path,
    results_dir: Path | None,
    cache_dir: Path,
    image_cache_dir: Path | None = None,
    catalog: Catalog | None = None,
    hypervisor: Hypervisor | None = None,
    accelerator: str = "auto",
    defaults: VmDefaults | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> LocalRun:
    defaults = defaults or VmDefaults()
    job_id = ids.new_activity_id()
    name = job.job_name or "job"
    results = results_dir or Path.cwd() / f"{_safe(name)}-{job_id}"
    allowed = (hypervisor,) if hypervisor else virtual_machine(job, defaults).hypervisors
    driver, host = choose_driver(allowed, cache_dir / "vms", accelerator=accelerator)
    repository = ImageRepository(ImageCache(image_cache_dir or default_image_cache()), catalog)
    with _fetched_inputs(job, document_dir) as inputs:
        vm_job = plan(
            job,
            job_id,
            repository=repository,
            inputs=inputs,
            formats=driver.disk_formats,
            defaults=defaults,
        )
        outcome = run_vm_job(vm_job, driver, results, cancelled=cancelled)
    delivered = _deliver(job, outcome, document_dir) if outcome.completed else ()
    return LocalRun(job_id, outcome, host, results, delivered)


@contextlib.contextmanager
def _fetched_inputs(job: JobDefinition, document_dir: Path) -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="bes-inputs-") as temp:
        inputs = {}
        for index, staged in enumerate(staged_inputs(job)):
            parsed = urllib.parse.urlsplit(staged.uri)
            if parsed.scheme in ("", "file"):
                path = document_dir / urllib.parse.unquote(parsed.path)
                if not path.is_file():
                    raise StagingError(f"input {staged.file_name}: {path} is not a file")
                inputs[staged.file_name] = path
            elif parsed.scheme in ("http", "https"):
                path = Path(temp) / str(index)
                try:
                    with (
                        urllib.request.urlopen(staged.uri, timeout=_FETCH_TIMEOUT_S) as remote,  # noqa: S310 - scheme checked
                        path.open("wb") as local,
                    ):
                        shutil.copyfileobj(remote, local)
                except OSError as exc:
                    raise StagingError(f"input {staged.file_name}: {staged.uri}: {exc}") from exc
                inputs[staged.file_name] = path
            else:
                raise StagingError(
                    f"input {staged.file_name}: {parsed.scheme}: URIs are not supported here"
                )
        yield inputs


def _deliver(job: JobDefinition, outcome: VmOutcome, document_dir: Path) -> tuple[Path, ...]:
    if outcome.results is None:
        return ()
    delivered = []
    for staged in staged_outputs(job):
        parsed = urllib.parse.urlsplit(staged.uri)
        produced = outcome.results.outputs.get(staged.file_name)
        if produced is None or parsed.scheme not in ("", "file"):
            continue
        target = document_dir / urllib.parse.unquote(parsed.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced, target)
        delivered.append(target)
    return tuple(delivered)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "job"
