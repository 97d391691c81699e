"""The exception tree of the service: one root, one base per area.

The SOAP edge maps these classes to BES faults in one table (:mod:`bes.soap`); nothing else
turns exceptions into wire messages. Third-party exceptions (lxml, SQLAlchemy, subprocess,
HTTP clients) are wrapped where they occur and never cross a layer.
"""

from collections.abc import Iterable, Sequence


class BesError(Exception):
    """Root of every error the service raises on purpose."""


class InvalidRequest(BesError):
    """The request is malformed or invalid; the caller must change it.

    Attributes:
        message: A sentence for a person.
        invalid_elements: Where the problems are, as readable element paths.
    """

    def __init__(self, message: str, invalid_elements: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.invalid_elements = tuple(invalid_elements)


class MalformedXml(InvalidRequest):
    """The bytes are not well-formed XML, or use a construct we refuse (DTD, entities).

    Attributes:
        line: Line of the first problem, when the parser knows it.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class JsdlError(InvalidRequest):
    """A JSDL document is schema-invalid or semantically inconsistent.

    ``invalid_elements`` holds element paths such as
    ``/jsdl:JobDefinition/jsdl:JobDescription/jsdl:DataStaging[2]``; ``line`` is the source line
    of the first problem.
    """

    def __init__(
        self, message: str, invalid_elements: Iterable[str] = (), *, line: int | None = None
    ) -> None:
        super().__init__(message, invalid_elements)
        self.line = line


class UnsupportedFeature(BesError):
    """The request uses elements or extensions this service does not implement.

    Attributes:
        features: One entry per offending element, in Clark notation with its location.
    """

    def __init__(self, features: Sequence[str], message: str | None = None) -> None:
        self.features = tuple(features)
        self.message = message or "unsupported: " + ", ".join(self.features)
        super().__init__(self.message)


class NotAuthorized(BesError):
    """The caller may not perform this operation."""


class UntrustedCertificate(NotAuthorized):
    """A client certificate does not chain to a trusted CA, has expired, was revoked, or
    breaks the proxy rules. The message says which, for the log; the caller is told only
    "not authorized".

    Attributes:
        reason: A label for the failure counters (the message holds the details).
    """

    reason = "untrusted_certificate"


class NotAcceptingNewActivities(BesError):
    """CreateActivity while the factory is not accepting new activities."""


class UnknownActivity(BesError):
    """An activity identifier does not name an activity this caller may see."""


class BackendError(BesError):
    """A backend failed as a whole (unreachable, misconfigured, refused).

    Attributes:
        backend: The backend's registry name.
        retryable: True when trying again later may succeed.
    """

    def __init__(self, message: str, *, backend: str, retryable: bool) -> None:
        super().__init__(message)
        self.backend = backend
        self.retryable = retryable


class SubmitError(BackendError):
    """A backend could not take one job."""


class ConfigError(BesError):
    """The service or a component was configured inconsistently."""


class StoreError(BesError):
    """The activity store failed (database unreachable, disk full, corrupt)."""


class HypervisorError(BesError):
    """A hypervisor command failed.

    Attributes:
        argv: The command that ran.
        exit_code: Its exit status, or None if it did not finish.
        code: The hypervisor's own error code (e.g. a VirtualBox HRESULT), when known.
        stderr_tail: The last lines it printed on stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exit_code: int | None = None,
        code: str | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.code = code
        self.stderr_tail = stderr_tail


class HypervisorUnavailable(HypervisorError):
    """The hypervisor is not installed or cannot run guests on this host."""


class VmNotFound(HypervisorError):
    """The named virtual machine does not exist (any more)."""


class LeaseLost(BesError):
    """A worker reported on a lease that is no longer its own (expired, taken over, ended)."""
