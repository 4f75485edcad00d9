# One customer managed key for the data at rest in the primary region: queues, tables, log groups.

# The key policy: terraform/policies/kms-key.json.tftpl: the account administers the key through IAM (so the
# callers' own policies grant its use, kms:ViaService-scoped), CloudWatch Logs and SQS use it under conditions.
# The local region evaluates every caller's KMS use of the queue and tables against it.

resource "aws_kms_key" "data" {
  description             = "order-worker ${var.environment}: SQS, DynamoDB and CloudWatch Logs at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  # Only the account's names: the queue, tables and log group are encrypted with this key (a cycle otherwise).
  policy = templatefile("${path.module}/policies/kms-key.json.tftpl", {
    partition  = local.partition
    region     = var.region
    account_id = local.account_id
  })
}

resource "aws_kms_alias" "data" {
  name          = "alias/order-worker-${var.environment}"
  target_key_id = aws_kms_key.data.key_id
}
