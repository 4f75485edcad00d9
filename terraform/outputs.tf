# What the worker, the Ansible play, the demo and the chaos scripts need from this stack.

output "region" {
  description = "Primary region (AWS_REGION for the worker and the scripts)."
  value       = var.region
}

output "queue_url" {
  description = "URL of the orders FIFO queue (ORDER_WORKER_QUEUE_URL; the aws-cli 100-order check sends here)."
  value       = aws_sqs_queue.orders.url
}

output "queue_arn" {
  description = "ARN of the orders FIFO queue."
  value       = aws_sqs_queue.orders.arn
}

output "dlq_url" {
  description = "URL of the FIFO dead-letter queue (inspect it here; a redrive applies its orders after their groups' tails). Null unless dead_letter_queue = true."
  value       = one(aws_sqs_queue.dlq[*].url)
}

output "dlq_arn" {
  description = "ARN of the FIFO dead-letter queue. Null unless dead_letter_queue = true."
  value       = one(aws_sqs_queue.dlq[*].arn)
}

output "orders_table_name" {
  description = "DynamoDB table of processed orders, partition key OrderID (ORDER_WORKER_ORDERS_TABLE; `order-worker verify --table`)."
  value       = aws_dynamodb_table.orders.name
}

output "groups_table_name" {
  description = "DynamoDB table of per-message-group state (ORDER_WORKER_GROUPS_TABLE)."
  value       = aws_dynamodb_table.groups.name
}

output "asg_name" {
  description = "Auto Scaling group of the Spot workers (ORDER_WORKER_ASG_NAME)."
  value       = aws_autoscaling_group.workers.name
}

output "lifecycle_hook_name" {
  description = "Termination lifecycle hook the worker completes after its drain (ORDER_WORKER_LIFECYCLE_HOOK)."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}

output "launch_template_id" {
  description = "Launch template of the workers (its latest version is what the group launches)."
  value       = aws_launch_template.worker.id
}

output "fis_experiment_template_id" {
  description = "FIS experiment template that sends Spot interruptions to the group: `aws fis start-experiment --experiment-template-id <this>` (chaos/ reads it)."
  value       = aws_fis_experiment_template.spot_interruption.id
}

output "fis_role_arn" {
  description = "Role FIS assumes (one-off templates of chaos/fis-run.sh can use it; it may interrupt only the group's instances)."
  value       = aws_iam_role.fis.arn
}

output "fis_log_group_name" {
  description = "CloudWatch log group of the FIS experiments."
  value       = aws_cloudwatch_log_group.fis.name
}

output "dlq_alarm_arn" {
  description = "Alarm on the dead-letter queue depth (also an FIS stop condition). Null unless dead_letter_queue = true."
  value       = one(aws_cloudwatch_metric_alarm.dlq_depth[*].arn)
}

output "retention_alarm_arn" {
  description = "Alarm on an order that has waited half the queue's retention (SQS deletes it unprocessed at the full retention)."
  value       = aws_cloudwatch_metric_alarm.queue_retention.arn
}

output "vpc_id" {
  description = "VPC of the workers."
  value       = local.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets the workers run in (no route to the internet)."
  value       = local.private_subnet_ids
}

output "worker_role_arn" {
  description = "IAM role of the worker instances."
  value       = aws_iam_role.worker.arn
}

output "artifacts_bucket" {
  description = "Bucket for the release artifacts; upload the binary to worker_binary_key and the Ansible bundle to ansible_bundle_key."
  value       = aws_s3_bucket.artifacts.id
}

output "hosted_zone_id" {
  description = "Route 53 hosted zone holding the failover record."
  value       = local.zone_id
}

output "name_servers" {
  description = "Name servers of the created hosted zone (delegate the domain to them); empty when an existing zone was given."
  value       = try(aws_route53_zone.this[0].name_servers, [])
}

output "record_name" {
  description = "The failover record: the primary endpoint while healthy, the S3 error page otherwise."
  value       = var.record_name
}

output "error_page_website_endpoint" {
  description = "S3 website endpoint of the error page in the standby region (HTTP only), to check it directly."
  value       = aws_s3_bucket_website_configuration.error_page.website_endpoint
}

output "worker_log_group_name" {
  description = "CloudWatch log group of the workers' JSON log (one stream per instance id; EMF records included). The Ansible role's worker_log_group."
  value       = aws_cloudwatch_log_group.worker.name
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the fleet: queue (and DLQ, when there is one), orders by status, drains, hooks, instances, alarms."
  value       = aws_cloudwatch_dashboard.workers.dashboard_name
}

output "producer_policy_arn" {
  description = "Managed policy for the order producer (send to the queue): attach it to the shop's front-end role."
  value       = aws_iam_policy.producer.arn
}

output "operator_policy_arn" {
  description = "Managed policy for whoever runs chaos/ (the aws-cli check, verify, FIS experiments): attach it to their role."
  value       = aws_iam_policy.operator.arn
}
