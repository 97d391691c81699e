"""A Parsl executor that runs each app as one BES activity, in a VM::

    import parsl
    from parsl import File, bash_app
    from bes.workflow.parsl import BESExecutor

    parsl.load(parsl.Config(executors=[BESExecutor()]))   # the client's endpoint (bes submit's)

    @bash_app
    def count(inputs=(), outputs=()):
        return f"wc -l < {inputs[0]} > {outputs[0]}"

    count(inputs=[File("data.csv")], outputs=[File("lines.txt")]).result()

No pilot workers: a pilot would have to reach Parsl's interchange over ZeroMQ, which a guest
without network (or behind NAT) cannot. Instead:

* a **bash_app**'s command line is composed here, as Parsl's ``remote_side_bash_executor``
  would do it on a worker, and runs in the guest's shell (``/bin/sh``; busybox in ``tiny``).
  Its ``File`` inputs (``inputs=``, other arguments) are uploaded to the service's file
  store, its ``outputs=`` fetched back to their local paths, and ``stdout=``/``stderr=``
  written to the local files named, as Parsl would on a shared file system. In the command,
  a file's path is its path relative to the working directory of the submitting process
  (files elsewhere get a name under ``_files/``);
* a **python_app** runs in ``python_template`` (``debian-12``: Debian with Python 3) from its
  source, with standard-library arguments and result (:mod:`bes.workflow._pycall`); what the
  guest could not load is refused when the app is submitted.

Resource specification keys: ``template``, ``memory_mib``, ``vcpus``, ``wall_time_s``, and
Parsl's ``cores``, ``memory`` (MB) and ``running_time_min``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from parsl.app.bash import remote_side_bash_executor
from parsl.app.errors import AppBadFormatting, BashAppNoReturn, BashExitFailure, MissingOutputs
from parsl.data_provider.file_noop import NoOpFileStaging
from parsl.data_provider.files import File
from parsl.data_provider.staging import Staging
from parsl.executors.base import ParslExecutor
from parsl.utils import get_std_fname_mode

from bes.client import ActivityRef, ActivityStatus, BESClient, State
from bes.client.config import load_config
from bes.client.faults import ClientError
from bes.errors import BesError
from bes.workflow import _pycall
from bes.workflow.poller import Poller
from bes.workflow.task import (
    Fetched,
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

log = logging.getLogger(__name__)

_REMOTE_SCHEMES: Final = frozenset({"http", "https", "ftp"})
_SPEC_KEYS: Final = frozenset(
    {"template", "memory_mib", "vcpus", "wall_time_s", "cores", "memory", "running_time_min"}
)
_BOOT_MARGIN_S: Final = 120
"""Added to a bash_app's ``walltime``, which Parsl counts for the command alone."""


class ActivityFailed(TaskError):
    """The app's activity ended without running it to its end (the VM, its staging, the
    service); the message says how, with the end of its standard error."""


class ServiceFetches(Staging):
    """Lets ``File("https://…")`` (and http, ftp) inputs through Parsl's staging untouched:
    the service fetches them itself, as JSDL Sources."""

    def can_stage_in(self, file: File) -> bool:
        return file.scheme in _REMOTE_SCHEMES


