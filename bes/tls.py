"""HTTPS for ``bes serve``: the server's TLS settings, and the client certificate in each
request's ASGI scope.

uvicorn verifies client certificates (when given a context that asks for them) but puts
nothing of the TLS session in the scope. :class:`TlsHttpToolsProtocol` and
:class:`TlsH11Protocol` add the ASGI TLS extension (``scope["extensions"]["tls"]``, see
https://asgi.readthedocs.io/en/latest/specs/tls.html) to every request of a TLS connection:
the verified client chain as PEM, leaf first, the leaf's subject, the TLS version and the
cipher suite. :func:`bes.identity.transport_of` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bes.certs import subject_of
from bes.errors import BesError, ConfigError
from bes.tunnel.websocket import MAX_MESSAGE

log = logging.getLogger(__name__)

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 has nothing else).
CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

ASGIApp = Callable[..., Any]


def server_context(
    cert: Path, key: Path | None, *, client_ca: Path | None = None, crl: Path | None = None
) -> ssl.SSLContext:
    """The service's TLS settings: TLS 1.2 or newer, AEAD ciphers with forward secrecy, no
    compression and no renegotiation.

    With ``client_ca``, clients are asked for a certificate and one they send must chain to
    it (expiry checked, RFC 3820 proxy certificates allowed); a client may also send none
    (``CERT_OPTIONAL``), since users with a password and no certificate connect too: the
    identity policy decides what a request without one may do. With ``crl``, the client's
    certificate must not be revoked and the CRL of its issuer must be in the file.

    Raises:
        ConfigError: A file is missing or unreadable, or the key does not fit the
            certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL
            # Not VERIFY_X509_STRICT: it refuses proxy certificates without an authority key
            # identifier, which older proxy tools write; signatures, dates, CA flags and path
            # lengths are checked either way.
            context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
            if crl is not None:
                context.load_verify_locations(cafile=crl)
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        elif crl is not None:
            raise ConfigError("--tls-crl needs --tls-client-ca (the CAs whose CRLs they are)")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up TLS: {exc}") from exc
    return context


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or None for plain HTTP."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    chain = peer_chain(ssl_object)
    name = None
    if chain:
        try:
            name = subject_of(chain[0])
        except BesError:
            log.warning("a verified client certificate cannot be read", exc_info=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that fails verification fails the handshake
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_ids().get(cipher[0]) if cipher else None,
    }


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The client's verified chain (DER, leaf first, trust anchor last), or its certificate
    alone where the chain is out of reach; empty without a client certificate."""
    getter = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13
    if getter is not None:
        return list(getter() or [])
    # Python 3.10 to 3.12 have it on the C object only.
    inner = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if inner is not None:
        certificates = inner() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in certificates]  # type: ignore[attr-defined]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


@functools.cache
def _cipher_ids() -> Mapping[str, int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL")
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}


def _with_tls(app: ASGIApp, tls: Mapping[str, Any]) -> ASGIApp:
    async def with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = dict(tls)
        await app(scope, receive, send)

    return with_tls


class _WithTlsScope(asyncio.Protocol):
    """Mixed into uvicorn's protocols: the ASGI TLS extension in each scope they make, from
    the connection's TLS state (asyncio calls ``connection_made`` once the handshake is done;
    for a WebSocket, with the connection it was upgraded on)."""

    app: ASGIApp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)


class TlsHttpToolsProtocol(_WithTlsScope, HttpToolsProtocol):
    """uvicorn's httptools protocol, with the ASGI TLS extension in each request's scope."""


class TlsH11Protocol(_WithTlsScope, H11Protocol):
    """uvicorn's h11 protocol, with the ASGI TLS extension in each request's scope."""


class TlsWebSocketProtocol(_WithTlsScope, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O core), with the ASGI TLS extension
    in each connection's scope: a client certificate authenticates a tunnel as a request."""


_GRACEFUL_S: Final = 2


def server_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    http: type[asyncio.Protocol] | None = None,
) -> uvicorn.Config:
    """uvicorn's settings for the service (HTTPS with ``context``), loaded.

    uvicorn's own forwarded-header handling is off: :func:`bes.identity.transport_of`
    believes those headers from the configured trusted proxies only (uvicorn would believe
    them from 127.0.0.1, i.e. from anyone on this machine).
    """
    default = TlsHttpToolsProtocol if importlib.util.find_spec("httptools") else TlsH11Protocol
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http or default,
        ws=TlsWebSocketProtocol,
        ws_max_size=MAX_MESSAGE,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_per_message_deflate=False,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_keep_alive=30,
        # Requests still open this long after a stop was asked for are cancelled: CreateActivity
        # commits in milliseconds, and claim long-polls are answered at once (BesServer).
        timeout_graceful_shutdown=_GRACEFUL_S,
        server_header=False,
        proxy_headers=False,
    )
    config.load()
    # uvicorn builds its context from file names; ours is set once it loaded the rest.
    config.ssl = context
    return config


class BesServer(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` once it listens (after the application started
    and the socket is bound: a port that is taken never gets there) and ``on_stop`` as soon
    as it begins to stop, before it waits for the open requests."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_ready: Callable[[], None],
        on_stop: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


def run(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    on_ready: Callable[[], None] = lambda: None,
    on_stop: Callable[[], None] = lambda: None,
) -> bool:
    """Serve ``app`` until a signal stops it (HTTPS with ``context``); False if it could not
    start (e.g. the port is taken). ``on_ready`` runs once it listens, ``on_stop`` when it
    begins to stop."""
    server = BesServer(
        server_config(app, host=host, port=port, context=context),
        on_ready=on_ready,
        on_stop=on_stop,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return bool(server.started)
