"""Service configuration: one typed object built by the command line (or by tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bes.db.engine import default_url


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """How ``bes serve`` runs.

    Attributes:
        host: Address to listen on (loopback by default: nothing is exposed by accident).
        port: TCP port.
        data_dir: Where the embedded database and other state live.
        database_url: SQLAlchemy URL; None means SQLite in ``data_dir``.
        public_url: Base URL clients reach the service at (``https://bes.example.org``); None
            derives it from each request's Host header.
        max_request_bytes: Larger request bodies are refused before parsing.
        backend: Backend new activities go to; None keeps them queued (Pending).
        backend_options: Settings of that backend (``key=value`` from the command line).
        resource_name: Name in the factory attributes document; None uses the host name.
        strict_jsdl: Validate JSDL exactly as submitted, without normalizing the known
            real-world variants (bes.jsdl.normalize).
        sweep_limit: Most activities one JSDL parameter sweep may expand into.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("bes-data")
    database_url: str | None = None
    public_url: str | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    backend: str | None = None
    backend_options: Mapping[str, str] = field(default_factory=dict)
    resource_name: str | None = None
    strict_jsdl: bool = False
    sweep_limit: int = 1000

    @property
    def effective_database_url(self) -> str:
        """The database URL in use."""
        return self.database_url or default_url(self.data_dir)
