"""The pieces of the traffic run; chaos/traffic.py is the command (its docstring says what a run does and checks).

# Layout
- `shape`: the day as a rate curve in simulated minutes (phases), the send schedule, the groups (uniform, hot).
- `figures`: the figures from what a run recorded (burst recovery, latency quantiles, oldest age, instance-minutes,
  compute cost per million orders).
- `run`: one run, start to end (the region with terraform's scaling policy, producer, sampler, Spot events,
  instance refresh, checks).
- `text`: report.txt; `chart`: report.html with the fleet chart.

chaos/tests/test_traffic_*.py has the unit tests of `shape` and `figures`.
"""
