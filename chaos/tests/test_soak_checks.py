"""soakrun.checks: the worker logs read, the no-second-consumer check, the invariants that fail a soak."""

import json

from soakrun import checks

SENT = 1_000_000.0  # epoch seconds of the first send; the times below are offsets from it
ISO = "1970-01-12T13:46:{:06.3f}Z"  # SENT + s, for s < 60


def record(oid, rc, by="i-b", at=10.0, group="g1"):
    return {"OrderID": oid, "MessageGroupId": group, "GroupPosition": 1, "SqsMessageId": f"m-{oid}",
            "ReceiveCount": rc, "ProcessedBy": by, "ProcessedAt": ISO.format(40 + at)}  # fmt: skip


def manifest(tmp_path, *oids, kind="order"):
    p = tmp_path / "manifest.jsonl"
    with open(p, "a") as f:
        for oid in oids:
            f.write(json.dumps({"order_id": oid, "message_id": f"m-{oid}", "kind": kind, "sent_at": SENT}) + "\n")
    return p


def fault(kind, at, end, target="all workers"):
    return {"kind": kind, "target": target, "at": SENT + at, "end": SENT + end}


def test_the_iso_times_here_are_the_offsets_meant():
    assert checks.parse_time(ISO.format(40 + 10.0)) == SENT + 10.0


def test_a_first_receive_needs_no_explanation_and_the_histogram_counts_every_record(tmp_path):
    m = manifest(tmp_path, "a", "b")
    sc = checks.second_consumer([record("a", 1), record("b", 0)], m, [], [], vis=6, drain_timeout=4)
    assert sc["second_consumer_receives"] == 0
    assert (sc["receive_count_histogram"], sc["redelivered"]) == ({"0": 1, "1": 1}, 0)


def test_a_redelivery_during_a_hold_breaking_fault_is_explained_by_the_latest_one(tmp_path):
    m = manifest(tmp_path, "a")
    timeline = [fault("network", 1, 3), fault("kill", 5, 6, target="i-a"), fault("ddb_throttle", 8, 9)]
    sc = checks.second_consumer([record("a", 2, by="i-b")], m, timeline, [], vis=6, drain_timeout=4)
    assert (sc["second_consumer_receives"], sc["explained_by"]) == (0, {"kill": 1})


def test_a_fault_window_lasts_a_visibility_and_a_drain_timeout_past_its_end(tmp_path):
    m = manifest(tmp_path, "a")
    # Sent at 0, so the record's window opens at -2; vis 6 + drain 4 + 2 s stretch a fault 12 s past its end.
    explained = checks.second_consumer([record("a", 2)], m, [fault("network", -20, -14)], [], 6, 4)
    assert explained["explained_by"] == {"network": 1}
    too_early = checks.second_consumer([record("a", 2)], m, [fault("network", -20, -14.1)], [], 6, 4)
    assert too_early["second_consumer_receives"] == 1


def test_a_kill_does_not_explain_a_record_its_own_instance_applied(tmp_path):
    m = manifest(tmp_path, "a")
    sc = checks.second_consumer([record("a", 2, by="i-a")], m, [fault("kill", 5, 6, target="i-a")], [], 6, 4)
    assert sc["second_consumer_receives"] == 1
    assert sc["unexplained"][0]["OrderID"] == "a"


def test_a_fault_that_breaks_no_hold_explains_nothing(tmp_path):
    m = manifest(tmp_path, "a")
    sc = checks.second_consumer([record("a", 3)], m, [fault("ddb_throttle", 1, 20)], [], 6, 4)
    assert sc["second_consumer_receives"] == 1


def test_a_release_of_the_group_explains_its_later_receive(tmp_path):
    m = manifest(tmp_path, "a")
    releases = [{"group": "g1", "instance": "i-a", "at": SENT + 5}, {"group": "g2", "instance": "i-a", "at": SENT}]
    sc = checks.second_consumer(
        [record("a", 2), record("b", 2, group="g2")], manifest(tmp_path, "b"), [], releases, 6, 4
    )
    assert sc["explained_by"] == {"release": 2}
    sc = checks.second_consumer([record("a", 2, group="g3")], m, [], releases, 6, 4)
    assert sc["second_consumer_receives"] == 1


def test_a_redelivered_record_without_its_send_time_is_unexplained(tmp_path):
    m = manifest(tmp_path)  # empty: the record's message was never sent by this soak
    sc = checks.second_consumer([record("x", 2)], m, [fault("network", 0, 100)], [], 6, 4)
    assert sc["unexplained"][0]["why"] == "no send time or ProcessedAt"


def write_log(path, *events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + "a panic's text, not JSON\n")


def test_the_worker_logs_give_the_signs_the_lost_holds_and_the_releases(tmp_path):
    write_log(
        tmp_path / "i-a.log",
        {"timestamp": "2026-12-01T10:00:00Z", "message": "visibility extension refused: the hold is lost (x)",
         "message_id": "m1", "code": "ReceiptHandleIsInvalid"},
        {"timestamp": "2026-12-01T10:00:01Z", "message": "run not committed; releasing it", "group": "g1"},
        {"timestamp": "2026-12-01T10:00:02Z", "message": "drain complete", "trigger": "Interruption { at: 1 }",
         "took_ms": 1500, "finished": 2, "released": 3, "deadline_hit": False, "hook": "Completed"},
        {"timestamp": "2026-12-01T10:09:00Z", "message": "release refused"},
    )  # fmt: skip
    wl = checks.scan_worker_logs(tmp_path, before="2026-12-01T10:05:00Z")
    assert wl["counts"]["hold_lost"] == wl["counts"]["run_released"] == 1
    assert wl["counts"]["release_refused"] == 0  # stamped after `before`
    assert wl["hold_lost"] == [
        {"message_id": "m1", "instance": "i-a", "at": "2026-12-01T10:00:00Z", "code": "ReceiptHandleIsInvalid"}
    ]
    assert [(r["group"], r["instance"]) for r in wl["releases"]] == [("g1", "i-a")]
    ds = checks.drains(tmp_path)
    assert [(d["instance"], d["trigger"], d["hook"]) for d in ds] == [("i-a", "Interruption", "Completed")]


