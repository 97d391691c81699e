"""Identifier types and how new ones are minted."""

import re
import secrets
from typing import Final, NewType

ActivityId = NewType("ActivityId", str)
"""Our identifier of an activity: 22 URL-safe characters, 128 random bits, unguessable."""

BackendJobId = NewType("BackendJobId", str)
"""A backend's own identifier of the job it runs for an activity."""

_ACTIVITY_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}")


def new_activity_id() -> ActivityId:
    """Mint a fresh activity identifier from the system's CSPRNG."""
    return ActivityId(secrets.token_urlsafe(16))


def parse_activity_id(text: str) -> ActivityId | None:
    """Return ``text`` as an :data:`ActivityId` if it has the right shape, else None."""
    text = text.strip()
    return ActivityId(text) if _ACTIVITY_ID.fullmatch(text) else None
