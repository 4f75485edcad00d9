"""The one order builder: the body every harness sends (the worker refuses unknown fields)."""

from __future__ import annotations

import json
import time


def item(sku: str, qty: int, unit_price_cents: int) -> dict:
    return {"sku": sku, "qty": qty, "unit_price_cents": unit_price_cents}


def order(order_id: str, customer: str, items: list[dict], placed_at: str | None = None, **extra) -> dict:
    """An order as a dict; `placed_at` defaults to now. `extra` overrides or adds fields (a malformed order)."""
    return {
        "order_id": order_id,
        "customer_id": customer,
        "items": items,
        "currency": "EUR",
        "placed_at": placed_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def body(o: dict) -> str:
    """The message body: compact JSON (SQS bills by size, and the benchmark's figures depend on it)."""
    return json.dumps(o, separators=(",", ":"))


def order_body(order_id: str, customer: str, items: list[dict], placed_at: str | None = None) -> str:
    return body(order(order_id, customer, items, placed_at))


def batch_entries(messages: list[dict]) -> list[dict]:
    """SendMessageBatch entries (at most 10) of messages {body, group, dedup (default: order_id)}: the order id
    is the deduplication id, as a producer's retry must be deduplicated."""
    return [
        {"Id": str(k), "MessageBody": m["body"], "MessageGroupId": m["group"],
         "MessageDeduplicationId": m.get("dedup") or m["order_id"]}
        for k, m in enumerate(messages)
    ]  # fmt: skip


def make_orders(n: int, groups: int, prefix: str) -> list[dict]:
    """`n` valid orders in send order, round-robin over `groups` groups: [{order_id, group, body}]."""
    out = []
    for i in range(n):
        g = f"{prefix}-cust-{i % groups:02d}"
        oid = f"{prefix}-{i:05d}"
        out.append(
            {"order_id": oid, "group": g, "body": order_body(oid, g, [item(f"SKU-{i % 7 + 1}", i % 3 + 1, 1299)])}
        )
    return out
