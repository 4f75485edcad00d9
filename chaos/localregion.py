#!/usr/bin/env python3
"""The local region as a command, for the shell scripts (the Python harnesses use harness.LocalRegion itself):

    chaos/localregion.py up --out out/x --env-file out/x/region.env [--dynamodb dynamodb-local]   # until SIGTERM
    chaos/localregion.py status --api http://127.0.0.1:PORT [--json]
    chaos/localregion.py iam [--control $IAM_GATE_CONTROL]     # exit 1 naming each denial, if there was any

`up` writes a shell file of `export` lines (the standard AWS endpoint variables, SPOT_SIM_API, QUEUE_URL,
DLQ_URL when there is one, ORDERS_TABLE, GROUPS_TABLE, ORDER_WORKER_BIN) once the fleet is InService; the scripts in chaos/ then run
against the local region exactly as they run against AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from harness import DYNAMODB_BACKENDS, LocalRegion, http_json, log, sim_status
from harness.gate import denial_text


def cmd_up(a) -> int:
    region = LocalRegion(
        out_dir=a.out,
        workers=a.workers,
        time_scale=a.time_scale,
        worker_args=a.worker_arg,
        sim_args=a.sim_arg,
        suffix=a.suffix,
        profile=a.profile,
        launch_delay=a.launch_delay,
        status_every=None,
        dynamodb=a.dynamodb,
    )
    with region:
        if a.env_file:
            region.write_env_file(a.env_file)
            log(f"environment written to {a.env_file}")
        last = 0.0
        while True:
            if not region.sim_alive():
                log("spot-sim exited on its own")
                return 1
            if not region.servers_alive():
                log("the emulator exited on its own")
                return 1
            if a.status_every and time.monotonic() - last >= a.status_every:
                last = time.monotonic()
                with contextlib.suppress(Exception):
                    sys.stderr.write(region.status_table())
                    sys.stderr.flush()
            time.sleep(0.5)


def cmd_status(a) -> int:
    s = sim_status(a.api)
    if a.json:
        print(json.dumps(s, indent=2))
    else:
        for i in s["instances"]:
            print(
                f"{i['id']}  {i['lifecycle_state']:<20} {i.get('target_lifecycle_state') or '-':<11} replaces={i.get('replaces') or '-'}"
            )
    return 0


def cmd_iam(a) -> int:
    """The IAM gate's denials so far: none, exit 0; else their principal, action and resource, exit 1."""
    st = http_json("GET", f"{a.control.rstrip('/')}/iam")
    if st.get("denials"):
        print(denial_text(st["denials"]), file=sys.stderr)
        return 1
    print(f"iam gate ({st['mode']}): {st['decisions']} decisions, {st['allowed']} distinct grants used, no denial")
    return 0


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the local region and keep it up until SIGINT/SIGTERM")
    up.add_argument("--out", required=True, help="directory for logs, status and manifests")
    up.add_argument("--env-file", help="write `export` lines for the scripts here once the fleet is InService")
    up.add_argument("--workers", type=int, default=3)
    up.add_argument("--time-scale", type=float, default=0.1)
    up.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeat)")
    up.add_argument("--sim-arg", action="append", default=[], help="extra spot-sim flag (repeat)")
    up.add_argument("--suffix", default="", help="appended to every resource name")
    up.add_argument("--profile", default="debug")
    up.add_argument("--launch-delay", default="40s", help="Pending -> InService (simulated time)")
    up.add_argument("--status-every", type=float, default=0, help="print the status table every N seconds")
    up.add_argument("--dynamodb", choices=DYNAMODB_BACKENDS, default="ministack", help="where the tables live")
    up.set_defaults(fn=cmd_up)
    st = sub.add_parser("status", help="print spot-sim's instances")
    st.add_argument("--api", default=os.environ.get("SPOT_SIM_API"), required=not os.environ.get("SPOT_SIM_API"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    ia = sub.add_parser("iam", help="the IAM gate's denials (exit 1 if any)")
    ia.add_argument("--control", default=os.environ.get("IAM_GATE_CONTROL"),
                    required=not os.environ.get("IAM_GATE_CONTROL"))  # fmt: skip
    ia.set_defaults(fn=cmd_iam)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
