# Facts about where we are, and the names everything else is built from.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # Built by hand, not read from aws_autoscaling_group: the group needs the launch template, which
  # needs the instance profile, whose policy needs the group's ARN. The name is fixed, so is the ARN.
  asg_arn = "arn:${local.partition}:autoscaling:${var.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.asg_name}"

  artifacts_bucket = coalesce(var.artifacts_bucket_name, "${local.account_id}-order-worker-artifacts-${var.region}")
}

# Cross-field rules that no single variable can state.
check "drain_fits_the_lifecycle_hook" {
  assert {
    condition     = var.drain_timeout_seconds + var.drain_margin_seconds < var.lifecycle_hook_timeout_seconds
    error_message = "drain_timeout_seconds + drain_margin_seconds must be shorter than lifecycle_hook_timeout_seconds, or the hook expires (and the instance goes) before the worker has released its messages."
  }
}

check "visibility_covers_the_drain" {
  assert {
    condition     = var.visibility_timeout_seconds >= var.drain_timeout_seconds + var.drain_margin_seconds
    error_message = "visibility_timeout_seconds must cover drain_timeout_seconds + drain_margin_seconds, or a message being drained becomes visible and another worker takes its group out of order."
  }
}

check "retention_outlasts_the_failover" {
  assert {
    condition     = local.retention_alarm_seconds > var.primary_unhealthy_after_seconds
    error_message = "message_retention_seconds is so short that the orders-near-expiry alarm (at half of it) fires before the stalled alarm (primary_unhealthy_after_seconds) has failed over: a stall deletes orders before anyone is told the region is down. Keep the retention above twice primary_unhealthy_after_seconds."
  }
}

check "queue_names_are_fifo_and_distinct" {
  assert {
    condition     = endswith(var.queue_name, ".fifo") && endswith(var.dlq_name, ".fifo") && var.queue_name != var.dlq_name
    error_message = "queue_name and dlq_name must both end in .fifo and differ."
  }
}
