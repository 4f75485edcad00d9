"""The fault proxy's rules: what a rule may say (checked when it is added, so that a typo never silently becomes
"every request"), whether one is still in force, and which rule decides a request. chaos/proxy.py's docstring
is the manual of the fields and actions."""

from __future__ import annotations

import asyncio
import random
import time

SERVICES = ("sqs", "dynamodb", "autoscaling", "fis")
ACTIONS = ("error", "stall", "reset", "delay", "pass-then-reset")
# What a rule may say, in the order /rules shows it.
RULE_FIELDS = ("service", "operation", "table", "action", "code", "status", "message", "type", "delay_seconds",
               "count", "seconds", "probability")  # fmt: skip


def _number(req: dict, key: str, lo: float, hi: float, integer: bool = False) -> float | None:
    if req.get(key) is None:
        return None
    v = req[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v):
        raise ValueError(f"{key} must be a{'n integer' if integer else ' number'}")
    if not (lo < v <= hi):
        raise ValueError(f"{key} must be in ({lo}, {hi}]")
    return int(v) if integer else float(v)


class Rule:
    def __init__(self, rid: int, req: dict):
        unknown = set(req) - set(RULE_FIELDS)
        if unknown:
            raise ValueError(f"unknown rule fields {sorted(unknown)} (known: {sorted(RULE_FIELDS)})")
        self.id = rid
        self.service = req.get("service")
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}")
        self.operation: str | None = req.get("operation") or None
        self.table: str | None = req.get("table") or None
        if self.table and self.service != "dynamodb":
            raise ValueError("table is for dynamodb rules only")
        self.action = req.get("action")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")
        self.code: str | None = req.get("code")
        self.message: str | None = req.get("message")
        self.type: str | None = req.get("type")
        status = _number(req, "status", 399, 599, integer=True)
        self.status = int(status) if status else None
        if self.action == "error" and not self.code:
            raise ValueError("action error needs a code")
        delay = _number(req, "delay_seconds", 0, 600)
        if self.action == "delay" and delay is None:
            raise ValueError("action delay needs delay_seconds")
        self.delay_seconds = delay or 0.0
        count = _number(req, "count", 0, 10**9, integer=True)
        self.count = int(count) if count else None
        self.seconds = _number(req, "seconds", 0, 3600)
        self.probability = _number(req, "probability", 0, 1)
        self.created = time.monotonic()
        self.until = self.created + self.seconds if self.seconds else None
        self.remaining = self.count
        self.hits = 0
        self.matched = 0
        self.held = 0
        self.removed = False
        # Set when the rule stops holding requests: its seconds are up, or it was deleted.
        self.released = asyncio.Event()
        self._timer = asyncio.get_running_loop().call_later(self.seconds, self.released.set) if self.seconds else None

    def in_force(self, now: float) -> bool:
        return (
            not self.removed
            and (self.until is None or now < self.until)
            and (self.remaining is None or self.remaining > 0)
        )

    def take(self, service: str, operation: str, now: float, tables: frozenset[str] = frozenset()) -> bool:
        """Whether this rule affects this request, which names `tables` (and count it if so)."""
        if service != self.service or (self.operation and operation != self.operation):
            return False
        if self.table and self.table not in tables:
            return False
        if not self.in_force(now):
            return False
        self.matched += 1
        if self.probability is not None and random.random() >= self.probability:
            return False
        self.hits += 1
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def remove(self) -> None:
        self.removed = True
        if self._timer:
            self._timer.cancel()
        self.released.set()

    def view(self) -> dict:
        now = time.monotonic()
        out = {k: getattr(self, k) for k in ("id", *RULE_FIELDS, "hits", "matched", "remaining", "held")}
        out["active"] = self.in_force(now)
        out["seconds_left"] = round(max(0.0, self.until - now), 3) if self.until else None
        return out


def decide(
    rules: list[Rule], service: str, operation: str, now: float, tables: frozenset[str] = frozenset()
) -> Rule | None:
    """The rule that decides a request: the first in force that matches, in the order the rules were added."""
    for r in rules:
        if r.take(service, operation, now, tables):
            return r
    return None
