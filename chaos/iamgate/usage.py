"""Least privilege as a figure: every grant of every policy the local region enforced, against what the gate
allowed during the runs (the `--iam-use-dir` records). A grant is one action pattern on one resource of one
statement, and for a key grant limited by kms:ViaService, through one service; one that no run used fails the
check, unless terraform/policies/not-exercised-locally.json says why next to the policy (a call made only where
the local region cannot reach, such as the CloudWatch agent). A use is credited to the first grant that covers
it, so a grant that only repeats another shows as unused; an Allow with NotAction or NotResource cannot be
credited at all and must be explained."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .stack import POLICY_DIR

# Principals whose policies are ours to keep least-privileged (the deployer stands in for the administrator).
CHECKED = ("worker", "producer", "operator", "fis")


def _wild(pattern: str, case: bool) -> re.Pattern:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{rx}$", 0 if case else re.I)


def matches(pattern: str, value: str, case: bool = True) -> bool:
    """IAM's wildcard match (`*`, `?`); actions compare without case, ARNs with."""
    return bool(_wild(pattern, case).match(value))


def _list(v) -> list:
    return v if isinstance(v, list) else [v]


@dataclass(frozen=True)
class Grant:
    principal: str
    policy: str
    sid: str
    action: str
    resource: int  # index in the statement's Resource list (stacks differ in names, not in shape)
    via: str = ""  # one value of a kms:ViaService condition (""; not limited)


@dataclass
class Usage:
    grants: dict[Grant, int] = field(default_factory=dict)  # grant -> uses
    uses: dict[str, set] = field(default_factory=lambda: defaultdict(set))  # principal -> {(action, resource)}
    unattributed: set = field(default_factory=set)  # allowed uses no statement explains


def _via(st: dict) -> list[str]:
    """The kms:ViaService values a statement is limited to ([""]: not limited)."""
    for op, keys in (st.get("Condition") or {}).items():
        if op.startswith("StringEquals") and "kms:ViaService" in keys:
            return [str(v) for v in _list(keys["kms:ViaService"])]
    return [""]


def grants_of(principal: str, policies: dict[str, dict]) -> list[tuple[Grant, str]]:
    """Every grant of a principal's policies, in policy order, with the resource pattern as rendered."""
    out = []
    for pname, doc in policies.items():
        for i, st in enumerate(_list(doc.get("Statement", []))):
            if st.get("Effect") != "Allow":
                continue
            sid = st.get("Sid") or str(i)
            if "Action" not in st or "Resource" not in st:
                kind = "NotAction" if "NotAction" in st else "NotResource"
                out.append((Grant(principal, pname, sid, kind, 0), "\0"))  # matches no use: explain it or drop it
                continue
            for a in _list(st["Action"]):
                for k, r in enumerate(_list(st["Resource"])):
                    for via in _via(st):
                        out.append((Grant(principal, pname, sid, a, k, via), r))
    return out


def load(use_dirs: list[Path]) -> Usage:
    """Read every record; each file holds its gate's stacks (rendered policies) and the uses of each."""
    u = Usage()
    for d in use_dirs:
        for path in sorted(Path(d).rglob("iam-use-*.jsonl")):
            stacks: dict[int, dict] = {}
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:  # a gate killed mid-line: its last line is lost, nothing else
                    print(f"check-iam: {path}: a cut line skipped", file=sys.stderr)
                    continue
                if "policies" in rec:
                    if rec.get("planted"):
                        continue  # a planted copy's uses say nothing of the deployed policies
                    stacks[rec["stack"]] = rec["policies"]
                    for principal in CHECKED:
                        for g, _ in grants_of(principal, rec["policies"].get(principal, {})):
                            u.grants.setdefault(g, 0)
                    continue
                principal = rec["principal"]
                if principal not in CHECKED or rec["stack"] not in stacks:
                    continue
                u.uses[principal].add((rec["action"], rec["resource"]))
                via = (rec.get("context") or {}).get("kms:ViaService", "")
                for g, r in grants_of(principal, stacks[rec["stack"]].get(principal, {})):
                    if (
                        matches(g.action, rec["action"], case=False)
                        and matches(r, rec["resource"])
                        and g.via in ("", via)
                    ):
                        u.grants[g] = u.grants.get(g, 0) + 1
                        break
                else:
                    u.unattributed.add((principal, rec["action"], rec["resource"]))
    return u


def reasons(policy_dir: Path | None = None) -> dict[str, str]:
    """principal/Sid[/action[/via]] -> why that grant is used on AWS only."""
    path = (policy_dir or POLICY_DIR) / "not-exercised-locally.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def reason_for(g: Grant, why: dict[str, str]) -> tuple[str, str] | None:
    """(the key, the reason) of the most specific explanation covering a grant."""
    keys = ([f"{g.principal}/{g.sid}/{g.action}/{g.via}"] if g.via else []) + [
        f"{g.principal}/{g.sid}/{g.action}",
        f"{g.principal}/{g.sid}",
    ]
    return next(((k, why[k]) for k in keys if k in why), None)


def report(u: Usage, why: dict[str, str]) -> tuple[str, list[Grant], list[str]]:
    """(the text, the unused grants nobody explained, the explanations no unused grant needs)."""
    lines, unused, used_reasons = [], [], set()
    by_principal: dict[str, list] = defaultdict(list)
    for g, n in u.grants.items():
        by_principal[g.principal].append((g, n))
    for principal in CHECKED:
        rows = sorted(
            by_principal.get(principal, []), key=lambda x: (x[0].policy, x[0].sid, x[0].action, x[0].resource, x[0].via)
        )
        if not rows:
            continue
        lines.append(f"{principal}:")
        for g, n in rows:
            r = reason_for(g, why)
            if n == 0 and r:
                used_reasons.add(r[0])
                state = f"not exercised locally: {r[1]}"
            elif n == 0:
                state = "UNUSED"
                unused.append(g)
            else:
                state = f"used {n}x"
            via = f" via {g.via}" if g.via else ""
            lines.append(f"  {g.sid:<34} {g.action:<42} resource #{g.resource}{via}  {state}")
        lines.append("  used: " + ", ".join(sorted({a for a, _ in u.uses.get(principal, set())})))
    stale = sorted(set(why) - used_reasons)
    return "\n".join(lines), unused, stale
