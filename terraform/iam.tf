# The workers' instance role: exactly what the worker does, on exact ARNs, plus SSM for access
# (Session Manager instead of SSH: no inbound port, no key pair).

data "aws_iam_policy_document" "worker_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = "order-worker-${var.environment}-${var.region}"
  description        = "order-worker instances: consume ${var.queue_name}, write ${var.orders_table_name} and ${var.groups_table_name}, complete their own lifecycle hook"
  assume_role_policy = data.aws_iam_policy_document.worker_trust.json
}

data "aws_iam_policy_document" "worker" {
  # queue.rs: ReceiveMessage (long poll), DeleteMessage(Batch), ChangeMessageVisibility(Batch)
  # for heartbeats and releases, GetQueueAttributes at start. The batch calls are authorised by
  # the single-message actions.
  statement {
    sid = "ConsumeOrders"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [aws_sqs_queue.orders.arn]
  }

  # store.rs: DescribeTable at start (both tables exist with the expected keys), then the
  # exactly-once, ordered apply. TransactWriteItems is authorised per action inside it (Put,
  # Update, ConditionCheck); reads for duplicates and the group's last position.
  statement {
    sid = "ApplyOrders"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:GetItem",
      "dynamodb:BatchGetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [
      aws_dynamodb_table.orders.arn,
      aws_dynamodb_table.groups.arn,
    ]
  }

  # lifecycle.rs: heartbeats while draining, then CONTINUE. Only on this group (ARN built by hand
  # in main.tf to avoid a dependency cycle through the launch template).
  statement {
    sid = "CompleteOwnLifecycleHook"
    actions = [
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    resources = [local.asg_arn]
  }

  # The CloudWatch agent (ansible/) ships the worker's log, EMF records included, to its own log
  # group and nowhere else: create this instance's stream, write to it. No PutMetricData: CloudWatch
  # extracts the metrics from the log. The group is created here, so no logs:CreateLogGroup.
  statement {
    sid = "ShipWorkerLog"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = [
      aws_cloudwatch_log_group.worker.arn,
      "${aws_cloudwatch_log_group.worker.arn}:log-stream:*",
    ]
  }

  # The queue, the tables and the artifacts are encrypted with the customer managed key: reading
  # them needs Decrypt, and only through those three services.
  statement {
    sid       = "DecryptThroughSqsDynamoDbS3"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = [
        "sqs.${var.region}.amazonaws.com",
        "dynamodb.${var.region}.amazonaws.com",
        "s3.${var.region}.amazonaws.com",
      ]
    }
  }

  # Bootstrap (user data): the worker binary and the Ansible bundle, through the S3 gateway endpoint.
  statement {
    sid     = "FetchReleaseArtifacts"
    actions = ["s3:GetObject"]
    resources = compact([
      "${aws_s3_bucket.artifacts.arn}/${var.worker_binary_key}",
      var.ansible_bundle_key == null ? "" : "${aws_s3_bucket.artifacts.arn}/${var.ansible_bundle_key}",
    ])
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "order-worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy_attachment" "worker_ssm" {
  role       = aws_iam_role.worker.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "worker" {
  name = aws_iam_role.worker.name
  role = aws_iam_role.worker.name
}
