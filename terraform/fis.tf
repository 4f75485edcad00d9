# AWS FIS: interrupt Spot instances of the worker group on purpose (chaos/ runs it by the template
# id in the outputs). The instances get a rebalance recommendation at once and the interruption
# notice two minutes before durationBeforeInterruption is up.

resource "aws_cloudwatch_log_group" "fis" {
  name              = "/order-worker/${var.environment}/fis-experiments"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.data.arn
}

data "aws_iam_policy_document" "fis_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["fis.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:fis:${var.region}:${local.account_id}:experiment/*"]
    }
  }
}

resource "aws_iam_role" "fis" {
  name               = "order-worker-${var.environment}-fis-${var.region}"
  description        = "FIS: send Spot interruptions to ${var.asg_name} instances only"
  assume_role_policy = data.aws_iam_policy_document.fis_trust.json
}

# The role's policy: terraform/policies/fis.json.tftpl (interrupt only instances tagged with this group; resolve
# targets; deliver experiment logs). spot-sim asks the local region's IAM gate for the same policy before an
# experiment interrupts anything.

resource "aws_iam_role_policy" "fis" {
  name   = "spot-interruptions"
  role   = aws_iam_role.fis.id
  policy = templatefile("${path.module}/policies/fis.json.tftpl", local.policy_values)
}

resource "aws_fis_experiment_template" "spot_interruption" {
  description = "Interrupt ${var.fis_selection_mode} running Spot instance(s) of ${var.asg_name}; stop if the queue stalls (or orders reach the DLQ, when there is one)"
  role_arn    = aws_iam_role.fis.arn

  action {
    name        = "interrupt-spot-workers"
    action_id   = "aws:ec2:send-spot-instance-interruptions"
    description = "Rebalance recommendation now, interruption after ${var.fis_duration_before_interruption}"

    parameter {
      key   = "durationBeforeInterruption"
      value = var.fis_duration_before_interruption
    }

    target {
      key   = "SpotInstances"
      value = "order-workers"
    }
  }

  target {
    name           = "order-workers"
    resource_type  = "aws:ec2:spot-instance"
    selection_mode = var.fis_selection_mode

    resource_tag {
      key   = "aws:autoscaling:groupName"
      value = aws_autoscaling_group.workers.name
    }

    filter {
      path   = "State.Name"
      values = ["running"]
    }
  }

  # With a dead-letter queue: stop once an order was dead-lettered (the experiment broke something).
  dynamic "stop_condition" {
    for_each = aws_cloudwatch_metric_alarm.dlq_depth[*].arn
    content {
      source = "aws:cloudwatch:alarm"
      value  = stop_condition.value
    }
  }

  stop_condition {
    source = "aws:cloudwatch:alarm"
    value  = aws_cloudwatch_metric_alarm.queue_stalled.arn
  }

  experiment_options {
    account_targeting            = "single-account"
    empty_target_resolution_mode = "fail"
  }

  log_configuration {
    log_schema_version = 2

    cloudwatch_logs_configuration {
      log_group_arn = "${aws_cloudwatch_log_group.fis.arn}:*"
    }
  }

  tags = { Name = "order-worker-${var.environment}-spot-interruption" }
}
