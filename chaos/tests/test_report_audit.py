"""runreport.audit: what makes the report's verdict FAILED."""

from runreport.audit import problems

CLEAN = {"lost": 0, "applied_twice": 0, "out_of_order": 0, "wrong_status": 0}
WENT_ON = [{"continued": [{"instance": "i-b", "from": 3}]}]
GOOD = {"id": "i-a", "notice": 1.0, "drain_start": 2.0, "hook_completed": 3.0, "terminated": 4.0, "drain_end": 3.5,
        "drain_finished": 1, "drain_released": "2"}  # fmt: skip
REPLACED = {"i-a": GOOD, "i-c": {"id": "i-c", "replaces": "i-a", "in_service": 5.0, "state": "InService"}}


def check(verify=CLEAN, interrupted=(GOOD,), stories=REPLACED, desired=1, handovers=None, busy=True):
    handovers = handovers if handovers is not None else {"i-a": WENT_ON}
    return problems(verify, "verify.json", list(interrupted), stories, desired, handovers, True, busy)


def test_a_clean_audit_and_a_full_interruption_pass():
    assert check() == []


def test_the_audits_findings_and_a_missing_audit_fail():
    assert check(verify=None) == ["no verification (verify.json missing)"]
    assert check(verify={**CLEAN, "lost": 2, "wrong_status": 1}) == ["2 orders lost", "1 orders wrong verdict"]


def test_each_missing_step_of_the_interruption_is_named():
    bare = {"id": "i-a", "hook_timed_out": 3.0}
    assert check(interrupted=[bare], stories={"i-a": bare}, busy=False) == [
        "i-a: no interruption notice was shown (terminated before it?)",
        "i-a: no drain in its worker log",
        "i-a: lifecycle hook timed out (the worker must complete it)",
        "i-a: not terminated",
        "i-a: no replacement InService",
    ]
    assert check(interrupted=[]) == ["no instance was interrupted"]


def test_a_replacement_is_not_needed_while_the_group_is_at_its_desired_capacity():
    stories = {"i-a": GOOD, "i-b": {"id": "i-b", "state": "InService"}}
    assert check(stories=stories, busy=False) == []
    assert check(stories=stories, desired=2, busy=False) == ["i-a: no replacement InService"]


def test_an_idle_interrupted_worker_fails_the_busy_requirement():
    idle = {**GOOD, "drain_finished": 0, "drain_released": None}
    assert check(interrupted=[idle], handovers={"i-a": []}) == [
        "i-a was idle when interrupted: its drain finished 0 and released 0 orders",
        "i-a: none of the groups it held went on on another instance",
    ]
    no_report = {k: v for k, v in GOOD.items() if k != "drain_end"}
    assert check(interrupted=[no_report]) == ["i-a: no drain report (finished/released) in its worker log"]
