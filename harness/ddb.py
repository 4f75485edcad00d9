"""The one DynamoDB scan: every page, typed values made plain (boto3's TypeDeserializer)."""

from __future__ import annotations

from decimal import Decimal


def plain(v):
    """A deserialized value as JSON-ready data: integral numbers as int, other numbers as float, sets sorted."""
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(plain(x) for x in v)
    return v


def scan(client, table: str, projection: str | None = None, keep=None) -> list[dict]:
    """Every item of `table` (consistent reads), as plain dicts; `keep(item)` filters them."""
    from boto3.dynamodb.types import (
        TypeDeserializer,  # late: importing the harness needs no boto3
    )

    types = TypeDeserializer()
    kwargs: dict = {"TableName": table, "ConsistentRead": True}
    if projection:
        kwargs["ProjectionExpression"] = projection
    out = []
    for page in client.get_paginator("scan").paginate(**kwargs):
        for raw in page.get("Items", []):
            rec = {k: plain(types.deserialize(v)) for k, v in raw.items()}
            if keep is None or keep(rec):
                out.append(rec)
    return out


def count(client, table: str) -> int:
    """How many items `table` holds (a consistent COUNT scan: nothing is sent back but the counts)."""
    pages = client.get_paginator("scan").paginate(TableName=table, Select="COUNT", ConsistentRead=True)
    return sum(p["Count"] for p in pages)
