"""faultproxy.rules: what a rule may say, when it is in force, which rule decides a request."""

import asyncio
import random

import pytest

from faultproxy.rules import RULE_FIELDS, Rule, decide


def rule(rid=1, **req):
    return Rule(rid, {"service": "sqs", "action": "reset", **req})


@pytest.mark.parametrize(
    ("req", "says"),
    [
        ({"service": "sqs", "action": "reset", "oepration": "ReceiveMessage"}, "unknown rule fields"),
        ({"service": "s3", "action": "reset"}, "service must be one of"),
        ({"service": "sqs", "action": "explode"}, "action must be one of"),
        ({"service": "sqs", "action": "error"}, "action error needs a code"),
        ({"service": "sqs", "action": "delay"}, "action delay needs delay_seconds"),
        ({"service": "sqs", "action": "reset", "count": 0}, "count must be in"),
        ({"service": "sqs", "action": "reset", "count": 1.5}, "count must be an integer"),
        ({"service": "sqs", "action": "reset", "count": True}, "count must be an integer"),
        ({"service": "sqs", "action": "reset", "probability": 1.5}, "probability must be in"),
        ({"service": "sqs", "action": "reset", "seconds": "5"}, "seconds must be a number"),
        ({"service": "sqs", "action": "error", "code": "X", "status": 200}, "status must be in"),
    ],
)
def test_a_rule_that_says_something_wrong_is_refused(req, says):
    with pytest.raises(ValueError, match=says):
        Rule(1, req)


def test_the_view_shows_every_field_and_the_counters():
    v = rule(7, operation="ReceiveMessage", count=2).view()
    assert set(v) == {"id", *RULE_FIELDS, "hits", "matched", "remaining", "held", "active", "seconds_left"}
    assert (v["id"], v["operation"], v["remaining"], v["active"], v["seconds_left"]) == (
        7,
        "ReceiveMessage",
        2,
        True,
        None,
    )


def test_no_operation_matches_every_operation_of_its_service_only():
    r = rule()
    assert r.take("sqs", "ReceiveMessage", 0) and r.take("sqs", "DeleteMessageBatch", 0)
    assert not r.take("dynamodb", "UpdateItem", 0)
    one = rule(operation="ReceiveMessage")
    assert not one.take("sqs", "DeleteMessageBatch", 0)
    assert one.take("sqs", "ReceiveMessage", 0)


def test_a_count_is_spent_by_the_requests_it_affects():
    r = rule(count=2)
    assert [r.take("sqs", "X", 0) for _ in range(3)] == [True, True, False]
    assert (r.hits, r.remaining, r.in_force(0)) == (2, 0, False)


def test_seconds_end_the_rule_and_release_what_it_holds():
    async def body():
        r = rule(action="stall", seconds=0.05)
        now = r.created
        assert r.take("sqs", "X", now)
        assert not r.take("sqs", "X", now + 0.06)
        await asyncio.wait_for(r.released.wait(), 2)  # the held requests go on when the time is up

    asyncio.run(body())


def test_a_removed_rule_decides_nothing_and_releases_at_once():
    r = rule()
    r.remove()
    assert r.released.is_set()
    assert not r.take("sqs", "X", 0)


def test_probability_counts_matches_and_hits_apart():
    random.seed(3)
    r = rule(probability=0.5, count=1000)
    taken = sum(r.take("sqs", "X", 0) for _ in range(400))
    assert r.matched == 400
    assert r.hits == taken == 1000 - r.remaining
    assert 120 < taken < 280


def test_the_first_rule_in_force_that_matches_decides():
    spent = rule(1, count=1)
    spent.take("sqs", "X", 0)
    other_service = Rule(2, {"service": "dynamodb", "action": "reset"})
    first = rule(3, action="error", code="AccessDenied")
    second = rule(4)
    rules = [spent, other_service, first, second]
    assert decide(rules, "sqs", "ReceiveMessage", 0) is first
    assert decide(rules, "dynamodb", "UpdateItem", 0) is other_service
    assert decide(rules, "autoscaling", "CompleteLifecycleAction", 0) is None
    assert second.matched == 0  # a rule after the one that decided never sees the request


def test_a_table_rule_takes_only_the_requests_that_name_its_table():
    with pytest.raises(ValueError, match="table is for dynamodb rules only"):
        Rule(1, {"service": "sqs", "action": "reset", "table": "orders"})
    groups = Rule(2, {"service": "dynamodb", "operation": "BatchExecuteStatement", "action": "reset", "table": "g"})
    assert not groups.take("dynamodb", "BatchExecuteStatement", 0, frozenset({"orders"}))
    assert not groups.take("dynamodb", "BatchExecuteStatement", 0)
    assert groups.take("dynamodb", "BatchExecuteStatement", 0, frozenset({"g", "orders"}))
    assert rule(3).take("sqs", "ReceiveMessage", 0)  # no table: as before