def test_drains_are_summarized_by_trigger_and_time():
    assert checks.summarize_drains([]) == {"count": 0}
    ds = [{"trigger": "Interruption", "took_ms": t, "released": 1, "hook": "Completed"} for t in (300, 100, 200)]
    ds.append({"trigger": "Rebalance", "took_ms": 900, "deadline_hit": True, "released": None, "hook": None})
    s = checks.summarize_drains(ds)
    assert s["by_trigger"] == {"Interruption": 3, "Rebalance": 1}
    assert s["took_ms"] == {"min": 100, "median": 250, "p95": 300, "max": 900}
    assert (s["deadline_hit"], s["released"], s["hooks_completed"]) == (1, 3, 3)


def test_rule_hits_are_counted_per_fault_kind():
    added = [{"id": 1, "kind": "denied"}, {"id": 2, "kind": "ddb_throttle"}, {"id": 3, "kind": "ddb_throttle"}]
    rules = [{"id": 1, "hits": 4, "matched": 4}, {"id": 2, "hits": 1, "matched": 2},
             {"id": 3, "hits": 2, "matched": 2}, {"id": 9, "hits": None, "matched": 1}]  # fmt: skip
    assert checks.rule_hits(added, rules) == {
        "denied": {"rules": 1, "hits": 4, "matched": 4},
        "ddb_throttle": {"rules": 2, "hits": 3, "matched": 4},
        "other": {"rules": 1, "hits": 0, "matched": 1},
    }


def test_a_drain_under_an_sqs_stall_must_complete_its_hook():
    timeline = [fault("sqs_stall_drain", 0, 3, target="i-a"), fault("sqs_stall_drain", 9, 12, target="i-c"),
                fault("kill", 1, 2, target="i-b")]  # fmt: skip
    ds = [{"instance": "i-a", "hook": "Completed", "took_ms": 800, "released": 2, "deadline_hit": False}]
    sd = checks.stall_drains(timeline, ds)
    assert sd == [{"instance": "i-a", "hook": "Completed", "took_ms": 800, "released": 2, "deadline_hit": False},
                  {"instance": "i-c", "hook": None, "took_ms": None, "released": None, "deadline_hit": None}]  # fmt: skip
    broken = checks.invariants_broken(CLEAN, {"maxReceiveCount": 10}, 0, NO_SECOND, sd)
    assert broken == [f"lifecycle hook not completed after an interruption under an SQS stall: {[sd[1]]}"]


CLEAN = {"lost": 0, "applied_twice": 0, "out_of_order": 0, "position_gaps": 0}
NO_SECOND = {"second_consumer_receives": 0}


def test_a_clean_run_breaks_nothing():
    assert checks.invariants_broken(CLEAN, {"maxReceiveCount": 10}, 0, NO_SECOND, []) == []


def test_every_broken_invariant_is_named():
    v = {"lost": 1, "applied_twice": 0, "out_of_order": 2, "position_gaps": 3}
    broken = checks.invariants_broken(v, None, 4, {"second_consumer_receives": 5}, [])
    assert [b.split(":")[0] for b in broken] == ["INVARIANT BROKEN"] * 3 + ["the queue has no RedrivePolicy"] + [
        "INVARIANT BROKEN"
    ] * 2
    assert " ".join(broken).count("= ") == 5  # lost 1, out of order 2, gaps 3, DLQ 4, second consumer 5


def test_every_failed_check_of_verify_breaks_the_run():
    for k in ("wrong_status", "orphan_markers", "unexpected", "misplaced"):
        broken = checks.invariants_broken({**CLEAN, k: 1}, {"maxReceiveCount": 10}, 0, NO_SECOND, [])
        assert len(broken) == 1 and broken[0].startswith("INVARIANT BROKEN") and broken[0].endswith("= 1"), (k, broken)
    # A verdict that fails on a check this judge does not know yet still fails the run.
    broken = checks.invariants_broken({**CLEAN, "verdict_ok": False}, {"maxReceiveCount": 10}, 0, NO_SECOND, [])
    assert broken == ["INVARIANT BROKEN: verify's verdict is FAILED"]


def test_no_verify_report_is_a_failure_not_a_pass():
    broken = checks.invariants_broken({"exit_code": 2, "text": "boom"}, {}, 0, NO_SECOND, [])
    assert broken == ["verify produced no report (exit 2): boom"]


def test_a_hook_timeout_counts_only_where_no_kill_explains_it():
    timed_out = {"kind": "terminating_proceed", "event": "Terminating:Proceed (lifecycle hook timed out)", "at": "t"}
    instances = [{"id": "i-a", "events": [timed_out]}, {"id": "i-b", "events": [timed_out]},
                 {"id": "i-c", "events": [{**timed_out, "event": "Terminating:Proceed"}]}]  # fmt: skip
    timeline = [fault("kill", 0, 1, target="i-b"), fault("freeze", 0, 1, target="i-a")]
    assert checks.hook_timeouts_not_killed(instances, timeline) == [
        {"instance": "i-a", "at": "t", "faults": ["freeze"]}
    ]


def test_the_manifest_counts_its_kinds(tmp_path):
    manifest(tmp_path, "a", "b")
    m = manifest(tmp_path, "a", kind="duplicate")
    assert checks.manifest_kinds(m) == {"order": 2, "duplicate": 1}
