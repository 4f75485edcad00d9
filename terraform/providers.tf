locals {
  tags = merge(
    {
      Project     = "order-worker"
      Environment = var.environment
      ManagedBy   = "terraform"
    },
    var.tags,
  )
}

# The primary region: queue, tables, network, worker fleet, FIS.
provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# The standby region: the S3 website that serves the error page while the primary region is down.
# It must not be the primary region, or the failover goes down with what it covers for.
provider "aws" {
  alias  = "standby"
  region = var.standby_region

  default_tags {
    tags = local.tags
  }
}
