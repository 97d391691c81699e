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
        tls_cert: PEM certificate (chain) of the service; with ``tls_key``, HTTPS only.
        tls_key: PEM private key of ``tls_cert``.
        tls_client_ca: PEM CA bundle that client certificates (TLS, and the signers of
            WS-Security X.509 signatures) must chain to; with it TLS asks for client
            certificates.
        tls_crl: PEM CRLs of those CAs; revoked client certificates are refused.
        insecure: Allow a non-loopback address without TLS (a lab); logged on every start.
        trusted_proxies: Addresses of TLS-terminating proxies whose ``X-Forwarded-Proto`` and
            client-certificate headers are believed (nobody else's are).
        secret_key_file: Key that seals secrets at rest (PasswordDigest passwords, staging
            credentials); the same file on every replica. None: ``data_dir/secret.key``,
            created on first use.
        file_roots: Directories ``file:`` staging URIs may name; none refuses them.
        auth_window_s: How far a WS-Security Created or Timestamp may be from now.
        signature_algorithms: Accepted XML Signature methods (URIs); None: RSA-SHA256 and up,
            and the RSA-SHA1 deployed clients still send.
        clouds_file: The cloud pools' configuration (bes.clouds.config); None: no clouds.
        notices: Warnings the status page shows (e.g. that the local worker cannot start).
        storage_dir: The directory holding what every replica must reach, the file store's
            ``files/`` and the desktop grid's kept ``outputs/`` (one network file system
            mounted on every replica); None: ``data_dir``.
        files_dir: Where the file store keeps its files instead of ``STORAGE_DIR/files``
            (the same directory on every replica).
        file_max_bytes: Largest file one upload may store.
        file_quota_bytes: Each user's file store quota (``bes user quota`` sets others).
        file_expiry_s: Stored files that no unended activity uses are removed after this.
        keep_ended_s: Ended activities and their kept outputs are removed once they ended
            this long ago (bes.retention); None: kept forever.
        relay_url: How other replicas reach this one, to forward users' streams to the VM
            lease tunnels it holds (bes.relay); None: ``http(s)://HOST:PORT`` as it listens.
        tunnel_streams: Concurrent streams per VM lease.
        tunnel_bytes_per_second: Relay bandwidth per VM lease, both directions together.
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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_crl: Path | None = None
    insecure: bool = False
    trusted_proxies: tuple[str, ...] = ()
    secret_key_file: Path | None = None
    file_roots: tuple[str, ...] = ()
    auth_window_s: float = 300.0
    signature_algorithms: frozenset[str] | None = None
    storage_dir: Path | None = None
    files_dir: Path | None = None
    clouds_file: Path | None = None
    notices: tuple[str, ...] = ()
    file_max_bytes: int = 16 * 1024**3
    file_quota_bytes: int = 50 * 1024**3
    file_expiry_s: float = 7 * 86400.0
    keep_ended_s: float | None = None
    relay_url: str | None = None
    tunnel_streams: int = 16
    tunnel_bytes_per_second: int = 64 * 1024 * 1024

    @property
    def tls(self) -> bool:
        """Whether the service itself speaks HTTPS."""
        return self.tls_cert is not None

    @property
    def effective_secret_key_file(self) -> Path:
        """The key file in use."""
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def effective_storage_dir(self) -> Path:
        """The shared storage directory in use."""
        return self.storage_dir or self.data_dir

    @property
    def effective_database_url(self) -> str:
        """The database URL in use."""
        return self.database_url or default_url(self.data_dir)
