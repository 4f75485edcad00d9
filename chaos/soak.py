#!/usr/bin/env python3
"""The chaos soak against the local region: a stream of orders over many message groups into a fleet of real
order-worker processes while faults are injected at random, then an audit of the table.

    chaos/soak.py --orders 2000 --groups 20 --fault-every 3 --duration 60 --out target/soak/short

What runs (harness.LocalRegion starts and stops it): the SQS/DynamoDB emulator (`--dynamodb dynamodb-local`:
DynamoDB on DynamoDB Local, AWS's own engine, SQS still on the emulator), spot-sim (instance metadata,
Auto Scaling, FIS) with `--workers` order-worker processes, and chaos/proxy.py between the workers and the
emulator. The producer talks to the emulator directly; the workers only through the proxy.

The producer sends `--orders` orders spread over `--groups` groups, paced over `--duration` seconds, 10 per
SendMessageBatch, and records every message it sent (order id, group, expected verdict, MessageId) in a manifest
in send order. A share of the orders is sent twice (the same order id and body under a new deduplication id,
as a producer retrying after a timeout would), and a share of the messages are not valid orders (expected
REJECTED; those with no usable id are found by MessageId).

Faults, one every `--fault-every` seconds on average (uniform in [0.5, 1.5] x), on a random healthy worker:

    fis               FIS experiment aws:ec2:send-spot-instance-interruptions (rebalance now, the 2-minute
                      notice time-scaled, then reclaimed) through the FIS API
    rebalance         a rebalance recommendation only (capacity rebalancing replaces the instance via the hook)
    rebalance_notice  a rebalance recommendation, then an interruption notice 0.1-0.6 s later
    kill              SIGKILL, no notice, of a worker holding messages (mid-batch: read from its
                      order_worker_messages_in_flight); its instance is then replaced (scale-in
                      without decrement: the hook times out, the group launches a replacement)
    freeze            SIGSTOP of a worker holding messages, past the visibility timeout, then SIGCONT: its
                      messages go to another worker while it still holds them
    imds              instance metadata failing for a few seconds: 500s, hanging requests, or every token
                      expired (the next read is a 401)
    network           the SQS/DynamoDB endpoint unreachable for 2-8 s for every worker: the proxy stalls
                      (holds every byte) or drops (resets) every connection
    sqs_stall_drain   SQS stops answering every worker for 2-6 s (proxy rule: stall) and at the same moment a
                      worker holding messages gets an interruption notice: its releases stall, its hook must
                      still be completed
    visibility_fail   ChangeMessageVisibilityBatch answers 503 ServiceUnavailable (the next 1-3, or for 1-3 s)
    ddb_throttle      the claims (UpdateItem) or the inserts (BatchExecuteStatement) throttled (ThrottlingException
                      or ProvisionedThroughputExceededException) for 2-6 s, every call or each with probability 0.5
    denied            DynamoDB AccessDeniedException on every operation for --denied-seconds (at most
                      --denied-max per run)
    lost_response     the next claim (UpdateItem) or batch of inserts (BatchExecuteStatement) is applied but its
                      answer is lost (pass-then-reset)

Every kind in use is injected once first (in random order), then kinds are drawn by weight.

Faults stop when the last order is sent; the soak then waits for the queue to empty and the table to hold every
expected record ("backlog clear"), waits one more visibility timeout for any late double apply to land, and
runs `order-worker verify`. The report (printed; `report.json` and `report.txt` in `--out`) gives orders sent,
applied, rejected, lost, applied twice, out of order, position gaps, messages in the DLQ, second-consumer
receives (a ReceiveCount > 1 that no hold-breaking fault explains; see soakrun/checks.py), the histogram of
ReceiveCount, faults by kind, proxy rule hits, drains and their durations, and the time for the backlog to
clear. Exit status 1 when any of lost, applied twice, out of order, position gaps, DLQ depth or second-consumer
receives is not 0 (or the backlog does not clear, verify cannot run, or an instance interrupted under an SQS
stall did not complete its hook); 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from harness import DYNAMODB_BACKENDS, target_dir
from soakrun.faults import FAULT_KINDS
from soakrun.run import run


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Fault kinds: " + ", ".join(FAULT_KINDS))  # fmt: skip
    p.add_argument("--orders", type=int, default=2000, help="orders to send (before duplicate re-sends)")
    p.add_argument("--groups", type=int, default=20, help="message groups (customers)")
    p.add_argument("--fault-every", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--duration", type=float, default=60.0, help="seconds over which the orders are sent")
    p.add_argument("--workers", type=int, default=4, help="worker instances (spot-sim desired capacity)")
    p.add_argument("--faults", help="comma-separated fault kinds to use (default: all)")
    p.add_argument("--dup-rate", type=float, default=0.03, help="share of valid orders sent twice")
    p.add_argument("--malformed-rate", type=float, default=0.02, help="share of messages that are not valid orders")
    p.add_argument("--time-scale", type=float, default=0.05, help="spot-sim time scale (0.05: PT2M lasts 6 s)")
    p.add_argument("--visibility-timeout", type=int, default=6, help="worker --visibility-timeout, seconds")
    p.add_argument("--drain-timeout", type=int, default=4, help="worker --drain-timeout, seconds")
    p.add_argument("--work-delay", default="5ms", help="worker --work-delay (keeps orders in flight)")
    p.add_argument("--backlog-timeout", type=float, default=180, help="seconds allowed for the backlog to clear")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument(
        "--denied-seconds", type=float, default=10, help="length of a `denied` window (DynamoDB AccessDeniedException)"
    )
    p.add_argument("--denied-max", type=int, default=1, help="at most this many `denied` windows per run")
    p.add_argument("--plant-bug", choices=["lost", "twice", "out_of_order", "dlq", "second_consumer"],
                   help="self-test: damage the table before verify (delete a record / advance a group's LastPosition / "
                        "swap two positions), put a message in the DLQ, or have a second client receive an order "
                        "before a worker applies it; the soak must then FAIL")  # fmt: skip
    p.add_argument(
        "--dynamodb",
        choices=DYNAMODB_BACKENDS,
        default="ministack",
        help="where the tables live: ministack (with SQS) or dynamodb-local (AWS's own engine)",
    )
    p.add_argument("--out", default=str(target_dir() / "soak" / time.strftime("%Y%m%dT%H%M%S")))
    a = p.parse_args(argv)
    if a.faults and (bad := set(a.faults.split(",")) - set(FAULT_KINDS)):
        p.error(f"unknown fault kinds {sorted(bad)}; known: {', '.join(FAULT_KINDS)}")
    try:
        return run(a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
