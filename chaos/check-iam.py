#!/usr/bin/env python3
"""Least privilege as a figure (issue 19): every grant of the policies the local region enforced (rendered from
terraform/policies/) against every (principal, action, resource) the IAM gate allowed during the runs that wrote
DIR (scripts/test points every run at out/iam-use). Exits 1 on a grant nothing used, unless
terraform/policies/not-exercised-locally.json says why, on an explanation no unused grant needs (stale), and
on a run with no record at all.

    chaos/check-iam.py out/iam-use [--json out/iam-usage.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iamgate import usage


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="folders of iam-use-*.jsonl records")
    p.add_argument("--json", type=Path, help="write the grants and their use counts here")
    a = p.parse_args(argv)
    u = usage.load(a.dirs)
    if not u.grants:
        print("check-iam: no records (was the IAM gate on? LOCAL_IAM_USE_DIR?)", file=sys.stderr)
        return 1
    text, unused, stale = usage.report(u, usage.reasons())
    print(text)
    if a.json:
        a.json.write_text(json.dumps([{**g.__dict__, "uses": n} for g, n in u.grants.items()], indent=2))
    rc = 0
    for g in unused:
        via = f" via {g.via}" if g.via else ""
        print(f"check-iam: UNUSED grant {g.principal}/{g.policy}/{g.sid}: {g.action} on resource #{g.resource}{via}: "
              f"remove it, or say why in terraform/policies/not-exercised-locally.json", file=sys.stderr)  # fmt: skip
        rc = 1
    for k in stale:
        print(f"check-iam: '{k}' in not-exercised-locally.json explains no unused grant: remove it", file=sys.stderr)
        rc = 1
    for principal, action, resource in sorted(u.unattributed):
        print(
            f"check-iam: {principal} was allowed {action} on {resource} but no statement explains it", file=sys.stderr
        )
        rc = 1
    if rc == 0:
        print(f"check-iam: OK: {len(u.grants)} grants, each used or explained")
    return rc


if __name__ == "__main__":
    sys.exit(main())
