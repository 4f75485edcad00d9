# `terraform test` with mocked AWS providers: no account, no network. Plans the whole stack and
# asserts the architecture on the planned values, then feeds bad inputs and expects the variable
# validations, preconditions and check blocks to reject them.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    }
  }

  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  mock_data "aws_ssm_parameter" {
    defaults = {
      value = "ami-0123456789abcdef0"
    }
  }

  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

mock_provider "aws" {
  alias = "standby"
}

variables {
  hosted_zone_name      = "example.com"
  record_name           = "orders.example.com"
  worker_binary_sha256  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  ansible_bundle_sha256 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
  primary_endpoint = {
    dns_name = "d-abcdefghij.execute-api.us-east-1.amazonaws.com"
    zone_id  = "Z1UJRXOUMOOFQ8"
  }
}

run "queue_is_fifo_with_no_dead_letter_queue_by_default" {
  command = plan

  assert {
    condition     = aws_sqs_queue.orders.fifo_queue && aws_sqs_queue.orders.name == "orders.fifo"
    error_message = "The orders queue is FIFO and named like the worker's default, orders.fifo."
  }

  assert {
    condition = (length(aws_sqs_queue.dlq) == 0 && length(aws_sqs_queue_redrive_policy.orders) == 0
      && length(aws_sqs_queue_redrive_allow_policy.dlq) == 0 && length(aws_sqs_queue_policy.dlq) == 0
    && length(aws_cloudwatch_metric_alarm.dlq_depth) == 0)
    error_message = "No dead-letter queue, redrive policy or DLQ alarm by default: a dead-lettered order would leave its group's position empty."
  }

  assert {
    condition     = aws_sqs_queue.orders.deduplication_scope == "messageGroup" && aws_sqs_queue.orders.fifo_throughput_limit == "perMessageGroupId"
    error_message = "High-throughput FIFO is on by default."
  }

  assert {
    condition     = aws_sqs_queue.orders.receive_wait_time_seconds == 20 && aws_sqs_queue.orders.visibility_timeout_seconds == 120
    error_message = "Long polling 20 s and visibility 120 s, as the worker expects."
  }

  assert {
    condition = (aws_cloudwatch_metric_alarm.queue_retention.metric_name == "ApproximateAgeOfOldestMessage"
      && aws_cloudwatch_metric_alarm.queue_retention.threshold == 172800
      && aws_sqs_queue.orders.message_retention_seconds == 345600
    && aws_cloudwatch_metric_alarm.queue_retention.dimensions["QueueName"] == "orders.fifo")
    error_message = "The near-expiry alarm watches the orders queue's oldest message at half the 4-day retention (2 days)."
  }

  assert {
    condition     = length(aws_fis_experiment_template.spot_interruption.stop_condition) == 1
    error_message = "Without a DLQ, the FIS experiment stops on the stalled-queue alarm only."
  }

  assert {
    condition     = output.dlq_url == null && output.dlq_arn == null && output.dlq_alarm_arn == null
    error_message = "The DLQ outputs are null when there is no DLQ."
  }
}

run "dead_letter_queue_is_opt_in" {
  command = plan

  variables {
    dead_letter_queue = true
  }

  assert {
    condition     = length(aws_sqs_queue.dlq) == 1 && aws_sqs_queue.dlq[0].fifo_queue && aws_sqs_queue.dlq[0].name == "orders-dlq.fifo"
    error_message = "dead_letter_queue = true creates the FIFO dead-letter queue orders-dlq.fifo."
  }

  assert {
    condition     = aws_sqs_queue.dlq[0].message_retention_seconds == 1209600
    error_message = "The dead-letter queue keeps messages 14 days."
  }

  assert {
    condition     = length(aws_sqs_queue_redrive_policy.orders) == 1 && length(aws_sqs_queue_redrive_allow_policy.dlq) == 1 && length(aws_sqs_queue_policy.dlq) == 1
    error_message = "With a DLQ: the redrive policy, the redrive-allow policy and the DLQ's TLS-only policy."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.dlq_depth[0].metric_name == "ApproximateNumberOfMessagesVisible" && aws_cloudwatch_metric_alarm.dlq_depth[0].threshold == 1
    error_message = "An alarm fires on the first message in the dead-letter queue."
  }

  assert {
    condition     = length(aws_fis_experiment_template.spot_interruption.stop_condition) == 2
    error_message = "With a DLQ, the FIS experiment also stops when an order reaches it."
  }

  assert {
    condition     = length([for w in local.dashboard_widgets : w if w.type == "alarm"][0].properties.alarms) == 8 && strcontains(jsonencode([for w in local.dashboard_widgets : w if w.type == "metric"]), "\"orders-dlq.fifo\"")
    error_message = "With a DLQ, the dashboard shows its depth and its alarm."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.queue_retention.threshold == 172800
    error_message = "The near-expiry alarm stays (a DLQ does not catch a group nobody processes)."
  }
}

