# The orders queue (FIFO: exactly-once intake, order per message group). No dead-letter queue by
# default (var.dead_letter_queue): the worker records every order at a dense position per group
# (GroupPosition 1, 2, 3, ... with no gaps), and a message moved to a DLQ leaves its position empty
# for good, while a redrive sends it after its group's tail. AWS's own guide says not to use a DLQ
# with a FIFO queue when order matters ("Using dead-letter queues in Amazon SQS": "Don't use a
# dead-letter queue with a FIFO queue if you don't want to break the exact order of messages or
# operations"). The worker does not need one to get rid of poison messages: a body it cannot parse
# or validate is recorded as REJECTED (with its reason) and deleted, and account-wide errors
# (throttling, KMS, IAM) pause receiving instead of burning receive counts (src/health.rs). What is
# left for SQS to catch is an order that nobody processes at all, and the retention alarm below
# catches that before SQS deletes it.

locals {
  dlq_enabled = var.dead_letter_queue

  # Alarm when the oldest order has waited half the retention period: it leaves as much time to act
  # as has already passed (two days with the 4-day default) before SQS deletes the order unprocessed.
  # Half, not "retention minus a fixed hour count", so it stays meaningful from 1 h to 14 days.
  retention_alarm_seconds = floor(var.message_retention_seconds / 2)
}

resource "aws_sqs_queue" "dlq" {
  count = local.dlq_enabled ? 1 : 0

  name       = var.dlq_name
  fifo_queue = true

  # A dead-lettered order waits here for a person: keep it as long as SQS allows.
  message_retention_seconds   = 1209600
  content_based_deduplication = false

  kms_master_key_id                 = aws_kms_key.data.arn
  kms_data_key_reuse_period_seconds = 300
}

resource "aws_sqs_queue" "orders" {
  name       = var.queue_name
  fifo_queue = true

  # Producers set MessageDeduplicationId (the order id); the body hash is the fallback.
  content_based_deduplication = true

  # High-throughput FIFO: dedup and quota per message group. Order per group is unchanged.
  deduplication_scope   = var.high_throughput_fifo ? "messageGroup" : "queue"
  fifo_throughput_limit = var.high_throughput_fifo ? "perMessageGroupId" : "perQueue"

  visibility_timeout_seconds = var.visibility_timeout_seconds
  receive_wait_time_seconds  = var.receive_wait_time_seconds
  message_retention_seconds  = var.message_retention_seconds

  kms_master_key_id                 = aws_kms_key.data.arn
  kms_data_key_reuse_period_seconds = 300

  lifecycle {
    precondition {
      condition     = var.visibility_timeout_seconds >= var.drain_timeout_seconds + var.drain_margin_seconds
      error_message = "The visibility timeout must cover the drain (drain_timeout_seconds + drain_margin_seconds)."
    }
  }
}

# Only with dead_letter_queue = true. Redrive and redrive-allow as their own resources: inline, each
# queue would name the other (a cycle).
resource "aws_sqs_queue_redrive_policy" "orders" {
  count = local.dlq_enabled ? 1 : 0

  queue_url = aws_sqs_queue.orders.id
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[0].arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  count = local.dlq_enabled ? 1 : 0

  queue_url = aws_sqs_queue.dlq[0].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.orders.arn]
  })
}

# TLS only, on every queue: each queue's policy denies any request that is not TLS: terraform/policies/queue.json.tftpl, which the local
# region enforces as the queue's resource policy.

resource "aws_sqs_queue_policy" "orders" {
  queue_url = aws_sqs_queue.orders.id
  policy    = templatefile("${path.module}/policies/queue.json.tftpl", { queue_arn = aws_sqs_queue.orders.arn })
}

resource "aws_sqs_queue_policy" "dlq" {
  count = local.dlq_enabled ? 1 : 0

  queue_url = aws_sqs_queue.dlq[0].id
  policy    = templatefile("${path.module}/policies/queue.json.tftpl", { queue_arn = aws_sqs_queue.dlq[0].arn })
}

# With a DLQ, anything in it is an order that was not processed and left a hole in its group: page someone.
resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  count = local.dlq_enabled ? 1 : 0

  alarm_name          = "${var.dlq_name}-not-empty"
  alarm_description   = "Orders reached the dead-letter queue ${var.dlq_name}: they were received ${var.max_receive_count} times without being processed, and each left an empty position in its group (later orders of the group were applied without it). Also stops the FIS experiment."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq[0].name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = var.dlq_alarm_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

# The oldest order has waited too long: nobody in the primary region is processing. Route 53's
# health check of the primary record follows this alarm.
resource "aws_cloudwatch_metric_alarm" "queue_stalled" {
  alarm_name          = "${var.queue_name}-stalled"
  alarm_description   = "The oldest order in ${var.queue_name} is older than ${var.primary_unhealthy_after_seconds} s: the primary region is not processing. Drives the Route 53 failover."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.orders.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = var.primary_unhealthy_after_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

# An order is half-way to being deleted by SQS unprocessed (message_retention_seconds). Without a
# DLQ this is the alarm that stands between a stuck order and its silent loss; with one it still
# catches a group that is stuck for any other reason. Five-minute periods: the threshold is hours or
# days, and the age only grows while an order is stuck. AWS notes that a message received again and
# again without being deleted can distort this metric ("Capturing problematic messages in Amazon
# SQS"); the worker deletes what it rejects, so the messages left are ones no worker got to, and the
# stalled alarm above, on the same metric, has fired long before this one.
resource "aws_cloudwatch_metric_alarm" "queue_retention" {
  alarm_name          = "${var.queue_name}-orders-near-expiry"
  alarm_description   = "An order in ${var.queue_name} has waited ${local.retention_alarm_seconds} s, half the queue's retention (message_retention_seconds = ${var.message_retention_seconds} s): SQS deletes it unprocessed when it reaches the retention${local.dlq_enabled ? "" : ", and there is no dead-letter queue to keep it"}. Find the group that does not move (worker log group: \"group waits for its row\", DynamoDB or SQS errors; the orders table's order-groups row) and fix it before then; if it cannot be fixed in time, receive and save the message by hand."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.orders.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = local.retention_alarm_seconds
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}
