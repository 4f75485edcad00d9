#!/usr/bin/env python3
"""The traffic run: a compressed e-commerce day into a fleet that scales itself, judged by `order-worker verify`.

    chaos/traffic.py --orders 3000 --groups 40 --out out/traffic/short
    chaos/traffic.py --profile steady --refresh-at 4 --orders 1500 --out out/traffic/release

What runs: the local region (harness.LocalRegion) with spot-sim's group scaled by terraform's target-tracking
policy (target `backlog_per_instance_target` visible orders per instance in service, `min_size`, `max_size`,
`default_instance_warmup`: read from terraform/, see harness/scaling.py): AWS's alarms on one-minute
datapoints, compressed by `--time-scale`. The day (`--profile day`): a night lull, a morning ramp, the day, a
flash sale at 20x the base rate, an evening tail (trafficrun/shape.py); `--profile steady` is flat. Orders go
to `--groups` message groups (`--group-mode hot`: 90 % of them to two groups). Every `--interrupt-every`
simulated minutes a random instance gets a Spot interruption or a rebalance recommendation.
`--refresh-at M` starts an instance refresh at simulated minute M: build B (the worker binary under another
path) becomes the launch template version, StartInstanceRefresh with compute.tf's preferences.

After the last order: the backlog waited for, the refresh waited for, then the scale-in back to `min_size`;
`order-worker verify` and the no-second-consumer check. Exit 1 when lost, applied twice, out of order, gaps or
second-consumer receives is not 0, when an instance the group terminated (scale-in, refresh) did not complete its
hook, when the refresh did not succeed or left an instance on build A, or (with --expect-scale-out) the group
never scaled out. `--plant KIND` damages one thing on purpose: the run must fail naming it. Output in --out: report.txt, report.json, report.html (the fleet chart), spot-sim-status.json,
the manifest and the worker logs.
"""

from __future__ import annotations

import argparse
import sys

from trafficrun import shape
from trafficrun.run import run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--groups", type=int, default=40)
    p.add_argument("--group-mode", choices=("uniform", "hot"), default="uniform")
    p.add_argument("--profile", choices=sorted(shape.PROFILES), default="day")
    p.add_argument(
        "--scaling-metric",
        choices=("backlog", "fifo-aware"),
        default="backlog",
        help="backlog: terraform's policy; fifo-aware: held at one spare worker when some worker holds no group",
    )
    p.add_argument("--time-scale", type=float, default=0.05, help="real seconds per simulated second")
    p.add_argument("--interrupt-every", type=float, default=5, help="simulated minutes between Spot events (0: none)")
    p.add_argument("--refresh-at", type=float, default=None, help="simulated minute to start an instance refresh")
    p.add_argument("--work-delay", default="100ms", help="the workers' simulated work per order")
    p.add_argument("--max-groups", type=int, default=2, help="message groups a worker holds at once")
    p.add_argument("--launch-delay", default="40s", help="Pending -> InService (simulated)")
    p.add_argument("--backlog-timeout", type=float, default=300)
    p.add_argument("--refresh-timeout", type=float, default=300)
    p.add_argument("--scale-in-timeout", type=float, default=180)
    p.add_argument("--require-scale-in", action="store_true", help="fail when the group does not get back to min_size")
    p.add_argument("--expect-scale-out", action="store_true", help="fail when the group never scales out")
    p.add_argument("--build", choices=("debug", "release"), default="debug")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--plant",
        choices=("hook", "no-scaling", "lost", "twice", "order"),
        help="the checks' self-test: workers that never complete their hook, a group without the scaling policy, "
        "or the table damaged before verify (a record deleted, a second item at a held position, two swapped)",
    )
    p.add_argument("--out", required=True)
    a = p.parse_args()
    for name in ("orders", "groups"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 < a.time_scale <= 1:
        p.error("--time-scale must be in (0, 1]")
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
