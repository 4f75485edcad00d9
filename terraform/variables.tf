# Inputs. Every default that the worker also has (names, timeouts) is the worker's default too:
# tests/test_settings_agree.py compares them with `order-worker --help`.

# --- where ----------------------------------------------------------------------------------------

variable "region" {
  description = "Primary AWS region: queue, tables, network, worker fleet and FIS experiment."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as us-east-1."
  }
}

variable "standby_region" {
  description = "Region of the static error page that Route 53 fails over to. Must differ from region."
  type        = string
  default     = "us-west-2"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.standby_region))
    error_message = "standby_region must be an AWS region code such as us-west-2."
  }

  validation {
    condition     = var.standby_region != var.region
    error_message = "standby_region must differ from region: the error page has to survive the primary region."
  }
}

variable "environment" {
  description = "Environment name, used in tags and in the names of resources that have no fixed name."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (merged into the providers' default_tags)."
  type        = map(string)
  default     = {}
}

# --- queue -----------------------------------------------------------------------------------------

variable "queue_name" {
  description = "Name of the SQS FIFO queue that receives the orders (worker: --queue-url ends in this)."
  type        = string
  default     = "orders.fifo"

  validation {
    condition     = endswith(var.queue_name, ".fifo") && can(regex("^[A-Za-z0-9_-]{1,75}\\.fifo$", var.queue_name))
    error_message = "queue_name must end in .fifo and be at most 80 characters of letters, digits, - and _."
  }
}

variable "dead_letter_queue" {
  description = "Opt in to a FIFO dead-letter queue (dlq_name) that SQS moves an order to after max_receive_count receives without a delete. Off by default, because it breaks the worker's per-group order: the moved order leaves its GroupPosition empty for good (`order-worker verify` reports a position gap), the group's later orders are applied without it, and a redrive appends it after the group's tail, out of order; AWS advises against a DLQ on a FIFO queue where order matters. The worker needs none for poison bodies (recorded REJECTED and deleted) or account-wide errors (receiving pauses; no receive count is burnt). Without it, an order nobody processes stays in its group, holding the group's later orders back, until message_retention_seconds deletes it; the <queue>-orders-near-expiry alarm fires at half that. Turn it on only if losing an order's place is better than holding its group back."
  type        = bool
  default     = false
}

variable "dlq_name" {
  description = "Name of the FIFO dead-letter queue, created only with dead_letter_queue = true. A FIFO queue's dead-letter queue must be FIFO too."
  type        = string
  default     = "orders-dlq.fifo"

  validation {
    condition     = endswith(var.dlq_name, ".fifo") && can(regex("^[A-Za-z0-9_-]{1,75}\\.fifo$", var.dlq_name))
    error_message = "dlq_name must end in .fifo and be at most 80 characters of letters, digits, - and _."
  }
}

variable "high_throughput_fifo" {
  description = "High-throughput FIFO: deduplication and throughput quota per message group instead of per queue."
  type        = bool
  default     = true
}

variable "visibility_timeout_seconds" {
  description = "Queue visibility timeout (worker: --visibility-timeout). Must cover the drain so no other worker takes a group mid-drain."
  type        = number
  default     = 120

  validation {
    condition     = var.visibility_timeout_seconds >= 30 && var.visibility_timeout_seconds <= 43200 && floor(var.visibility_timeout_seconds) == var.visibility_timeout_seconds
    error_message = "visibility_timeout_seconds must be a whole number of seconds from 30 to 43200 (12 h)."
  }
}

variable "receive_wait_time_seconds" {
  description = "Long polling wait (worker: --wait-time)."
  type        = number
  default     = 20

  validation {
    condition     = var.receive_wait_time_seconds >= 1 && var.receive_wait_time_seconds <= 20
    error_message = "receive_wait_time_seconds must be 1-20: long polling on, at most the SQS maximum."
  }
}

variable "message_retention_seconds" {
  description = "How long the main queue keeps an order. SQS deletes an order older than this, processed or not; the <queue>-orders-near-expiry alarm fires at half of it."
  type        = number
  default     = 345600 # 4 days

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be from 60 to 1209600 (14 days)."
  }
}

