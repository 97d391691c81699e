"""A minimal synchronous QMP client: one connection per command, bounded by a timeout."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from bes.errors import HypervisorError


def execute(socket_path: Path, command: str, *, timeout_s: float = 2.0) -> Any:
    """Run one QMP command and return its "return" value."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(socket_path))
            reader = sock.makefile("rb")
            _reply(reader)  # the greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            _reply(reader)
            sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
            return _reply(reader)
    except (OSError, ValueError) as exc:
        raise HypervisorError(f"QMP {command} failed: {exc}") from exc


def _reply(reader: Any) -> Any:
    while True:
        line = reader.readline()
        if not line:
            raise HypervisorError("QMP connection closed")
        message = json.loads(line)
        if "event" in message:
            continue
        if "error" in message:
            raise HypervisorError(f"QMP error: {message['error'].get('desc', message['error'])}")
        return message.get("return", message.get("QMP"))
