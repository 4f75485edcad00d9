"""The group's scaling and release settings as terraform/ declares them, for spot-sim: the target-tracking
policy's numbers (variables.tf, through region.terraform_defaults), the warmups and the instance refresh
preferences (compute.tf's literals), and the instance types (variables.tf's list) that price an instance-hour.
One source of truth: a value changed in terraform/ changes what the local group does.
"""

from __future__ import annotations

import re
from pathlib import Path

from .paths import REPO

COMPUTE_FALLBACK = {"default_instance_warmup": 120, "refresh_instance_warmup": 120, "refresh_skip_matching": True}
INSTANCE_TYPES_FALLBACK = ["m7i.large", "m6i.large", "m6a.large", "m5.large", "c7i.large", "c6i.large"]


def compute_settings(tf_dir: Path = REPO / "terraform") -> dict:
    """default_instance_warmup and the instance_refresh block's preferences, read from compute.tf."""
    out = dict(COMPUTE_FALLBACK)
    try:
        text = (tf_dir / "compute.tf").read_text()
    except OSError:
        return out
    if m := re.search(r"^\s*default_instance_warmup\s*=\s*(\d+)", text, re.M):
        out["default_instance_warmup"] = int(m.group(1))
    block = re.search(r"instance_refresh\s*\{(.*?)\n  \}", text, re.S)
    if block:
        if m := re.search(r"^\s*instance_warmup\s*=\s*(\d+)", block.group(1), re.M):
            out["refresh_instance_warmup"] = int(m.group(1))
        if m := re.search(r"^\s*skip_matching\s*=\s*(true|false)", block.group(1), re.M):
            out["refresh_skip_matching"] = m.group(1) == "true"
    return out


def instance_types(tf_dir: Path = REPO / "terraform") -> list[str]:
    """variables.tf's `instance_types` default, most preferred first."""
    try:
        text = (tf_dir / "variables.tf").read_text()
    except OSError:
        return list(INSTANCE_TYPES_FALLBACK)
    m = re.search(r'variable\s+"instance_types"\s*\{.*?^\s*default\s*=\s*\[(.*?)\]', text, re.S | re.M)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else list(INSTANCE_TYPES_FALLBACK)


def sim_args(tf: dict, queue_url: str, compute: dict | None = None) -> list[str]:
    """spot-sim flags that give the local group terraform's policy: target tracking on `queue_url`."""
    compute = compute or compute_settings()
    return [
        "--scaling-queue-url", queue_url,
        "--target-value", str(tf["backlog_per_instance_target"]),
        "--min-size", str(tf["min_size"]),
        "--max-size", str(tf["max_size"]),
        "--instance-warmup", f"{compute['default_instance_warmup']}s",
    ]  # fmt: skip


def refresh_preferences(tf: dict, compute: dict | None = None) -> dict:
    """StartInstanceRefresh's Preferences as compute.tf's instance_refresh block sets them."""
    compute = compute or compute_settings()
    return {
        "MinHealthyPercentage": int(tf["instance_refresh_min_healthy_percentage"]),
        "InstanceWarmup": int(compute["refresh_instance_warmup"]),
        "SkipMatching": bool(compute["refresh_skip_matching"]),
    }
