"""The soak's report as text (report.txt, and what the soak prints), from report.json's dict."""

from __future__ import annotations

import json


def render(r: dict) -> str:
    d = r["drains"]
    rc = r["receive_counts"]
    faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items() if v) or "none"
    lines = [
        "== chaos soak report ==",
        f"seed {r['seed']}, {r['workers']} workers, {r['groups']} groups; instances launched {r['instances']['launched']}, "
        f"terminated {r['instances']['terminated']}"
        + ("; DynamoDB on DynamoDB Local" if r["config"].get("dynamodb") == "dynamodb-local" else ""),
        f"orders sent      {r['orders_sent']} ({r['valid_orders_sent']} valid, {r['malformed_sent']} malformed) "
        f"+ {r['duplicate_sends']} duplicate sends = {r['messages_sent']} messages",
        f"records          {(r['records'] or 0) - r.get('markers', 0)} of {r['expected_records']} expected: applied {r['applied']}, "
        f"rejected {r['rejected']}; markers {r.get('markers', 0)} (orders sent again, ids reused)",
        f"lost             {r['lost']}",
        f"applied twice    {r['applied_twice']}",
        f"out of order     {r['out_of_order']}",
        f"position gaps    {r['position_gaps']}",
        f"in DLQ           {r['dlq_depth']} (redrive: {json.dumps(r.get('redrive_policy'))})",
        (
            f"second consumer  {r['second_consumer_receives']} unexplained of {rc['redelivered']} records with ReceiveCount > 1 "
            f"(explained by {', '.join(f'{k} {v}' for k, v in rc['explained_by'].items()) or '-'}); "
            f"ReceiveCount histogram {', '.join(f'{k}: {v}' for k, v in rc['receive_count_histogram'].items())}"
        ),
        f"wrong verdict    {r['wrong_verdict']}   unexpected {r['unexpected']}",
        f"faults           {r['faults_total']}: {faults} (skipped {r.get('faults_skipped', 0)}: under two healthy workers; "
        f"rebalance_notice on an instance already replaced {r.get('notices_after_replacement', 0)})",
    ]
    if r.get("proxy"):
        p = r["proxy"]
        lines.append(
            f"proxy            {p['connections']} connections, {p['reset']} reset, stalls {p['faults']['stall']}, drops {p['faults']['drop']}"
        )
    if d["count"]:
        t = d["took_ms"]
        lines.append(
            f"drains           {d['count']} ({', '.join(f'{k} {v}' for k, v in d['by_trigger'].items())}); took ms min {t['min']}, "
            f"median {t['median']}, p95 {t['p95']}, max {t['max']}; deadline hit {d['deadline_hit']}; "
            f"messages released {d['released']}; hooks completed {d['hooks_completed']}"
        )
    else:
        lines.append("drains           0")
    if r.get("sqs_stall_drains"):
        sd = r["sqs_stall_drains"]
        lines.append(
            f"sqs_stall_drain  {len(sd)}: hooks completed {sum(1 for x in sd if x['hook'] == 'Completed')}; drains took ms "
            f"{[x['took_ms'] for x in sd]}, released {[x['released'] for x in sd]}, deadline hit {sum(1 for x in sd if x['deadline_hit'])}"
        )
    if r.get("hook_timeouts_not_killed"):
        ht = r["hook_timeouts_not_killed"]
        lines.append(
            f"hook timed out  {len(ht)} instances not killed: "
            + ", ".join(f"{x['instance']} ({'/'.join(x['faults']) or '-'})" for x in ht)
        )
    if r.get("rule_hits"):
        lines.append(
            "proxy rules      "
            + ", ".join(f"{k}: {h['rules']} rules, {h['hits']} requests hit" for k, h in r["rule_hits"].items())
        )
    w = r.get("worker_log_signs") or {}
    lines.append(
        "worker logs      " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in w.items() if v) or "worker logs      -"
    )
    lines.append(
        f"timing           sending {r['send_seconds']}s, backlog clear {r['backlog_clear_seconds']}s after the last send, total {r['total_seconds']}s"
    )
    for e in r.get("verify_examples") or []:
        lines.append(f"  ! {e}")
    for e in rc.get("unexplained") or []:
        lines.append(f"  ! ReceiveCount {e.get('ReceiveCount')} unexplained: {json.dumps(e)}")
    for e in r.get("chaos_errors") or []:
        lines.append(f"  fault error: {e}")
    for f in r["failures"]:
        lines.append(f"FAIL: {f}")
    lines.append(f"VERDICT: {r['verdict']}")
    return "\n".join(lines) + "\n"
