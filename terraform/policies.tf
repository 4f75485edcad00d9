# The policy documents are templates in terraform/policies/ (one file each, with `${...}` values only), rendered
# here with templatefile() and by the local region's IAM gate (chaos/iamgate/stack.py) with its own names: one
# copy of every grant, enforced on every local run before it reaches an account.

locals {
  # Every template's values; the local region passes the same names (chaos/iamgate/stack.py Stack.values).
  policy_values = {
    partition        = local.partition
    region           = var.region
    account_id       = local.account_id
    asg_name         = var.asg_name
    asg_arn          = local.asg_arn
    queue_arn        = aws_sqs_queue.orders.arn
    orders_table_arn = aws_dynamodb_table.orders.arn
    groups_table_arn = aws_dynamodb_table.groups.arn
    kms_key_arn      = aws_kms_key.data.arn
    log_group_arn    = aws_cloudwatch_log_group.worker.arn
    fis_role_arn     = aws_iam_role.fis.arn
    # The queue, and the dead-letter queue when there is one (the operator watches both).
    watched_queue_arns = jsonencode(concat([aws_sqs_queue.orders.arn], aws_sqs_queue.dlq[*].arn))
    # A list goes in JSON-encoded: the template writes it unquoted ("Resource": ${artifact_object_arns}).
    artifact_object_arns = jsonencode(compact([
      "${aws_s3_bucket.artifacts.arn}/${var.worker_binary_key}",
      var.ansible_bundle_key == null ? "" : "${aws_s3_bucket.artifacts.arn}/${var.ansible_bundle_key}",
    ]))
  }
}

# Managed policies for the two kinds of callers the project documents but does not create: attach them to the
# role of the shop's front end (it sends orders) and to whoever runs the checks and experiments in chaos/ (the
# aws-cli 100-order check, `order-worker verify`, the FIS scripts). The local region gives its producer and
# operator exactly these.
resource "aws_iam_policy" "producer" {
  name        = "order-producer-${var.environment}-${var.region}"
  description = "Send orders to ${var.queue_name} (and use the stack key for it through SQS only)"
  policy      = templatefile("${path.module}/policies/producer.json.tftpl", local.policy_values)
}

resource "aws_iam_policy" "operator" {
  name        = "order-operator-${var.environment}-${var.region}"
  description = "Run the ordering check, verify and the Spot interruption experiments of ${var.asg_name}"
  policy      = templatefile("${path.module}/policies/operator.json.tftpl", local.policy_values)
}
