"""The client commands, gathered for ``bes`` (:mod:`bes.cli`).

They work with any OGSA-BES 1.0 endpoint. The endpoint and credentials come from flags, then
the environment (``BES_ENDPOINT``, …), then ``~/.config/bes/client.toml``
(:mod:`bes.client.config`). Submitted activities are remembered in the job list
(:mod:`bes.client.joblist`), so later commands take an id, a unique prefix of one, or
``--all``. Each command lives in the module of its concept: ``submit`` in
:mod:`bes.cli.submit`; ``status``, ``wait``, ``cancel``, ``get`` and ``forget`` in
:mod:`bes.cli.activities`; ``attrs`` in :mod:`bes.cli.attributes`; ``images`` in
:mod:`bes.cli.images`; ``jsdl new`` in :mod:`bes.cli.jsdl`; ``lease``, ``ssh`` and
``port-forward`` in :mod:`bes.cli.lease`. Their shared options and the documented exit
statuses are in :mod:`bes.cli._client`.
"""

from __future__ import annotations

from typing import Final

from bes.cli.activities import cancel, forget, get, status, wait, why
from bes.cli.attributes import attrs
from bes.cli.check import check
from bes.cli.images import images
from bes.cli.jsdl import jsdl
from bes.cli.lease import lease, port_forward, ssh, tunnel
from bes.cli.submit import submit

CLIENT_COMMANDS: Final = (
    submit, status, why, wait, cancel, get, forget, attrs, images, jsdl,
    lease, ssh, port_forward, tunnel, check,
)  # fmt: skip
