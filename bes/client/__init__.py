"""A Python client for OGSA-BES 1.0 services: ours, or another middleware's.

::

    from bes.client import BESClient, jsdl

    with BESClient("http://127.0.0.1:8080/bes") as bes:
        ref = bes.submit(jsdl.build(["/bin/echo", "hello"], name="hello"))
        [status] = bes.wait([ref], timeout_s=600)
        print(status.state, status.exit_code)
        bes.outputs(ref, "results")            # results/stdout holds "hello"

:class:`BESClient` is built on zeep and the project's copy of the GFD.108 WSDL. States are
:class:`State` (with sub-states by name), faults are the exceptions of
:mod:`bes.client.faults`, credentials are in :mod:`bes.client.auth`, and :mod:`bes.client.jsdl`
writes JSDL from Python arguments.
"""

from bes.client import faults, jsdl
from bes.client.auth import ClientCertificate, UsernameToken, X509Signature
from bes.client.model import (
    ActivityCount,
    ActivityRef,
    ActivityStatus,
    FactoryAttributes,
    LeaseAccess,
    OutputFile,
    State,
    SubState,
    TerminateResult,
)
from bes.client.service import BESClient, to_json

__all__ = [
    "ActivityCount",
    "ActivityRef",
    "ActivityStatus",
    "BESClient",
    "ClientCertificate",
    "FactoryAttributes",
    "LeaseAccess",
    "OutputFile",
    "State",
    "SubState",
    "TerminateResult",
    "UsernameToken",
    "X509Signature",
    "faults",
    "jsdl",
    "to_json",
]
