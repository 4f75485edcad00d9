# One customer managed key for the data at rest in the primary region: queues, tables, log groups.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy: "*" as resource means this key only, and the principals are the account root and two services scoped by conditions.
  #checkov:skip=CKV_AWS_356:Same: in a key policy the resource "*" is the key the policy is attached to.
  #checkov:skip=CKV_AWS_109:Same: the account root administers its own key through IAM (the default key policy).
  # The account administers the key through IAM (the default key policy).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the flow log and FIS log groups with it.
  statement {
    sid = "CloudWatchLogsUse"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }

  # CloudWatch alarms on the queue and SQS itself (for a redrive, with dead_letter_queue) read and
  # write encrypted messages.
  statement {
    sid       = "SqsServiceUse"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["sqs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "order-worker ${var.environment}: SQS, DynamoDB and CloudWatch Logs at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/order-worker-${var.environment}"
  target_key_id = aws_kms_key.data.key_id
}
