# What happened on an instance survives it: the workers' log group (shipped by the CloudWatch agent,
# ansible/), the metrics CloudWatch extracts from the EMF records in that log (no PutMetricData), one
# dashboard and the alarms on them. The README's "Observability" section says what each alarm means
# and what to do.

locals {
  # The dimension every EMF metric carries (src/emf.rs): the queue's name.
  emf_dimensions = { QueueName = aws_sqs_queue.orders.name }
}

# The worker's JSON log, one stream per instance (the agent names it after the instance id).
resource "aws_cloudwatch_log_group" "worker" {
  name              = "/order-worker/${var.environment}/worker"
  retention_in_days = var.worker_log_retention_days
  kms_key_id        = aws_kms_key.data.arn
}

# --- Alarms on the EMF metrics ----------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "order_conflict" {
  alarm_name          = "${var.queue_name}-order-conflict"
  alarm_description   = "An order id arrived again with a different payload and was NOT applied (the first one stands). A producer reuses order ids: find the order in the worker log group (message \"conflict\") and fix the producer; the group goes on meanwhile."
  namespace           = var.emf_namespace
  metric_name         = "OrdersConflict"
  dimensions          = local.emf_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "hook_not_completed" {
  alarm_name          = "${var.asg_name}-hook-not-completed"
  alarm_description   = "A draining worker could not complete its lifecycle hook ${var.lifecycle_hook_name}: the instance waited for the hook timeout (${var.lifecycle_hook_timeout_seconds} s) instead of leaving at once, and scale-in and refreshes slow down. Read the drain record (record=drain, field hook) in the worker log group: usually IAM or the group name."
  namespace           = var.emf_namespace
  metric_name         = "HookNotCompleted"
  dimensions          = local.emf_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "drain_deadline_hit" {
  alarm_name          = "${var.asg_name}-drain-deadline-hit"
  alarm_description   = "A drain hit its deadline (${var.drain_timeout_seconds} s, or the Spot notice minus ${var.drain_margin_seconds} s): in-flight orders were abandoned and released, to be applied by another worker (what a run claimed is written by the next holder, at the same positions: nothing twice, no gap). Often means slow DynamoDB or too much work per group; held_up_by in the drain record names the groups."
  namespace           = var.emf_namespace
  metric_name         = "DrainDeadlineHit"
  dimensions          = local.emf_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "rejected_rate" {
  alarm_name          = "${var.queue_name}-rejected-rate"
  alarm_description   = "More than ${var.rejected_rate_alarm_percent} % of the orders applied in 5 minutes were REJECTED (recorded with a reason, not lost). A producer sends malformed or invalid orders: query the orders table for Status = REJECTED and read Reason."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.rejected_rate_alarm_percent
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "IF((accepted + rejected) > 0, 100 * rejected / (accepted + rejected), 0)"
    label       = "Rejected orders (%)"
    return_data = true
  }

  metric_query {
    id = "accepted"
    metric {
      namespace   = var.emf_namespace
      metric_name = "OrdersAccepted"
      dimensions  = local.emf_dimensions
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "rejected"
    metric {
      namespace   = var.emf_namespace
      metric_name = "OrdersRejected"
      dimensions  = local.emf_dimensions
      stat        = "Sum"
      period      = 300
    }
  }
}

# No worker ready: every worker is draining or paused by a rebalance, or none is running, or none can
# ship its log. Missing data is breaching: a silent fleet is not a ready one.
resource "aws_cloudwatch_metric_alarm" "fleet_not_ready" {
  alarm_name          = "${var.asg_name}-not-ready"
  alarm_description   = "No worker has been ready (taking new work) for ${var.fleet_not_ready_minutes} minutes: all draining, paused by rebalance recommendations, not running, or not logging. Orders wait in ${var.queue_name}. Check the group's instances in service, the worker log group, and the CloudWatch agent on an instance."
  namespace           = var.emf_namespace
  metric_name         = "Ready"
  dimensions          = local.emf_dimensions
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = var.fleet_not_ready_minutes
  datapoints_to_alarm = var.fleet_not_ready_minutes
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

# --- The dashboard -----------------------------------------------------------------------------------

locals {
  emf_metric = { for name in [
    "OrdersAccepted", "OrdersRejected", "OrdersDuplicate", "OrdersConflict", "MessagesReleased",
    "CommitLatency", "MessagesHeld", "Ready", "Drains", "DrainDeadlineHit", "HookCompleted",
    "HookNotCompleted", "DrainSeconds",
  ] : name => [var.emf_namespace, name, "QueueName", aws_sqs_queue.orders.name] }

  dashboard_widgets = [
    {
      type = "metric", x = 0, y = 0, width = 8, height = 6
      properties = {
        title = local.dlq_enabled ? "Queue: visible messages and DLQ depth" : "Queue: visible and in-flight messages", region = var.region, view = "timeSeries", stat = "Maximum", period = 60
        metrics = concat([
          ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.orders.name, { label = "orders visible" }],
          ["AWS/SQS", "ApproximateNumberOfMessagesNotVisible", "QueueName", aws_sqs_queue.orders.name, { label = "orders in flight" }],
          ], [for q in aws_sqs_queue.dlq : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q.name, { label = "DLQ depth" }]
        ])
      }
    },
    {
      type = "metric", x = 8, y = 0, width = 8, height = 6
      properties = {
        title = "Age of the oldest message (s)", region = var.region, view = "timeSeries", stat = "Maximum", period = 60
        metrics = [
          ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.orders.name, { label = "oldest order" }],
        ]
        annotations = { horizontal = [
          { label = "stalled alarm", value = var.primary_unhealthy_after_seconds },
          { label = "near-expiry alarm (half the retention)", value = local.retention_alarm_seconds },
        ] }
      }
    },
    {
      type = "metric", x = 16, y = 0, width = 8, height = 6
      properties = {
        title = "Instances in service and interruptions", region = var.region, view = "timeSeries", period = 60
        metrics = [
          ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", var.asg_name, { stat = "Maximum", label = "in service" }],
          ["AWS/AutoScaling", "GroupDesiredCapacity", "AutoScalingGroupName", var.asg_name, { stat = "Maximum", label = "desired" }],
          concat(local.emf_metric["Ready"], [{ stat = "Sum", label = "workers ready (per EMF record)" }]),
          [var.emf_namespace, "Drains", "QueueName", aws_sqs_queue.orders.name, "Trigger", "interruption", { stat = "Sum", label = "Spot interruptions" }],
        ]
      }
    },
    {
      type = "metric", x = 0, y = 6, width = 12, height = 6
      properties = {
        title = "Orders per minute by status", region = var.region, view = "timeSeries", stacked = false, stat = "Sum", period = 60
        metrics = [
          concat(local.emf_metric["OrdersAccepted"], [{ label = "accepted" }]),
          concat(local.emf_metric["OrdersRejected"], [{ label = "rejected" }]),
          concat(local.emf_metric["OrdersDuplicate"], [{ label = "duplicate" }]),
          concat(local.emf_metric["OrdersConflict"], [{ label = "conflict" }]),
          concat(local.emf_metric["MessagesReleased"], [{ label = "released" }]),
        ]
      }
    },
    {
      type = "metric", x = 12, y = 6, width = 12, height = 6
      properties = {
        title = "Drains and lifecycle hook results", region = var.region, view = "timeSeries", stat = "Sum", period = 60
        metrics = [
          [var.emf_namespace, "Drains", "QueueName", aws_sqs_queue.orders.name, "Trigger", "interruption", { label = "drains: interruption" }],
          [var.emf_namespace, "Drains", "QueueName", aws_sqs_queue.orders.name, "Trigger", "lifecycle", { label = "drains: lifecycle" }],
          [var.emf_namespace, "Drains", "QueueName", aws_sqs_queue.orders.name, "Trigger", "signal", { label = "drains: signal" }],
          concat(local.emf_metric["DrainDeadlineHit"], [{ label = "deadline hit" }]),
          concat(local.emf_metric["HookCompleted"], [{ label = "hook completed" }]),
          concat(local.emf_metric["HookNotCompleted"], [{ label = "hook NOT completed" }]),
        ]
      }
    },
    {
      type = "metric", x = 0, y = 12, width = 12, height = 6
      properties = {
        title = "Commit latency (ms) and messages held", region = var.region, view = "timeSeries", period = 60
        metrics = [
          concat(local.emf_metric["CommitLatency"], [{ stat = "Average", label = "commit latency (mean of the workers' means)" }]),
          concat(local.emf_metric["MessagesHeld"], [{ stat = "Sum", label = "messages held (all workers)", yAxis = "right" }]),
        ]
      }
    },
    {
      type = "alarm", x = 12, y = 12, width = 12, height = 6
      properties = {
        title = "Alarms"
        alarms = concat(aws_cloudwatch_metric_alarm.dlq_depth[*].arn, [
          aws_cloudwatch_metric_alarm.queue_stalled.arn,
          aws_cloudwatch_metric_alarm.queue_retention.arn,
          aws_cloudwatch_metric_alarm.order_conflict.arn,
          aws_cloudwatch_metric_alarm.hook_not_completed.arn,
          aws_cloudwatch_metric_alarm.drain_deadline_hit.arn,
          aws_cloudwatch_metric_alarm.rejected_rate.arn,
          aws_cloudwatch_metric_alarm.fleet_not_ready.arn,
        ])
      }
    },
  ]
}

resource "aws_cloudwatch_dashboard" "workers" {
  dashboard_name = "order-worker-${var.environment}"
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}
