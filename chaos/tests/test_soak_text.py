"""soakrun.text: report.txt says every figure the checks judge, and the verdict last."""

from soakrun.text import render

REPORT = {
    "seed": 5, "workers": 4, "groups": 20, "instances": {"launched": 6, "terminated": 2}, "config": {},
    "orders_sent": 100, "valid_orders_sent": 98, "malformed_sent": 2, "duplicate_sends": 3, "messages_sent": 103,
    "records": 100, "expected_records": 100, "applied": 98, "rejected": 2, "lost": 0, "applied_twice": 0,
    "out_of_order": 0, "position_gaps": 0, "dlq_depth": 0, "redrive_policy": {"maxReceiveCount": 10},
    "second_consumer_receives": 0,
    "receive_counts": {"redelivered": 4, "explained_by": {"kill": 4}, "receive_count_histogram": {"1": 96, "2": 4}},
    "wrong_verdict": 0, "unexpected": 0, "faults_total": 1, "faults": {"kill": 1, "imds": 0},
    "drains": {"count": 0}, "send_seconds": 30.0, "backlog_clear_seconds": 2.5, "total_seconds": 60.0,
    "failures": [], "verdict": "OK",
}  # fmt: skip


def test_a_clean_report_ends_ok():
    text = render(REPORT)
    lines = text.splitlines()
    assert lines[0] == "== chaos soak report =="
    assert lines[-1] == "VERDICT: OK"
    assert "lost             0" in lines
    assert "faults           1: kill 1 (" in text
    assert "explained by kill 4" in text
    assert "DynamoDB Local" not in text and "FAIL" not in text


def test_a_failed_report_names_each_failure_and_the_backend():
    r = {**REPORT, "config": {"dynamodb": "dynamodb-local"}, "failures": ["INVARIANT BROKEN: lost = 1"],
         "verdict": "FAILED", "receive_counts": {**REPORT["receive_counts"], "unexplained": [{"ReceiveCount": 2}]}}  # fmt: skip
    lines = render(r).splitlines()
    assert lines[-2:] == ["FAIL: INVARIANT BROKEN: lost = 1", "VERDICT: FAILED"]
    assert lines[1].endswith("; DynamoDB on DynamoDB Local")
    assert '  ! ReceiveCount 2 unexplained: {"ReceiveCount": 2}' in lines
