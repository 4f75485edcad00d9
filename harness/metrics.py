"""The workers' Prometheus text (/metrics), parsed once: {(name, frozenset(labels)): value}."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def scrape(addr: str, timeout: float = 2.0) -> dict | None:
    """The parsed /metrics of the worker at host:port, or None if it does not answer."""
    code, text = get(f"http://{addr}/metrics", timeout)
    return parse_prometheus(text) if code == 200 else None


def metric_sum(metrics: dict, name: str, **want) -> float:
    """The sum of `name` over the series whose labels include `want`."""
    return sum(
        v for (n, labels), v in metrics.items() if n == name and all((k, val) in labels for k, val in want.items())
    )


def add_metrics(all_metrics: list[dict]) -> dict:
    out: dict = {}
    for m in all_metrics:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def histogram_quantile(metrics: dict, name: str, q: float) -> float | None:
    """The `q` quantile of histogram `name`, interpolated linearly within its bucket (as Prometheus does)."""
    buckets = []
    for (n, labels), v in metrics.items():
        if n == f"{name}_bucket":
            le = dict(labels).get("le")
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    prev_b, prev_c = 0.0, 0.0
    for b, c in buckets:
        if c >= target:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((target - prev_c) / max(c - prev_c, 1e-9))
        prev_b, prev_c = b, c
    return None
