"""The unit tests of the pure parts of chaos/ (the proxy's rules and AWS shapes, the soak's checks, the report's
data). The commands run with chaos/ as their script folder and put the repository root on sys.path for
`harness`; the tests import the same packages, so both go on the path here."""

import sys
from pathlib import Path

CHAOS = Path(__file__).resolve().parent.parent
for p in (CHAOS, CHAOS.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
