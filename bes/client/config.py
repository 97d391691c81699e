"""Where the client finds its endpoint and credentials: flags, then environment, then a file.

The file is TOML, at ``$BES_CONFIG``, else ``$XDG_CONFIG_HOME/bes/client.toml`` (by default
``~/.config/bes/client.toml``)::

    endpoint = "https://bes.example.org:8443/bes"
    ca_file = "/etc/grid-security/certificates/site-ca.pem"
    timeout_s = 60

    [auth]
    username = "alice"
    password_file = "~/.config/bes/password"   # or password = "…" (keep the file private)
    digest = false                             # PasswordDigest instead of PasswordText
    certificate = "~/.globus/usercert.pem"     # TLS client certificate …
    key = "~/.globus/userkey.pem"
    sign = false                               # … and sign each message with it (WS-Security)

Environment variables: ``BES_ENDPOINT``, ``BES_USERNAME``, ``BES_PASSWORD``,
``BES_PASSWORD_FILE``, ``BES_CERTIFICATE``, ``BES_KEY``, ``BES_CA_FILE``, ``BES_SIGN``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bes.client.auth import ClientCertificate, Credential, UsernameToken, X509Signature
from bes.client.faults import ClientError
from bes.client.service import BESClient

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:8080/bes"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything needed to build a :class:`BESClient`.

    Attributes:
        endpoint: The BES endpoint URL.
        source: Where ``endpoint`` came from (``flag``, ``environment``, a file, ``default``).
        username: For a WS-Security UsernameToken.
        password: Its password.
        digest: Send a PasswordDigest.
        certificate: PEM certificate for TLS client authentication (and signing).
        key: Its private key, if not in ``certificate``.
        sign: Sign each message with ``certificate`` and ``key``.
        ca_file: CA certificates to trust for ``https``.
        timeout_s: Seconds to wait for each answer.
    """

    endpoint: str = DEFAULT_ENDPOINT
    source: str = "default"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    digest: bool = False
    certificate: Path | None = None
    key: Path | None = None
    sign: bool = False
    ca_file: Path | None = None
    timeout_s: float = 30.0

    def credentials(self) -> list[Credential]:
        """The credentials to present.

        Raises:
            ClientError: Signing is asked for without a certificate and key.
        """
        found: list[Credential] = []
        if self.username:
            found.append(UsernameToken(self.username, self.password, self.digest))
        if self.certificate is not None:
            found.append(ClientCertificate(self.certificate, self.key))
        if self.sign:
            if self.certificate is None or self.key is None:
                raise ClientError("signing needs both a certificate and its key")
            found.append(X509Signature(self.key, self.certificate))
        return found

    def client(self, endpoint: str | None = None) -> BESClient:
        """A client of ``endpoint`` (default: the configured one) with these credentials."""
        return BESClient(
            endpoint or self.endpoint,
            auth=self.credentials(),
            ca_file=self.ca_file,
            timeout_s=self.timeout_s,
        )


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the configuration file is looked for."""
    env = os.environ if environ is None else environ
    if env.get("BES_CONFIG"):
        return Path(env["BES_CONFIG"]).expanduser()
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "bes" / "client.toml"


def load_config(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ClientConfig:
    """Merge flags (non-None values win), the environment and the file.

    Args:
        flags: Values given on the command line, by the names of :class:`ClientConfig` (plus
            ``password_file``).
        environ: The environment (default: ``os.environ``).

    Raises:
        ClientError: The file is unreadable or not valid TOML, or a password file is missing.
    """
    env = os.environ if environ is None else environ
    path = config_path(env)
    from_file = _read_file(path)
    auth = from_file.get("auth", {}) if isinstance(from_file.get("auth"), dict) else {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("flag", {k: v for k, v in (flags or {}).items() if v is not None}),
        ("environment", _from_environment(env)),
        (str(path), {**{k: v for k, v in from_file.items() if k != "auth"}, **auth}),
    ]

    def pick(name: str) -> tuple[Any, str]:
        for source, values in layers:
            if values.get(name) not in (None, ""):
                return values[name], source
        return None, "default"

    endpoint, source = pick("endpoint")
    password, _ = pick("password")
    password_file, _ = pick("password_file")
    if password is None and password_file:
        password = _read_secret(Path(str(password_file)).expanduser())
    timeout, _ = pick("timeout_s")
    return ClientConfig(
        endpoint=str(endpoint or DEFAULT_ENDPOINT),
        source=source,
        username=_text(pick("username")[0]),
        password=_text(password),
        digest=_flag(pick("digest")[0]),
        certificate=_path(pick("certificate")[0]),
        key=_path(pick("key")[0]),
        sign=_flag(pick("sign")[0]),
        ca_file=_path(pick("ca_file")[0]),
        timeout_s=float(timeout) if timeout is not None else 30.0,
    )


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    names = {
        "BES_ENDPOINT": "endpoint",
        "BES_USERNAME": "username",
        "BES_PASSWORD": "password",
        "BES_PASSWORD_FILE": "password_file",
        "BES_CERTIFICATE": "certificate",
        "BES_KEY": "key",
        "BES_CA_FILE": "ca_file",
        "BES_SIGN": "sign",
    }
    return {key: env[variable] for variable, key in names.items() if env.get(variable)}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"the client configuration {path} is unreadable: {exc}") from exc


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read the password file {path}: {exc.strerror}") from exc


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(str(value)).expanduser()


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on") if value is not None else False