variable "max_receive_count" {
  description = "Receives before SQS moves a message to the dead-letter queue (only with dead_letter_queue = true)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be from 1 to 1000."
  }
}

variable "dlq_alarm_threshold" {
  description = "Alarm when the dead-letter queue holds at least this many messages (only with dead_letter_queue = true)."
  type        = number
  default     = 1

  validation {
    condition     = var.dlq_alarm_threshold >= 1
    error_message = "dlq_alarm_threshold must be at least 1."
  }
}

# --- tables ----------------------------------------------------------------------------------------

variable "orders_table_name" {
  description = "DynamoDB table of processed orders, partition key OrderID (worker: --orders-table)."
  type        = string
  default     = "orders"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.orders_table_name))
    error_message = "orders_table_name must be 3-255 characters of letters, digits, _, - and ."
  }
}

variable "groups_table_name" {
  description = "DynamoDB table of per-message-group state, partition key MessageGroupId (worker: --groups-table)."
  type        = string
  default     = "order-groups"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.groups_table_name))
    error_message = "groups_table_name must be 3-255 characters of letters, digits, _, - and ."
  }
}

variable "force_destroy_buckets" {
  description = "Let `terraform destroy` delete the artifacts and error-page buckets with their object versions. Set true (and apply) only for a teardown."
  type        = bool
  default     = false
}

variable "table_deletion_protection" {
  description = "Deletion protection on both tables. Turn off (and apply) before a teardown."
  type        = bool
  default     = true
}

# --- network ---------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR of the VPC created for the workers (ignored when existing_network is set)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 22
    error_message = "vpc_cidr must be an IPv4 CIDR block of /22 or larger."
  }
}

variable "az_count" {
  description = "How many availability zones get a private subnet (ignored when existing_network is set)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count must be from 2 to 6: Spot capacity needs more than one zone."
  }
}

variable "existing_network" {
  description = "Use an existing VPC instead of creating one: its id, private subnets (no route to an internet gateway) and their route tables."
  type = object({
    vpc_id          = string
    subnet_ids      = list(string)
    route_table_ids = list(string)
  })
  default = null

  validation {
    condition     = var.existing_network == null || try(length(var.existing_network.subnet_ids) >= 2 && length(var.existing_network.route_table_ids) >= 1, false)
    error_message = "existing_network needs at least two subnets (in different zones) and their route tables."
  }
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints (no NAT). S3 and DynamoDB use gateway endpoints."
  type        = list(string)
  default     = ["sqs", "autoscaling", "ssm", "ssmmessages", "ec2messages", "logs", "sts"]

  validation {
    condition     = length(setsubtract(["sqs", "autoscaling", "ssm", "logs", "sts"], var.interface_endpoints)) == 0
    error_message = "interface_endpoints must include sqs, autoscaling, ssm, logs and sts: the worker and its bootstrap use them."
  }
}

variable "interface_endpoint_az_count" {
  description = "How many zones get an interface endpoint network interface (the first N worker subnets). Null: every worker subnet (3 by default). Each endpoint costs about $0.01 an hour per zone, so the 7 default endpoints cost ~$153 a month in 3 zones, ~$102 in 2, ~$51 in 1 (terraform/README.md, \"Cost\"); the workers stay in every zone either way (Spot capacity), and reach an endpoint in another zone over the VPC (cross-zone traffic, cents at this volume). The price of fewer: with 1, an outage of that zone stops every worker's SQS, Auto Scaling and Logs calls until it is back (orders wait in the queue, the stalled alarm fails over the DNS record); with 2, one zone can fail. Still no internet path either way, unlike a NAT gateway (~$33 a month per zone plus $0.045/GB, and an egress route to the internet)."
  type        = number
  default     = null

  validation {
    condition     = var.interface_endpoint_az_count == null || try(var.interface_endpoint_az_count >= 1 && var.interface_endpoint_az_count <= 6 && floor(var.interface_endpoint_az_count) == var.interface_endpoint_az_count, false)
    error_message = "interface_endpoint_az_count must be null (every worker subnet) or a whole number from 1 to 6."
  }
}

# --- compute ---------------------------------------------------------------------------------------

