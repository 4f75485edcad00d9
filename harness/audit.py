"""The one way the harnesses audit a table: `order-worker verify` (the auditor in the binary is the oracle)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def verify(
    binary: Path,
    env: dict,
    orders_table: str,
    groups_table: str,
    manifest: Path,
    json_out: Path,
    timeout: float = 120,
) -> dict:
    """Run `order-worker verify` on the manifest; its JSON report ({} if it wrote none) plus `exit_code` and
    `text` (what it printed). A failed audit is an answer here (exit 1): the caller decides what it means."""
    r = subprocess.run(
        [str(binary), "verify", "--table", orders_table, "--groups-table", groups_table,
         "--manifest", str(manifest), "--json", str(json_out)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    try:
        report = json.loads(Path(json_out).read_text())
    except (OSError, ValueError):
        report = {}
    report["exit_code"] = r.returncode
    report["text"] = r.stdout + r.stderr
    return report
