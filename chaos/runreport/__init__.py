"""The pieces of the run report; chaos/report.py is the command (its docstring says what it reads and writes).

# Layout
- `inputs`: the run directory's files, the orders table, each instance's story (spot-sim's events and its
  worker log) and its EMF figures.
- `model`: the data the report tells: who applied what, the interrupted instances, the handover of their
  groups, the instances drawn and their colours, the per-group view's data.
- `audit`: the problems that make the verdict FAILED.
- `text`: summary.txt.
- `svg`: the timeline.
- `page`: report.html (the per-group view's script, the timeline, the figures, the summary).

chaos/tests/test_report_*.py has the unit tests of `model`, `audit` and `text`; chaos/check-report.py checks the
page in a real browser.
"""
