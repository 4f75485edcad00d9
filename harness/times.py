"""The one time parser: the workers' log timestamps, ProcessedAt, spot-sim's event times are RFC 3339."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def parse_time(s: str | None) -> float | None:
    """RFC 3339 (any fraction, `Z` or an offset; no zone is read as UTC) -> epoch seconds; None if it is not one."""
    if not s:
        return None
    try:
        d = datetime.fromisoformat(str(s))
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def utc_now() -> str:
    """Now, as the workers stamp their log lines (microseconds, `Z`): such strings compare in time order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hms(t: float | None, millis: bool = True) -> str:
    """Epoch seconds as UTC HH:MM:SS(.mmm), for reports; `-` for no time."""
    if t is None:
        return "-"
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%H:%M:%S") + (f".{int(d.microsecond / 1000):03d}" if millis else "")


def stamp() -> str:
    """The wall-clock time of a progress line."""
    return time.strftime("%H:%M:%S")
