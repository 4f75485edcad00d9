# The orders queue (FIFO: exactly-once intake, order per message group) and its FIFO dead-letter queue.

resource "aws_sqs_queue" "dlq" {
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

# Redrive and redrive-allow as their own resources: inline, each queue would name the other (a cycle).
resource "aws_sqs_queue_redrive_policy" "orders" {
  queue_url = aws_sqs_queue.orders.id
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.orders.arn]
  })
}

# TLS only, on both queues.
data "aws_iam_policy_document" "queue_tls_only" {
  for_each = {
    orders = aws_sqs_queue.orders.arn
    dlq    = aws_sqs_queue.dlq.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "orders" {
  queue_url = aws_sqs_queue.orders.id
  policy    = data.aws_iam_policy_document.queue_tls_only["orders"].json
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.queue_tls_only["dlq"].json
}

# Anything in the dead-letter queue is an order that was not processed: page someone.
resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  alarm_name          = "${var.dlq_name}-not-empty"
  alarm_description   = "Orders reached the dead-letter queue ${var.dlq_name}: they were received ${var.max_receive_count} times without being processed. Also stops the FIS experiment."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
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
