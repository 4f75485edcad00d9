"""The local region's IAM gate as the harness starts it: chaos/proxy.py with `--iam strict` in front of the
emulators (and spot-sim's Auto Scaling and FIS APIs), one access key per principal, and the check that a run
met no denial (a missing permission fails the run, naming principal, action and resource).

LOCAL_IAM=strict|soft|off (default strict): `soft` logs what would be denied and lets it through; `off` starts
no gate (a flag for debugging, never the default). LOCAL_IAM_USE_DIR: where the gate records every allowed
(principal, action, resource); chaos/check-iam.py reads it (scripts/test points every run at out/iam-use)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .paths import REPO
from .procs import Proc, Registry, wait_for
from .sim import http_json

MODES = ("strict", "soft", "off")
SECRET = "local-secret"
# The access key of each principal (chaos/iamgate/stack.py: who each is and which policies it has).
KEYS = {
    "worker": "LOCALWORKERROLEKEY01",
    "producer": "LOCALPRODUCERKEY0001",
    "operator": "LOCALOPERATORKEY0001",
    "deployer": "LOCALDEPLOYERKEY0001",
}


def credentials(principal: str) -> dict:
    """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of one principal."""
    return {"AWS_ACCESS_KEY_ID": KEYS[principal], "AWS_SECRET_ACCESS_KEY": SECRET}


def mode() -> str:
    m = os.environ.get("LOCAL_IAM", "strict")
    if m not in MODES:
        raise ValueError(f"LOCAL_IAM={m!r}: one of {', '.join(MODES)}")
    return m


def use_dir(out_dir: Path) -> Path:
    return Path(os.environ.get("LOCAL_IAM_USE_DIR") or Path(out_dir) / "iam-use")


class IamDenied(RuntimeError):
    """The local region refused a request as AWS would: a policy misses a permission (or grants one wrongly)."""


def denial_text(denials: list[dict], limit: int = 5) -> str:
    lines = [f"the local region's IAM gate denied {len(denials)} request(s) (AWS would too):"]
    seen = set()
    for d in denials:
        key = (d["principal"], d["action"], d["resource"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"  principal={d['principal']} action={d['action']} resource={d['resource']} ({d['code']})")
        if len(seen) >= limit:
            break
    lines.append("  (fix the policy in terraform/policies/, or the call; see the gate's log 'iam: DENIED' lines)")
    return "\n".join(lines)


class Gate:
    """A chaos/proxy.py with the IAM gate on, started on free ports; stopped with the registry."""

    def __init__(self, proc: Proc, url: str, control: str, iam: str):
        self.proc, self.url, self.control, self.iam = proc, url, control, iam

    @classmethod
    def start(cls, procs: Registry, out_dir: Path, name: str, upstream: str, stack: dict,
              upstream_for: dict[str, str] | None = None, iam: str | None = None, faults_seed: int | None = None
              ) -> Gate:  # fmt: skip
        iam = iam or mode()
        out_dir = Path(out_dir)
        stack_file = out_dir / f"{name}-stack.json"
        stack_file.write_text(json.dumps(stack, indent=2))
        ready = out_dir / f"{name}.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        cmd = [sys.executable, REPO / "chaos" / "proxy.py", "--upstream", upstream, "--ready-file", ready,
               "--iam", iam]  # fmt: skip
        if iam != "off":
            cmd += ["--iam-stack", stack_file, "--iam-use-dir", use_dir(out_dir)]
        for service, url in (upstream_for or {}).items():
            cmd += ["--upstream-for", f"{service}={url}"]
        if faults_seed is not None:
            cmd += ["--seed", str(faults_seed)]
        proc = procs.spawn(name, cmd, out_dir / f"{name}.log", cwd=out_dir)

        def up():
            if not proc.alive():
                raise RuntimeError(
                    f"{name} (chaos/proxy.py) exited; see {proc.log_path}:\n{proc.log_path.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())
            return None

        info = wait_for(f"{name}'s ready file", 30, up)
        return cls(proc, info["listen"], info["control"], iam)

    def route(self, service: str, url: str) -> None:
        """Send one service's requests to `url` from now on (spot-sim's APIs, known once it listens)."""
        http_json("POST", f"{self.control}/upstream", {"service": service, "url": url})

    def status(self) -> dict:
        if self.iam == "off":
            return {"mode": "off", "denials": [], "would_deny": []}
        return http_json("GET", f"{self.control}/iam")

    def denials(self) -> list[dict]:
        return self.status().get("denials", [])

    def check(self) -> None:
        """Raise IamDenied naming principal, action and resource if the gate refused anything."""
        if self.iam == "off":
            return
        if not self.proc.alive():
            raise IamDenied(f"the IAM gate exited (rc {self.proc.returncode}): see {self.proc.log_path}")
        d = self.denials()
        if d:
            raise IamDenied(denial_text(d))

    @property
    def authorizer(self) -> str:
        return f"{self.control}/iam/authorize"
