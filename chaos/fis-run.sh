#!/usr/bin/env bash
# Interrupt Spot workers with AWS FIS (`aws:ec2:send-spot-instance-interruptions`) and follow it through: the
# rebalance recommendation, the interruption notice, the lifecycle hook, the termination and the replacement.
#
#   chaos/fis-run.sh [--template-id ID]                    # a template made elsewhere (default: Terraform's,
#                                                          #   `terraform output -raw fis_experiment_template_id`)
#   chaos/fis-run.sh --asg NAME [--selection COUNT(1)]     # one-off template: the group's running instances by tag
#   chaos/fis-run.sh --instances i-a,i-b,...               # one-off template: these instances (5 per target)
#   options: --duration PT2M  --role-arn ARN  --stop-alarm ARN  --timeout SECONDS  --poll SECONDS
#            --out DIR (experiment.json, fis-run.json)  --no-wait (return once the experiment has ended)
#            --create-only (make the one-off template, print its id, keep it, start nothing: to start it later
#            with --template-id in one call, e.g. the moment a chosen instance is busy)
#
# One-off templates are deleted at the end, also on Ctrl-C (not with --create-only); a running experiment is
# stopped on Ctrl-C.
# Endpoints come from the standard variables (AWS_ENDPOINT_URL_FIS, AWS_ENDPOINT_URL_AUTO_SCALING,
# AWS_ENDPOINT_URL), passed to the AWS CLI v1 as --endpoint-url; unset means real AWS. With SPOT_SIM_API set
# (the local region), the timeline comes from spot-sim's /_sim/status; on AWS from the experiment's state and
# `aws autoscaling describe-auto-scaling-instances` / `describe-auto-scaling-groups`.
# Exits 0 when the experiment completed and every interrupted instance is gone and replaced.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
repo=$(cd "$(dirname "$0")/.." && pwd)
template_id=${FIS_TEMPLATE_ID:-} asg="" instances="" selection="COUNT(1)" duration="PT2M"
role_arn=${FIS_ROLE_ARN:-} stop_alarms=() timeout=900 poll="" out="" wait_end=1 create_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --template-id) template_id=$2; shift 2 ;;
    --asg) asg=$2; shift 2 ;;
    --instances) instances=$2; shift 2 ;;
    --selection) selection=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --role-arn) role_arn=$2; shift 2 ;;
    --stop-alarm) stop_alarms+=("$2"); shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --poll) poll=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-wait) wait_end=0; shift ;;
    --create-only) create_only=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "fis-run: unknown argument $1" >&2; usage ;;
  esac
done

AWS=${AWS_CLI:-$([ -x "$repo/.venv/bin/aws" ] && echo "$repo/.venv/bin/aws" || echo aws)}
PY=${PYTHON:-python3}
export AWS_CLI=$AWS
fis_endpoint=${AWS_ENDPOINT_URL_FIS:-${AWS_ENDPOINT_URL:-}}
# The AWS CLI v1 ignores AWS_ENDPOINT_URL*: pass it explicitly when set.
aws_fis() {
  if [ -n "$fis_endpoint" ]; then "$AWS" --endpoint-url "$fis_endpoint" fis "$@"; else "$AWS" fis "$@"; fi
}
ts() { date -u +%H:%M:%S; }
say() { echo "[$(ts)] fis-run: $*"; }
json_get() { "$PY" -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$1"; }

local_region=0
[ -n "${SPOT_SIM_API:-}" ] && local_region=1
[ -n "$poll" ] || poll=$([ "$local_region" = 1 ] && echo 0.5 || echo 5)
work=$(mktemp -d)
out=${out:-$work}
mkdir -p "$out"

created_template="" experiment_id="" finished=0 follower=""
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$follower" ]; then kill -TERM "$follower" 2>/dev/null || true; wait "$follower" 2>/dev/null || true; fi
  if [ -n "$experiment_id" ] && [ "$finished" = 0 ]; then
    status=$(aws_fis get-experiment --id "$experiment_id" --output json 2>/dev/null | json_get experiment.state.status || true)
    case "$status" in
      pending|initiating|running)
        say "stopping experiment $experiment_id"
        aws_fis stop-experiment --id "$experiment_id" --output json >/dev/null || true ;;
    esac
  fi
  if [ -n "$created_template" ]; then
    if aws_fis delete-experiment-template --id "$created_template" --output json >/dev/null; then
      say "deleted one-off template $created_template"
    else
      say "could not delete template $created_template: delete it with aws fis delete-experiment-template" >&2
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$("$AWS" configure get region 2>/dev/null || true)}}
[ -n "$region" ] || { echo "fis-run: set AWS_REGION" >&2; exit 2; }

