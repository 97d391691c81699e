"""The wall clock the service runs on by default (tests inject their own)."""

import datetime as dt


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC: the default clock."""
    return dt.datetime.now(dt.UTC)
