"""Who is calling: the identity the service edge decides once per request."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """An authenticated (or anonymous) caller.

    Attributes:
        name: Stable name; it becomes the owner of the activities this caller creates.
        admin: May see every activity and use BES-Management operations.
    """

    name: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        """True if this caller may read or act on an activity owned by ``owner``."""
        return self.admin or owner == self.name


ANONYMOUS = Principal(name="anonymous", admin=True)
"""The caller when no authentication is configured (loopback embedded default)."""