run "retention_alarm_follows_the_retention" {
  command = plan

  variables {
    message_retention_seconds = 1209600
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.queue_retention.threshold == 604800
    error_message = "14 days of retention: the near-expiry alarm fires at 7 days."
  }
}

run "tables" {
  command = plan

  assert {
    condition     = aws_dynamodb_table.orders.hash_key == "OrderID" && aws_dynamodb_table.groups.hash_key == "MessageGroupId"
    error_message = "orders is keyed OrderID, order-groups MessageGroupId."
  }

  assert {
    condition = alltrue([for t in [aws_dynamodb_table.orders, aws_dynamodb_table.groups] :
      t.billing_mode == "PAY_PER_REQUEST" && t.point_in_time_recovery[0].enabled && t.server_side_encryption[0].enabled && t.deletion_protection_enabled
    ])
    error_message = "Both tables: on-demand, PITR, SSE, deletion protection."
  }
}

run "fleet_is_all_spot" {
  command = plan

  assert {
    condition     = aws_autoscaling_group.workers.mixed_instances_policy[0].instances_distribution[0].on_demand_base_capacity == 0
    error_message = "No On-Demand base capacity."
  }

  assert {
    condition     = aws_autoscaling_group.workers.mixed_instances_policy[0].instances_distribution[0].on_demand_percentage_above_base_capacity == 0
    error_message = "0 % On-Demand above base: all Spot."
  }

  assert {
    condition     = aws_autoscaling_group.workers.mixed_instances_policy[0].instances_distribution[0].spot_allocation_strategy == "price-capacity-optimized"
    error_message = "Spot allocation: price-capacity-optimized."
  }

  assert {
    condition     = length(aws_autoscaling_group.workers.mixed_instances_policy[0].launch_template[0].override) >= 3
    error_message = "At least three instance types."
  }

  assert {
    condition     = aws_autoscaling_group.workers.capacity_rebalance
    error_message = "Capacity rebalancing on."
  }

  assert {
    condition     = aws_autoscaling_group.workers.name == "order-workers" && aws_autoscaling_group.workers.instance_refresh[0].strategy == "Rolling"
    error_message = "Group order-workers with a rolling instance refresh."
  }

  assert {
    condition = (aws_autoscaling_lifecycle_hook.drain.name == "order-worker-drain"
      && aws_autoscaling_lifecycle_hook.drain.lifecycle_transition == "autoscaling:EC2_INSTANCE_TERMINATING"
      && aws_autoscaling_lifecycle_hook.drain.heartbeat_timeout == 120
    && aws_autoscaling_lifecycle_hook.drain.default_result == "CONTINUE")
    error_message = "Termination hook order-worker-drain, 120 s, CONTINUE."
  }

  assert {
    condition     = aws_autoscaling_policy.backlog_per_instance.policy_type == "TargetTrackingScaling"
    error_message = "Scaling on backlog per instance (target tracking)."
  }
}

run "launch_template_is_locked_down" {
  command = plan

  assert {
    condition     = local.worker_vars.worker_drain_timeout == "90s" && local.worker_vars.worker_hook_timeout == 120 && local.worker_vars.worker_stop_timeout == 110
    error_message = "The Ansible role gets drain 90s, hook 120 s and a stop timeout of 110 s between them."
  }

  assert {
    condition     = local.worker_vars.worker_orders_table == "orders" && local.worker_vars.worker_groups_table == "order-groups" && local.worker_vars.worker_lifecycle_hook == "order-worker-drain"
    error_message = "The Ansible role gets the worker's table and hook names."
  }

  assert {
    condition = (aws_launch_template.worker.metadata_options[0].http_tokens == "required"
      && aws_launch_template.worker.metadata_options[0].http_put_response_hop_limit == 1
    && aws_launch_template.worker.metadata_options[0].instance_metadata_tags == "enabled")
    error_message = "IMDSv2 required, hop limit 1, instance tags in metadata."
  }

  assert {
    condition     = aws_launch_template.worker.block_device_mappings[0].ebs[0].encrypted == "true"
    error_message = "Encrypted root volume."
  }

  assert {
    condition     = length(aws_launch_template.worker.instance_market_options) == 0
    error_message = "No instance_market_options: Spot comes from the mixed instances policy."
  }

  assert {
    condition     = aws_launch_template.worker.network_interfaces[0].associate_public_ip_address == "false"
    error_message = "Workers get no public IP."
  }
}

