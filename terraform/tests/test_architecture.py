"""Reads the HCL and asserts the architecture the issue asks for.

`terraform validate` knows the provider's schema, not our intent: these tests state the intent
(FIFO pair, key OrderID, all-Spot fleet, private network, failover pair, FIS action, ...), so a
config that is valid but wrong fails here.
"""

import pathlib
import re

import pytest
from conftest import as_list, block, blocks, policy, refers_to, statements

# --- SQS ---------------------------------------------------------------------------------------


def test_queue_and_dlq_are_fifo(tf):
    queues = tf.resources["aws_sqs_queue"]
    assert set(queues) == {"orders", "dlq"}
    for name, q in queues.items():
        assert q.get("fifo_queue") is True, f"aws_sqs_queue.{name} must set fifo_queue = true"
    assert queues["orders"]["name"] == "${var.queue_name}"
    assert queues["dlq"]["name"] == "${var.dlq_name}"
    assert tf.default("queue_name").endswith(".fifo")
    assert tf.default("dlq_name").endswith(".fifo")


def test_redrive_and_redrive_allow_are_their_own_resources(tf):
    for q in tf.resources["aws_sqs_queue"].values():
        assert "redrive_policy" not in q and "redrive_allow_policy" not in q, "inline redrive makes a cycle"
    redrive = tf.resource("aws_sqs_queue_redrive_policy")
    assert refers_to(redrive["queue_url"], r"aws_sqs_queue\.orders\.")
    assert refers_to(str(redrive["redrive_policy"]), r"aws_sqs_queue\.dlq\[0\]\.arn")
    assert refers_to(str(redrive["redrive_policy"]), r"maxReceiveCount")
    allow = tf.resource("aws_sqs_queue_redrive_allow_policy")
    assert refers_to(allow["queue_url"], r"aws_sqs_queue\.dlq\[0\]\.")
    assert refers_to(str(allow["redrive_allow_policy"]), r"byQueue")
    assert tf.default("max_receive_count") == 10


def test_no_dead_letter_queue_unless_asked(tf):
    """A dead-lettered order leaves its GroupPosition empty and a redrive lands it after its group's tail, so
    the DLQ and everything that exists only for it are opt-in (dead_letter_queue, default false)."""
    assert tf.default("dead_letter_queue") is False
    description = tf.variables["dead_letter_queue"]["description"]
    for consequence in ("GroupPosition", "redrive", "REJECTED", "message_retention_seconds"):
        assert consequence in description, (
            f"dead_letter_queue's description must state its consequences ({consequence})"
        )
    gated = [
        ("aws_sqs_queue", "dlq"),
        ("aws_sqs_queue_redrive_policy", "orders"),
        ("aws_sqs_queue_redrive_allow_policy", "dlq"),
        ("aws_sqs_queue_policy", "dlq"),
        ("aws_cloudwatch_metric_alarm", "dlq_depth"),
    ]
    for rtype, name in gated:
        count = str(tf.resource(rtype, name).get("count"))
        assert "local.dlq_enabled" in count or "var.dead_letter_queue" in count, (
            f"{rtype}.{name} must exist only with dead_letter_queue"
        )
    assert "var.dead_letter_queue" in str(tf.locals.get("dlq_enabled"))


def test_alarm_before_the_retention_deletes_an_order(tf):
    """With no DLQ, a stuck order is deleted by SQS at message_retention_seconds: an alarm on its age fires
    at a threshold derived from the retention, well before it."""
    alarm = tf.resource("aws_cloudwatch_metric_alarm", "queue_retention")
    assert alarm["metric_name"] == "ApproximateAgeOfOldestMessage" and alarm["namespace"] == "AWS/SQS"
    assert refers_to(str(alarm["dimensions"]), r"aws_sqs_queue\.orders\.name")
    assert alarm["threshold"] == "${local.retention_alarm_seconds}"
    assert refers_to(str(tf.locals["retention_alarm_seconds"]), r"var\.message_retention_seconds\s*/\s*2")
    assert alarm["alarm_actions"] == "${var.alarm_actions}"
    assert "retention_outlasts_the_failover" in tf.checks


