"""A Python function call packed for a guest's ``python3``, and its result read back safely.

The guest has no network, no Parsl and maybe another Python than the host (Debian 12 has
3.11; the host may run 3.11 to 3.13), so Parsl's own serialization (dill, by value, with
bytecode tied to the interpreter's version) cannot be loaded there. What goes instead:

* the function's **source** (decorators removed), which any Python 3 compiles. It must be
  self-contained, as Parsl asks of python_apps anyway: modules imported and helpers defined
  inside it; no variables of an enclosing function, no globals of its module;
* its **arguments**, pickled (protocol 4) with standard-library types only; Parsl ``File``
  objects travel as references and become a small path-like ``File`` in the guest;
* a short **runner** that calls it and pickles the outcome into :data:`RESULT`.

Each is checked when the app is submitted, so a call the guest could not load fails at once
with the reason. The result comes from a machine that may be a volunteer's: it is unpickled
with an allowlist of harmless standard types (builtins' values and exceptions, collections,
datetime, decimal, fractions), never anything that could run code on this side.
"""

from __future__ import annotations

import ast
import base64
import builtins
import dis
import inspect
import io
import pickle
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

from bes.workflow.task import TaskError

RESULT: Final = "_bes_result.pickle"
# The call goes on the guest command line: Linux takes at most 128 KiB in one argument.
MAX_CALL_BYTES: Final = 64 * 1024
_PROTOCOL: Final = 4  # read by every Python 3 since 3.4

RUNNER: Final = r"""
import base64, io, pickle, sys, traceback
class File(str):
    def __new__(cls, path, url):
        self = str.__new__(cls, path)
        self.url = url
        return self
    filepath = property(str.__str__)
    filename = property(lambda self: self.rsplit("/", 1)[-1])
    def __fspath__(self):
        return str(self)
class In(pickle.Unpickler):
    def persistent_load(self, pid):
        return File(pid[1], pid[2])
class Out(pickle.Pickler):
    def persistent_id(self, obj):
        return ("file", str(obj), obj.url) if isinstance(obj, File) else None
call = In(io.BytesIO(base64.b64decode(sys.argv[1]))).load()
import linecache
linecache.cache[call["file"]] = (0, None, call["source"].splitlines(True), call["file"])
space = {"__name__": "__bes_app__", "__builtins__": __builtins__}
try:
    exec(compile(call["source"], call["file"], "exec"), space)
    outcome = ("ok", space[call["name"]](*call["args"], **call["kwargs"]), "")
except BaseException as exc:
    # Only built-in exceptions are rebuilt on the other side; others travel as their traceback.
    known = exc if type(exc).__module__ == "builtins" else None
    outcome = ("error", known, traceback.format_exc())
buffer = io.BytesIO()
try:
    Out(buffer, 4).dump(outcome)
except Exception as exc:
    buffer = io.BytesIO()
    reason = "the result cannot be pickled: %s" % exc
    Out(buffer, 4).dump(("error", None, outcome[2] or reason))
with open("_bes_result.pickle", "wb") as out:
    out.write(buffer.getvalue())
"""


class RemoteAppError(TaskError):
    """A python_app raised in the guest an exception this side cannot rebuild; the message
    holds the guest's traceback."""


def pack(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    file_ref: Callable[[Any], tuple[str, str, str] | None],
) -> str:
    """The call as base64 text for the runner's command line.

    Args:
        function: The app's own function (unwrapped).
        args: Positional arguments.
        kwargs: Keyword arguments.
        file_ref: ``("file", guest name, url)`` for the objects that travel as files
            (Parsl's ``File``), None for the rest.

    Raises:
        TaskError: The function or its arguments cannot be loaded in the guest.
    """
    name = function.__name__
    call = {
        "source": source_of(function),
        "file": f"<python_app {name}>",
        "name": name,
        "args": tuple(args),
        "kwargs": dict(kwargs),
    }
    buffer = io.BytesIO()
    try:
        _Out(buffer, name=name, file_ref=file_ref).dump(call)
    except TaskError:
        raise
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TaskError(f"python_app {name}: its arguments cannot be pickled: {exc}") from exc
    if buffer.tell() > MAX_CALL_BYTES:
        raise TaskError(
            f"python_app {name}: its arguments take {buffer.tell()} bytes pickled (at most "
            f"{MAX_CALL_BYTES}); pass large data as File inputs"
        )
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def source_of(function: Callable[..., Any]) -> str:
    """The function's definition as source text, without decorators.

    Raises:
        TaskError: No source (a lambda, a built-in, code typed at a prompt), or it uses
            variables of an enclosing function or globals of its module.
    """
    name = getattr(function, "__name__", repr(function))
    if not isinstance(function, types.FunctionType) or name == "<lambda>":
        raise TaskError(f"python_app {name}: only functions defined with def can run in a VM")
    if function.__code__.co_freevars:
        raise TaskError(
            f"python_app {name} uses {', '.join(function.__code__.co_freevars)} of the "
            "function it is defined in; the VM gets only its own source: pass them as arguments"
        )
    outside = sorted(_globals_used(function))
    if outside:
        raise TaskError(
            f"python_app {name} uses {', '.join(outside)} from its module; the VM gets only "
            "the function's own source: import modules and define helpers inside it"
        )
    try:
        text = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise TaskError(f"python_app {name}: its source cannot be found ({exc})") from exc
    tree = ast.parse(text)
    [definition] = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if isinstance(definition, ast.AsyncFunctionDef):
        raise TaskError(f"python_app {name}: async functions cannot run in a VM")
    definition.decorator_list = []
    _strip_annotations(definition)
    return ast.unparse(definition) + "\n"