variable "asg_name" {
  description = "Auto Scaling group name (worker: --asg-name, or the aws:autoscaling:groupName instance tag)."
  type        = string
  default     = "order-workers"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,200}$", var.asg_name))
    error_message = "asg_name must be 1-200 characters of letters, digits, _, - and ."
  }
}

variable "architecture" {
  description = "CPU architecture of the workers: picks the AMI, and the instance types must match it."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "ami_id" {
  description = "AMI for the workers. Null: the latest Amazon Linux 2023 for the architecture, from its public SSM parameter."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "instance_types" {
  description = "Spot instance types, most preferred first. Several families spread the Spot risk; at least three."
  type        = list(string)
  default     = ["m7i.large", "m6i.large", "m6a.large", "m5.large", "c7i.large", "c6i.large"]

  validation {
    condition     = length(var.instance_types) >= 3 && length(distinct(var.instance_types)) == length(var.instance_types)
    error_message = "instance_types needs at least three distinct types: one Spot pool is one interruption away from zero."
  }

  validation {
    condition     = alltrue([for t in var.instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "instance_types entries must look like m7i.large."
  }
}

variable "min_size" {
  description = "Minimum workers. At least 1: backlog per instance is undefined with none in service."
  type        = number
  default     = 1

  validation {
    condition     = var.min_size >= 1
    error_message = "min_size must be at least 1 (the backlog-per-instance metric divides by the instances in service)."
  }
}

variable "max_size" {
  description = "Maximum workers."
  type        = number
  default     = 10

  validation {
    condition     = var.max_size >= var.min_size && var.max_size <= 500
    error_message = "max_size must be at least min_size and at most 500."
  }
}

variable "desired_capacity" {
  description = "Workers at creation. Afterwards the scaling policy owns it (ignored by Terraform)."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_capacity >= var.min_size && var.desired_capacity <= var.max_size
    error_message = "desired_capacity must be between min_size and max_size."
  }
}

variable "backlog_per_instance_target" {
  description = "Target of the scaling policy: visible messages in the queue per worker in service."
  type        = number
  default     = 100

  validation {
    condition     = var.backlog_per_instance_target >= 1
    error_message = "backlog_per_instance_target must be at least 1."
  }
}

variable "root_volume_size_gib" {
  description = "Size of the encrypted gp3 root volume."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size_gib >= 8 && var.root_volume_size_gib <= 200
    error_message = "root_volume_size_gib must be from 8 to 200."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  description = "Rolling instance refresh keeps at least this share of the group in service."
  type        = number
  default     = 66

  validation {
    condition     = var.instance_refresh_min_healthy_percentage >= 0 && var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_min_healthy_percentage must be from 0 to 100."
  }
}

# --- drain and lifecycle hook ---------------------------------------------------------------------

variable "lifecycle_hook_name" {
  description = "Termination lifecycle hook that the worker completes after draining (worker: --lifecycle-hook)."
  type        = string
  default     = "order-worker-drain"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,255}$", var.lifecycle_hook_name))
    error_message = "lifecycle_hook_name must be 1-255 characters of letters, digits, _, - and ."
  }
}

variable "lifecycle_hook_timeout_seconds" {
  description = "Heartbeat timeout of the termination hook. A Spot instance gets two minutes, so at most 120."
  type        = number
  default     = 120

  validation {
    condition     = var.lifecycle_hook_timeout_seconds >= 30 && var.lifecycle_hook_timeout_seconds <= 120
    error_message = "lifecycle_hook_timeout_seconds must be 30-120: the hook API minimum, and the two-minute Spot notice."
  }
}

variable "drain_timeout_seconds" {
  description = "How long the worker drains before it gives up on in-flight orders (worker: --drain-timeout)."
  type        = number
  default     = 90

  validation {
    condition     = var.drain_timeout_seconds >= 1 && var.drain_timeout_seconds <= 110
    error_message = "drain_timeout_seconds must be 1-110: it has to finish inside the two-minute Spot notice."
  }
}

variable "drain_margin_seconds" {
  description = "Time the worker keeps after the drain to release messages and complete the hook (worker: --drain-margin)."
  type        = number
  default     = 10

  validation {
    condition     = var.drain_margin_seconds >= 0 && var.drain_margin_seconds <= 60
    error_message = "drain_margin_seconds must be 0-60."
  }
}

# --- deployment artifacts -------------------------------------------------------------------------

variable "artifacts_bucket_name" {
  description = "S3 bucket holding the worker binary and the Ansible bundle. Null: <account>-order-worker-artifacts-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.artifacts_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.artifacts_bucket_name))
    error_message = "artifacts_bucket_name must be a valid S3 bucket name."
  }
}

