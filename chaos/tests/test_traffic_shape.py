"""The traffic run's day and groups (chaos/trafficrun/shape.py)."""

import random

import pytest

from trafficrun import shape


def test_the_day_has_a_flash_sale_at_twenty_times_the_base_and_sends_every_order():
    assert shape.peak(shape.DAY) == 20
    start = shape.phase_start(shape.DAY, "flash sale")
    assert shape.rate(shape.DAY, start + 1) == 20
    assert shape.rate(shape.DAY, start - 1) == 1
    # The ramp goes from the lull's rate to the base.
    ramp = shape.phase_start(shape.DAY, "morning ramp")
    assert shape.rate(shape.DAY, ramp) == pytest.approx(0.3)
    assert shape.rate(shape.DAY, ramp + 4) == pytest.approx(0.65)
    assert shape.rate(shape.DAY, shape.length(shape.DAY) + 1) == 0
    # The schedule is monotone and ends with every order.
    counts = [shape.due(shape.DAY, 3000, m / 10) for m in range(0, 340)]
    assert counts == sorted(counts)
    assert shape.due(shape.DAY, 3000, shape.length(shape.DAY)) == 3000
    # The flash sale carries 100 of the 117.8 base-minutes.
    total = shape.total_units(shape.DAY)
    sale = shape.due(shape.DAY, 3000, start + 5) - shape.due(shape.DAY, 3000, start)
    assert sale == pytest.approx(3000 * 100 / total, abs=2)


def test_cumulative_matches_the_integral_of_the_rate():
    step = 0.001
    for t in (3.0, 10.0, 21.5, 30.0):
        riemann = sum(shape.rate(shape.DAY, k * step) for k in range(int(t / step))) * step
        assert shape.cumulative(shape.DAY, t) == pytest.approx(riemann, rel=1e-3)


def test_groups_uniform_covers_every_group_and_hot_concentrates():
    g = shape.groups_for(1000, 100, "uniform", random.Random(1))
    assert set(g) == set(range(100))
    h = shape.groups_for(1000, 100, "hot", random.Random(1))
    hot = sum(1 for x in h if x < 2)
    assert 850 < hot < 950
    with pytest.raises(ValueError):
        shape.groups_for(10, 5, "zipf", random.Random(1))
