# The results (orders, keyed OrderID) and the per-message-group ordering state the worker keeps
# (order-groups, keyed MessageGroupId, attribute LastPosition). Only key attributes are declared.

resource "aws_dynamodb_table" "orders" {
  name         = var.orders_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "OrderID"

  attribute {
    name = "OrderID"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.data.arn
  }

  deletion_protection_enabled = var.table_deletion_protection

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_dynamodb_table" "groups" {
  name         = var.groups_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "MessageGroupId"

  attribute {
    name = "MessageGroupId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.data.arn
  }

  deletion_protection_enabled = var.table_deletion_protection

  lifecycle {
    prevent_destroy = true
  }
}