variable "worker_binary_key" {
  description = "Object key of the worker binary in the artifacts bucket (a release: upload it, then set worker_binary_sha256)."
  type        = string
  default     = "releases/order-worker"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*()/-]+$", var.worker_binary_key)) && !startswith(var.worker_binary_key, "/")
    error_message = "worker_binary_key must be a relative S3 key of letters, digits and !_.*()/- (it is pasted into the boot script)."
  }
}

variable "worker_binary_sha256" {
  description = "SHA-256 of the worker binary; the Ansible role refuses a binary that does not match."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.worker_binary_sha256))
    error_message = "worker_binary_sha256 must be 64 lowercase hex digits (sha256sum of the binary)."
  }
}

variable "ansible_bundle_key" {
  description = "Object key of the Ansible bundle (tar.gz of the repository's ansible/ folder) in the artifacts bucket. Null: a baked AMI that carries it at /opt/order-worker/ansible."
  type        = string
  default     = "releases/ansible.tar.gz"

  validation {
    condition     = var.ansible_bundle_key == null || can(regex("^[A-Za-z0-9!_.*()/-]+\\.tar\\.gz$", var.ansible_bundle_key))
    error_message = "ansible_bundle_key must be a relative S3 key ending in .tar.gz, of letters, digits and !_.*()/- (it is pasted into the boot script)."
  }
}

variable "ansible_bundle_sha256" {
  description = "SHA-256 of the Ansible bundle; the boot script refuses a bundle that does not match. Required with ansible_bundle_key."
  type        = string
  default     = null

  validation {
    condition     = var.ansible_bundle_sha256 == null || can(regex("^[0-9a-f]{64}$", var.ansible_bundle_sha256))
    error_message = "ansible_bundle_sha256 must be 64 lowercase hex digits (sha256sum of the bundle)."
  }

  validation {
    condition     = var.ansible_bundle_key == null || var.ansible_bundle_sha256 != null
    error_message = "ansible_bundle_sha256 is required when ansible_bundle_key is set."
  }
}

# --- DNS failover ---------------------------------------------------------------------------------

variable "hosted_zone_name" {
  description = "Route 53 public hosted zone, e.g. example.com. Created unless hosted_zone_id is given."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.hosted_zone_name))
    error_message = "hosted_zone_name must be a lowercase domain name without a trailing dot, such as example.com."
  }
}

variable "hosted_zone_id" {
  description = "Id of an existing public hosted zone for hosted_zone_name. Null: Terraform creates the zone."
  type        = string
  default     = null

  validation {
    condition     = var.hosted_zone_id == null || can(regex("^Z[A-Z0-9]{4,32}$", var.hosted_zone_id))
    error_message = "hosted_zone_id must look like Z0123456789ABCDEFGHIJ."
  }
}

variable "record_name" {
  description = "The failover record, e.g. orders.example.com. The error-page bucket gets exactly this name."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.record_name)) && length(var.record_name) <= 63
    error_message = "record_name must be a lowercase domain name of at most 63 characters (it is also an S3 bucket name)."
  }

  validation {
    condition     = endswith(var.record_name, ".${var.hosted_zone_name}")
    error_message = "record_name must be inside hosted_zone_name."
  }
}

variable "primary_endpoint" {
  description = "The primary region's public endpoint that the failover record points to while healthy (an alias target: a regional API, load balancer or CloudFront)."
  type = object({
    dns_name = string
    zone_id  = string
  })

  validation {
    condition     = can(regex("^Z[A-Z0-9]{4,32}$", var.primary_endpoint.zone_id)) && length(var.primary_endpoint.dns_name) > 3
    error_message = "primary_endpoint needs dns_name and the alias hosted zone_id of that endpoint."
  }
}