run "network_is_private" {
  command = plan

  assert {
    condition     = length(aws_subnet.private) == 3 && alltrue([for s in aws_subnet.private : !s.map_public_ip_on_launch])
    error_message = "Three private subnets, no public IPs on launch."
  }

  assert {
    condition     = length(setsubtract(["sqs", "autoscaling", "ssm", "logs", "sts"], keys(aws_vpc_endpoint.interface))) == 0
    error_message = "Interface endpoints for SQS, Auto Scaling, SSM, Logs, STS."
  }

  assert {
    condition     = toset(keys(aws_vpc_endpoint.gateway)) == toset(["s3", "dynamodb"])
    error_message = "Gateway endpoints for S3 and DynamoDB."
  }
}

run "interface_endpoints_in_every_zone_by_default" {
  command = plan

  assert {
    condition     = alltrue([for e in aws_vpc_endpoint.interface : length(e.subnet_ids) == 3])
    error_message = "By default every interface endpoint has a network interface in each of the three worker subnets."
  }
}

run "interface_endpoints_in_fewer_zones" {
  command = plan

  variables {
    interface_endpoint_az_count = 1
  }

  assert {
    condition     = alltrue([for e in aws_vpc_endpoint.interface : length(e.subnet_ids) == 1]) && length(aws_subnet.private) == 3
    error_message = "interface_endpoint_az_count = 1 puts the endpoints in one zone; the workers keep their three subnets."
  }

  assert {
    condition     = toset(keys(aws_vpc_endpoint.gateway)) == toset(["s3", "dynamodb"]) && length(aws_vpc_endpoint.gateway["dynamodb"].route_table_ids) == 3
    error_message = "The free gateway endpoints stay, on every route table."
  }
}

run "rejects_more_endpoint_zones_than_subnets" {
  command = plan
  variables {
    interface_endpoint_az_count = 4
  }
  expect_failures = [aws_vpc_endpoint.interface]
}

run "dns_failover_to_the_error_page" {
  command = plan

  assert {
    condition = (aws_route53_record.primary.failover_routing_policy[0].type == "PRIMARY"
      && aws_route53_record.secondary.failover_routing_policy[0].type == "SECONDARY"
      && aws_route53_record.primary.name == aws_route53_record.secondary.name
    && aws_route53_record.primary.set_identifier != aws_route53_record.secondary.set_identifier)
    error_message = "A PRIMARY/SECONDARY pair on one name, distinct set identifiers."
  }

  assert {
    condition     = aws_route53_record.primary.type == "A" && aws_route53_record.secondary.type == "A"
    error_message = "Both failover records are A records."
  }

  assert {
    condition     = aws_s3_bucket.error_page.bucket == "orders.example.com"
    error_message = "The error-page bucket is named like the record."
  }

  assert {
    condition     = aws_route53_health_check.primary.type == "CLOUDWATCH_METRIC"
    error_message = "The primary's health check follows a CloudWatch alarm (the fleet is private)."
  }

  assert {
    condition     = toset(keys(aws_s3_object.error_page)) == toset(["index.html", "error.html"])
    error_message = "index.html and error.html are uploaded."
  }
}

run "fis_interrupts_the_group" {
  command = plan

  assert {
    condition     = aws_fis_experiment_template.spot_interruption.action[0].action_id == "aws:ec2:send-spot-instance-interruptions"
    error_message = "The FIS action sends Spot interruptions."
  }

  assert {
    condition     = one([for p in aws_fis_experiment_template.spot_interruption.action[0].parameter : p.value if p.key == "durationBeforeInterruption"]) == "PT2M"
    error_message = "durationBeforeInterruption defaults to PT2M."
  }

  assert {
    condition = (aws_fis_experiment_template.spot_interruption.target[0].resource_type == "aws:ec2:spot-instance"
    && aws_fis_experiment_template.spot_interruption.target[0].selection_mode == "COUNT(1)")
    error_message = "Targets Spot instances, one at a time by default."
  }

  assert {
    condition     = length(aws_fis_experiment_template.spot_interruption.stop_condition) >= 1
    error_message = "The experiment has a stop condition."
  }
}

