# Private subnets only. No internet gateway, no NAT: the workers reach AWS through VPC endpoints
# (gateway endpoints for S3 and DynamoDB, interface endpoints for the rest).

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:The subnets use the first az_count zones in name order; zones added later get later letters, so the set does not change. existing_network pins subnets exactly.
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  create_network = var.existing_network == null
  azs            = local.create_network ? slice(data.aws_availability_zones.available.names, 0, min(var.az_count, length(data.aws_availability_zones.available.names))) : []

  vpc_id             = local.create_network ? aws_vpc.this[0].id : var.existing_network.vpc_id
  private_subnet_ids = local.create_network ? aws_subnet.private[*].id : var.existing_network.subnet_ids
  route_table_ids    = local.create_network ? aws_route_table.private[*].id : var.existing_network.route_table_ids

  # The interface endpoints' network interfaces: in every worker subnet (one per zone) by default, or in
  # the first interface_endpoint_az_count of them, the cheaper choice (variables.tf says what it costs).
  endpoint_subnet_ids = var.interface_endpoint_az_count == null ? local.private_subnet_ids : slice(local.private_subnet_ids, 0, min(var.interface_endpoint_az_count, length(local.private_subnet_ids)))
}

resource "aws_vpc" "this" {
  count = local.create_network ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true # interface endpoints need private DNS
  enable_dns_hostnames = true

  tags = { Name = "order-worker-${var.environment}" }

  lifecycle {
    precondition {
      condition     = length(data.aws_availability_zones.available.names) >= var.az_count
      error_message = "The region has fewer available zones than az_count."
    }
  }
}

# The default security group of the VPC allows nothing.
resource "aws_default_security_group" "this" {
  count  = local.create_network ? 1 : 0
  vpc_id = aws_vpc.this[0].id
}

resource "aws_subnet" "private" {
  count = local.create_network ? var.az_count : 0

  vpc_id                  = aws_vpc.this[0].id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = false

  tags = { Name = "order-worker-${var.environment}-private-${local.azs[count.index]}", Tier = "private" }
}

# One route table per subnet, with no default route: only the VPC and the gateway endpoints.
resource "aws_route_table" "private" {
  count  = local.create_network ? var.az_count : 0
  vpc_id = aws_vpc.this[0].id

  tags = { Name = "order-worker-${var.environment}-private-${local.azs[count.index]}" }
}

resource "aws_route_table_association" "private" {
  count          = local.create_network ? var.az_count : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

# --- flow logs ---------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "flow_logs" {
  count             = local.create_network ? 1 : 0
  name              = "/order-worker/${var.environment}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.data.arn
}

data "aws_iam_policy_document" "flow_logs_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count              = local.create_network ? 1 : 0
  name               = "order-worker-${var.environment}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_trust.json
}

data "aws_iam_policy_document" "flow_logs" {
  count = local.create_network ? 1 : 0

  statement {
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = ["${aws_cloudwatch_log_group.flow_logs[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count  = local.create_network ? 1 : 0
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs[0].json
}

resource "aws_flow_log" "this" {
  count                = local.create_network ? 1 : 0
  vpc_id               = aws_vpc.this[0].id
  traffic_type         = "ALL"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn
}

# --- endpoints ---------------------------------------------------------------------------------

resource "aws_vpc_endpoint" "gateway" {
  for_each = toset(["s3", "dynamodb"])

  vpc_id            = local.vpc_id
  service_name      = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = local.route_table_ids

  tags = { Name = "order-worker-${var.environment}-${each.key}" }
}

resource "aws_security_group" "endpoints" {
  name        = "order-worker-${var.environment}-endpoints"
  description = "Interface VPC endpoints: HTTPS from the workers only"
  vpc_id      = local.vpc_id

  tags = { Name = "order-worker-${var.environment}-endpoints" }
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_workers" {
  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS from the workers"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.workers.id
}

resource "aws_vpc_endpoint" "interface" {
  for_each = toset(var.interface_endpoints)

  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = local.endpoint_subnet_ids
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true

  tags = { Name = "order-worker-${var.environment}-${each.key}" }

  lifecycle {
    precondition {
      condition     = var.interface_endpoint_az_count == null || try(var.interface_endpoint_az_count <= length(local.private_subnet_ids), false)
      error_message = "interface_endpoint_az_count is larger than the number of worker subnets (az_count, or existing_network.subnet_ids)."
    }
  }
}

# --- the workers' security group: no inbound at all, HTTPS out to the endpoints only -------------

resource "aws_security_group" "workers" {
  name        = "order-worker-${var.environment}-workers"
  description = "Order workers: no inbound; HTTPS out to the VPC endpoints"
  vpc_id      = local.vpc_id

  tags = { Name = "order-worker-${var.environment}-workers" }
}

resource "aws_vpc_security_group_egress_rule" "workers_to_interface_endpoints" {
  security_group_id            = aws_security_group.workers.id
  description                  = "HTTPS to the interface endpoints (SQS, Auto Scaling, SSM, Logs, STS)"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoints.id
}

resource "aws_vpc_security_group_egress_rule" "workers_to_gateway_endpoints" {
  for_each = aws_vpc_endpoint.gateway

  security_group_id = aws_security_group.workers.id
  description       = "HTTPS to ${each.key} through its gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = each.value.prefix_list_id
}
