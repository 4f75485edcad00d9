#!/usr/bin/env bash
# Send mock orders to the FIFO queue with the AWS CLI (`aws sqs send-message-batch`), 10 per batch, in exact
# order, round-robin over several message groups, and append one manifest line per order (the input of
# `order-worker verify`): {"order_id", "group", "expect", "message_id", "sequence_number"}.
#
#   chaos/send-orders.sh QUEUE_URL MANIFEST [--count 100] [--groups 5] [--prefix ID] [--pause SECONDS]
#                        [--lanes 1]
#
# --lanes N sends with N aws processes at once, each for its own share of the groups (group k in lane k % N),
# so each group's orders still go out one batch after another in exact order; only the interleaving of
# different groups changes. One CLI call costs about a second of CPU, so two lanes about halve the send time.
#
# Runs unchanged against AWS (credentials and region from the usual AWS variables/profile) and against the
# local region (AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL: passed as --endpoint-url, which the AWS CLI v1 needs).
# The order id is the MessageDeduplicationId, so a re-run with the same --prefix sends nothing new.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 2 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
queue_url=$1 manifest=$2
shift 2
count=100 groups=5 prefix="ord-$(date -u +%Y%m%d%H%M%S)-$$" pause=0 lanes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --groups) groups=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --pause) pause=$2; shift 2 ;;
    --lanes) lanes=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "send-orders: unknown argument $1" >&2; usage ;;
  esac
done
case "$queue_url" in *.fifo) ;; *) echo "send-orders: $queue_url is not a FIFO queue URL" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "$0")/.." && pwd)
AWS=${AWS_CLI:-$([ -x "$repo/.venv/bin/aws" ] && echo "$repo/.venv/bin/aws" || echo aws)}
PY=${PYTHON:-python3}
# The AWS CLI v1 ignores AWS_ENDPOINT_URL*: pass the endpoint explicitly when one is set (local region).
sqs_endpoint=${AWS_ENDPOINT_URL_SQS:-${AWS_ENDPOINT_URL:-}}
aws_sqs() {
  if [ -n "$sqs_endpoint" ]; then "$AWS" --endpoint-url "$sqs_endpoint" sqs "$@"; else "$AWS" sqs "$@"; fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$manifest")"
touch "$manifest"

# Every batch file (the CLI's --entries JSON) first, in send order.
case "$lanes" in ''|*[!0-9]*|0) echo "send-orders: --lanes must be a positive number" >&2; exit 2 ;; esac
[ "$lanes" -le "$groups" ] || lanes=$groups
"$PY" - "$work" "$count" "$groups" "$prefix" "$lanes" <<'EOF'
import json, os, sys, time
work, count, groups, prefix, lanes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
placed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
orders = []
for i in range(count):
    g = f"{prefix}-cust-{i % groups:02d}"
    oid = f"{prefix}-{i:05d}"
    body = {"order_id": oid, "customer_id": g,
            "items": [{"sku": f"SKU-{i % 7 + 1}", "qty": i % 3 + 1, "unit_price_cents": 1299}],
            "currency": "EUR", "placed_at": placed}
    orders.append((i % groups % lanes, {"MessageBody": json.dumps(body, separators=(",", ":")),
                                        "MessageGroupId": g, "MessageDeduplicationId": oid}))
for lane in range(lanes):
    mine = [o for k, o in orders if k == lane]
    os.makedirs(f"{work}/lane-{lane}")
    for b in range(0, len(mine), 10):
        chunk = [dict(o, Id=str(k)) for k, o in enumerate(mine[b:b + 10])]
        with open(f"{work}/lane-{lane}/batch-{b // 10:05d}.json", "w") as f:
            json.dump(chunk, f)
EOF

# One lane: its batches one after another; each batch's manifest lines appended in one write (atomic on a
# local file, so lanes never interleave inside a line). Leaves how many it sent in DIR/sent.
send_lane() {
  local dir=$1 batch out tries n sent=0
  for batch in "$dir"/batch-*.json; do
    out="${batch%.json}.out"
    tries=0
    until aws_sqs send-message-batch --queue-url "$queue_url" --entries "file://$batch" --output json >"$out"; do
      tries=$((tries + 1))
      if [ "$tries" -ge 3 ]; then echo "send-orders: send-message-batch failed 3 times ($batch)" >&2; return 1; fi
      sleep 1  # same dedup ids: a retry of a batch that did go through is dropped by SQS, not sent twice
    done
    n=$("$PY" - "$batch" "$out" "$manifest" <<'EOF'
import json, sys
batch, out, manifest = sys.argv[1:4]
entries = json.load(open(batch))
resp = json.load(open(out))
if resp.get("Failed"):
    sys.exit(f"send-orders: entries failed: {resp['Failed']}")
ok = {e["Id"]: e for e in resp.get("Successful", [])}
lines = [json.dumps({"order_id": e["MessageDeduplicationId"], "group": e["MessageGroupId"],
                     "expect": "accepted", "message_id": ok[e["Id"]]["MessageId"],
                     "sequence_number": ok[e["Id"]].get("SequenceNumber")}) + "\n" for e in entries]
with open(manifest, "a") as m:
    m.write("".join(lines))
print(len(entries))
EOF
)
    sent=$((sent + n))
    if [ "$pause" != 0 ]; then sleep "$pause"; fi
  done
  echo "$sent" >"$dir/sent"
}

pids=()
for dir in "$work"/lane-*; do
  send_lane "$dir" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ "$failed" = 0 ] || exit 1
sent=$(cat "$work"/lane-*/sent | awk '{s += $1} END {print s + 0}')
echo "send-orders: sent $sent orders in $groups groups, $lanes lane(s) (prefix $prefix) to $queue_url; manifest $manifest" >&2
