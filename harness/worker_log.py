"""The workers' logs, read as what they are: one JSON object a line (the harnesses run `--log-format json`).

Two sorts of line: events (`timestamp`, `level`, `message`, `target` and the event's own fields at the top
level; older workers nest those in `fields`) and CloudWatch EMF records (an `_aws` member, src/emf.rs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from .times import parse_time


def lines(path: Path | str) -> Iterator[dict]:
    """Every JSON object of a log, in order; anything else (a panic's text, a torn last line) is skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if isinstance(o, dict):
            yield o


def events(path: Path | str, before: str | None = None) -> Iterator[dict]:
    """The log's events, each flat (its fields beside `message`) with `t` (epoch seconds); with `before` (an RFC
    3339 UTC time, as utc_now() writes), only those stamped earlier."""
    for o in lines(path):
        if "_aws" in o:
            continue
        ev = {**o, **o.get("fields", {})}
        ev.pop("fields", None)
        if before and str(ev.get("timestamp", "")) >= before:
            continue
        ev["t"] = parse_time(ev.get("timestamp"))
        yield ev


def emf_records(path: Path | str) -> Iterator[dict]:
    """The log's EMF records (`record`: interval, drain or final)."""
    return (o for o in lines(path) if "_aws" in o)


def trigger_name(trigger) -> str:
    """The drain trigger's variant: `Interruption { action: ... }` -> `Interruption` (the worker logs its Debug
    form, whose details differ for every notice)."""
    m = re.match(r"\w+", str(trigger or "?"))
    return m.group(0) if m else "?"


def drain_reports(path: Path | str, before: str | None = None) -> list[dict]:
    """The `drain complete` events of one log: trigger, took_ms, finished, released, deadline_hit, hook, at."""
    return [
        {
            "trigger": trigger_name(e.get("trigger")),
            "took_ms": int(e.get("took_ms", 0)),
            "finished": e.get("finished"),
            "released": e.get("released"),
            "deadline_hit": e.get("deadline_hit"),
            "hook": e.get("hook"),
            "at": e.get("timestamp"),
        }
        for e in events(path, before)
        if e.get("message") == "drain complete"
    ]