# The Terraform template's id, when terraform/ has been applied from here (FIS template ids are EXT...).
tf_template_id() {
  local id
  command -v terraform >/dev/null || return 1
  id=$(terraform -chdir="$repo/terraform" output -no-color -raw fis_experiment_template_id 2>/dev/null) || return 1
  [[ "$id" =~ ^EXT[A-Za-z0-9]+$ ]] || return 1
  printf '%s\n' "$id"
}

if [ -z "$template_id" ] && [ -z "$asg" ] && [ -z "$instances" ]; then
  if template_id=$(tf_template_id); then
    say "template from terraform output: $template_id"
  else
    echo "fis-run: give --template-id, --asg or --instances (no terraform output fis_experiment_template_id found)" >&2
    exit 2
  fi
fi

if [ -z "$template_id" ]; then
  # A one-off template. On AWS it needs the FIS role: --role-arn, $FIS_ROLE_ARN, or the Terraform template's.
  if [ -z "$role_arn" ] && [ "$local_region" = 1 ]; then
    role_arn="arn:aws:iam::123456789012:role/spot-sim-fis"
  fi
  if [ -z "$role_arn" ] && tid=$(tf_template_id); then
    role_arn=$(aws_fis get-experiment-template --id "$tid" --output json | json_get experimentTemplate.roleArn)
  fi
  [ -n "$role_arn" ] || { echo "fis-run: a one-off template needs --role-arn (the FIS role of terraform/fis.tf)" >&2; exit 2; }
  account=${AWS_ACCOUNT_ID:-}
  if [ -n "$instances" ] && [ -z "$account" ]; then
    if [ "$local_region" = 1 ]; then account=000000000000; else  # the local region's account (harness)
      account=$("$AWS" sts get-caller-identity --query Account --output text)
    fi
  fi
  "$PY" - "$work/template.json" "$role_arn" "$duration" "$selection" "$asg" "$instances" "$region" "$account" \
    "${stop_alarms[@]+"${stop_alarms[@]}"}" <<'EOF'
import json, sys
path, role, duration, selection, asg, instances, region, account, *alarms = sys.argv[1:]
targets, actions = {}, {}
if asg:
    targets["order-workers"] = {
        "resourceType": "aws:ec2:spot-instance",
        "resourceTags": {"aws:autoscaling:groupName": asg},
        "filters": [{"path": "State.Name", "values": ["running"]}],
        "selectionMode": selection,
    }
else:
    ids = [i for i in instances.split(",") if i]
    # FIS resolves at most 5 aws:ec2:spot-instance resources per target: one target and one action per 5.
    for n, k in enumerate(range(0, len(ids), 5), start=1):
        targets[f"spot-{n}"] = {
            "resourceType": "aws:ec2:spot-instance",
            "resourceArns": [f"arn:aws:ec2:{region}:{account}:instance/{i}" for i in ids[k:k + 5]],
            "selectionMode": "ALL",
        }
for name in targets:
    actions[f"interrupt-{name}"] = {
        "actionId": "aws:ec2:send-spot-instance-interruptions",
        "description": f"Rebalance recommendation now, interruption after {duration}",
        "parameters": {"durationBeforeInterruption": duration},
        "targets": {"SpotInstances": name},
    }