run "high_throughput_is_an_option" {
  command = plan

  variables {
    high_throughput_fifo = false
  }

  assert {
    condition     = aws_sqs_queue.orders.deduplication_scope == "queue" && aws_sqs_queue.orders.fifo_throughput_limit == "perQueue"
    error_message = "high_throughput_fifo = false gives a plain FIFO queue."
  }
}

run "existing_network" {
  command = plan

  variables {
    existing_network = {
      vpc_id          = "vpc-0123456789abcdef0"
      subnet_ids      = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
      route_table_ids = ["rtb-0123456789abcdef0"]
    }
  }

  assert {
    condition     = length(aws_vpc.this) == 0 && length(aws_subnet.private) == 0
    error_message = "With existing_network, no VPC or subnets are created."
  }

  assert {
    condition     = tolist(aws_autoscaling_group.workers.vpc_zone_identifier) == tolist(["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"])
    error_message = "The group runs in the given subnets."
  }
}

# --- inputs that must be refused ---------------------------------------------------------------

run "rejects_a_queue_name_without_fifo" {
  command = plan
  variables {
    queue_name = "orders"
  }
  expect_failures = [var.queue_name]
}

run "rejects_a_dlq_name_without_fifo" {
  command = plan
  variables {
    dlq_name = "orders-dlq"
  }
  expect_failures = [var.dlq_name]
}

run "rejects_a_retention_shorter_than_twice_the_failover" {
  command = plan
  variables {
    message_retention_seconds = 1200
  }
  expect_failures = [check.retention_outlasts_the_failover]
}

run "rejects_a_hook_longer_than_the_spot_notice" {
  command = plan
  variables {
    lifecycle_hook_timeout_seconds = 300
  }
  expect_failures = [var.lifecycle_hook_timeout_seconds]
}

run "rejects_a_drain_longer_than_the_hook" {
  command = plan
  variables {
    lifecycle_hook_timeout_seconds = 60
  }
  expect_failures = [aws_autoscaling_lifecycle_hook.drain, check.drain_fits_the_lifecycle_hook]
}

run "rejects_a_visibility_timeout_shorter_than_the_drain" {
  command = plan
  variables {
    visibility_timeout_seconds = 60
  }
  expect_failures = [aws_sqs_queue.orders, check.visibility_covers_the_drain]
}

run "rejects_fewer_than_three_instance_types" {
  command = plan
  variables {
    instance_types = ["m7i.large", "m6i.large"]
  }
  expect_failures = [var.instance_types]
}

run "rejects_the_primary_region_as_standby" {
  command = plan
  variables {
    standby_region = "us-east-1"
  }
  expect_failures = [var.standby_region]
}

run "rejects_a_record_outside_the_zone" {
  command = plan
  variables {
    record_name = "orders.example.org"
  }
  expect_failures = [var.record_name]
}

run "rejects_too_many_fis_targets" {
  command = plan
  variables {
    fis_selection_mode = "COUNT(9)"
  }
  expect_failures = [var.fis_selection_mode]
}

run "rejects_an_interruption_sooner_than_two_minutes" {
  command = plan
  variables {
    fis_duration_before_interruption = "PT1M"
  }
  expect_failures = [var.fis_duration_before_interruption]
}

run "rejects_min_size_zero" {
  command = plan
  variables {
    min_size = 0
  }
  expect_failures = [var.min_size]
}

run "rejects_a_bundle_without_checksum" {
  command = plan
  variables {
    ansible_bundle_sha256 = null
  }
  expect_failures = [var.ansible_bundle_sha256]
}

run "baked_ami_needs_no_bundle" {
  command = plan
  variables {
    ansible_bundle_key    = null
    ansible_bundle_sha256 = null
  }

  assert {
    condition     = aws_iam_role_policy.worker.name == "order-worker"
    error_message = "A baked AMI plans without a bundle."
  }
}