def test_high_throughput_fifo_is_an_option(tf):
    q = tf.resource("aws_sqs_queue", "orders")
    assert "messageGroup" in q["deduplication_scope"] and "var.high_throughput_fifo" in q["deduplication_scope"]
    assert "perMessageGroupId" in q["fifo_throughput_limit"]
    assert tf.variables["high_throughput_fifo"]["type"] == "${bool}" or "bool" in str(
        tf.variables["high_throughput_fifo"]["type"]
    )


def test_queues_are_encrypted_long_polled_and_tls_only(tf):
    for name, q in tf.resources["aws_sqs_queue"].items():
        assert q.get("kms_master_key_id") or q.get("sqs_managed_sse_enabled") is True, f"{name}: no SSE"
    orders = tf.resource("aws_sqs_queue", "orders")
    assert orders["receive_wait_time_seconds"] == "${var.receive_wait_time_seconds}"
    assert tf.default("receive_wait_time_seconds") == 20
    assert tf.resource("aws_sqs_queue", "dlq")["message_retention_seconds"] == 1209600
    (stmt,) = statements(policy("queue", tf.dir)).values()
    assert stmt["Effect"] == "Deny" and stmt["Principal"] == "*" and stmt["Resource"] == "${queue_arn}"
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    policies = tf.resources["aws_sqs_queue_policy"]
    assert {p["queue_url"] for p in policies.values()} == {"${aws_sqs_queue.orders.id}", "${aws_sqs_queue.dlq[0].id}"}
    for p in policies.values():
        assert "policies/queue.json.tftpl" in p["policy"]


def test_alarm_on_dlq_depth(tf):
    alarms = [
        a
        for a in tf.resources["aws_cloudwatch_metric_alarm"].values()
        if refers_to(str(a.get("dimensions")), r"aws_sqs_queue\.dlq\[0\]\.")
    ]
    assert alarms, "no alarm on the dead-letter queue"
    assert alarms[0]["metric_name"] == "ApproximateNumberOfMessagesVisible"


# --- DynamoDB ----------------------------------------------------------------------------------


def test_orders_table_keyed_order_id(tf):
    t = tf.resource("aws_dynamodb_table", "orders")
    assert t["hash_key"] == "OrderID"
    assert "range_key" not in t
    assert blocks(t, "attribute") == [{"name": "OrderID", "type": "S"}], "declare only the key attribute"
    assert tf.default("orders_table_name") == "orders"


def test_groups_table_keyed_message_group_id(tf):
    t = tf.resource("aws_dynamodb_table", "groups")
    assert t["hash_key"] == "MessageGroupId"
    assert blocks(t, "attribute") == [{"name": "MessageGroupId", "type": "S"}]
    assert tf.default("groups_table_name") == "order-groups"


def test_tables_on_demand_pitr_sse_protected(tf):
    for name, t in tf.resources["aws_dynamodb_table"].items():
        assert t["billing_mode"] == "PAY_PER_REQUEST", name
        assert block(t, "point_in_time_recovery")["enabled"] is True, name
        assert block(t, "server_side_encryption")["enabled"] is True, name
        assert t["deletion_protection_enabled"] in (True, "${var.table_deletion_protection}"), name
        assert block(t, "lifecycle")["prevent_destroy"] is True, name
    assert tf.default("table_deletion_protection") is True


# --- network -----------------------------------------------------------------------------------


def test_no_internet_path_for_workers(tf):
    for forbidden in ("aws_internet_gateway", "aws_nat_gateway", "aws_egress_only_internet_gateway", "aws_eip"):
        assert forbidden not in tf.resources, f"{forbidden}: the workers' network has no internet path"
    for name, route in tf.resources.get("aws_route", {}).items():
        assert route.get("destination_cidr_block") != "0.0.0.0/0", f"aws_route.{name} is a default route"
    for name, rt in tf.resources.get("aws_route_table", {}).items():
        assert not rt.get("route"), f"aws_route_table.{name} has inline routes"


def test_subnets_are_private(tf):
    subnets = tf.resources["aws_subnet"]
    assert subnets, "no subnets"
    for name, s in subnets.items():
        assert s.get("map_public_ip_on_launch") is False, f"aws_subnet.{name} must set map_public_ip_on_launch = false"
        assert "count" in s and "az_count" in s["count"], "one subnet per zone"
    assert tf.default("az_count") >= 2


