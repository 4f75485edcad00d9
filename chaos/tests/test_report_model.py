"""runreport.model: who applied what, the handover of an interrupted instance's groups, the per-group data."""

from runreport import model

T0 = 1_000_000.0
ISO = "1970-01-12T13:46:{:06.3f}Z"  # T0 + s, for s < 20


def rec(group, pos, by, at, rc=1):
    return {"OrderID": f"{group}-{pos}", "MessageGroupId": group, "GroupPosition": pos, "ProcessedBy": by,
            "ProcessedAt": ISO.format(40 + at), "ReceiveCount": rc}  # fmt: skip


# i-a drains from 5 to 8 (hook): it finishes cust-1 #2 in the drain, releases cust-2 (#2 received again on i-b);
# cust-3 it never held once the drain began.
STORY = {"id": "i-a", "notice": T0 + 4, "drain_start": T0 + 5, "hook_completed": T0 + 8}
RECORDS = [
    rec("p-cust-1", 2, "i-a", 6), rec("p-cust-1", 1, "i-a", 1), rec("p-cust-1", 3, "i-b", 10),
    rec("p-cust-2", 1, "i-a", 2), rec("p-cust-2", 2, "i-b", 9, rc=2), rec("p-cust-2", 3, "i-c", 12),
    rec("p-cust-3", 1, "i-a", 1), rec("p-cust-3", 2, "i-b", 9),
]  # fmt: skip


def test_by_group_sorts_each_group_by_position():
    g = model.by_group(RECORDS)
    assert [r["GroupPosition"] for r in g["p-cust-1"]] == [1, 2, 3]


def test_the_handover_names_what_was_finished_released_and_who_went_on():
    h = {x["group"]: x for x in model.handover(STORY, RECORDS)}
    assert set(h) == {"p-cust-1", "p-cust-2"}
    assert (h["p-cust-1"]["finished"], h["p-cust-1"]["positions"]) == ([2], [1, 2])
    assert h["p-cust-1"]["continued"] == [{"instance": "i-b", "from": 3}]
    assert (h["p-cust-2"]["finished"], h["p-cust-2"]["redelivered"]) == ([], [2])
    assert h["p-cust-2"]["continued"] == [{"instance": "i-b", "from": 2}, {"instance": "i-c", "from": 3}]
    assert all(x["in_order"] and x["last"] == 3 for x in h.values())


def test_a_gap_in_the_positions_is_not_in_order():
    broken = [r for r in RECORDS if r["OrderID"] != "p-cust-1-1"]
    h = {x["group"]: x for x in model.handover(STORY, broken)}
    assert not h["p-cust-1"]["in_order"]


def test_no_drain_and_no_notice_is_no_handover():
    assert model.handover({"id": "i-a"}, RECORDS) == []


def test_unknown_workers_get_their_instance_from_the_pid():
    rs = [{"ProcessedBy": "unknown-42"}, {"ProcessedBy": "i-b"}]
    model.attribute_unknown_workers(rs, [{"id": "i-a", "pid": 42}, {"id": "i-b"}])
    assert rs == [{"ProcessedBy": "i-a", "RecordedProcessedBy": "unknown-42"}, {"ProcessedBy": "i-b"}]
    assert model.applied_per_instance([*rs, {}]) == {"i-a": 1, "i-b": 1, "?": 1}
    # Today's fallback carries a random part after the pid.
    rs = [{"ProcessedBy": "unknown-42-00ff00ff00ff00ff"}, {"ProcessedBy": "unknown-7-aa"}]
    model.attribute_unknown_workers(rs, [{"id": "i-a", "pid": 42}])
    assert rs == [{"ProcessedBy": "i-a", "RecordedProcessedBy": "unknown-42-00ff00ff00ff00ff"},
                  {"ProcessedBy": "unknown-7-aa"}]  # fmt: skip


def test_the_experiments_targets_are_the_interrupted_else_whoever_had_a_notice():
    stories = {"i-a": {"id": "i-a", "notice": 1.0}, "i-b": {"id": "i-b"}, "i-c": {"id": "i-c", "notice": 2.0}}
    fis = {"experiments": [{"targets": {"spot": ["i-b", "i-gone"]}}]}
    assert model.interrupted_instances(fis, stories) == [stories["i-b"]]
    assert model.interrupted_instances({}, stories) == [stories["i-a"], stories["i-c"]]


def test_the_group_view_data_colours_each_instance_as_the_timeline_does():
    stories = {"i-a": {"id": "i-a", **STORY}, "i-b": {"id": "i-b"}, "i-c": {"id": "i-c", "replaces": "i-a"},
               "i-idle": {"id": "i-idle"}}  # fmt: skip
    per_instance = model.applied_per_instance(RECORDS)
    shown, colour = model.shown_instances(stories, per_instance)
    assert shown == ["i-a", "i-b", "i-c"]  # an instance that applied nothing and was not interrupted has no lane
    d = model.group_data(RECORDS, stories, per_instance, [stories["i-a"]])
    assert [(i["id"], i["role"], i["color"]) for i in d["instances"]] == [
        ("i-a", "interrupted", colour["i-a"]), ("i-b", "", colour["i-b"]), ("i-c", "replacement", colour["i-c"])
    ]  # fmt: skip
    assert d["interruptions"] == [{"id": "i-a", "notice": T0 + 4, "drain_start": T0 + 5, "hook": T0 + 8}]
    g2 = next(g for g in d["groups"] if g["group"] == "p-cust-2")
    assert g2["label"] == "cust-2"
    assert [(o["pos"], o["by"], o["rc"]) for o in g2["orders"]] == [(1, "i-a", 1), (2, "i-b", 2), (3, "i-c", 1)]
    assert g2["orders"][0]["at"] == T0 + 2
