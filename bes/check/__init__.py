"""``bes check URL``: an interoperability and conformance tester for any OGSA-BES endpoint.

It runs a suite of checks (:mod:`bes.check.checks`) against the endpoint with hand-built SOAP
(:mod:`bes.check.transport`), judges every answer against GFD.108, JSDL 1.0 and the HPC Basic
Profile (citing the section), names the known deviations of deployed implementations
(:mod:`bes.check.deviations`), terminates everything it created, and reports as a table,
JSON, JUnit XML or HTML (:mod:`bes.check.report`). ``--load`` measures instead
(:mod:`bes.check.load`).

Like the client library, it talks to the endpoint over the wire only: none of the service is
in it.
"""

from bes.check.model import Exchange, Report, Result, Verdict
from bes.check.runner import run
from bes.check.session import Options

__all__ = ["Exchange", "Options", "Report", "Result", "Verdict", "run"]