def test_gateway_and_interface_endpoints(tf):
    gw = tf.resource("aws_vpc_endpoint", "gateway")
    assert "s3" in gw["for_each"] and "dynamodb" in gw["for_each"]
    assert gw["vpc_endpoint_type"] == "Gateway"
    itf = tf.resource("aws_vpc_endpoint", "interface")
    assert itf["vpc_endpoint_type"] == "Interface" and itf["private_dns_enabled"] is True
    assert {"sqs", "autoscaling", "ssm", "logs", "sts"} <= set(tf.default("interface_endpoints"))
    # The cheaper option puts the endpoints in fewer zones; by default they are in every worker subnet.
    assert itf["subnet_ids"] == "${local.endpoint_subnet_ids}"
    assert tf.default("interface_endpoint_az_count") is None
    assert "local.private_subnet_ids" in str(tf.locals["endpoint_subnet_ids"])


def test_workers_have_no_inbound_and_no_public_ip(tf):
    lt = tf.resource("aws_launch_template", "worker")
    nic = block(lt, "network_interfaces")
    assert nic.get("associate_public_ip_address") is False
    for name, rule in tf.resources.get("aws_vpc_security_group_ingress_rule", {}).items():
        assert rule.get("security_group_id") != "${aws_security_group.workers.id}", f"{name}: inbound to workers"
        assert rule.get("cidr_ipv4") != "0.0.0.0/0"
    for name, sg in tf.resources["aws_security_group"].items():
        assert not sg.get("ingress"), f"aws_security_group.{name}: use separate rule resources"


# --- compute -----------------------------------------------------------------------------------


def test_launch_template_imdsv2_encrypted_no_market_options(tf):
    lt = tf.resource("aws_launch_template", "worker")
    md = block(lt, "metadata_options")
    assert md["http_tokens"] == "required"
    assert md["http_put_response_hop_limit"] == 1
    assert md["instance_metadata_tags"] == "enabled"
    assert md.get("http_endpoint", "enabled") == "enabled"
    ebs = block(block(lt, "block_device_mappings"), "ebs")
    assert ebs["encrypted"] is True
    assert "instance_market_options" not in lt, "Spot comes from the mixed instances policy"
    assert "local.user_data" in lt["user_data"]


ROLE_VARS = (
    "worker_queue_url",
    "worker_orders_table",
    "worker_groups_table",
    "worker_region",
    "worker_asg_name",
    "worker_lifecycle_hook",
    "worker_drain_timeout",
    "worker_binary_url",
    "worker_binary_sha256",
)


def test_user_data_runs_the_play_from_s3(tf):
    """The boot script is ansible/user-data.sh.tftpl (one for the repository), rendered here."""
    compute = tf.text["compute.tf"]
    assert re.search(r'templatefile\("\$\{path\.module\}/\.\./ansible/user-data\.sh\.tftpl"', compute)
    template = (tf.dir.parent / "ansible" / "user-data.sh.tftpl").read_text()
    assert "ansible-playbook site.yml" in template
    assert "aws s3 cp" in template, "the bundle comes from S3 through the gateway endpoint"
    assert "sha256sum --check" in template, "the bundle is checked before it runs"
    assert not re.search(r"\b(curl|wget|git clone|ansible-pull)\b", template), "no internet access at boot"
    for name in ("region", "bundle_url", "bundle_sha256", "worker_vars"):
        assert "${" + name in template or "(" + name + ")" in template, f"template no longer takes {name}"
    worker_vars = tf.locals["worker_vars"]
    for var in ROLE_VARS:
        assert var in worker_vars, f"worker_vars lacks {var}"
    assert "aws_sqs_queue.orders.url" in worker_vars["worker_queue_url"]
    assert worker_vars["worker_binary_url"].startswith("s3://")


def test_group_is_all_spot(tf):
    asg = tf.resource("aws_autoscaling_group", "workers")
    assert "launch_template" not in asg, "a top-level launch_template bypasses the mixed instances policy"
    mip = block(asg, "mixed_instances_policy")
    dist = block(mip, "instances_distribution")
    assert dist.get("on_demand_base_capacity") == 0, "the API default is On-Demand: set 0 explicitly"
    assert dist.get("on_demand_percentage_above_base_capacity") == 0, "the API default is 100 % On-Demand"
    assert dist.get("spot_allocation_strategy") == "price-capacity-optimized"
    lt = block(mip, "launch_template")
    spec = block(lt, "launch_template_specification")
    assert refers_to(spec.get("launch_template_id"), r"aws_launch_template\.worker\.id")
    overrides = blocks(lt, "override")
    dynamic = [d for d in blocks(lt, "dynamic") if "override" in d]
    if dynamic:
        body = dynamic[0]["override"]
        assert body["for_each"] == "${var.instance_types}"
        assert len(tf.default("instance_types")) >= 3
    else:
        assert len(overrides) >= 3 or any("instance_requirements" in o for o in overrides)