stop = [{"source": "aws:cloudwatch:alarm", "value": a} for a in alarms] or [{"source": "none"}]
json.dump({"description": f"one-off Spot interruption ({'group ' + asg if asg else instances}) by chaos/fis-run.sh",
           "roleArn": role, "targets": targets, "actions": actions, "stopConditions": stop,
           "tags": {"Name": "order-worker-chaos-one-off"}}, open(path, "w"), indent=1)
EOF
  template_id=$(aws_fis create-experiment-template --cli-input-json "file://$work/template.json" --output json |
    json_get experimentTemplate.id)
  created_template=$template_id
  say "created one-off template $template_id ($([ -n "$asg" ] && echo "group $asg, $selection" || echo "instances $instances"), $duration)" >&2
  if [ "$create_only" = 1 ]; then
    created_template=""  # kept: the caller starts it (and deletes it)
    printf '%s\n' "$template_id"
    exit 0
  fi
fi

# On AWS, the group's instances before the experiment: if the resolved targets cannot be listed, the follower
# takes the ones that then terminate as the targets.
asg_endpoint=${AWS_ENDPOINT_URL_AUTO_SCALING:-${AWS_ENDPOINT_URL:-}}
echo '[]' >"$work/before.json"
if [ "$local_region" = 0 ]; then
  snap_group=$asg
  if [ -z "$snap_group" ]; then
    snap_group=$(aws_fis get-experiment-template --id "$template_id" --output json | "$PY" -c 'import json,sys
t=json.load(sys.stdin)["experimentTemplate"]["targets"]
print(next((v["resourceTags"]["aws:autoscaling:groupName"] for v in t.values() if "aws:autoscaling:groupName" in (v.get("resourceTags") or {})), ""))')
  fi
  if [ -n "$snap_group" ]; then
    "$AWS" ${asg_endpoint:+--endpoint-url "$asg_endpoint"} autoscaling describe-auto-scaling-groups \
      --auto-scaling-group-names "$snap_group" --output json \
      --query 'AutoScalingGroups[0].Instances[].InstanceId' >"$work/before.json" || echo '[]' >"$work/before.json"
  fi
fi

exp_json=$(aws_fis start-experiment --experiment-template-id "$template_id" --client-token "fis-run-$$-$(date +%s)" --output json)
experiment_id=$(printf '%s' "$exp_json" | json_get experiment.id)
say "started experiment $experiment_id from template $template_id"

# Follow it: print each step once, as it happens; write fis-run.json (per-instance times) at the end.
rc=0
# (In the background, so a signal reaches the traps at once rather than after the follower's next poll.)
"$PY" - "$experiment_id" "$poll" "$timeout" "$out" "$wait_end" "$local_region" "$work/before.json" <<'EOF' &
import json, os, subprocess, sys, time, urllib.request

exp_id, poll, timeout, out, wait_end, local = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", sys.argv[6] == "1"
AWS = os.environ["AWS_CLI"]
before = set(json.load(open(sys.argv[7])) or [])

def endpoint(var):
    return os.environ.get(f"AWS_ENDPOINT_URL_{var}") or os.environ.get("AWS_ENDPOINT_URL")

def aws(var, service, *args):
    cmd = [AWS] + (["--endpoint-url", endpoint(var)] if endpoint(var) else []) + [service, *args, "--output", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])}: {r.stderr.strip()}")
    return json.loads(r.stdout or "{}")

def now():
    return time.strftime("%H:%M:%S", time.gmtime())

def say(msg, at=None):
    print(f"[{at or now()}] fis-run: {msg}", flush=True)

def sim_status():
    with urllib.request.urlopen(os.environ["SPOT_SIM_API"].rstrip("/") + "/_sim/status", timeout=10) as r:
        return json.load(r)

