"""THE BASELINE: the seed's 30-line boto3 worker, written plainly and fairly. Not part of the product.

One process, one thread: long-poll up to 10 messages; for each message, parse and total the order, write it
with a conditional put_item on OrderID (a redelivery is recognised and skipped), then delete the message.
This is what the seed describes; the benchmark (bench/bench.py) measures `order-worker` against it.

The only additions to the 30 lines are measurement, kept out of the loop's logic: boto3 event hooks count the
requests (and the consumed capacity DynamoDB reports), and SIGTERM writes those counts to a JSON file.
"""

import json
import os
import signal
import sys
from datetime import UTC, datetime

import boto3

QUEUE_URL = os.environ["QUEUE_URL"]
TABLE = os.environ["ORDERS_TABLE"]
STATS_FILE = os.environ.get("BASELINE_STATS")  # where the counters go on exit
stats = {"requests": {}, "write_units": 0.0, "orders": 0, "duplicates": 0}


def count(event_name, **_):  # event: before-call.<service>.<Operation>
    _, service, op = event_name.split(".")
    stats["requests"][f"{service}:{op}"] = stats["requests"].get(f"{service}:{op}", 0) + 1


def units(parsed, **_):
    cc = parsed.get("ConsumedCapacity") if isinstance(parsed, dict) else None
    stats["write_units"] += float((cc or {}).get("CapacityUnits", 0) or 0)


def stop(*_):
    if STATS_FILE:
        with open(STATS_FILE, "w") as f:
            json.dump(stats, f)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
sqs, ddb = boto3.client("sqs"), boto3.client("dynamodb")
for client in (sqs, ddb):
    client.meta.events.register("before-call", count)
ddb.meta.events.register("after-call.dynamodb.PutItem", units)
print("baseline ready", flush=True)

# ---- the seed's worker -----------------------------------------------------------------------------------
while True:
    resp = sqs.receive_message(
        QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, WaitTimeSeconds=20, MessageSystemAttributeNames=["MessageGroupId"]
    )
    for msg in resp.get("Messages", []):
        order = json.loads(msg["Body"])
        total = sum(i["qty"] * i["unit_price_cents"] for i in order["items"])
        try:
            ddb.put_item(
                TableName=TABLE,
                Item={
                    "OrderID": {"S": order["order_id"]},
                    "MessageGroupId": {"S": msg["Attributes"]["MessageGroupId"]},
                    "Status": {"S": "ACCEPTED"},
                    "TotalCents": {"N": str(total)},
                    "Currency": {"S": order["currency"]},
                    "SqsMessageId": {"S": msg["MessageId"]},
                    "ProcessedBy": {"S": "baseline"},
                    "ProcessedAt": {"S": datetime.now(UTC).isoformat(timespec="microseconds")},
                },
                ConditionExpression="attribute_not_exists(OrderID)",
                ReturnConsumedCapacity="TOTAL",
            )
            stats["orders"] += 1
        except ddb.exceptions.ConditionalCheckFailedException:
            stats["duplicates"] += 1  # already written by an earlier delivery: just delete it
        sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=msg["ReceiptHandle"])
