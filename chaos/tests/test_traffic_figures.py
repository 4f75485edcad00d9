"""The traffic run's figures (chaos/trafficrun/figures.py)."""

import pytest

from trafficrun import figures


def test_quantiles_and_latencies():
    assert figures.quantile([], 0.5) is None
    xs = list(range(1, 101))
    assert figures.quantile(xs, 0.5) == 50
    assert figures.quantile(xs, 0.99) == 99
    assert figures.latencies({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.5, "b": 4.0}) == [0.5, 2.0]


def test_burst_recovery_is_from_the_burst_to_the_last_return_under_target():
    s = [{"t": t, "visible": v, "in_service": n} for t, v, n in
         [(0, 50, 1), (10, 500, 1), (20, 900, 10), (30, 250, 2), (40, 150, 2), (50, 100, 2), (60, 0, 1)]]  # fmt: skip
    r = figures.burst_recovery(s, 5, 100)
    assert r["above_target_at"] == 10
    # 90 per instance at 20 is a dip, not the end: 250 / 2 = 125 > 100 at 30; 150 / 2 = 75 at 40 is back under.
    assert r["back_under_at"] == 40
    assert r["seconds"] == 35
    assert r["peak_per_instance"] == 500
    calm = figures.burst_recovery([{"t": 10, "visible": 10, "in_service": 1}], 5, 100)
    assert calm["above_target_at"] is None


def test_oldest_age_instance_time_and_cost():
    sent = {"a": 0.0, "b": 5.0}
    done = {"a": 10.0, "b": 6.0}
    assert figures.oldest_age_series(sent, done, [1, 5.5, 9, 12]) == [1, 5.5, 9, 0]
    inst = [{"launched_at": 0, "terminated_at": 60}, {"launched_at": 30, "terminated_at": None},
            {"launched_at": -100, "terminated_at": -50}]  # fmt: skip
    assert figures.instance_seconds(inst, 0, 120) == 60 + 90
    # 2 instance-hours at $0.035 for 1,000 orders: $70 per million.
    assert figures.cost_per_million(2, 1000, 0.035) == pytest.approx(70)
    assert figures.cost_per_million(2, 0, 0.035) is None
    samples = [{"desired": 1}, {"desired": 4}, {"desired": 2}]
    f = figures.fleet_figures(inst, samples, 0, 120, 0.5)
    # 150 s real at scale 0.5 = 300 s simulated = 5 instance-minutes; fixed: 4 x 240 s = 16 minutes.
    assert f["instance_minutes"] == pytest.approx(5)
    assert f["fixed_fleet_instance_minutes"] == pytest.approx(16)


def test_send_rates_measure_the_burst_the_producer_achieved():
    # Scale 1/60: a simulated minute is one real second. Minutes 0-4 send 2 each, minute 5 sends 40.
    sent = {f"o{i}": float(i // 2) + 0.1 for i in range(10)}
    sent.update({f"b{i}": 5.5 for i in range(40)})
    r = figures.send_rates(sent, 0.0, 1 / 60, (0, 5))
    assert r == {"peak_per_minute": 40, "day_median_per_minute": 2, "achieved_burst_ratio": 20}
