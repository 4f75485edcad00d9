"""The day's traffic as a rate curve in simulated minutes, and the send plan drawn from it. Pure: no clock, no I/O.

A day is a list of phases, each a duration and a start and end rate as multiples of the base rate (a ramp when
they differ). The base rate follows from the number of orders to send: the curve's integral times the base is the
total. Orders go to message groups drawn from a seeded generator: `uniform` (every customer alike) or `hot` (a
few customers send most orders: the FIFO-aware case, where more instances cannot help a single group).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    minutes: float
    start: float  # rate at the phase's start, x base
    end: float  # rate at its end, x base (a ramp when it differs from start)

    def integral(self) -> float:
        return self.minutes * (self.start + self.end) / 2


# A compressed e-commerce day (simulated minutes): night lull, morning ramp, day, a flash sale at 20x the base,
# the evening tail. 33 minutes: at --time-scale 0.05 about 100 s.
DAY = (
    Phase("night lull", 6, 0.3, 0.3),
    Phase("morning ramp", 8, 0.3, 1.0),
    Phase("day", 6, 1.0, 1.0),
    Phase("flash sale", 5, 20.0, 20.0),
    Phase("evening tail", 8, 1.0, 0.2),
)
# The release under load: steady traffic while an instance refresh replaces the fleet.
STEADY = (Phase("steady", 20, 1.0, 1.0),)
PROFILES = {"day": DAY, "steady": STEADY}


def total_units(phases: tuple[Phase, ...]) -> float:
    """The curve's integral in base-rate minutes."""
    return sum(p.integral() for p in phases)


def length(phases: tuple[Phase, ...]) -> float:
    return sum(p.minutes for p in phases)


def rate(phases: tuple[Phase, ...], t: float) -> float:
    """The rate multiplier at simulated minute `t` (0 outside the day)."""
    at = 0.0
    for p in phases:
        if at <= t < at + p.minutes:
            f = (t - at) / p.minutes
            return p.start + (p.end - p.start) * f
        at += p.minutes
    return 0.0


def cumulative(phases: tuple[Phase, ...], t: float) -> float:
    """Base-rate minutes sent by simulated minute `t`."""
    done, at = 0.0, 0.0
    for p in phases:
        if t >= at + p.minutes:
            done += p.integral()
        elif t > at:
            d = t - at
            done += d * (p.start + (p.start + (p.end - p.start) * d / p.minutes)) / 2
        at += p.minutes
    return done


def phase_start(phases: tuple[Phase, ...], name: str) -> float | None:
    at = 0.0
    for p in phases:
        if p.name == name:
            return at
        at += p.minutes
    return None


def peak(phases: tuple[Phase, ...]) -> float:
    return max(max(p.start, p.end) for p in phases)


def due(phases: tuple[Phase, ...], orders: int, t: float) -> int:
    """How many of `orders` should have been sent by simulated minute `t`."""
    total = total_units(phases)
    if t >= length(phases):
        return orders
    return min(orders, int(orders * cumulative(phases, t) / total))


def groups_for(
    orders: int, groups: int, mode: str, rng: random.Random, hot: int = 2, hot_share: float = 0.9
) -> list[int]:
    """The group index of each order. `uniform`: every group alike (the first `groups` orders cover each group
    once). `hot`: `hot_share` of the orders go to `hot` groups, the rest spread over the others."""
    if mode not in ("uniform", "hot"):
        raise ValueError(f"group mode {mode!r}: uniform or hot")
    if groups < 1:
        raise ValueError("at least one group")
    out = []
    for i in range(orders):
        if mode == "uniform":
            out.append(i if i < groups else rng.randrange(groups))
        elif rng.random() < hot_share or groups <= hot:
            out.append(rng.randrange(min(hot, groups)))
        else:
            out.append(rng.randrange(hot, groups))
    return out