def _strip_annotations(tree: ast.AST) -> None:
    """Drop parameter and return annotations: they name types of the host's modules, which
    the guest would evaluate when it defines the function (and does not have)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
        elif isinstance(node, ast.arguments):
            every = [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg]
            for argument in every:
                if argument is not None:
                    argument.annotation = None


def command(python: str, payload: str) -> str:
    """Shell text that runs the runner on ``payload`` with the guest's ``python``."""
    quoted = "'" + RUNNER.replace("'", "'\"'\"'") + "'"
    return f"{python} -c {quoted} {payload}"


def unpack(data: bytes, *, name: str, file_of: Callable[[str, str], Any]) -> tuple[bool, Any, str]:
    """The outcome the runner wrote: ``(True, value, "")`` or ``(False, exception, traceback)``.

    Args:
        data: The result file's bytes.
        name: The app's name, for messages.
        file_of: The local object for a file the guest returned (guest name, url).

    Raises:
        TaskError: The result is not a well-formed outcome of allowed types.
    """
    try:
        outcome = _In(io.BytesIO(data), file_of=file_of).load()
    except TaskError:
        raise
    except Exception as exc:  # a truncated or foreign result file: say so, whatever broke
        raise TaskError(f"python_app {name}: its result cannot be read: {exc}") from exc
    if not (isinstance(outcome, tuple) and len(outcome) == 3 and outcome[0] in ("ok", "error")):
        raise TaskError(f"python_app {name}: its result is not what the runner writes")
    kind, value, trace = outcome
    if kind == "ok":
        return True, value, ""
    if not isinstance(value, BaseException):
        value = RemoteAppError(f"python_app {name} failed in the VM:\n{trace}")
    return False, value, str(trace)


def _globals_used(function: types.FunctionType) -> set[str]:
    """Names the function (and functions nested in it) loads as globals that exist in its
    module but not in builtins: they would be undefined in the guest."""
    found: set[str] = set()
    codes = [function.__code__]
    while codes:
        code = codes.pop()
        for instruction in dis.get_instructions(code):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                name = str(instruction.argval)
                if name in function.__globals__ and not hasattr(builtins, name):
                    found.add(name)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return found


def _stdlib(module: str) -> bool:
    top = module.split(".", 1)[0]
    return top in sys.stdlib_module_names or top == "builtins"


class _Out(pickle.Pickler):
    def __init__(
        self,
        buffer: io.BytesIO,
        *,
        name: str,
        file_ref: Callable[[Any], tuple[str, str, str] | None],
    ) -> None:
        super().__init__(buffer, _PROTOCOL)
        self._name = name
        self._file_ref = file_ref

    def persistent_id(self, obj: Any) -> Any:
        return self._file_ref(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
            module = getattr(obj, "__module__", None) or ""
        else:
            module = type(obj).__module__
        if not _stdlib(module):
            raise TaskError(
                f"python_app {self._name}: an argument is a {type(obj).__qualname__} from "
                f"{module}, which the VM's Python does not have; pass standard types "
                "(numbers, strings, lists, dicts, …) or File objects"
            )
        return NotImplemented


# What a result may contain: values and exceptions of the standard library that cannot run
# code when they are rebuilt (no functions, no eval, no getattr, no os or subprocess).
_SAFE_BUILTINS: Final = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type)
    and (
        issubclass(value, BaseException)
        or value in (set, frozenset, bytearray, complex, range, slice)
    )
)
_SAFE: Final[Mapping[str, frozenset[str]]] = {
    "builtins": _SAFE_BUILTINS,
    "collections": frozenset({"OrderedDict", "deque", "Counter", "defaultdict"}),
    "datetime": frozenset({"date", "time", "datetime", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "copyreg": frozenset({"_reconstructor"}),
}


class _In(pickle.Unpickler):
    def __init__(self, buffer: io.BytesIO, *, file_of: Callable[[str, str], Any]) -> None:
        super().__init__(buffer)
        self._file_of = file_of

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "file":
            return self._file_of(str(pid[1]), str(pid[2]))
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")

    def find_class(self, module: str, name: str) -> Any:
        if name in _SAFE.get(module, ()):
            return super().find_class(module, name)
        raise TaskError(
            f"the result holds {module}.{name}, which is not among the standard types a "
            "result may hold (it came from another machine and is not trusted to run code)"
        )
