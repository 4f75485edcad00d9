#!/usr/bin/env python3
"""Pick the busiest Spot worker of the local region, the way a user would: ask the region which instances are
InService (spot-sim's /_sim/status, the local stand-in for `aws autoscaling describe-auto-scaling-groups`) and
ask each instance's worker what it holds (its /metrics: `order_worker_groups_in_flight`,
`order_worker_messages_in_flight`, the gauges an EC2 user reads in CloudWatch). Wait, with a deadline, until
at least --min-busy InService workers hold work (--all-busy: every one) and the busiest one holds at least
--min-groups groups and --min-messages messages, then print its instance id (the argument of `chaos/fis-run.sh --instances`), or, with --templates,
`--template-id ID` of the FIS template made for it beforehand (`chaos/fis-run.sh --create-only`): starting a
ready template is one call, so the worker is still busy when the interruption reaches it.

    chaos/busiest.py --api SPOT_SIM_API [--min-groups 2] [--min-messages 4] [--min-busy 1 | --all-busy] [--timeout 60]
                     [--json FILE] [--templates FILE]

--templates FILE: lines `INSTANCE-ID TEMPLATE-ID` (it may still be being written: only instances listed in it
are chosen).

--json FILE records the snapshot the choice was made on (per instance: groups and messages held, orders
applied). Exit status: 0 with the id on stdout; 1 at the deadline (the last snapshot on stderr); 2 on bad use.
Standard library only (and harness's metrics and spot-sim parts, which are too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness import sim_status, utc_now
from harness.metrics import metric_sum, scrape


def worker_load(metrics_addr: str) -> dict | None:
    """The held groups/messages and orders applied (accepted or rejected) of one worker, or None if its metrics
    do not answer."""
    m = scrape(metrics_addr)
    if m is None:
        return None
    return {
        "groups": int(metric_sum(m, "order_worker_groups_in_flight")),
        "messages": int(metric_sum(m, "order_worker_messages_in_flight")),
        "applied": int(metric_sum(m, "order_worker_orders_total", status="accepted"))
        + int(metric_sum(m, "order_worker_orders_total", status="rejected")),
    }


def snapshot(api: str) -> list[dict]:
    """Every InService instance with a live worker, and what its worker holds."""
    status = sim_status(api)
    rows = []
    for i in status.get("instances", []):
        if i.get("lifecycle_state") != "InService" or not i.get("process_alive") or not i.get("metrics_addr"):
            continue
        load = worker_load(i["metrics_addr"])
        if load is not None:
            rows.append({"id": i["id"], **load})
    return rows


def read_templates(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out[parts[0]] = parts[1]
    except OSError:
        pass
    return out


def choose(
    rows: list[dict],
    min_groups: int,
    min_messages: int,
    all_busy: bool,
    templates: dict[str, str] | None = None,
    min_busy: int = 1,
) -> dict | None:
    if not rows:
        return None
    busy = sum(1 for r in rows if r["groups"] > 0)
    if (all_busy and busy < len(rows)) or busy < min_busy:
        return None
    if templates is not None:
        rows = [r for r in rows if r["id"] in templates]
        if not rows:
            return None
    # Most messages first: held messages are the work still ahead of it (each takes its time in order).
    best = max(rows, key=lambda r: (r["messages"], r["groups"]))
    if best["groups"] < min_groups or best["messages"] < min_messages:
        return None
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api", required=True, help="spot-sim's API (SPOT_SIM_API)")
    p.add_argument("--min-groups", type=int, default=2, help="groups the chosen worker must hold")
    p.add_argument("--min-messages", type=int, default=4, help="messages the chosen worker must hold")
    p.add_argument("--all-busy", action="store_true", help="also wait until every InService worker holds a group")
    p.add_argument("--min-busy", type=int, default=1, help="wait until this many InService workers hold a group")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--every", type=float, default=0.1, help="seconds between looks")
    p.add_argument("--json", help="write the snapshot the choice was made on here")
    p.add_argument("--templates", help="lines `INSTANCE-ID TEMPLATE-ID`: print --template-id of the chosen one")
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.timeout
    rows: list[dict] = []
    while True:
        try:
            rows = snapshot(a.api)
        except (OSError, RuntimeError) as e:  # not answering, or answering an error
            print(f"busiest: spot-sim status failed: {e}", file=sys.stderr)
            rows = []
        templates = read_templates(a.templates)
        best = choose(rows, a.min_groups, a.min_messages, a.all_busy, templates, a.min_busy)
        if best:
            at = utc_now()
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(
                        {
                            "chosen": best["id"],
                            "at": at,
                            "workers": rows,
                            "template": (templates or {}).get(best["id"]),
                        },
                        f,
                        indent=1,
                    )
            desc = ", ".join(f"{r['id']} {r['groups']} groups/{r['messages']} messages" for r in rows)
            print(f"busiest: {best['id']} ({desc})", file=sys.stderr)
            print(f"--template-id {templates[best['id']]}" if templates is not None else best["id"])
            return 0
        if time.monotonic() > deadline:
            print(
                f"busiest: no worker held {a.min_groups} groups and {a.min_messages} messages (with "
                f"{'every worker' if a.all_busy else a.min_busy} busy) within "
                f"{a.timeout:.0f}s; last look: {json.dumps(rows)}",
                file=sys.stderr,
            )
            return 1
        time.sleep(a.every)


if __name__ == "__main__":
    sys.exit(main())
