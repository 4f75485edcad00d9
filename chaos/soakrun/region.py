"""The soak's region: harness.LocalRegion with chaos/proxy.py between the workers and the emulators, and the
reads of the queues the soak's checks need."""

from __future__ import annotations

import json
from pathlib import Path

from harness import LocalRegion, Proc, http_json
from harness.gate import Gate

CHAOS = Path(__file__).resolve().parent.parent  # chaos/, where proxy.py is


class SoakRegion(LocalRegion):
    """LocalRegion with chaos/proxy.py between the workers and the emulators (one proxy: its faults cover SQS and
    DynamoDB together, wherever each is served). The producer, verify and the soak's own reads go through the
    region's IAM gate, not through the faults (they are not under test)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.proxy_proc: Proc | None = None
        self.proxy_url: str | None = None
        self.proxy_control: str | None = None
        self.fault_gate: Gate | None = None

    def start(self) -> SoakRegion:
        self.start_emulator()
        self.start_gate()
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
        """The workers' fault proxy, straight in front of the emulators, with the IAM gate on as well (the same
        stack as the region's gate): a request a fault lets through is still authorised as AWS would."""
        upstream_for = (
            {"dynamodb": self.emulator_ddb_endpoint} if self.emulator_ddb_endpoint != self.emulator_endpoint else {}
        )
        self.fault_gate = Gate.start(self.procs, self.out_dir, "proxy", self.emulator_endpoint, self.iam_stack(),
                                     upstream_for)  # fmt: skip
        self.proxy_proc, self.proxy_url, self.proxy_control = (
            self.fault_gate.proc,
            self.fault_gate.url,
            self.fault_gate.control,
        )
        self.say(
            f"proxy {self.proxy_url} -> {self.emulator_endpoint}, DynamoDB {self.emulator_ddb_endpoint} "
            f"(control {self.proxy_control}, IAM {self.fault_gate.iam})"
        )

    def gates(self) -> list[Gate]:
        return super().gates() + ([self.fault_gate] if self.fault_gate else [])

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
