"""spot-sim's control API: its status document, and its events by their `kind` (never by their text, which
is for people)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .times import parse_time


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 10) -> Any:
    """One JSON request; a refusal raises RuntimeError with the status and the answer (" 409 " for a conflict)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}") from None


def sim_status(api: str) -> dict:
    """The /_sim/status document: instances (each with its events), timeline, experiments."""
    return http_json("GET", f"{api.rstrip('/')}/_sim/status")


def events(inst: dict, kind: str) -> list[dict]:
    """The events of one instance of this kind (snake_case, as spot-sim's EventKind), oldest first."""
    return [e for e in inst.get("events", []) if e.get("kind") == kind]


def first(inst: dict, kind: str) -> dict | None:
    """The first event of this kind of one instance, or None."""
    return next(iter(events(inst, kind)), None)


def first_at(inst: dict, kind: str) -> float | None:
    """When the first event of this kind happened (epoch seconds), or None."""
    e = first(inst, kind)
    return parse_time(e.get("at")) if e else None


def hook_timed_out(inst: dict) -> dict | None:
    """The Terminating:Proceed that a hook timeout caused (spot-sim has no kind of its own for it: the cause is in
    the event's text, the only place it says why the hook ended)."""
    return next((e for e in events(inst, "terminating_proceed") if "hook timed out" in e.get("event", "")), None)
