"""What can go wrong when talking to a BES, as exceptions a program can catch by kind.

::

    ClientError
    ├── ConnectionProblem        nothing answered (refused, unreachable, name unknown, timeout)
    │   └── TlsProblem           the TLS handshake failed (certificate, protocol)
    ├── HttpProblem              an HTTP answer that is not SOAP (404, 401, an HTML page)
    ├── ProtocolProblem          a SOAP answer this client cannot read
    ├── InvalidJsdl              the document fails JSDL 1.0 validation before it is sent
    ├── WaitTimeout              :meth:`BESClient.wait` gave up
    ├── NoOutputs                the service keeps no files for the activity
    └── SoapFault                the service answered with a soap:Fault
        └── BesFault             …whose detail is one of the BES faults (GFD.108 §7):
            NotAuthorizedFault, NotAcceptingNewActivitiesFault, UnsupportedFeatureFault,
            InvalidRequestMessageFault, UnknownActivityIdentifierFault (and the draft's
            InvalidActivityIdentifierFault), CantApplyOperationToCurrentStateFault,
            OperationWillBeAppliedEventuallyFault

Per-identifier faults of the vector operations are not raised: they are carried in the result
for that identifier (``ActivityStatus.fault``, ``TerminateResult.fault``).
"""

from __future__ import annotations

from typing import Final

from bes.errors import BesError


class ClientError(BesError):
    """Root of the client's errors. ``str(error)`` is a sentence for a person."""


class ConnectionProblem(ClientError):
    """The service could not be reached.

    Attributes:
        url: What was called.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class TlsProblem(ConnectionProblem):
    """The TLS connection failed: an untrusted or mismatched certificate, or no common
    protocol."""


class HttpProblem(ClientError):
    """The service answered over HTTP, but not with SOAP.

    Attributes:
        status: The HTTP status code.
        url: What was called.
    """

    def __init__(self, message: str, *, status: int, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class ProtocolProblem(ClientError):
    """The answer is SOAP, or claims to be, but is not what the operation returns."""


class InvalidJsdl(ClientError):
    """The job document is not valid JSDL 1.0; nothing was sent.

    Attributes:
        problems: One ``(line, element path, message)`` per problem; line may be None.
    """

    def __init__(self, message: str, problems: tuple[tuple[int | None, str, str], ...]) -> None:
        super().__init__(message)
        self.problems = problems


class WaitTimeout(ClientError):
    """Activities were still not terminal when the wait ended.

    Attributes:
        pending: How many were not terminal.
    """

    def __init__(self, message: str, *, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class NoOutputs(ClientError):
    """The service publishes no kept files for this activity (not ours, or not ended)."""


class SoapFault(ClientError):
    """The service answered with a SOAP fault.

    Attributes:
        code: The faultcode (``soap:Client``, ``soap:Server``, …) as sent.
        reason: The faultstring.
        detail: A text from the fault's detail, when it carries one (BES ``Message``,
            WS-BaseFaults ``Description``).
    """

    fault_name: str = ""

    def __init__(self, reason: str, *, code: str = "", detail: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.detail = detail
        text = reason if not detail or detail in reason else f"{reason}: {detail}"
        super().__init__(f"{self.fault_name}: {text}" if self.fault_name else text)


class BesFault(SoapFault):
    """A fault of the BES vocabulary; :attr:`fault_name` is its element name."""


class NotAuthorizedFault(BesFault):
    """The caller may not do this."""

    fault_name = "NotAuthorizedFault"


class NotAcceptingNewActivitiesFault(BesFault):
    """The factory is not accepting new activities (stopped by its administrator)."""

    fault_name = "NotAcceptingNewActivitiesFault"


class UnsupportedFeatureFault(BesFault):
    """The document uses something this service does not implement."""

    fault_name = "UnsupportedFeatureFault"


class InvalidRequestMessageFault(BesFault):
    """The service found the request (usually the JSDL document) invalid."""

    fault_name = "InvalidRequestMessageFault"


class UnknownActivityIdentifierFault(BesFault):
    """No such activity (or not one the caller may see)."""

    fault_name = "UnknownActivityIdentifierFault"


class InvalidActivityIdentifierFault(UnknownActivityIdentifierFault):
    """The May 2007 draft's name for an unknown identifier."""

    fault_name = "InvalidActivityIdentifierFault"


class CantApplyOperationToCurrentStateFault(BesFault):
    """The activity's state does not allow the operation (terminating a finished one)."""

    fault_name = "CantApplyOperationToCurrentStateFault"


class OperationWillBeAppliedEventuallyFault(BesFault):
    """Accepted, but carried out later (termination of a running activity)."""

    fault_name = "OperationWillBeAppliedEventuallyFault"


BES_FAULTS: Final[dict[str, type[BesFault]]] = {
    "InvalidRequestMessageFaultType": InvalidRequestMessageFault,  # ARC's spelling
    **{
        cls.fault_name: cls
        for cls in (
            NotAuthorizedFault,
            NotAcceptingNewActivitiesFault,
            UnsupportedFeatureFault,
            InvalidRequestMessageFault,
            UnknownActivityIdentifierFault,
            InvalidActivityIdentifierFault,
            CantApplyOperationToCurrentStateFault,
            OperationWillBeAppliedEventuallyFault,
        )
    },
}
"""Fault classes by the local name of their detail element (matched in any namespace: the
final and draft BES namespaces, and the ones some servers use, differ)."""
