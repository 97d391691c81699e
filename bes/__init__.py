"""bes: an OGSA-BES 1.0 service that runs JSDL jobs inside virtual machines.

The package is layered (see ``STYLE.md`` in the shared folder and the import-linter contracts in
``pyproject.toml``): the SOAP edge (:mod:`bes.app`, :mod:`bes.soap`, :mod:`bes.factory`) sits on
the activity registry (:mod:`bes.activities`), which drives backends (:mod:`bes.backends`) and
stores state through :mod:`bes.db`. :mod:`bes.jsdl` and :mod:`bes.vm` are independent libraries.
"""

__version__ = "0.1.0"
