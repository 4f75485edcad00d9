"""The report's verdict: the problems that make it FAILED (the audit's findings, and with --require-interruption
or --require-busy what the interruption must have shown)."""

from __future__ import annotations


def as_int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def problems(verify: dict | None, verify_name: str, interrupted: list[dict], stories: dict, desired: int,
             handovers: dict, require_interruption: bool, require_busy: bool) -> list[str]:  # fmt: skip
    """One line per problem; none: the report's verdict is OK. `verify` is order-worker verify's JSON report (None:
    it is missing, from `verify_name`), `desired` the group's desired capacity."""
    out: list[str] = []
    if verify is None:
        out.append(f"no verification ({verify_name} missing)")
    else:
        for name, key in (("lost", "lost"), ("applied twice", "applied_twice"), ("out of order", "out_of_order"),
                          ("wrong verdict", "wrong_status"), ("at a missing position", "position_gaps"),
                          ("marking an order with no record", "orphan_markers"), ("nobody sent", "unexpected"),
                          ("in another group than sent", "misplaced")):  # fmt: skip
            if v := verify.get(key):
                out.append(f"{v} orders {name}")
        if verify.get("verdict_ok") is False and not out:
            out.append("verify's verdict is FAILED")
    if require_interruption:
        if not interrupted:
            out.append("no instance was interrupted")
        for s in interrupted:
            i = s["id"]
            if not s.get("notice"):
                out.append(f"{i}: no interruption notice was shown (terminated before it?)")
            if not s.get("drain_start"):
                out.append(f"{i}: no drain in its worker log")
            if not s.get("hook_completed"):
                why = "timed out" if s.get("hook_timed_out") else "never completed"
                out.append(f"{i}: lifecycle hook {why} (the worker must complete it)")
            if not s.get("terminated"):
                out.append(f"{i}: not terminated")
            repl = [r for r in stories.values() if r.get("replaces") == i and r.get("in_service")]
            in_service = sum(1 for r in stories.values() if r.get("state") == "InService")
            if not repl and in_service < desired:
                out.append(f"{i}: no replacement InService")
    if require_busy:
        for s in interrupted:
            i, h = s["id"], handovers[s["id"]]
            if not s.get("drain_end"):
                out.append(f"{i}: no drain report (finished/released) in its worker log")
            elif as_int(s.get("drain_finished")) + as_int(s.get("drain_released")) == 0:
                out.append(f"{i} was idle when interrupted: its drain finished 0 and released 0 orders")
            if not any(g["continued"] for g in h):
                out.append(f"{i}: none of the groups it held went on on another instance")
    return out
