#!/usr/bin/env python3
"""An HTTP-aware fault proxy between the workers and the AWS endpoint (the emulator): it makes the whole endpoint
unreachable for a while (the chaos soak's "network fault"), or makes ONE service and ONE operation fail the way
AWS fails. Standard library only (asyncio).

    chaos/proxy.py --upstream http://127.0.0.1:4566 [--upstream-for dynamodb=http://127.0.0.1:8000]...
                   [--listen 127.0.0.1:0] [--control 127.0.0.1:0] [--ready-file F] [--seed N]

`--upstream-for SERVICE=URL` sends that service's requests elsewhere (DynamoDB on DynamoDB Local while SQS stays
on the emulator); every fault still covers every service, as one network would.

Workers get `AWS_ENDPOINT_URL=http://<listen>` and reach the emulator through it. Every request on a connection
(HTTP/1.1 keep-alive) is read whole, identified, and then forwarded, or answered by the proxy itself:

    service    the SigV4 credential scope (`Credential=<key>/<date>/<region>/<service>/aws4_request`), else the
               `X-Amz-Target` prefix (AmazonSQS -> sqs, DynamoDB_20120810 -> dynamodb), else the Query
               protocol's `Version` (2011-01-01 -> autoscaling, 2012-11-05 -> sqs); "unknown" if none of them
    operation  the `X-Amz-Target` suffix (`AmazonSQS.ReceiveMessage` -> ReceiveMessage), else the form or query
               string `Action` (`Action=CompleteLifecycleAction`); "unknown" if neither

Without any fault, SQS's `ReceiveRequestAttemptId` is honoured as SQS does on a FIFO queue (the emulator ignores
it): a repeated attempt id gets the first answer, and a long poll ends when its caller hangs up or repeats its id
(faultproxy/attempts.py; `GET /status` counts them under "attempts").

A control port (plain HTTP, JSON, one request per connection) injects faults.

Whole-endpoint faults (what chaos/soak.py uses):

    POST /fault {"mode": "stall", "seconds": 5}   accept connections but hold every request and response (open
                                                  connections freeze mid-request; new ones connect and hear
                                                  nothing), then let what was held through
    POST /fault {"mode": "drop", "seconds": 5}    reset every open connection (RST) and reset new ones at once
    POST /fault {"mode": "pass"}                  end a whole-endpoint fault now

Per service / operation rules:

    POST /rules {"service": "sqs", "operation": "ChangeMessageVisibilityBatch", "action": "error",
                 "code": "AccessDenied", "status": 400, "message": "...", "count": 1, "seconds": 30,
                 "probability": 0.5}
        -> the rule as stored, with its "id"
      service      required: sqs | dynamodb | autoscaling
      operation    optional: the operation name; absent = every operation of the service
      table        optional, dynamodb only: only requests that name this table (TableName, RequestItems, a
                   transaction's items, a PartiQL statement's table): e.g. the claims of a
                   BatchExecuteStatement (the groups table) apart from the inserts (the orders table)
      action       required:
                   error            answer with the service's own error shape (faultproxy/aws.py) and `code`
                   stall            accept the request and never answer while the rule lasts (its `seconds`, or
                                    until DELETE /rules); then forward it (a late answer). A request whose
                                    client hangs up while held is dropped, never forwarded
                   reset            read the request, do not forward it, close the connection with RST
                   delay            forward the request at once (it is applied), answer `delay_seconds` late
                   pass-then-reset  forward the request (it IS applied), read the answer, then close the client
                                    connection with RST instead of answering: a lost response
      code         error only, required: the error code (e.g. AccessDenied, ThrottlingException, ValidationError)
      status       error only: the HTTP status (default: the code's real status, else 400)
      message      error only: the message (default: a message like AWS's for that code)
      type         error only, JSON services: the `__type` to send (default: AWS's for that code)
      delay_seconds  delay only, required: (0, 600]
      count        optional: affect only the next N matching requests, then the rule is spent
      seconds      optional: the rule ends S seconds after it was added
      probability  optional: (0, 1], each matching request is affected with this probability (count counts only
                   affected ones)
    Rules are tried in the order they were added; the first one in force that matches decides. Unknown fields
    are refused (400), so a typo does not silently become "every request".
    GET    /rules          every rule with "hits" (requests affected), "matched" (requests that matched, whether
                           the probability picked them or not), "remaining", "seconds_left", "active", "held"
    DELETE /rules          remove every rule (stalled requests are released and forwarded)
    DELETE /rules/<id>     remove one rule

    GET  /status   mode, seconds left, connection and byte counters, whole-endpoint faults, "requests" per
                   service and operation ({"sqs": {"ReceiveMessage": 12, ...}, ...}), "injected" per action,
                   "abandoned" (held requests whose client hung up) and "rules" (as GET /rules)

The IAM gate (chaos/iamgate): with `--iam strict` (or `soft`: allow, but log what would be denied) every request
is authorised against the policies Terraform deploys before it is forwarded; a denial is answered in the
service's own error shape and logged ("iam: DENIED principal=... action=... resource=..."). Stacks (the names
the policies are rendered with, and the access key of each principal) come from `--iam-stack FILE` (repeat) or
`POST /iam/stacks`; `--iam-use-dir DIR` records every (principal, action, resource) allowed, for
chaos/check-iam.py.

    GET  /iam              mode, decisions, allowed count, "denials" (and "would_deny" in soft mode)
    POST /iam/stacks       {"queue_name", "orders_table", "groups_table", "dlq_name", "asg_name", "environment",
                            "region", "keys": {ACCESS_KEY_ID: worker|producer|operator|deployer}}
    POST /iam/authorize    {"principal": ROLE_ARN, "action", "resource", "context"}: a role's own action (spot-sim
                           asks it for the FIS role's ec2:SendSpotInstanceInterruptions)
    POST /upstream         {"service": "dynamodb", "url": "http://..."}: where one service's requests go from now

`--ready-file` receives {"listen": "http://...", "control": "http://...", "pid": N, "iam": MODE} once both ports
listen.
The proxy exits on SIGTERM / SIGINT, closing every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from faultproxy.server import serve  # chaos/ is on sys.path: it is this script's folder


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the real endpoint, http://host:port")
    p.add_argument("--upstream-for", action="append", default=[], metavar="SERVICE=URL",
                   help="another endpoint for one service (repeat): dynamodb=http://127.0.0.1:8000")  # fmt: skip
    p.add_argument("--listen", default="127.0.0.1:0", help="address the workers use (default a free port)")
    p.add_argument("--control", default="127.0.0.1:0", help="control address (default a free port)")
    p.add_argument("--ready-file", help="write the addresses here (JSON) once listening")
    p.add_argument("--seed", type=int, help="seed for rules with a probability (default: random)")
    p.add_argument("--iam", choices=("strict", "soft", "off"), default="off",
                   help="authorise every request against the deployed policies (default off: a bare fault proxy)")  # fmt: skip
    p.add_argument("--iam-stack", action="append", default=[], metavar="FILE", help="a stack's JSON (repeat)")
    p.add_argument("--iam-use-dir", help="record every allowed (principal, action, resource) into this folder")
    a = p.parse_args(argv)
    if a.seed is not None:
        random.seed(a.seed)
    upstream_for = {}
    for x in a.upstream_for:
        service, sep, url = x.partition("=")
        if not sep or not url:
            p.error(f"--upstream-for {x!r}: SERVICE=URL")
        upstream_for[service] = url
    asyncio.run(serve(a.upstream, a.listen, a.control, a.ready_file, upstream_for, a.iam, a.iam_stack, a.iam_use_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
