# The worker fleet: a launch template and an Auto Scaling group made only of Spot instances, spread
# over several instance types and zones, replaced early on rebalance recommendations, drained
# through a termination lifecycle hook, and scaled on the queue backlog per instance.

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)

  # The longest a worker takes to stop: the drain, then the margin to release and complete the hook.
  drain_seconds = var.drain_timeout_seconds + var.drain_margin_seconds

  # systemd's TimeoutStopSec for the worker: after the drain and its margin, before the hook
  # times out (the Ansible role refuses anything else). 110 s with the defaults.
  stop_timeout_seconds = floor((local.drain_seconds + var.lifecycle_hook_timeout_seconds) / 2)

  # The Ansible role's variables (ansible/roles/order_worker/meta/argument_specs.yml). The role
  # writes them to the worker's environment file under the names `order-worker --help` shows
  # (ORDER_WORKER_QUEUE_URL, ...).
  worker_vars = {
    worker_queue_url          = aws_sqs_queue.orders.url
    worker_region             = var.region
    worker_orders_table       = aws_dynamodb_table.orders.name
    worker_groups_table       = aws_dynamodb_table.groups.name
    worker_asg_name           = var.asg_name
    worker_lifecycle_hook     = var.lifecycle_hook_name
    worker_visibility_timeout = "${var.visibility_timeout_seconds}s"
    worker_wait_time          = "${var.receive_wait_time_seconds}s"
    worker_drain_timeout      = "${var.drain_timeout_seconds}s"
    worker_drain_margin       = "${var.drain_margin_seconds}s"
    worker_hook_timeout       = var.lifecycle_hook_timeout_seconds
    worker_stop_timeout       = local.stop_timeout_seconds
    worker_binary_url         = "s3://${aws_s3_bucket.artifacts.id}/${var.worker_binary_key}"
    worker_binary_sha256      = var.worker_binary_sha256
    worker_log_group          = aws_cloudwatch_log_group.worker.name
    worker_emf_namespace      = var.emf_namespace
    worker_emf_interval       = "${var.emf_interval_seconds}s"
  }

  # One boot script for the whole repository, owned by ansible/: it fetches the bundle from S3
  # through the gateway endpoint (no NAT), checks its SHA-256, and runs site.yml with worker_vars.
  user_data = templatefile("${path.module}/../ansible/user-data.sh.tftpl", {
    region        = var.region
    bundle_url    = var.ansible_bundle_key == null ? "" : "s3://${aws_s3_bucket.artifacts.id}/${var.ansible_bundle_key}"
    bundle_sha256 = var.ansible_bundle_sha256 == null ? "" : var.ansible_bundle_sha256
    worker_vars   = local.worker_vars
  })
}

resource "aws_launch_template" "worker" {
  name                   = "${var.asg_name}-${var.environment}"
  description            = "order-worker Spot instances (the group's mixed instances policy picks type and purchase option)"
  image_id               = local.ami_id
  update_default_version = true
  ebs_optimized          = true
  user_data              = base64encode(local.user_data)

  # No instance_market_options here: Spot comes from the group's mixed instances policy, and the
  # two cannot be combined.

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    security_groups             = [aws_security_group.workers.id]
    delete_on_termination       = true
  }

  # IMDSv2 only, one hop (no container on the host can reach it), instance tags readable there
  # (the worker finds its group name in aws:autoscaling:groupName).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gib
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  lifecycle {
    precondition {
      # drain + margin >= hook is the lifecycle hook's precondition; this one is about the gap.
      condition     = local.drain_seconds >= var.lifecycle_hook_timeout_seconds || (local.stop_timeout_seconds > local.drain_seconds && local.stop_timeout_seconds < var.lifecycle_hook_timeout_seconds)
      error_message = "No whole second fits systemd's stop timeout between drain + margin and the hook timeout: leave at least 2 s between them."
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.asg_name}-${var.environment}" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.asg_name}-${var.environment}" })
  }
}

resource "aws_autoscaling_group" "workers" {
  name                = var.asg_name
  vpc_zone_identifier = local.private_subnet_ids

  min_size         = var.min_size
  max_size         = var.max_size
  desired_capacity = var.desired_capacity

  # Launch a replacement when EC2 says a Spot instance is at elevated risk, before the two-minute
  # notice; the old one then goes through the termination hook like any other.
  capacity_rebalance = true

  health_check_type         = "EC2"
  health_check_grace_period = 120
  default_instance_warmup   = 120

  # GroupInServiceInstances feeds the backlog-per-instance scaling metric.
  enabled_metrics     = ["GroupInServiceInstances", "GroupDesiredCapacity", "GroupTerminatingInstances"]
  metrics_granularity = "1Minute"

  mixed_instances_policy {
    instances_distribution {
      # All Spot. The API's default is all On-Demand, so both zeros are spelled out.
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = 0
      spot_allocation_strategy                 = "price-capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.worker.id
        version            = aws_launch_template.worker.latest_version
      }

      dynamic "override" {
        for_each = var.instance_types

        content {
          instance_type = override.value
        }
      }
    }
  }

  # A new launch template version rolls through the group, a share at a time.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
      instance_warmup        = 120
      skip_matching          = true
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.asg_name}-${var.environment}"
    propagate_at_launch = true
  }

  lifecycle {
    # The scaling policy owns the desired capacity after creation.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = length(var.instance_types) >= 3
      error_message = "At least three instance types: one Spot pool is one interruption away from zero."
    }
  }
}

# Its own resource (not initial_lifecycle_hook, which only applies when the group is created).
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = var.lifecycle_hook_name
  autoscaling_group_name = aws_autoscaling_group.workers.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = var.lifecycle_hook_timeout_seconds
  default_result         = "CONTINUE"

  lifecycle {
    precondition {
      condition     = var.drain_timeout_seconds + var.drain_margin_seconds < var.lifecycle_hook_timeout_seconds
      error_message = "The hook must outlast the drain: drain_timeout_seconds + drain_margin_seconds < lifecycle_hook_timeout_seconds."
    }
  }
}

# Target tracking on "visible orders per worker in service" (AWS's backlog-per-instance pattern).
resource "aws_autoscaling_policy" "backlog_per_instance" {
  name                   = "backlog-per-instance"
  autoscaling_group_name = aws_autoscaling_group.workers.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    target_value = var.backlog_per_instance_target

    customized_metric_specification {
      metrics {
        id          = "visible"
        label       = "Orders waiting in ${var.queue_name}"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"

            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.orders.name
            }
          }
        }
      }

      metrics {
        id          = "workers"
        label       = "Workers in service"
        return_data = false

        metric_stat {
          stat = "Average"

          metric {
            namespace   = "AWS/AutoScaling"
            metric_name = "GroupInServiceInstances"

            dimensions {
              name  = "AutoScalingGroupName"
              value = aws_autoscaling_group.workers.name
            }
          }
        }
      }

      metrics {
        id          = "backlog_per_instance"
        label       = "Orders waiting per worker"
        expression  = "visible / workers"
        return_data = true
      }
    }
  }
}
