"""The soak's region: harness.LocalRegion with chaos/proxy.py between the workers and the emulators, and the
reads of the queues the soak's checks need."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from harness import LocalRegion, Proc, http_json, wait_for

CHAOS = Path(__file__).resolve().parent.parent  # chaos/, where proxy.py is


class SoakRegion(LocalRegion):
    """LocalRegion with chaos/proxy.py between the workers and the emulators (one proxy: its faults cover SQS and
    DynamoDB together, wherever each is served). The producer, verify and the soak's own reads use the emulators
    directly (they are not under test)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.proxy_proc: Proc | None = None
        self.proxy_url: str | None = None
        self.proxy_control: str | None = None

    def start(self) -> SoakRegion:
        self.start_emulator()
        self.create_resources()
        self.start_proxy()
        self.worker_env.update(
            {
                "AWS_ENDPOINT_URL": self.proxy_url,
                "AWS_ENDPOINT_URL_SQS": self.proxy_url,
                "AWS_ENDPOINT_URL_DYNAMODB": self.proxy_url,
            }
        )
        self.start_sim(timeout=90)
        return self

    def start_proxy(self) -> None:
        ready = self.out_dir / "proxy.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        cmd = [sys.executable, CHAOS / "proxy.py", "--upstream", self.endpoint, "--ready-file", ready]
        if self.ddb_endpoint != self.endpoint:
            cmd += ["--upstream-for", f"dynamodb={self.ddb_endpoint}"]
        self.proxy_proc = self._spawn("proxy", cmd)

        def up():
            if not self.proxy_proc.alive():
                raise RuntimeError(f"proxy exited; see {self.proxy_proc.log_path}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())
            return None

        info = wait_for("the proxy's ready file", 20, up)
        self.proxy_url, self.proxy_control = info["listen"], info["control"]
        self.say(
            f"proxy {self.proxy_url} -> {self.endpoint}, DynamoDB {self.ddb_endpoint} (control {self.proxy_control})"
        )

    def proxy_fault(self, mode: str, seconds: float) -> dict:
        return http_json("POST", f"{self.proxy_control}/fault", {"mode": mode, "seconds": seconds})

    def proxy_status(self) -> dict:
        return http_json("GET", f"{self.proxy_control}/status")

    def proxy_rule(self, rule: dict) -> dict:
        """A per-service / per-operation fault rule (chaos/proxy.py POST /rules); returns it with its id."""
        return http_json("POST", f"{self.proxy_control}/rules", rule)

    def proxy_rules(self) -> list[dict]:
        return http_json("GET", f"{self.proxy_control}/rules")["rules"]

    def queue_depth(self) -> int:
        return self.depth(self.queue_url)

    def dlq_depth(self) -> int:
        """Messages in the DLQ. The queue's RedrivePolicy (maxReceiveCount 10, as in terraform/queue.tf) moves a
        message there after ten receives without a delete."""
        return self.depth(self.dlq_url)

    def redrive_policy(self) -> dict | None:
        a = self.client("sqs").get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])[
            "Attributes"
        ]
        return json.loads(a["RedrivePolicy"]) if a.get("RedrivePolicy") else None
