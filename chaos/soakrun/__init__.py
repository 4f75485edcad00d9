"""The pieces of the chaos soak; chaos/soak.py is the command (its docstring says what a soak does and checks).

# Layout
- `region`: `SoakRegion`, harness.LocalRegion with chaos/proxy.py in front of the emulators, and queue reads.
- `traffic`: the send stream planned from the seed (`plan_messages`) and the `Producer` that writes the manifest.
- `faults`: the fault kinds, which of them can take a hold away, and `Chaos`, the thread that injects them.
- `checks`: the worker logs read, the no-second-consumer check, the invariants that fail a run.
- `planted`: `--plant-bug`, the checks' self-test (the table or the DLQ damaged on purpose).
- `text`: report.txt from report.json.
- `run`: one soak, start to end.

chaos/tests/test_soak_*.py has the unit tests of `traffic`'s plan, `checks` and `text`.
"""