def test_capacity_rebalance_refresh_and_scaling(tf):
    asg = tf.resource("aws_autoscaling_group", "workers")
    assert asg.get("capacity_rebalance") is True
    assert asg["name"] == "${var.asg_name}" and tf.default("asg_name") == "order-workers"
    assert block(asg, "instance_refresh")["strategy"] == "Rolling"
    assert "desired_capacity" in block(asg, "lifecycle")["ignore_changes"]
    assert refers_to(asg["vpc_zone_identifier"], r"private_subnet_ids")
    policy = tf.resource("aws_autoscaling_policy", "backlog_per_instance")
    text = str(policy)
    assert "ApproximateNumberOfMessagesVisible" in text and "GroupInServiceInstances" in text
    assert policy["policy_type"] == "TargetTrackingScaling"


def test_termination_hook_fits_the_spot_notice(tf):
    hook = tf.resource("aws_autoscaling_lifecycle_hook", "drain")
    assert hook["lifecycle_transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["default_result"] == "CONTINUE"
    assert hook["name"] == "${var.lifecycle_hook_name}"
    assert hook["heartbeat_timeout"] == "${var.lifecycle_hook_timeout_seconds}"
    assert tf.default("lifecycle_hook_timeout_seconds") <= 120
    assert tf.default("drain_timeout_seconds") + tf.default("drain_margin_seconds") < tf.default(
        "lifecycle_hook_timeout_seconds"
    )
    assert tf.default("visibility_timeout_seconds") >= tf.default("drain_timeout_seconds") + tf.default(
        "drain_margin_seconds"
    )
    asg = tf.resource("aws_autoscaling_group", "workers")
    assert "initial_lifecycle_hook" not in asg, "the hook is its own resource"


# --- IAM ---------------------------------------------------------------------------------------


def test_worker_policy_is_exact(tf):
    """Which actions the worker needs is not pinned here: the local region enforces the template on every run and
    chaos/check-iam.py fails on any grant nothing used (see terraform/policies/README.md). Pinned here: every
    grant is on exact ARNs (no wildcard action, no "*" resource) and the role gets this template."""
    by_sid = statements(policy("worker", tf.dir))
    for sid, stmt in by_sid.items():
        assert stmt["Effect"] == "Allow", f"{sid}: the worker policy only allows"
        for r in as_list(stmt["Resource"]):
            assert r.startswith("${") and "*" not in r.split("}")[0], f"{sid}: an exact ARN, not {r}"
        assert not any(a.endswith("*") for a in as_list(stmt["Action"])), f"{sid}: no wildcard actions"
    assert "dynamodb:PartiQLInsert" in as_list(by_sid["InsertRecords"]["Action"]), "records are PartiQL INSERTs"
    role_policy = tf.resource("aws_iam_role_policy", "worker")
    assert "policies/worker.json.tftpl" in role_policy["policy"] and "local.policy_values" in role_policy["policy"]
    assert "autoScalingGroupName/${var.asg_name}" in tf.locals["asg_arn"], "group ARN built by hand"
    attachments = tf.resources["aws_iam_role_policy_attachment"]
    assert any("AmazonSSMManagedInstanceCore" in a["policy_arn"] for a in attachments.values())


def test_every_template_value_is_given_by_terraform(tf):
    """The templates' placeholders are exactly the names Terraform passes (local.policy_values), and the local
    region's renderer gives the same names (chaos/iamgate/stack.py): one copy of each document."""
    given = set(tf.locals["policy_values"])
    used = set()
    for path in (tf.dir / "policies").glob("*.json.tftpl"):
        used |= set(re.findall(r"\$\{(\w+)\}", path.read_text()))
    assert used <= given, f"placeholders Terraform does not give: {sorted(used - given)}"
    from iamgate.stack import Stack

    local = set(Stack(queue_name="q.fifo", orders_table="o", groups_table="g").values())
    assert local == given, f"Terraform and the local region disagree on the values: {sorted(local ^ given)}"


# --- DNS ---------------------------------------------------------------------------------------


def test_failover_pair(tf):
    records = tf.resources["aws_route53_record"]
    kinds = {
        name: block(r, "failover_routing_policy")["type"]
        for name, r in records.items()
        if r.get("failover_routing_policy")
    }
    assert sorted(kinds.values()) == ["PRIMARY", "SECONDARY"]
    primary = records[next(n for n, k in kinds.items() if k == "PRIMARY")]
    secondary = records[next(n for n, k in kinds.items() if k == "SECONDARY")]
    assert primary["name"] == secondary["name"] == "${var.record_name}"
    assert primary["type"] == secondary["type"] == "A"
    assert primary["set_identifier"] != secondary["set_identifier"]
    assert "health_check_id" in primary
    alias = block(secondary, "alias")
    assert refers_to(alias["name"], r"aws_s3_bucket_website_configuration\.\w+\.website_domain")
    assert refers_to(alias["zone_id"], r"aws_s3_bucket\.\w+\.hosted_zone_id")


def test_health_check_fits_a_private_fleet(tf):
    hc = tf.resource("aws_route53_health_check", "primary")
    assert hc["type"] in ("CLOUDWATCH_METRIC", "CALCULATED")
    assert "fqdn" not in hc or "record_name" not in str(hc["fqdn"]), "never check the failover record itself"


def test_error_page_bucket_in_standby_region(tf):
    assert any(name == "aws" and body.get("alias") == "standby" for name, body in tf.providers)
    bucket = tf.resource("aws_s3_bucket", "error_page")
    assert bucket["bucket"] == "${var.record_name}", "the bucket name must equal the record name"
    assert bucket["provider"] == "${aws.standby}"
    site = tf.resource("aws_s3_bucket_website_configuration", "error_page")
    assert block(site, "index_document")["suffix"] == "index.html"
    assert block(site, "error_document")["key"] == "error.html"
    objects = tf.resource("aws_s3_object", "error_page")
    assert "index.html" in objects["for_each"] and "error.html" in objects["for_each"]
    for page in ("index.html", "error.html"):
        html = (tf.dir / "site" / page).read_text()
        assert "<html" in html and "</html>" in html
    bpa = tf.resource("aws_s3_bucket_public_access_block", "error_page")
    assert bpa["block_public_acls"] is True and bpa["ignore_public_acls"] is True


# --- FIS ---------------------------------------------------------------------------------------


def test_fis_experiment_template(tf):
    t = tf.resource("aws_fis_experiment_template", "spot_interruption")
    action = block(t, "action")
    assert action["action_id"] == "aws:ec2:send-spot-instance-interruptions"
    params = {p["key"]: p["value"] for p in blocks(action, "parameter")}
    assert params["durationBeforeInterruption"] == "${var.fis_duration_before_interruption}"
    assert re.fullmatch(r"PT([2-9]|1[0-5])M", tf.default("fis_duration_before_interruption"))
    assert block(action, "target")["key"] == "SpotInstances"
    target = block(t, "target")
    assert target["resource_type"] == "aws:ec2:spot-instance"
    assert re.fullmatch(r"ALL|COUNT\(\d+\)|PERCENT\(\d+\)", tf.default("fis_selection_mode"))
    assert block(target, "resource_tag")["key"] == "aws:autoscaling:groupName"
    assert all(s["source"] == "aws:cloudwatch:alarm" for s in blocks(t, "stop_condition")) and blocks(
        t, "stop_condition"
    )
    assert block(t, "experiment_options")["empty_target_resolution_mode"] == "fail"
    assert block(t, "log_configuration")
    assert "fis_experiment_template_id" in tf.outputs


def test_fis_role_scoped(tf):
    trust = block(tf.data["aws_iam_policy_document"]["fis_trust"], "statement")
    assert block(trust, "principals")["identifiers"] == ["fis.amazonaws.com"]
    assert "aws:SourceAccount" in [c["variable"] for c in blocks(trust, "condition")]
    interrupt = statements(policy("fis", tf.dir))["InterruptOnlyTheWorkerGroup"]
    assert interrupt["Action"] == "ec2:SendSpotInstanceInterruptions"
    assert list(interrupt["Condition"]["StringEquals"]) == ["aws:ResourceTag/aws:autoscaling:groupName"]
    assert "policies/fis.json.tftpl" in tf.resource("aws_iam_role_policy", "fis")["policy"]


# --- interface ---------------------------------------------------------------------------------


def test_variables_typed_and_documented(tf):
    for name, v in tf.variables.items():
        assert v.get("type"), f"variable {name} has no type"
        assert v.get("description"), f"variable {name} has no description"
    validated = {n for n, v in tf.variables.items() if v.get("validation")}
    assert {
        "queue_name",
        "dlq_name",
        "lifecycle_hook_timeout_seconds",
        "instance_types",
        "fis_selection_mode",
        "fis_duration_before_interruption",
    } <= validated
    assert {"drain_fits_the_lifecycle_hook", "visibility_covers_the_drain", "queue_names_are_fifo_and_distinct"} <= set(
        tf.checks
    )


def test_outputs_documented(tf):
    required = {
        "queue_url",
        "queue_arn",
        "orders_table_name",
        "groups_table_name",
        "asg_name",
        "lifecycle_hook_name",
        "launch_template_id",
        "fis_experiment_template_id",
    }
    assert required <= set(tf.outputs)
    for name, o in tf.outputs.items():
        assert o.get("description"), f"output {name} has no description"


def test_versions_pinned_and_tfvars_example(tf):
    text = tf.all_text()
    assert re.search(r'required_version\s*=\s*">=\s*1\.9', text)
    assert re.search(r'source\s*=\s*"hashicorp/aws"', text)
    assert (tf.dir / "terraform.tfvars.example").is_file()
    assert "default_tags" in text


# --- Observability ------------------------------------------------------------------------------


def test_worker_log_group_encrypted_retained_and_shipped_only_there(tf):
    group = tf.resource("aws_cloudwatch_log_group", "worker")
    assert group.get("kms_key_id") == "${aws_kms_key.data.arn}", "the log group is encrypted with the stack key"
    assert group.get("retention_in_days") == "${var.worker_log_retention_days}"
    by_sid = statements(policy("worker", tf.dir))
    ship = by_sid["ShipWorkerLog"]
    assert set(ship["Action"]) == {"logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"}
    assert set(ship["Resource"]) == {"${log_group_arn}", "${log_group_arn}:log-stream:*"}
    assert tf.locals["policy_values"]["log_group_arn"] == "${aws_cloudwatch_log_group.worker.arn}"
    actions = {a for s in by_sid.values() for a in as_list(s["Action"])}
    assert "cloudwatch:PutMetricData" not in actions, "EMF needs no PutMetricData"
    assert "logs" in tf.default("interface_endpoints"), "the agent reaches CloudWatch Logs through its endpoint"


def test_alarms_on_the_emf_metrics_explain_themselves(tf):
    alarms = tf.resources["aws_cloudwatch_metric_alarm"]
    for name in ("order_conflict", "hook_not_completed", "drain_deadline_hit", "rejected_rate", "fleet_not_ready"):
        assert name in alarms, f"no alarm {name}"
        assert len(alarms[name]["alarm_description"]) > 80, f"{name}: the description says why and what to do"
        assert alarms[name]["alarm_actions"] == "${var.alarm_actions}"
    assert alarms["fleet_not_ready"]["evaluation_periods"] == "${var.fleet_not_ready_minutes}"
    assert alarms["rejected_rate"]["threshold"] == "${var.rejected_rate_alarm_percent}"
    # The EMF metric names the alarms use are the ones the worker writes (src/emf.rs of this checkout).
    emf = pathlib.Path(__file__).resolve().parents[2] / "src" / "emf.rs"
    if not emf.is_file():
        pytest.skip("no src/emf.rs in this checkout")
    text = emf.read_text()
    used = []
    for name in ("order_conflict", "hook_not_completed", "drain_deadline_hit", "fleet_not_ready"):
        assert alarms[name]["namespace"] == "${var.emf_namespace}"
        used.append(alarms[name]["metric_name"])
    for query in blocks(alarms["rejected_rate"], "metric_query"):
        for metric in blocks(query, "metric"):
            used.append(metric["metric_name"])
    assert len(used) == 6
    for name in used:
        assert f'"{name}"' in text, f"an alarm watches {name}, which the worker never writes (src/emf.rs)"
