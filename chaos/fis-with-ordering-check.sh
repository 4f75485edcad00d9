#!/usr/bin/env bash
# The 100-order ordering check with a Spot interruption in the middle of it: start chaos/check-ordering.sh,
# wait until the first order of its manifest is in the table (orders are in flight), then run chaos/fis-run.sh
# (FIS experiment: rebalance, notice, hook, termination, replacement), and wait for both. Exits non-zero when
# either fails: any lost, duplicated or out-of-order order, or an interruption that did not run its course.
#
#   chaos/fis-with-ordering-check.sh QUEUE_URL ORDERS_TABLE GROUPS_TABLE [--count 100] [--groups 5]
#       [--timeout 600] [--out DIR] [--pause SECONDS] [--lanes N] [--target-cmd CMD] [-- FIS-RUN ARGUMENTS...]
#
# FIS-RUN ARGUMENTS default to none (fis-run.sh then starts the Terraform template); for the local region pass
# e.g. `-- --asg order-workers`. --target-cmd CMD (run by bash once orders are applied) picks what to interrupt:
# it waits as long as it needs and prints instance ids (they go to fis-run.sh as --instances) or fis-run.sh
# arguments (`--template-id EXT...`; chaos/busiest.py picks a busy worker). --pause, --lanes: how
# chaos/send-orders.sh sends.
# Writes DIR/manifest.jsonl, DIR/verify.json, DIR/fis/{experiment,fis-run}.json.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
[ $# -ge 3 ] || usage
queue_url=$1 orders_table=$2 groups_table=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
count=100 groups=5 timeout=600 out="" pause=0 lanes=1 target_cmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --groups) groups=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --pause) pause=$2; shift 2 ;;
    --lanes) lanes=$2; shift 2 ;;
    --target-cmd) target_cmd=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage 0 ;;
    *) echo "fis-with-ordering-check: unknown argument $1" >&2; usage ;;
  esac
done
fis_args=("$@")
out=${out:-$repo/out/fis-ordering-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/fis"
manifest=$out/manifest.jsonl
: >"$manifest"

AWS=${AWS_CLI:-$([ -x "$repo/.venv/bin/aws" ] && echo "$repo/.venv/bin/aws" || echo aws)}
ddb_endpoint=${AWS_ENDPOINT_URL_DYNAMODB:-${AWS_ENDPOINT_URL:-}}
aws_ddb() {
  if [ -n "$ddb_endpoint" ]; then "$AWS" --endpoint-url "$ddb_endpoint" dynamodb "$@"; else "$AWS" dynamodb "$@"; fi
}
ts() { date -u +%H:%M:%S; }
say() { echo "[$(ts)] fis-with-ordering-check: $*"; }

check_pid="" fis_pid="" pick_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Each runs in a process group of its own (set -m below): stop all of it, aws calls included.
  for p in $pick_pid $fis_pid $check_pid; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in $pick_pid $fis_pid $check_pid; do wait "$p" 2>/dev/null || true; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

set -m
"$repo/chaos/check-ordering.sh" "$queue_url" "$orders_table" "$groups_table" --count "$count" --groups "$groups" \
  --timeout "$timeout" --out "$out" --pause "$pause" --lanes "$lanes" &
check_pid=$!
set +m

# Orders in flight: the first one sent is in the table (a --target-cmd decides that itself: it waits on workers).
deadline=$((SECONDS + timeout))
first=""
while [ -z "$target_cmd" ]; do
  if [ -z "$first" ] && [ -s "$manifest" ]; then
    first=$(head -n1 "$manifest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["order_id"])')
    say "first order sent: $first; waiting for it in $orders_table"
  fi
  if [ -n "$first" ] && aws_ddb get-item --table-name "$orders_table" --consistent-read \
      --key "{\"OrderID\": {\"S\": \"$first\"}}" --output text --query 'Item.OrderID.S' 2>/dev/null | grep -qx "$first"; then
    say "orders are being applied: starting the Spot interruption"
    break
  fi
  if ! kill -0 "$check_pid" 2>/dev/null; then
    say "the ordering check ended before any order was applied" >&2
    wait "$check_pid" || true
    check_pid=""
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then say "no order applied within ${timeout}s" >&2; exit 1; fi
  sleep 0.5
done

if [ -n "$target_cmd" ]; then
  say "choosing the instance to interrupt: $target_cmd"
  picked=$out/fis/targets.txt
  set -m
  bash -c "$target_cmd" >"$picked" &
  pick_pid=$!
  set +m
  # It waits for a busy worker; if every order is applied first, there is nothing left to interrupt.
  while kill -0 "$pick_pid" 2>/dev/null; do
    if ! kill -0 "$check_pid" 2>/dev/null; then
      kill -TERM -- "-$pick_pid" 2>/dev/null || true
      wait "$pick_pid" 2>/dev/null || true
      say "the ordering check ended before the target command chose an instance" >&2
      exit 1
    fi
    sleep 0.1
  done
  pick_rc=0
  wait "$pick_pid" || pick_rc=$?
  pick_pid=""
  read -ra words <"$picked" || true
  if [ "$pick_rc" -ne 0 ] || [ "${#words[@]}" -eq 0 ]; then
    say "no instance to interrupt (the target command exited $pick_rc)" >&2
    exit 1
  fi
  case "${words[0]}" in
    -*) fis_args+=("${words[@]}") ;;
    *) fis_args+=(--instances "$(IFS=,; echo "${words[*]}")") ;;
  esac
  say "interrupting: fis-run.sh ${fis_args[*]}"
fi

fis_rc=0
set -m
"$repo/chaos/fis-run.sh" --out "$out/fis" --timeout "$timeout" "${fis_args[@]+"${fis_args[@]}"}" &
fis_pid=$!
set +m
wait "$fis_pid" || fis_rc=$?
fis_pid=""
check_rc=0
wait "$check_pid" || check_rc=$?
check_pid=""

if [ "$fis_rc" -ne 0 ]; then say "FAILED: the interruption did not run its course (fis-run exit $fis_rc)" >&2; fi
if [ "$check_rc" -ne 0 ]; then say "FAILED: the ordering check failed (exit $check_rc)" >&2; fi
if [ "$fis_rc" -ne 0 ] || [ "$check_rc" -ne 0 ]; then exit 1; fi
say "OK: every order applied once and in order while a Spot interruption ran ($out)"
