"""runreport.text: the summary's pieces a reader relies on."""

from runreport.text import interruption_lines, ranges, secs, summary


def test_positions_are_told_as_ranges():
    assert ranges([8, 3, 5, 4]) == "#3-#5, #8"
    assert ranges([]) == ""
    assert (secs(1.0, 3.5), secs(None, 2.0)) == ("2.50 s", "?")


def test_an_interruption_tells_its_events_in_time_order_and_the_handover():
    s = {"id": "i-a", "notice": 20.0, "rebalance": 10.0, "drain_start": 21.0, "hook_completed": 22.5,
         "terminated": 30.0, "drain_finished": 1, "drain_released": 2}  # fmt: skip
    stories = {"i-a": s, "i-c": {"id": "i-c", "replaces": "i-a", "launched": 25.0}}
    hand = [{"group": "p-cust-1", "positions": [1, 2], "finished": [2], "redelivered": [3],
             "continued": [{"instance": "i-c", "from": 3}], "last": 3, "in_order": True}]  # fmt: skip
    lines = interruption_lines(s, stories, hand)
    assert lines[0] == "interruption of i-a:"
    assert "drain started -> hook completed 1.50 s, notice -> hook completed 2.50 s" in lines[2]
    assert lines[3] == (
        "  cust-1: #1-#2 on i-a (#2 finished in the drain); went on from #3 (received again) on i-c "
        "(its replacement); positions 1-3 in order"
    )
    events = lines[lines.index("  events, in the order they happened:") + 1 :]
    assert [e.split("  ", 2)[2] for e in events][:2] == ["rebalance recommendation", "interruption notice  "]
    assert events[-1].endswith("terminated")


def test_the_summary_ends_with_the_problems_and_the_verdict():
    text = summary("t", 3, [{}, {}], None, {"i-a": 2}, {}, None, None, [], {}, {}, ["no verification (v missing)"])
    lines = text.splitlines()
    assert lines[:4] == [
        "t",
        "",
        "orders sent 3, applied 2",
        "lost ?, duplicates ?, order violations ?, wrong verdicts ?",
    ]
    assert lines[-2:] == ["PROBLEM: no verification (v missing)", "VERDICT: FAILED"]
    assert summary("t", 0, [], {}, {}, {}, None, None, [], {}, {}, []).endswith("VERDICT: OK\n")
