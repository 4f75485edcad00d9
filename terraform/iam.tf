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

# The worker role's policy is terraform/policies/worker.json.tftpl (the statements and why each exists are in
# terraform/policies/README.md). The local region renders the same file and enforces it on every local run
# (chaos/iamgate), so a grant missing here fails the tests, not an account.

resource "aws_iam_role_policy" "worker" {
  name   = "order-worker"
  role   = aws_iam_role.worker.id
  policy = templatefile("${path.module}/policies/worker.json.tftpl", local.policy_values)
}

resource "aws_iam_role_policy_attachment" "worker_ssm" {
  role       = aws_iam_role.worker.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "worker" {
  name = aws_iam_role.worker.name
  role = aws_iam_role.worker.name
}
