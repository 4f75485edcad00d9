#!/usr/bin/env python3
"""The run report: a short text summary and an HTML page with an inline SVG timeline of orders applied per
instance over time (from the orders table's ProcessedAt / ProcessedBy), with each instance's rebalance
recommendation, interruption notice, drain, hook completion and termination marked (from spot-sim's status
events and the worker logs).

    chaos/report.py --dir out/demo-X [--status FILE] [--manifest FILE] [--verify FILE] [--table orders]
                    [--require-interruption] [--title TEXT]

Reads from DIR by default: spot-sim-status.json, manifest.jsonl, verify.json (from `order-worker verify
--json`), fis/fis-run.json (optional); writes DIR/records.json, DIR/report.html and DIR/summary.txt, and prints
the summary. The table is scanned with boto3 at AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL (real AWS when
unset), keeping only the manifest's groups.

Exit status: 0 when the audit is clean (nothing lost, applied twice or out of order) and, with
--require-interruption, at least one instance was interrupted and each interrupted instance drained, completed
its lifecycle hook, was terminated and was replaced. 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runreport.audit import problems
from runreport.inputs import emf_figures, instance_story, read_jsonl, scan_table
from runreport.model import applied_per_instance, attribute_unknown_workers, handover, interrupted_instances
from runreport.page import render_html
from runreport.text import summary


def build(args) -> tuple[str, str, bool]:
    d = Path(args.dir)
    manifest = read_jsonl(Path(args.manifest) if args.manifest else d / "manifest.jsonl")
    verify_path = Path(args.verify) if args.verify else d / "verify.json"
    verify = json.loads(verify_path.read_text()) if verify_path.exists() else None
    status_path = Path(args.status) if args.status else d / "spot-sim-status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {"instances": [], "timeline": []}
    fis_path = d / "fis" / "fis-run.json"
    fis = json.loads(fis_path.read_text()) if fis_path.exists() else None
    busiest_path = d / "fis" / "busiest.json"
    busiest = json.loads(busiest_path.read_text()) if busiest_path.exists() else None
    groups = {m["group"] for m in manifest}
    if args.records:
        records = json.loads(Path(args.records).read_text())
    else:
        records = scan_table(args.table, groups)
        (d / "records.json").write_text(json.dumps(records, indent=1))

    stories = {i["id"]: instance_story(i) for i in status.get("instances", [])}
    attribute_unknown_workers(records, status.get("instances", []))
    interrupted = interrupted_instances(status, stories)
    per_instance = applied_per_instance(records)
    handovers = {s["id"]: handover(s, records) for s in interrupted}
    found = problems(verify, str(verify_path), interrupted, stories, status.get("desired") or 0, handovers,
                     args.require_interruption, args.require_busy)  # fmt: skip
    ok = not found
    figures = {i["id"]: emf_figures(i) for i in status.get("instances", [])}
    text = summary(args.title, len(manifest), records, verify, per_instance, stories, fis, busiest, interrupted,
                   handovers, figures, found)  # fmt: skip
    page = render_html(args.title, text, records, stories, per_instance, verify, ok, interrupted, handovers, figures)
    return text, page, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the run directory (inputs and outputs)")
    p.add_argument("--status", help="spot-sim status JSON (default DIR/spot-sim-status.json)")
    p.add_argument("--manifest", help="default DIR/manifest.jsonl")
    p.add_argument("--verify", help="order-worker verify --json output (default DIR/verify.json)")
    p.add_argument("--records", help="records JSON instead of scanning the table")
    p.add_argument("--table", default=os.environ.get("ORDERS_TABLE", "orders"))
    p.add_argument("--require-interruption", action="store_true")
    p.add_argument(
        "--require-busy",
        action="store_true",
        help="the interrupted instance must have finished or released orders, and its groups gone on elsewhere",
    )
    p.add_argument("--title", default="order-worker: orders through a Spot interruption")
    a = p.parse_args(argv)
    summary, page, ok = build(a)
    d = Path(a.dir)
    (d / "report.html").write_text(page)
    (d / "summary.txt").write_text(summary)
    print(summary, end="")
    print(f"report: {d / 'report.html'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
