"""soakrun.traffic: the send stream the seed plans."""

import json
import random

from soakrun.traffic import malformed, plan_messages


def plan(seed=7, n=300, groups=5, dup=0.2, bad=0.1):
    return plan_messages(n, groups, "s00007", dup, bad, random.Random(seed))


def test_the_same_seed_plans_the_same_stream():
    assert plan() == plan()
    assert plan() != plan(seed=8)


def test_every_group_gets_an_order_first_and_every_order_is_sent():
    ms = plan()
    assert [m["group"] for m in ms[:5]] == [f"s00007-g{g:03d}" for g in range(5)]
    firsts = [m for m in ms if m["kind"] != "duplicate"]
    assert len(firsts) == 300
    assert {m["kind"] for m in firsts} == {"order", "malformed"}
    assert len({m["dedup"] for m in ms}) == len(ms)  # SQS deduplicates nothing the plan means to send


def test_a_duplicate_is_the_same_order_resent_later_under_a_new_deduplication_id():
    ms = plan()
    dups = [(k, m) for k, m in enumerate(ms) if m["kind"] == "duplicate"]
    assert dups
    for k, d in dups:
        first = next(j for j, m in enumerate(ms) if m["order_id"] == d["order_id"] and m["kind"] == "order")
        assert first < k
        assert (ms[first]["body"], ms[first]["group"]) == (d["body"], d["group"])
        assert d["dedup"] == d["order_id"] + "-resend"


def test_each_malformed_body_breaks_one_rule_and_says_which_id_to_find_it_by():
    rng = random.Random(1)
    seen = set()
    for _ in range(60):
        body, key = malformed("o-1", "cust-1", rng)
        assert body  # SQS refuses an empty body (whitespace alone is one of the malformed kinds)
        try:
            o = json.loads(body)
        except ValueError:
            o = None
        if o is None or key is None:  # no usable order id: the record is found by its MessageId
            assert key is None
            seen.add("no id" if o is None else "bad id")
            continue
        assert key == o["order_id"] == "o-1"
        broken = {"currency": o["currency"] != "EUR", "customer": o["customer_id"] != "cust-1",
                  "qty": o["items"][0]["qty"] == 0}  # fmt: skip
        assert sum(broken.values()) == 1
        seen |= {k for k, v in broken.items() if v}
    assert seen == {"no id", "bad id", "currency", "customer", "qty"}