variable "primary_unhealthy_after_seconds" {
  description = "Route 53 fails over when the oldest order has waited this long: the primary region is not processing."
  type        = number
  default     = 900

  validation {
    condition     = var.primary_unhealthy_after_seconds >= 120
    error_message = "primary_unhealthy_after_seconds must be at least 120."
  }
}

# --- chaos (FIS) ----------------------------------------------------------------------------------

variable "fis_selection_mode" {
  description = "Which of the group's running Spot instances the FIS experiment interrupts: ALL, COUNT(n) or PERCENT(n)."
  type        = string
  default     = "COUNT(1)"

  validation {
    condition     = can(regex("^(ALL|COUNT\\([1-5]\\)|PERCENT\\(([1-9][0-9]?|100)\\))$", var.fis_selection_mode))
    error_message = "fis_selection_mode must be ALL, COUNT(n) with n from 1 to 5 (FIS interrupts at most 5 instances per target), or PERCENT(n) with n from 1 to 100."
  }
}

variable "fis_duration_before_interruption" {
  description = "FIS durationBeforeInterruption (ISO-8601): the interruption comes this long after the rebalance recommendation."
  type        = string
  default     = "PT2M"

  validation {
    condition     = can(regex("^PT([2-9]|1[0-5])M$", var.fis_duration_before_interruption))
    error_message = "fis_duration_before_interruption must be PT2M to PT15M."
  }
}

# --- observability --------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (VPC flow logs, FIS experiment logs)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 365, ... 3653)."
  }
}

variable "alarm_actions" {
  description = "ARNs (SNS topics) notified when an alarm fires: the stalled queue, an order near expiry, the dead-letter queue (when there is one), the worker's EMF alarms."
  type        = list(string)
  default     = []
}

variable "worker_log_retention_days" {
  description = "Retention of the workers' log group (their JSON log with the EMF records). Metrics extracted from it stay in CloudWatch for 15 months whatever this is."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.worker_log_retention_days)
    error_message = "worker_log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 365, ... 3653)."
  }
}

variable "emf_namespace" {
  description = "CloudWatch namespace of the metrics the workers write as EMF records in their log (ORDER_WORKER_EMF_NAMESPACE)."
  type        = string
  default     = "OrderWorker"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/#:-]{1,255}$", var.emf_namespace)) && !startswith(var.emf_namespace, "AWS/")
    error_message = "emf_namespace must be 1-255 of A-Za-z0-9._-/#: and must not start with AWS/."
  }
}

variable "emf_interval_seconds" {
  description = "How often each worker writes an EMF record (ORDER_WORKER_EMF_INTERVAL). 60 matches the alarms' one-minute periods."
  type        = number
  default     = 60

  validation {
    condition     = var.emf_interval_seconds >= 10 && var.emf_interval_seconds <= 60 && floor(var.emf_interval_seconds) == var.emf_interval_seconds
    error_message = "emf_interval_seconds must be whole seconds, 10-60 (the fleet-ready alarm evaluates one-minute periods)."
  }
}

variable "rejected_rate_alarm_percent" {
  description = "Alarm when more than this percentage of the orders applied in 5 minutes were REJECTED (malformed or invalid bodies: a producer is broken)."
  type        = number
  default     = 5

  validation {
    condition     = var.rejected_rate_alarm_percent > 0 && var.rejected_rate_alarm_percent <= 100
    error_message = "rejected_rate_alarm_percent must be more than 0 and at most 100."
  }
}

variable "fleet_not_ready_minutes" {
  description = "Alarm when no worker has reported itself ready (taking new work) for this many consecutive minutes."
  type        = number
  default     = 5

  validation {
    condition     = var.fleet_not_ready_minutes >= 2 && var.fleet_not_ready_minutes <= 60 && floor(var.fleet_not_ready_minutes) == var.fleet_not_ready_minutes
    error_message = "fleet_not_ready_minutes must be whole minutes, 2-60 (one minute would page on every rolling refresh)."
  }
}