def resolved(exp):
    ids = set()
    if local:  # spot-sim's status names the chosen instances (the CLI drops its non-AWS experiment field)
        for e in sim_status().get("experiments", []):
            if e.get("id") == exp_id:
                for v in (e.get("targets") or {}).values():
                    ids.update(v)
    if not ids and not local:
        try:
            for t in aws("FIS", "fis", "list-experiment-resolved-targets", "--experiment-id", exp_id).get("resolvedTargets", []):
                for v in (t.get("targetInformation") or {}).values():
                    if ":instance/" in str(v):
                        ids.add(str(v).rsplit("/", 1)[1])
        except Exception as e:  # older CLIs, no permission, or an endpoint without it
            global resolved_failed
            if not resolved_failed:
                say(f"cannot list resolved targets ({str(e).splitlines()[-1][-160:]}); watching the group instead")
            resolved_failed = True
    return sorted(ids)

deadline = time.monotonic() + timeout
state, targets, seen_events, asg_state, per = None, [], set(), {}, {}
groups, known, started_seen, resolved_failed = set(), set(), False, False
ended_at = None
KEYS = [("rebalance recommendation", "rebalance"), ("spot interruption notice", "notice"),
        ("Terminating:Wait", "terminating_wait"), ("CompleteLifecycleAction", "hook_completed"),
        ("lifecycle hook timed out", "hook_timed_out"), ("Terminating:Proceed", "terminating_proceed"),
        ("SIGTERM", "sigterm"), ("SIGKILL", "sigkill"), ("Terminated", "terminated")]
