#!/usr/bin/env bash
# The aws-cli 100-order ordering check: send mock orders with `aws sqs send-message-batch` (chaos/send-orders.sh,
# exact order, several message groups), wait until the orders table has all of them (with a deadline), then
# audit the table with `order-worker verify`: every order applied once, none lost, and in exact send order
# within its group. Exits non-zero on any violation or at the deadline.
#
#   chaos/check-ordering.sh QUEUE_URL ORDERS_TABLE GROUPS_TABLE [--count 100] [--groups 5] [--timeout 300]
#                           [--out DIR] [--prefix ID] [--pause SECONDS]
#                           [--lanes N]  (parallel senders, each for its own groups: chaos/send-orders.sh)
#
# Against AWS: QUEUE_URL=$(terraform -chdir=terraform output -raw queue_url), the tables from
# orders_table_name / groups_table_name, credentials and region as usual, workers running in the group.
# Against the local region: source the env file of `chaos/localregion.py up` (it sets AWS_ENDPOINT_URL_SQS,
# AWS_ENDPOINT_URL_DYNAMODB, QUEUE_URL, ORDERS_TABLE, GROUPS_TABLE, ORDER_WORKER_BIN).
# Writes DIR/manifest.jsonl, DIR/verify.json and DIR/verify.txt (DIR default: out/ordering-<time>).
# The order-worker binary: $ORDER_WORKER_BIN, else ${CARGO_TARGET_DIR:-target}/debug/order-worker, else PATH.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
[ $# -ge 3 ] || usage
queue_url=$1 orders_table=$2 groups_table=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
count=100 groups=5 timeout=300 out="" prefix="" pause=0 lanes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --groups) groups=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --pause) pause=$2; shift 2 ;;
    --lanes) lanes=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "check-ordering: unknown argument $1" >&2; usage ;;
  esac
done
out=${out:-$repo/out/ordering-$(date -u +%Y%m%dT%H%M%SZ)}
prefix=${prefix:-ord-$(date -u +%Y%m%d%H%M%S)-$$}
mkdir -p "$out"
manifest=$out/manifest.jsonl
: >"$manifest"

worker=${ORDER_WORKER_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/order-worker}
if [ ! -x "$worker" ]; then worker=$(command -v order-worker || true); fi
if [ -z "$worker" ]; then
  echo "check-ordering: no order-worker binary (set ORDER_WORKER_BIN or run scripts/bootstrap)" >&2
  exit 2
fi
# `order-worker verify` reads AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL itself (the Rust SDK does).
verify() {
  "$worker" verify --table "$orders_table" --groups-table "$groups_table" --manifest "$manifest" --json "$out/verify.json"
}

ts() { date -u +%H:%M:%S; }
echo "[$(ts)] check-ordering: sending $count orders in $groups groups to $queue_url"
"$repo/chaos/send-orders.sh" "$queue_url" "$manifest" --count "$count" --groups "$groups" --prefix "$prefix" --pause "$pause" \
  --lanes "$lanes"
sent=$(wc -l <"$manifest")
echo "[$(ts)] check-ordering: $sent sent; waiting up to ${timeout}s for them in $orders_table"

deadline=$((SECONDS + timeout))
last=""
while :; do
  # verify exits 1 while orders are still missing; the JSON says how many.
  verify >"$out/verify.txt" 2>&1 || true
  lost=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("lost", -1))' "$out/verify.json" 2>/dev/null || echo -1)
  if [ "$lost" = 0 ]; then break; fi
  # In the local region a denied permission means the orders never come: stop now, naming it (AWS: unset).
  if [ -n "${IAM_GATE_CONTROL:-}" ] && ! "${PYTHON:-python3}" "$repo/chaos/localregion.py" iam >/dev/null 2>"$out/iam.txt"; then
    echo "[$(ts)] check-ordering: FAILED: the local region refused a request, as AWS would:" >&2
    cat "$out/iam.txt" >&2
    exit 1
  fi
  if [ "$lost" != "$last" ]; then
    echo "[$(ts)] check-ordering: $((sent - lost)) of $sent orders in the table"
    last=$lost
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "[$(ts)] check-ordering: deadline: $lost orders still missing after ${timeout}s" >&2
    cat "$out/verify.txt" >&2
    exit 1
  fi
  sleep 2
done

# All there: the final audit (its exit code is the verdict).
rc=0
verify >"$out/verify.txt" 2>&1 || rc=$?
cat "$out/verify.txt"
if [ -n "${IAM_GATE_CONTROL:-}" ] && ! "${PYTHON:-python3}" "$repo/chaos/localregion.py" iam >/dev/null 2>"$out/iam.txt"; then
  echo "[$(ts)] check-ordering: FAILED: the local region refused a request, as AWS would:" >&2
  cat "$out/iam.txt" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "[$(ts)] check-ordering: FAILED (lost, duplicated or out-of-order orders; see $out/verify.json)" >&2
  exit 1
fi
echo "[$(ts)] check-ordering: OK: $sent orders applied once each, in order within each group ($out)"