run "rejects_no_room_for_the_stop_timeout" {
  command = plan
  variables {
    lifecycle_hook_timeout_seconds = 101
  }
  expect_failures = [aws_launch_template.worker]
}

run "observability_log_group_dashboard_alarms" {
  command = plan

  # A known key ARN at plan time, so the log group's encryption can be asserted.
  override_resource {
    target          = aws_kms_key.data
    override_during = plan
    values = {
      arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    }
  }

  assert {
    condition     = aws_cloudwatch_log_group.worker.name == "/order-worker/prod/worker" && aws_cloudwatch_log_group.worker.retention_in_days == 365
    error_message = "The workers' log group is /order-worker/<environment>/worker with the retention variable's value (the Ansible role's worker_log_group default agrees)."
  }

  assert {
    condition     = aws_cloudwatch_log_group.worker.kms_key_id == aws_kms_key.data.arn
    error_message = "The workers' log group is encrypted with the stack's key."
  }

  assert {
    condition     = local.worker_vars.worker_log_group == aws_cloudwatch_log_group.worker.name && local.worker_vars.worker_emf_namespace == "OrderWorker" && local.worker_vars.worker_emf_interval == "60s"
    error_message = "The boot hands the role the log group and the EMF settings."
  }

  assert {
    condition = alltrue([for a in [
      aws_cloudwatch_metric_alarm.order_conflict, aws_cloudwatch_metric_alarm.hook_not_completed,
      aws_cloudwatch_metric_alarm.drain_deadline_hit, aws_cloudwatch_metric_alarm.fleet_not_ready,
    ] : a.namespace == "OrderWorker" && a.dimensions["QueueName"] == "orders.fifo" && length(a.alarm_description) > 80])
    error_message = "The EMF alarms watch the OrderWorker namespace under QueueName=orders.fifo and each says why it fires."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.order_conflict.metric_name == "OrdersConflict" &&
      aws_cloudwatch_metric_alarm.hook_not_completed.metric_name == "HookNotCompleted" &&
      aws_cloudwatch_metric_alarm.drain_deadline_hit.metric_name == "DrainDeadlineHit" &&
      aws_cloudwatch_metric_alarm.order_conflict.threshold == 0 &&
      aws_cloudwatch_metric_alarm.order_conflict.comparison_operator == "GreaterThanThreshold"
    )
    error_message = "One conflict, one hook not completed, one drain deadline hit: each alarms."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.fleet_not_ready.metric_name == "Ready" &&
      aws_cloudwatch_metric_alarm.fleet_not_ready.evaluation_periods == 5 &&
      aws_cloudwatch_metric_alarm.fleet_not_ready.datapoints_to_alarm == 5 &&
      aws_cloudwatch_metric_alarm.fleet_not_ready.treat_missing_data == "breaching"
    )
    error_message = "The fleet-not-ready alarm fires after fleet_not_ready_minutes (5) silent or not-ready minutes."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.rejected_rate.threshold == 5 && length(aws_cloudwatch_metric_alarm.rejected_rate.metric_query) == 3
    error_message = "The rejected-rate alarm is metric math over accepted and rejected, at rejected_rate_alarm_percent."
  }

  assert {
    condition = alltrue([for m in [
      "ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "GroupInServiceInstances",
      "OrdersAccepted", "OrdersRejected", "OrdersConflict", "Drains", "HookCompleted", "HookNotCompleted",
      "interruption",
    ] : strcontains(jsonencode([for w in local.dashboard_widgets : w if w.type == "metric"]), "\"${m}\"")])
    error_message = "The dashboard shows queue depth and age, orders by status, drains, hooks, instances and interruptions."
  }

  assert {
    condition     = length(local.dashboard_widgets) == 7 && length([for w in local.dashboard_widgets : w if w.type == "alarm"][0].properties.alarms) == 7
    error_message = "Seven widgets (queue, age, fleet, orders, drains and hooks, latency, alarms); the alarm widget shows all seven alarms (no DLQ alarm by default)."
  }
}

run "rejects_a_rejected_rate_of_zero" {
  command = plan

  variables {
    rejected_rate_alarm_percent = 0
  }

  expect_failures = [var.rejected_rate_alarm_percent]
}

run "rejects_a_one_minute_not_ready_alarm" {
  command = plan

  variables {
    fleet_not_ready_minutes = 1
  }

  expect_failures = [var.fleet_not_ready_minutes]
}
