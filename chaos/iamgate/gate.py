"""The authorisation step in front of every request of the local region: who calls (the access key of the
request's SigV4 signature, as AWS identifies a caller), what AWS authorises for the request (`operations`, plus
the KMS permissions an encrypted queue or table asks of the caller), the decision (`evaluator`), and for a
denial the service's own error and one log line naming principal, action and resource.

Modes: `strict` (deny what AWS would deny: the default of every local run), `soft` (allow, but log and count what
would have been denied: LocalStack's soft mode), `off` (no step at all: a flag, never the default)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import operations
from .evaluator import Evaluator
from .operations import Arns, Need, UnknownOperation
from .stack import ACCOUNT_ID, Principal, Stack

MODES = ("strict", "soft", "off")
ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/\d{8}/")
# The loopback stands for AWS's TLS endpoints: every request counts as TLS (the README's deploy section says
# what that leaves to an account).
BASE_CONTEXT = {"aws:SecureTransport": "true"}


@dataclass
class Denial:
    """What the caller hears and what the log says."""

    service: str
    code: str  # the service's error code
    message: str
    principal: str
    action: str
    resource: str

    def view(self) -> dict:
        return {k: getattr(self, k) for k in ("service", "code", "message", "principal", "action", "resource")}


@dataclass
class StatementDenials:
    """A BatchExecuteStatement some of whose statements are denied: one entry per statement, None if allowed."""

    verdicts: list[Denial | None]


# The service's code for "not allowed", for "not allowed by KMS", and for an unknown or missing key.
DENIED = {"sqs": "AccessDenied", "dynamodb": "AccessDeniedException", "autoscaling": "AccessDenied",
          "fis": "AccessDeniedException"}  # fmt: skip
KMS_DENIED = {"sqs": "KmsAccessDenied", "dynamodb": "AccessDeniedException"}
UNKNOWN_KEY = {"sqs": "InvalidClientTokenId", "dynamodb": "UnrecognizedClientException",
               "autoscaling": "InvalidClientTokenId", "fis": "UnrecognizedClientException"}  # fmt: skip
NO_SIGNATURE = {"sqs": "MissingAuthenticationToken", "dynamodb": "MissingAuthenticationTokenException",
                "autoscaling": "MissingAuthenticationToken", "fis": "MissingAuthenticationTokenException"}  # fmt: skip


def log(msg: str) -> None:
    print(f"iam: {msg}", file=sys.stderr, flush=True)


class Gate:
    def __init__(self, evaluator: Evaluator, mode: str = "strict", region: str = "us-east-1",
                 use_dir: str | os.PathLike | None = None):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"iam mode {mode!r}: one of {', '.join(MODES)}")
        self.evaluator = evaluator
        self.mode = mode
        self.arns = Arns(region, ACCOUNT_ID)
        self.by_key: dict[str, tuple[Principal, int]] = {}  # access key -> principal, stack index
        self.by_arn: dict[str, tuple[Principal, int]] = {}  # role ARN -> principal (asked by ARN: spot-sim's FIS)
        self.resource_policies: dict[str, dict] = {}
        self.encrypted: dict[str, str] = {}
        self.stacks: list[Stack] = []
        self.principal_arns: dict[str, str] = {}  # the last stack's: name -> ARN (harness: FIS_ROLE_ARN)
        self.denials: list[dict] = []
        self.would_deny: list[dict] = []  # soft mode
        self.allowed: set[tuple] = set()
        self.decisions = 0
        self._use = None
        if use_dir:
            Path(use_dir).mkdir(parents=True, exist_ok=True)
            self._use = Path(use_dir) / f"iam-use-{os.getpid()}-{int(time.time() * 1000)}.jsonl"

    # ---- stacks ------------------------------------------------------------------------------------------------

    async def add_stack(self, stack: Stack) -> dict:
        """Render and load one stack's policies (each validated: a policy the gate cannot enforce fails here)."""
        principals = stack.principals()
        resource_policies = stack.resource_policies()
        for p in principals:
            for name, doc in p.policies.items():
                await self.evaluator.validate(doc, "identity", f"{p.name}/{name}")
        for arn, doc in resource_policies.items():
            await self.evaluator.validate(doc, "resource", f"resource policy of {arn}")
        index = len(self.stacks)
        self.stacks.append(stack)
        by_name = {p.name: p for p in principals}
        for key, name in stack.keys.items():
            if name not in by_name:
                raise ValueError(f"access key {key}: no principal {name!r} (known: {sorted(by_name)})")
            self.by_key[key] = (by_name[name], index)
        self.by_arn[by_name["fis"].arn] = (by_name["fis"], index)
        self.resource_policies.update(resource_policies)
        self.encrypted.update(stack.encrypted())
        self.principal_arns = {p.name: p.arn for p in principals}
        if self._use:
            docs = {p.name: p.policies for p in principals}
            self._write({"stack": index, "names": stack.values(), "policies": docs, "planted": stack.planted()})
        return {"stack": index, "principals": {p.name: p.arn for p in principals}}

    # ---- requests ----------------------------------------------------------------------------------------------

    def group_of_instance(self) -> str | None:
        return self.stacks[-1].asg_name if self.stacks else None

    async def authorize(self, service: str, operation: str, method: str, path: str, headers_get, body: bytes
                        ) -> Denial | StatementDenials | None:  # fmt: skip
        """None when AWS would serve the request; else the denial to answer with (per statement for a PartiQL
        batch). Any failure of the gate itself is a recorded denial too: never a silent pass, never unnamed."""
        if self.mode == "off":
            return None
        try:
            return await self._authorize(service, operation, method, path, headers_get, body)
        except Exception as e:
            message = f"the local region's IAM gate failed on this request: {type(e).__name__}: {e}"
            return self._deny(Denial(service, DENIED.get(service, "AccessDenied"), message, "gate",
                                     f"{service}:{operation}", "-"))  # fmt: skip

    async def _authorize(self, service: str, operation: str, method: str, path: str, headers_get, body: bytes
                        ) -> Denial | StatementDenials | None:  # fmt: skip
        """None when AWS would serve the request; else the denial to answer with (per statement for a PartiQL
        batch)."""
        m = ACCESS_KEY.search(headers_get("authorization"))
        if not m:
            return self._deny(Denial(service, NO_SIGNATURE.get(service, "MissingAuthenticationToken"),
                                     "Request is missing Authentication Token", "anonymous", operation, "-"))  # fmt: skip
        who = self.by_key.get(m.group(1))
        if who is None:
            return self._deny(Denial(service, UNKNOWN_KEY.get(service, "UnrecognizedClientException"),
                                     "The security token included in the request is invalid.", f"key {m.group(1)}",
                                     operation, "-"))  # fmt: skip
        principal, stack = who
        req = operations.Request(method, path, body, headers_get("content-type"))
        try:
            needs = operations.needs(service, operation, req, self.arns, self.group_of_instance())
        except UnknownOperation as e:
            return self._deny(Denial(service, DENIED.get(service, "AccessDenied"),
                                     f"the local region's IAM gate does not know what AWS authorises for {e}: "
                                     f"add it to chaos/iamgate/operations.py", principal.arn, str(e), "-"))  # fmt: skip
        if service == "dynamodb" and operation == "BatchExecuteStatement" and needs:
            # DynamoDB authorises each statement of a batch by its verb and answers each on its own: a denied
            # statement gets its own error (code AccessDenied) beside the others' results.
            verdicts = [await self.check(principal, stack, service, [n]) for n in needs]
            if any(verdicts):
                return StatementDenials(verdicts)
            return None
        return await self.check(principal, stack, service, needs)

    async def check(self, principal: Principal, stack: int, service: str, needs: list[Need]) -> Denial | None:
        """Every need of one request, then the KMS ones its encrypted resources add; the first denial wins."""
        kms: list[tuple[Need, str]] = []
        for need in needs:
            d = await self._one(principal, stack, service, need, False)
            if d:
                return d
            # An index is encrypted with its table's key.
            key = self.encrypted.get(need.resource.split("/index/", 1)[0])
            for action in operations.kms_actions(need) if key else ():
                via = (("kms:ViaService", f"{service}.{self.arns.region}.amazonaws.com"),)
                kms.append((Need(action, key, via), service))
        for need, svc in dict.fromkeys(kms):
            d = await self._one(principal, stack, svc, need, True)
            if d:
                return d
        return None

    async def _one(self, principal: Principal, stack: int, service: str, need: Need, kms: bool) -> Denial | None:
        context = {**BASE_CONTEXT, **dict(need.context)}
        decision = await self.evaluator.decide(
            principal.arn, need.action, need.resource, ACCOUNT_ID, context, principal.policies,
            self.resource_policies.get(need.resource),
        )  # fmt: skip
        self.decisions += 1
        result = decision.get("result")
        if decision.get("ignoredContextKeys"):
            # A key the evaluator drops would make a condition silently not apply: refuse instead.
            result = "Error"
            ignored = decision["ignoredContextKeys"]
            decision = {**decision, "message": f"context keys not valid for {need.action}: {ignored}"}
        if result == "Allowed":
            self._record(principal, stack, need)
            return None
        if result == "Error":
            why = f"the evaluator refused the question ({decision.get('message')})"
        elif result == "ExplicitlyDenied":
            why = "with an explicit deny in " + (" and ".join(decision.get("deniedBy") or []) or "a policy")
        else:
            why = f"because no identity-based policy allows the {need.action} action"
        code = (KMS_DENIED if kms else DENIED).get(service, "AccessDenied")
        message = (
            f"User: {principal.arn} is not authorized to perform: {need.action} on resource: {need.resource} {why}"
        )
        return self._deny(Denial(service, code, message, principal.arn, need.action, need.resource))

    def _deny(self, d: Denial) -> Denial | None:
        v = d.view()
        if self.mode == "soft":
            self.would_deny.append(v)
            log(f"WOULD DENY (soft) principal={d.principal} action={d.action} resource={d.resource} code={d.code}")
            return None
        self.denials.append(v)
        log(f"DENIED principal={d.principal} action={d.action} resource={d.resource} code={d.code}: {d.message}")
        return d

    def _record(self, principal: Principal, stack: int, need: Need) -> None:
        key = (principal.name, stack, need.action, need.resource, need.context)
        if key in self.allowed:
            return
        self.allowed.add(key)
        if self._use:
            self._write({"principal": principal.name, "stack": stack, "action": need.action, "resource": need.resource,
                         "context": dict(need.context)})  # fmt: skip

    def _write(self, obj: dict) -> None:
        assert self._use
        with open(self._use, "a") as f:  # a line per new (principal, action, resource): few, so open each time
            f.write(json.dumps(obj) + "\n")

    # ---- by ARN (spot-sim asks for the FIS role's actions on its instances) -------------------------------------

    async def authorize_role(self, q: dict) -> dict:
        """{"principal": role ARN, "action", "resource", "context"} -> {"allowed", "message"}."""
        who = self.by_arn.get(str(q.get("principal")))
        service = str(q.get("action", "")).split(":", 1)[0]
        if self.mode == "off":
            return {"allowed": True, "message": "iam off"}
        if who is None:
            d = self._deny(Denial(service, "AccessDenied", f"no role {q.get('principal')} in the local account",
                                  str(q.get("principal")), str(q.get("action")), str(q.get("resource"))))  # fmt: skip
        else:
            ctx = tuple(sorted((str(k), str(v)) for k, v in (q.get("context") or {}).items()))
            d = await self.check(who[0], who[1], service, [Need(str(q["action"]), str(q["resource"]), ctx)])
        return {"allowed": d is None, "message": d.message if d else "allowed"}

    def status(self) -> dict:
        return {
            "mode": self.mode,
            "stacks": len(self.stacks),
            "principals": self.principal_arns,
            "decisions": self.decisions,
            "allowed": len(self.allowed),
            "denials": self.denials,
            "would_deny": self.would_deny,
        }
