"""Identifier types and how new ones are minted."""

import base64
import os
import re
import time
from typing import Final, NewType

ActivityId = NewType("ActivityId", str)
"""Our identifier of an activity: 24 URL-safe characters (see :func:`new_activity_id`)."""

BackendJobId = NewType("BackendJobId", str)
"""A backend's own identifier of the job it runs for an activity."""

_ACTIVITY_ID: Final = re.compile(r"[A-Za-z0-9_-]{24}")


def new_ordered_id() -> str:
    """A fresh identifier that sorts by creation time: 24 URL-safe characters.

    18 bytes, base64url: the creation time in milliseconds (6 bytes, so that identifiers, and
    the database indexes over them, grow in order: a new row goes at the end of each index
    instead of at a random place in it) followed by 96 random bits from the system's CSPRNG,
    which make them unguessable.
    """
    millis = time.time_ns() // 1_000_000
    raw = millis.to_bytes(6, "big") + os.urandom(12)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def new_activity_id() -> ActivityId:
    """Mint a fresh activity identifier (:func:`new_ordered_id`)."""
    return ActivityId(new_ordered_id())


def parse_activity_id(text: str) -> ActivityId | None:
    """Return ``text`` as an :data:`ActivityId` if it has the right shape, else None."""
    text = text.strip()
    return ActivityId(text) if _ACTIVITY_ID.fullmatch(text) else None
