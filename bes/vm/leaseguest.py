"""The guest of a VM lease: a ``debian-12`` VM its owner logs into with SSH.

The worker contextualizes it through the NoCloud seed's ``#cloud-config``
(:func:`lease_user_data`), read by the template's cloud-init (debian.py):

* the SSH **host key** is made on the host (:meth:`HostKey.generate`) and handed in as
  ``ssh_keys``, so cloud-init installs it instead of generating one, and the client knows it
  before its first connection: no prompt, no disabled check;
* its host name, :func:`lease_hostname`;
* one **user** (:data:`DEFAULT_USER`) with the owner's public keys (checked by
  :func:`parse_public_key`) and passwordless sudo; no password login at all, no root login;
* once sshd listens on port 22 with that host key, the guest writes :func:`ready_marker` to
  its serial console (or :func:`failed_marker` if it never does), which the worker watches
  for in the console log.

The network is the template's: cloud-init's fallback configuration, DHCP on the first NIC
(QEMU's user-mode NAT answers it, ``restrict=on`` or not), so the seed needs no
``network-config``. There is no job script and no
``power_state``: the guest runs until its owner ends the lease or powers it off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bes.errors import InvalidRequest

DEFAULT_USER = "debian"
"""The login the guest gets (the convention of Debian's cloud images)."""
SSH_PORT = 22
MIN_RSA_BITS = 2048
READY_TIMEOUT_S = 120
"""How long the guest waits for sshd to listen before it reports failure instead."""

_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_REFUSED_TYPES = re.compile(r"(ssh-dss|sk-[a-z0-9@.-]+|[a-z0-9-]+-cert-v0\d@openssh\.com)\Z")
_MAX_KEY_CHARS = 16384  # an RSA 16384-bit key is about 2,800 characters
_MAX_COMMENT_CHARS = 256
_SAFE_COMMENT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
_HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key"

# First match wins in sshd_config, and Debian's includes sshd_config.d/*.conf at its top.
_SSHD_CONFIG = f"""\
# bes VM lease: the host key from the seed, the owner's keys only, no root login.
HostKey {_HOST_KEY_FILE}
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
"""


class PublicKeyError(InvalidRequest, ValueError):
    """A text given as an SSH public key is not one we accept (the message says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostKey:
    """An ed25519 SSH host key for one lease's guest, made on the host."""

    private_openssh: str = field(repr=False)
    """``-----BEGIN OPENSSH PRIVATE KEY-----``…, unencrypted: it goes into the seed."""
    public: str
    """``ssh-ed25519 AAAA…``, without a comment."""

    @classmethod
    def generate(cls) -> HostKey:
        """A fresh key pair."""
        return cls._from(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_openssh(cls, text: str) -> HostKey:
        """The key pair of a stored private key (the OpenSSH format :meth:`generate` makes).

        Raises:
            ValueError: Not an unencrypted OpenSSH ed25519 private key.
        """
        try:
            key = serialization.load_ssh_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not an unencrypted OpenSSH private key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("a lease's host key must be ed25519")
        # Kept as given: a new encoding of the same key would differ (its check bytes are random).
        return cls._from(key, text)

    @classmethod
    def _from(cls, key: ed25519.Ed25519PrivateKey, private: str | None = None) -> HostKey:
        if private is None:
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private_openssh=private, public=public.decode())

    @property
    def fingerprint(self) -> str:
        """``SHA256:…``, as ``ssh-keygen -l`` and ssh's own messages show it."""
        blob = base64.b64decode(self.public.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    def known_hosts_line(self, host: str, port: int = SSH_PORT) -> str:
        """The ``known_hosts`` line for the guest reached at ``host``:``port``."""
        name = host if port == SSH_PORT else f"[{host}]:{port}"
        return f"{name} {self.public}\n"


def parse_public_key(text: str) -> str:
    """Check one SSH public key a user gives (e.g. the contents of ``~/.ssh/id_ed25519.pub``).

    Accepted: ed25519, ECDSA (NIST P-256, P-384, P-521) and RSA of at least 2048 bits, as one
    ``TYPE BASE64 [COMMENT]`` line; blank lines and ``#`` lines around it are ignored.

    Returns:
        ``TYPE BASE64``, re-encoded from the parsed key, plus the comment if it is printable
        ASCII (dropped otherwise).

    Raises:
        PublicKeyError: (a ``ValueError``) Not a public key, a private key, more than one
            key, ``authorized_keys`` options (``command=``, ``from=``…), a key type we do not
            accept (DSA, security keys, certificates), or RSA under 2048 bits.
    """
    if "PRIVATE KEY" in text:
        raise PublicKeyError("a private key was given; give the public key (the .pub file)")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise PublicKeyError("not an SSH public key: the text is empty")
    if len(lines) > 1:
        raise PublicKeyError(f"give one SSH public key at a time, not {len(lines)} lines")
    line = lines[0]
    if len(line) > _MAX_KEY_CHARS:
        raise PublicKeyError(f"not an SSH public key: longer than {_MAX_KEY_CHARS} characters")
    words = line.split()
    key_type = words[0]
    if _REFUSED_TYPES.match(key_type):
        raise PublicKeyError(f"{key_type} keys are not accepted; use an ed25519, ECDSA or RSA key")
    if key_type not in _KEY_TYPES:
        if any(word in _KEY_TYPES for word in words[1:]):
            raise PublicKeyError(
                "authorized_keys options (such as command= or from=) are not accepted; "
                "give the public key alone"
            )
        raise PublicKeyError(f"not an SSH public key: {_shown(line)}")
    if len(words) < 2:
        raise PublicKeyError(f"not an SSH public key: {key_type} without its key data")
    key = _load(key_type, words[1])
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise PublicKeyError(
            f"RSA keys under {MIN_RSA_BITS} bits are refused (this one has {key.key_size}); "
            "make an ed25519 key: ssh-keygen -t ed25519"
        )
    normalized = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    comment = " ".join(words[2:])
    if comment and len(comment) <= _MAX_COMMENT_CHARS and _SAFE_COMMENT.match(comment):
        return f"{normalized} {comment}"
    return normalized


def _load(
    key_type: str, data: str
) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        base64.b64decode(data, validate=True)
        key = serialization.load_ssh_public_key(f"{key_type} {data}".encode())
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise PublicKeyError(f"not an SSH public key: {key_type} {_shown(data)}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PublicKeyError(f"{key_type} keys are not accepted; use an ed25519, ECDSA or RSA key")
    return key


def _shown(text: str) -> str:
    """Enough of what the user gave to recognize it, never all of a long secret-looking blob."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return repr(printable if len(printable) <= 40 else printable[:37] + "...")


def lease_hostname(lease_id: str) -> str:
    """The guest's host name: ``bes-`` and the lease id, as a valid DNS label.

    Activity ids are base64url, and ``_`` or a final ``-`` make a name that the guest's
    ``hostname`` refuses (RFC 1123 labels: letters, digits and inner hyphens, at most 63
    characters); the VM then keeps the image's name and sudo cannot resolve its own.
    """
    return re.sub(r"[^A-Za-z0-9-]+", "-", f"bes-{lease_id}")[:63].rstrip("-")


def ready_marker(lease_id: str) -> str:
    """The line the guest writes to its serial console (ttyS0) once sshd listens on port 22
    with the seed's host key and the owner's keys are installed: the lease is ready."""
    return f"BES-LEASE-READY {lease_id}"


def failed_marker(lease_id: str) -> str:
    """The line the guest writes instead of :func:`ready_marker` when sshd did not listen
    within :data:`READY_TIMEOUT_S` or does not hold the seed's host key."""
    return f"BES-LEASE-FAILED {lease_id}"


def lease_user_data(
    *,
    lease_id: str,
    authorized_keys: Sequence[str],
    host_key: HostKey,
    user: str = DEFAULT_USER,
) -> str:
    """The ``#cloud-config`` user-data of a lease's guest.

    Args:
        lease_id: The lease's id (the seed's instance id), in the console markers and the
            host name (:func:`lease_hostname`).
        authorized_keys: The owner's SSH public keys, each checked with
            :func:`parse_public_key`; at least one.
        host_key: The guest's SSH host key (the client's ``known_hosts`` gets its public part).
        user: The login, with passwordless sudo.

    Returns:
        The user-data: ``#cloud-config`` and a JSON document (JSON is YAML), which
        cloud-init's schema accepts.

    Raises:
        PublicKeyError: A key is not accepted, or there is none.
        ValueError: ``user`` is not a plain lower-case login name, or is root.
    """
    if not _USER_NAME.match(user) or user == "root":
        raise ValueError(f"not a login name for a lease: {user!r}")
    keys = [parse_public_key(key) for key in authorized_keys]
    if not keys:
        raise PublicKeyError("a lease needs at least one SSH public key to log in with")
    config = {
        # Over the meta-data's local-hostname, which may not be a valid name (see there).
        "hostname": lease_hostname(lease_id),
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public,
        },
        "ssh_deletekeys": True,
        "ssh_pwauth": False,
        "disable_root": True,
        "manage_etc_hosts": True,  # sudo resolves the VM's own name without DNS
        "users": [
            {
                "name": user,
                "gecos": "bes VM lease",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": keys,
            }
        ],
        "write_files": [
            {
                "path": "/etc/ssh/sshd_config.d/10-bes-lease.conf",
                "content": _SSHD_CONFIG,
                "permissions": "0644",
            }
        ],
        "runcmd": [_ready_script(lease_id, host_key)],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def _ready_script(lease_id: str, host_key: HostKey) -> str:
    """Start sshd if it is not yet, wait until it listens, check that it holds the seed's host
    key, and say so on the serial console.

    runcmd runs in cloud-init's final stage, after multi-user.target: by then
    systemd-user-sessions has lifted /run/nologin (which refuses every login but root's) and
    set-passwords has restarted sshd for ``ssh_pwauth``, so "ready" stays true.
    """
    tries = READY_TIMEOUT_S * 5
    return f"""\
systemctl --no-block start ssh.service
tries=0
until ss -Hltn 'sport = :{SSH_PORT}' | grep -q .; do
    tries=$((tries + 1))
    [ $tries -ge {tries} ] && break
    sleep 0.2
done
if [ $tries -lt {tries} ] && grep -qxF {shlex.quote(host_key.public)} \\
        {_HOST_KEY_FILE}.pub 2>/dev/null; then
    line={shlex.quote(ready_marker(lease_id))}
else
    line={shlex.quote(failed_marker(lease_id) + ": sshd is not listening with the seed's key")}
fi
for console in /dev/ttyS0 /dev/console; do
    {{ echo "$line" > "$console"; }} 2>/dev/null && break
done
"""