while True:
    exp = aws("FIS", "fis", "get-experiment", "--id", exp_id)["experiment"]
    st = exp["state"]["status"]
    if st != state:
        state = st
        say(f"experiment {exp_id} {st}: {exp['state'].get('reason', '')}")
    if not targets and not resolved_failed:
        targets = resolved(exp)
        if targets:
            say("interrupting " + ", ".join(targets))
            per = {t: {} for t in targets}
    done_exp = st in ("completed", "stopped", "failed", "cancelled")
    if done_exp and ended_at is None:
        ended_at = time.time()
    if st == "failed":
        say("the experiment failed: " + exp["state"].get("reason", ""))
        sys.exit(1)
    settled = False
    if local:
        s = sim_status()
        insts = {i["id"]: i for i in s["instances"]}
        watch = set(targets) | {i["id"] for i in s["instances"] if i.get("replaces") in targets}
        for i in s["instances"]:
            if i["id"] not in watch:
                continue
            for ev in i.get("events", []):
                key = (i["id"], ev["at"], ev["event"])
                if key in seen_events:
                    continue
                seen_events.add(key)
                what = ev["event"]
                if i.get("replaces") in targets:
                    if what.startswith("launched") or what == "InService":
                        per.setdefault(i["replaces"], {}).setdefault("replacement", i["id"])
                        per[i["replaces"]]["replacement_" + ("launched" if what.startswith("launched") else "in_service")] = ev["at"]
                        say(f"{i['id']} (replacement for {i['replaces']}): {what.split(';')[0]}", ev["at"][11:19])
                    continue
                for needle, k in KEYS:
                    if what.startswith(needle) or (needle == "SIGTERM" and what.startswith("SIGTERM")):
                        per.setdefault(i["id"], {}).setdefault(k, ev["at"])
                if any(what.startswith(n) for n, _ in KEYS) or what.startswith("spot interruption") or what.startswith("worker exited"):
                    say(f"{i['id']}: {what}", ev["at"][11:19])
        gone = all(insts.get(t, {}).get("lifecycle_state") == "Terminated" for t in targets)
        replaced = all(any(r.get("replaces") == t and r["lifecycle_state"] == "InService" for r in s["instances"]) for t in targets)
        in_service = sum(1 for i in s["instances"] if i["lifecycle_state"] == "InService")
        settled = gone and (replaced or in_service >= s["desired"])
        json.dump(s, open(os.path.join(out, "spot-sim-status.json"), "w"), indent=1)
    else:
        # AWS: the group(s) of the template's tag targets (or of the known targets), every instance's lifecycle
        # state as it changes (the replacement's too), and the capacity.
        if not groups:
            for tgt in (exp.get("targets") or {}).values():
                g = (tgt.get("resourceTags") or {}).get("aws:autoscaling:groupName")
                if g:
                    groups.add(g)
                for arn in tgt.get("resourceArns") or []:
                    known.add(arn.rsplit("/", 1)[1])
            if not targets and known:
                targets = sorted(known)
                per = {t: {} for t in targets}
                say("interrupting " + ", ".join(targets))
            if targets and not groups:
                d = aws("AUTO_SCALING", "autoscaling", "describe-auto-scaling-instances", "--instance-ids", *targets)
                groups.update(i["AutoScalingGroupName"] for i in d.get("AutoScalingInstances", []))
        full, present = True, {}
        for g in sorted(groups):
            grps = aws("AUTO_SCALING", "autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", g)["AutoScalingGroups"]
            if not grps:
                continue
            grp = grps[0]
            for i in grp["Instances"]:
                present[i["InstanceId"]] = i["LifecycleState"]
            ins = sum(1 for i in grp["Instances"] if i["LifecycleState"] == "InService")
            if ins < grp["DesiredCapacity"]:
                full = False
            if asg_state.get(("cap", g)) != (ins, grp["DesiredCapacity"]):
                asg_state[("cap", g)] = (ins, grp["DesiredCapacity"])
                say(f"group {g}: {ins} InService of desired {grp['DesiredCapacity']}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for iid in sorted(set(present) | before | {k for k in asg_state if isinstance(k, str)}):
            cur = present.get(iid, "gone (terminated)")
            if asg_state.get(iid) == cur:
                continue
            first = iid not in asg_state
            asg_state[iid] = cur
            if resolved_failed and (cur.startswith("Terminating") or cur.startswith("gone")) and iid not in targets:
                targets.append(iid)  # no resolved-target listing: an instance the experiment sends to Terminating
                per[iid] = {}
            if iid in targets:
                per.setdefault(iid, {})[cur] = stamp
            if not (first and cur == "InService" and started_seen):
                say(f"{iid}: {cur}" + (" (new)" if first and started_seen else ""))
        started_seen = True
        gone = bool(targets) and all(present.get(t) in (None, "Terminated") for t in targets)
        settled = gone and full
    if done_exp and (not wait_end or settled or (not targets and not resolved_failed)):
        break
    if time.monotonic() > deadline:
        say(f"timed out after {timeout:.0f}s (experiment {st}; interrupted instances gone and replaced: {settled})")
        json.dump({"experiment": exp_id, "status": st, "instances": per, "settled": False}, open(os.path.join(out, "fis-run.json"), "w"), indent=1)
        sys.exit(1)
    time.sleep(poll)

json.dump(exp, open(os.path.join(out, "experiment.json"), "w"), indent=1)
json.dump({"experiment": exp_id, "status": state, "instances": per, "settled": settled}, open(os.path.join(out, "fis-run.json"), "w"), indent=1)
if state != "completed":
    say(f"experiment ended {state}")
    sys.exit(1)
for t, p in per.items():
    if local:
        hook = "completed by the worker" if p.get("hook_completed") else ("timed out" if p.get("hook_timed_out") else "-")
        say(f"{t}: notice {p.get('notice', '-')[11:19] or '-'}, hook {hook}, terminated {(p.get('terminated') or '-')[11:19] or '-'}, replacement {p.get('replacement', '-')}")
    else:
        say(f"{t}: " + (", ".join(f"{k} at {v[11:19]}" for k, v in p.items() if k != "group") or "terminated before the first look"))
say("done: experiment completed" + (", interrupted instances terminated and replaced" if wait_end else ""))
EOF
follower=$!
wait "$follower" || rc=$?
follower=""
finished=1
exit "$rc"