@dataclass(slots=True, kw_only=True)
class _Files:
    """The files of one app: each Parsl ``File`` gets a guest name, and a copy of it whose
    path is that name is what the app's function sees."""

    root: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    originals: dict[str, File] = field(default_factory=dict)

    def rename(self, value: Any, *, output: bool = False) -> Any:
        if not isinstance(value, File):
            return value
        spare = f"_files/{len(self.originals)}/{value.filename or 'file'}"
        if value.scheme == "file":
            local = Path(value.filepath)
            local = local if local.is_absolute() else self.root / local
            name = guest_name(local, self.root) or spare
            (self.outputs if output else self.inputs)[name] = local
        elif value.scheme in _REMOTE_SCHEMES and not output:
            name = spare
            self.sources[name] = value.url
        else:
            raise TaskError(
                f"{value.url}: outputs go to local paths, and inputs are local paths or "
                f"{', '.join(sorted(_REMOTE_SCHEMES))} URLs"
            )
        self.originals.setdefault(name, value)
        copy = File(value.url)
        copy.local_path = name
        return copy

    def rename_all(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        new_kwargs = dict(kwargs)
        for key, value in kwargs.items():
            if key == "inputs":
                new_kwargs[key] = [self.rename(f) for f in value]
            elif key == "outputs":
                new_kwargs[key] = [self.rename(f, output=True) for f in value]
            elif key not in ("stdout", "stderr"):
                new_kwargs[key] = self.rename(value)
        return tuple(self.rename(a) for a in args), new_kwargs

    def file_ref(self, value: Any) -> tuple[str, str, str] | None:
        if isinstance(value, File) and value.local_path in self.originals:
            return ("file", str(value.local_path), value.url)
        return None

    def file_of(self, name: str, url: str) -> Any:
        return self.originals.get(name) or File(url)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """What Parsl handed to :meth:`BESExecutor.submit`."""

    tid: int
    future: Future[Any]
    func: Callable[..., Any]
    spec: Mapping[str, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class _App:
    """One submitted app, from its submission to its end."""

    tid: int
    name: str
    future: Future[Any]
    task: VmTask
    files: _Files
    python: bool
    command: str = ""
    stdout: tuple[str, str] | None = None
    stderr: tuple[str, str] | None = None
    result: Path | None = None


class BESExecutor(ParslExecutor):
    """Runs each Parsl app as one activity of a BES service.

    Args:
        label: The executor's label in Parsl's configuration.
        url: The BES endpoint (default: the client's configuration, as ``bes submit`` uses
            it: ``BES_ENDPOINT`` or ``~/.config/bes/client.toml``); credentials come from
            there too.
        template: The VM template of bash_apps (``tiny``: busybox, boots in seconds).
        python_template: The template of python_apps: it must have ``python``.
        python: The guest's Python interpreter.
        shell: The guest's shell for bash_app commands.
        memory_mib: Guest memory (default: the template's).
        wall_time_s: Seconds an activity may run, boot included (default: the service's).
        poll_s: Seconds between status rounds (one vector call for every running app).
        submit_threads: Apps uploaded and submitted at once.
        client: A ready client instead of one from the configuration (tests, other
            credentials).
    """

    def __init__(
        self,
        label: str = "bes",
        *,
        url: str | None = None,
        template: str = "tiny",
        python_template: str = "debian-12",
        python: str = "python3",
        shell: str = "/bin/sh",
        memory_mib: int | None = None,
        wall_time_s: int | None = None,
        poll_s: float = 1.0,
        submit_threads: int = 4,
        client: BESClient | None = None,
    ) -> None:
        super().__init__()
        self.label = label
        self.url = url
        self.template = template
        self.python_template = python_template
        self.python = python
        self.shell = shell
        self.memory_mib = memory_mib
        self.wall_time_s = wall_time_s
        self.poll_s = poll_s
        self.submit_threads = submit_threads
        self.storage_access = [NoOpFileStaging(), ServiceFetches()]
        self.client = client
        self.root = Path.cwd()
        self.poller: Poller | None = None
        self._own_client = client is None
        self._submitter: ThreadPoolExecutor | None = None
        self._uploads = UploadCache()
        self._ids = itertools.count(1)
        self._running: dict[ActivityRef, _App] = {}
        self._lock = threading.Lock()
        self._templates: frozenset[str] | None = None
        self._closed = False

    # ------------------------------------------------------------------ ParslExecutor

    def start(self) -> None:
        """Build the client and start the poller and the submitting threads."""
        if self.client is None:
            self.client = load_config({"endpoint": self.url}).client()
        self.root = Path.cwd()
        self.poller = Poller(self.client, interval_s=self.poll_s)
        self._submitter = ThreadPoolExecutor(self.submit_threads, thread_name_prefix="bes-submit")

    def submit(
        self,
        func: Callable[..., Any],
        resource_specification: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> Future[Any]:
        """Prepare the app here (its command line, or its source and arguments) and submit it
        on a submitting thread. Whatever the guest could not run fails the returned future at
        once, with the reason."""
        if self._submitter is None:
            raise TaskError("the BES executor is not started (parsl.load() starts it)")
        future: Future[Any] = Future()
        tid = next(self._ids)
        future.parsl_executor_task_id = tid  # type: ignore[attr-defined]  # Parsl logs it
        call = _Call(
            tid=tid,
            future=future,
            func=func,
            spec=resource_specification or {},
            args=args,
            kwargs=kwargs,
        )
        try:
            app = self._prepare(call)
        except Exception as exc:  # noqa: BLE001  # the app's own code raised: its future fails
            future.set_exception(exc)
            return future
        self._submitter.submit(self._launch, app)
        return future

    def shutdown(self) -> None:
        """Stop submitting, cancel the activities still running (their futures fail), stop
        polling."""
        self._closed = True
        if self._submitter is not None:
            self._submitter.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = dict(self._running)
            self._running.clear()
        if left and self.client is not None:
            if self.poller is not None:
                for ref in left:
                    self.poller.forget(ref)
            try:
                self.client.cancel(list(left))
            except ClientError as exc:
                log.error("could not cancel %d activities at shutdown: %s", len(left), exc)
            for ref, app in left.items():
                _fail(app, ActivityFailed(f"{app.name}: activity {ref.name} cancelled at shutdown"))
        if self.poller is not None:
            self.poller.close()
        if self.client is not None and self._own_client:
            self.client.close()
        super().shutdown()

    def monitor_resources(self) -> bool:
        """Parsl's resource monitoring cannot look into a VM."""
        return False

    # ------------------------------------------------------------------ submission

    def _prepare(self, call: _Call) -> _App:
        unknown = sorted(set(call.spec) - _SPEC_KEYS)
        if unknown:
            raise TaskError(
                f"resource specification keys {', '.join(unknown)} are not known to the BES "
                f"executor (it knows {', '.join(sorted(_SPEC_KEYS))})"
            )
        target = inspect.unwrap(call.func)
        if isinstance(target, functools.partial) and target.func is remote_side_bash_executor:
            return self._bash(call, target.args[0])
        return self._python(call, target)

    def _bash(self, call: _Call, function: Callable[..., Any]) -> _App:
        name = getattr(function, "__name__", "bash_app")
        files = _Files(root=self.root)
        args, kwargs = files.rename_all(call.args, call.kwargs)
        command = compose(function, name, args, kwargs)
        walltime = call.kwargs.get("walltime")
        wall = math.ceil(float(walltime)) + _BOOT_MARGIN_S if walltime is not None else None
        return _App(
            tid=call.tid,
            name=name,
            future=call.future,
            task=self._task(f"parsl-{name}-{call.tid}", command, call.spec, files, wall),
            files=files,
            python=False,
            command=command,
            stdout=_std("stdout", call.kwargs.get("stdout")),
            stderr=_std("stderr", call.kwargs.get("stderr")),
        )

    def _python(self, call: _Call, function: Callable[..., Any]) -> _App:
        name = getattr(function, "__name__", "python_app")
        template = str(call.spec.get("template") or self.python_template)
        self._check_template(template, name)
        files = _Files(root=self.root)
        args, kwargs = files.rename_all(call.args, call.kwargs)
        payload = _pycall.pack(function, args, kwargs, file_ref=files.file_ref)
        result = Path(self.run_dir) / "bes" / f"{call.tid}.result"
        files.outputs[_pycall.RESULT] = result
        command = _pycall.command(self.python, payload)
        spec = {**call.spec, "template": template}
        return _App(
            tid=call.tid,
            name=name,
            future=call.future,
            task=self._task(f"parsl-{name}-{call.tid}", command, spec, files),
            files=files,
            python=True,
            result=result,
        )

    def _task(
        self,
        name: str,
        command: str,
        spec: Mapping[str, Any],
        files: _Files,
        wall_time_s: int | None = None,
    ) -> VmTask:
        minutes = spec.get("running_time_min")
        memory = spec.get("memory_mib") or spec.get("memory") or self.memory_mib
        return VmTask(
            name=name,
            command=command,
            inputs=dict(files.inputs),
            sources=dict(files.sources),
            outputs=dict(files.outputs),
            template=str(spec.get("template") or self.template),
            shell=self.shell,
            memory_mib=int(memory) if memory else None,
            vcpus=int(spec.get("vcpus") or spec.get("cores") or 0) or None,
            wall_time_s=int(spec.get("wall_time_s") or 0)
            or (int(minutes) * 60 + _BOOT_MARGIN_S if minutes else None)
            or wall_time_s
            or self.wall_time_s,
        )

    def _check_template(self, template: str, app: str) -> None:
        """A python_app needs a template with Python; the service's catalog says whether it
        has one of that name (a service without our catalog is not asked again)."""
        assert self.client is not None  # started
        if self._templates is None:
            try:
                found = self.client.images()
            except ClientError as exc:
                log.info("no template catalog at %s (%s): not checked", self.client.url, exc)
                self._templates = frozenset()
            else:
                self._templates = frozenset(str(t.get("name")) for t in found)
        if self._templates and template not in self._templates:
            raise TaskError(
                f"python_app {app} needs the template {template!r} (a VM with Python 3), which "
                f"{self.client.url} does not offer (it has: {', '.join(sorted(self._templates))}). "
                "Give BESExecutor(python_template=…) one with Python; bash_apps run in "
                f"{self.template!r}"
            )

    def _launch(self, app: _App) -> None:
        assert self.client is not None and self.poller is not None  # started
        try:
            uploaded = stage_in(self.client, app.task, self._uploads)
            ref = self.client.submit(to_jsdl(app.task, uploaded))
        except (BesError, OSError) as exc:
            _fail(app, exc)
            return
        with self._lock:
            if self._closed:
                self.client.cancel([ref])
                _fail(app, ActivityFailed(f"{app.name}: the executor was shut down"))
                return
            self._running[ref] = app
        log.debug("app %s (task %d) is activity %s", app.name, app.tid, ref.name)
        self.poller.watch(
            ref, functools.partial(self._ended, ref, app), functools.partial(self._lost, ref, app)
        )

    # ------------------------------------------------------------------ completion

    def _lost(self, ref: ActivityRef, app: _App, error: ClientError) -> None:
        with self._lock:
            self._running.pop(ref, None)
        _fail(app, ActivityFailed(f"{app.name}: lost activity {ref.name}: {error}"))

    def _ended(self, ref: ActivityRef, app: _App, status: ActivityStatus) -> None:
        with self._lock:
            if self._running.pop(ref, None) is None:
                return  # shut down meanwhile
        assert self.client is not None  # started
        scratch = Path(self.run_dir) / "bes" / (ref.activity_id or str(app.tid))
        try:
            fetched = fetch_outputs(self.client, ref, app.task, scratch)
            _write_streams(app, fetched)
            outcome = _outcome(app, ref, status, fetched)
        except (BesError, OSError) as exc:
            outcome = ActivityFailed(f"{app.name}: activity {ref.name} {ended(status)}; {exc}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(outcome, BaseException):
            _fail(app, outcome)
        elif not app.future.done():
            app.future.set_result(outcome.value)


@dataclass(frozen=True, slots=True)
class _Value:
    value: Any


def compose(
    function: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> str:
    """A bash_app's command line, as Parsl's ``remote_side_bash_executor`` composes it.

    Raises:
        AppBadFormatting: Formatting it failed (a missing attribute or index).
        BashAppNoReturn: The function returned no string.
    """
    try:
        command = function(*args, **kwargs)
    except (AttributeError, IndexError) as exc:
        raise AppBadFormatting(f"App formatting failed for app '{name}' with {exc!r}") from exc
    if not isinstance(command, str):
        raise BashAppNoReturn(f"Bash app '{name}' returned {type(command).__name__}, not a str")
    return command


def _std(kind: str, spec: Any) -> tuple[str, str] | None:
    if spec is None:
        return None
    if isinstance(spec, File):
        return spec.filepath, "w"
    return get_std_fname_mode(kind, spec)


def _write_streams(app: _App, fetched: Fetched) -> None:
    """Write the command's stdout and stderr into the local files the app named, as Parsl
    does on a worker (stderr starts with the command line)."""
    for wanted, got, header in (
        (app.stdout, fetched.stdout, ""),
        (
            app.stderr,
            fetched.stderr,
            f"--> executable follows <--\n{app.command}\n--> end executable <--\n",
        ),
    ):
        if wanted is None:
            continue
        path, mode = wanted
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as out:
            out.write(header)
            if got is not None:
                with got.open() as source:
                    shutil.copyfileobj(source, out)


def _outcome(
    app: _App, ref: ActivityRef, status: ActivityStatus, fetched: Fetched
) -> _Value | BaseException:
    finished = status.state is State.FINISHED and status.exit_code in (None, 0)
    if app.python:
        assert app.result is not None
        if finished and app.result.is_file():
            ok, value, _ = _pycall.unpack(
                app.result.read_bytes(), name=app.name, file_of=app.files.file_of
            )
            app.result.unlink()
            return _Value(value) if ok else value
        return ActivityFailed(_failure(app, ref, status, fetched, python=True))
    if finished:
        missing = [app.files.originals[n] for n in fetched.missing]
        if missing:
            return MissingOutputs(f"Missing outputs from app {app.name}", missing)
        return _Value(0)
    if status.exit_code not in (None, 0):
        return BashExitFailure(app.name, int(status.exit_code or 0))
    return ActivityFailed(_failure(app, ref, status, fetched, python=False))


def _failure(
    app: _App, ref: ActivityRef, status: ActivityStatus, fetched: Fetched, *, python: bool
) -> str:
    kind = "python_app" if python else "bash_app"
    text = f"{kind} {app.name}: activity {ref.name} {ended(status)}"
    if python and status.exit_code == 127:
        text += f" (no Python in template {app.task.template!r}?)"
    errors = tail(fetched.stderr)
    return f"{text}\nits standard error ends with:\n{errors}" if errors else text


def _fail(app: _App, error: BaseException) -> None:
    if not app.future.done():
        app.future.set_exception(error)
