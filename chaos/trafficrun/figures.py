"""The traffic run's figures, from what the run recorded: the samples of the queue and the group, the send times,
the orders table's ProcessedAt, and spot-sim's instances. Pure: every input is data; times are epoch seconds
(real), shown also in simulated units (real / time scale).
"""

from __future__ import annotations

import math


def quantile(xs: list[float], q: float) -> float | None:
    """The q-quantile by the nearest-rank method (None for no data)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def latencies(sent: dict[str, float], processed: dict[str, float]) -> list[float]:
    """Send -> record, seconds, for every order both sent and recorded."""
    return [processed[k] - t for k, t in sent.items() if k in processed]


def burst_recovery(samples: list[dict], burst_start: float, target: float) -> dict:
    """From the flash sale's start: when the backlog per instance in service first went above the target, its
    peak, and when it was back at or under the target for good after that (None: never above, or never back).
    Samples: {t, visible, in_service} in time order."""
    after = [s for s in samples if s["t"] >= burst_start]
    per = [(s["t"], s["visible"] / max(1, s["in_service"])) for s in after]
    above = [t for t, v in per if v > target]
    if not above:
        return {
            "above_target_at": None,
            "back_under_at": None,
            "peak_per_instance": max((v for _, v in per), default=0),
        }
    last_above = above[-1]
    back = next((t for t, v in per if t > last_above and v <= target), None)
    return {
        "above_target_at": above[0],
        "back_under_at": back,
        "peak_per_instance": max(v for _, v in per),
        "seconds": None if back is None else back - burst_start,
    }


def oldest_age_series(sent: dict[str, float], processed: dict[str, float], times: list[float]) -> list[float]:
    """At each time, the age of the oldest order sent and not yet recorded (0 when none)."""
    pending = sorted((t, processed.get(k, math.inf)) for k, t in sent.items())
    out = []
    for now in times:
        oldest = next((s for s, p in pending if s <= now < p), None)
        out.append(0.0 if oldest is None else now - oldest)
    return out


def instance_seconds(instances: list[dict], start: float, end: float) -> float:
    """Seconds instances ran inside [start, end] (launched_at -> terminated_at, or `end` if still running):
    what EC2 bills (per second), Pending and Terminating included."""
    total = 0.0
    for i in instances:
        a = max(start, i["launched_at"])
        b = min(end, i["terminated_at"] if i.get("terminated_at") is not None else end)
        if b > a:
            total += b - a
    return total


def cost_per_million(instance_hours: float, orders: int, hourly: float) -> float | None:
    """Compute cost per million orders at `hourly` USD per instance-hour."""
    if orders <= 0:
        return None
    return instance_hours * hourly / orders * 1e6


def fleet_figures(instances: list[dict], samples: list[dict], start: float, end: float, scale: float) -> dict:
    """Instance-minutes used (simulated) against a fixed fleet sized for the peak (the most instances the group
    wanted at once, all the time)."""
    used = instance_seconds(instances, start, end) / scale / 60
    peak = max((s["desired"] for s in samples), default=0)
    fixed = peak * (end - start) / scale / 60
    return {
        "instance_minutes": used,
        "peak_desired": peak,
        "fixed_fleet_instance_minutes": fixed,
        "saved_share": None if fixed <= 0 else 1 - used / fixed,
    }


def send_rates(sent: dict[str, float], t0: float, scale: float, day: tuple[float, float]) -> dict:
    """Orders sent per simulated minute: the busiest minute against the median minute of the `day` phase
    (start, end in simulated minutes): the burst the producer achieved, which a loaded emulator can flatten."""
    counts: dict[int, int] = {}
    for t in sent.values():
        m = int((t - t0) / scale / 60)
        counts[m] = counts.get(m, 0) + 1
    base = sorted(counts.get(m, 0) for m in range(int(day[0]), int(day[1])))
    median = base[len(base) // 2] if base else 0
    peak = max(counts.values(), default=0)
    return {"peak_per_minute": peak, "day_median_per_minute": median,
            "achieved_burst_ratio": None if not median else peak / median}  # fmt: skip
