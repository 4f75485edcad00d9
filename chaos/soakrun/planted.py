"""Planted bugs, the audit's self-test (`--plant-bug`): the table or the queues damaged the way a broken worker
would damage them, so that a run proves the checks catch it."""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from harness import log, wait_for

from .traffic import valid_body

if TYPE_CHECKING:  # annotations only: the region (and boto3) is not needed to import this module
    from .region import SoakRegion


def plant_bug(region: SoakRegion, kind: str) -> str:
    """Damage the table the way a broken worker would, so a run proves the audit catches it."""
    if kind == "dlq":
        # Planted by the test's own hand: as the deployer, whom no policy of ours scopes.
        mid = region.client("sqs", "deployer").send_message(QueueUrl=region.dlq_url, MessageBody="planted: a message in the DLQ",
                                                MessageGroupId="planted", MessageDeduplicationId=str(uuid.uuid4()))["MessageId"]  # fmt: skip
        return f"sent message {mid} straight into the DLQ {region.dlq_name}"
    ddb = region.client("dynamodb", "deployer")
    recs = [r for r in region.records() if r.get("Status") == "ACCEPTED"]
    by_group: dict[str, list[dict]] = {}
    for r in recs:
        by_group.setdefault(r["MessageGroupId"], []).append(r)
    group, rs = max(by_group.items(), key=lambda kv: len(kv[1]))
    rs.sort(key=lambda r: r["GroupPosition"])
    if kind == "lost":
        victim = rs[-1]
        ddb.delete_item(TableName=region.orders_table, Key={"OrderID": {"S": victim["OrderID"]}})
        return f"deleted record {victim['OrderID']} of group {group}"
    if kind == "twice":
        # A second item at a position already held: what a worker that took positions from a claim that never
        # applied would leave (the model test's planted TrustUnknown variant, in the table).
        victim = rs[-1]
        ddb.put_item(
            TableName=region.orders_table,
            Item={
                "OrderID": {"S": "duplicate:planted"},
                "MessageGroupId": {"S": group},
                "GroupPosition": {"N": str(victim["GroupPosition"])},
                "Status": {"S": "DUPLICATE"},
                "MarkerOf": {"S": victim["OrderID"]},
            },
        )
        return f"wrote a second item at position {victim['GroupPosition']} of group {group} (an order applied twice)"
    x, y = rs[0], rs[1]
    for rec, pos in ((x, y["GroupPosition"]), (y, x["GroupPosition"])):
        ddb.update_item(
            TableName=region.orders_table,
            Key={"OrderID": {"S": rec["OrderID"]}},
            UpdateExpression="SET GroupPosition = :p",
            ExpressionAttributeValues={":p": {"N": str(pos)}},
        )
    return f"swapped the positions of {x['OrderID']} and {y['OrderID']} in group {group}"


def plant_second_consumer(region: SoakRegion, manifest: Path, prefix: str, quiet_from: float) -> str:
    """Self-test of the second-consumer check: once every fault window is over, one more order is sent into a
    group of its own and received by a second client (the soak's own, directly at the emulator) before any worker
    gets it; that client lets it go without deleting it and a worker then applies it with ReceiveCount 2, which no
    fault explains. The workers are stopped (SIGSTOP) for the few seconds it takes, so that none of their long
    polls takes the message first; nothing is held then (the backlog is clear)."""
    if (d := quiet_from - time.time()) > 0:
        log(f"plant second_consumer: waiting {d:.1f}s for the last fault window to close")
        time.sleep(d)
    sqs = region.client("sqs", "deployer")
    live = [i["id"] for i in region.instances("InService") if i.get("process_alive")]
    for iid in live:
        region.sim_post(f"/_sim/instances/{iid}/signal", {"signal": "STOP"})
    try:
        time.sleep(3)  # the polls out when they stopped end (wait time 2 s) with nothing
        oid, group = f"{prefix}-planted", f"{prefix}-gplanted"
        body = valid_body(oid, group, random.Random(0))
        mid = sqs.send_message(
            QueueUrl=region.queue_url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=oid
        )["MessageId"]
        with open(manifest, "a") as mf:
            mf.write(json.dumps({"order_id": oid, "group": group, "expect": "accepted", "message_id": mid,
                                 "kind": "order", "sent_at": round(time.time(), 3)}) + "\n")  # fmt: skip
        got = sqs.receive_message(QueueUrl=region.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=1, WaitTimeSeconds=2,
                                  AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])  # fmt: skip
        if not got or got[0]["MessageId"] != mid:
            return f"planted order {oid} sent, but the second client did not receive it ({got})"
        time.sleep(1.5)
    finally:
        for iid in live:
            with contextlib.suppress(Exception):
                region.sim_post(f"/_sim/instances/{iid}/signal", {"signal": "CONT"})
    with contextlib.suppress(Exception):
        wait_for(f"the planted order {oid}", 30, lambda: any(r["OrderID"] == oid for r in region.records()), every=1)
    return f"order {oid} (message {mid}, group {group}) received by a second client before a worker applied it"
