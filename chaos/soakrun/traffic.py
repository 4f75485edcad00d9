"""The soak's traffic: the send stream (valid orders, malformed ones, duplicate re-sends) planned from a seed,
and the producer that sends it, paced, and writes the manifest `order-worker verify` reads."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import log, orders

if TYPE_CHECKING:  # annotations only: the region (and boto3) is not needed to import this module
    from .region import SoakRegion


def valid_order(oid: str, group: str, rng: random.Random) -> dict:
    items = [orders.item(f"SKU-{rng.randrange(1, 500)}", rng.randrange(1, 5), rng.randrange(0, 100000))
             for _ in range(rng.randrange(1, 4))]  # fmt: skip
    return orders.order(oid, group, items, "2026-11-26T01:00:00Z")


def valid_body(oid: str, group: str, rng: random.Random) -> str:
    return orders.body(valid_order(oid, group, rng))


def malformed(oid: str, group: str, rng: random.Random) -> tuple[str, str | None]:
    """A body the worker must reject, and the order id it will be recorded under (None: by MessageId)."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"not an order {oid}", None
    if kind == 1:
        return "   ", None  # whitespace only (SQS refuses an empty body)
    if kind == 2:
        return json.dumps({"order_id": f"{oid} with spaces", "customer_id": group}), None
    body = valid_order(oid, group, rng)
    if kind == 3:
        body["currency"] = "eur"
    elif kind == 4:
        body["customer_id"] = group + "-elsewhere"
    else:
        body["items"][0]["qty"] = 0
    return orders.body(body), oid


def plan_messages(n: int, groups: int, prefix: str, dup_rate: float, bad_rate: float, rng: random.Random) -> list[dict]:
    """The send stream: `n` orders (valid or malformed) over `groups` groups, plus duplicate re-sends of some
    valid ones a little later in the stream. Each: body, group, dedup, manifest fields."""
    names = [f"{prefix}-g{g:03d}" for g in range(groups)]
    out: list[dict] = []
    pending_dups: list[tuple[int, dict]] = []
    for i in range(n):
        g = names[rng.randrange(groups)] if i >= groups else names[i]
        oid = f"{prefix}-{i:06d}"
        if rng.random() < bad_rate:
            body, key = malformed(oid, g, rng)
            out.append(
                {
                    "body": body,
                    "group": g,
                    "dedup": f"{oid}-bad",
                    "order_id": key,
                    "expect": "rejected",
                    "kind": "malformed",
                }
            )
        else:
            m = {
                "body": valid_body(oid, g, rng),
                "group": g,
                "dedup": oid,
                "order_id": oid,
                "expect": "accepted",
                "kind": "order",
            }
            out.append(m)
            if rng.random() < dup_rate:
                pending_dups.append((i + rng.randrange(1, 200), m))
        while pending_dups and pending_dups[0][0] <= i:
            _, m = pending_dups.pop(0)
            out.append({**m, "dedup": f"{m['order_id']}-resend", "kind": "duplicate"})
        pending_dups.sort(key=lambda x: x[0])
    for _, m in pending_dups:
        out.append({**m, "dedup": f"{m['order_id']}-resend", "kind": "duplicate"})
    return out


class Producer(threading.Thread):
    def __init__(self, region: SoakRegion, messages: list[dict], duration: float, manifest: Path):
        super().__init__(name="producer", daemon=True)
        self.region, self.messages, self.duration, self.manifest = region, messages, duration, manifest
        self.sent = 0
        self.error: str | None = None
        self.started_at = self.finished_at = 0.0
        self.retries = 0

    def run(self) -> None:
        sqs = self.region.client("sqs", "producer")  # the shop's front end
        self.started_at = time.monotonic()
        batches = [self.messages[i : i + 10] for i in range(0, len(self.messages), 10)]
        gap = self.duration / max(1, len(batches))
        try:
            with open(self.manifest, "w") as mf:
                for b, chunk in enumerate(batches):
                    due = self.started_at + b * gap
                    if (d := due - time.monotonic()) > 0:
                        time.sleep(d)
                    entries = orders.batch_entries(chunk)
                    for attempt in range(6):
                        try:
                            out = sqs.send_message_batch(QueueUrl=self.region.queue_url, Entries=entries)
                            break
                        except Exception as e:  # a retry with the same dedup ids is deduplicated by SQS
                            if attempt == 5:
                                raise
                            self.retries += 1
                            log(f"producer: SendMessageBatch failed ({e}); retrying")
                            time.sleep(1 + attempt)
                    if out.get("Failed"):
                        # A partial failure would break the send order within a group: stop, loudly.
                        raise RuntimeError(f"SendMessageBatch partly failed: {out['Failed']}")
                    ok = {e["Id"]: e for e in out["Successful"]}
                    sent_at = round(time.time(), 3)
                    for k, m in enumerate(chunk):
                        line = {"order_id": m["order_id"], "group": m["group"], "expect": m["expect"],
                                "message_id": ok[str(k)]["MessageId"], "kind": m["kind"],
                                "sent_at": sent_at}  # fmt: skip
                        mf.write(json.dumps(line) + "\n")
                    mf.flush()
                    self.sent += len(chunk)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log(f"producer failed: {self.error}")
        finally:
            self.finished_at = time.monotonic()
