# Route 53 failover: the record points at the primary region's endpoint while its health check
# passes, and at a static error page served from S3 in the standby region when it does not.

resource "aws_route53_zone" "this" {
  #checkov:skip=CKV2_AWS_38:DNSSEC needs an asymmetric KMS key in us-east-1 and a DS record at the registrar: a delegation step outside this stack (README).
  #checkov:skip=CKV2_AWS_39:Query logging needs a us-east-1 log group with a Route 53 resource policy; left to the account-wide logging setup (README).
  count   = var.hosted_zone_id == null ? 1 : 0
  name    = var.hosted_zone_name
  comment = "order-worker ${var.environment}"
}

locals {
  zone_id = var.hosted_zone_id != null ? var.hosted_zone_id : aws_route53_zone.this[0].zone_id
}

# Route 53 health checkers come from the internet and the worker fleet is private, so the check
# follows a CloudWatch alarm instead: the primary is unhealthy while its orders are not being
# processed (the oldest order is older than primary_unhealthy_after_seconds). It never checks the
# failover record's own name, which would flap between the two targets.
resource "aws_route53_health_check" "primary" {
  type                            = "CLOUDWATCH_METRIC"
  cloudwatch_alarm_name           = aws_cloudwatch_metric_alarm.queue_stalled.alarm_name
  cloudwatch_alarm_region         = var.region
  insufficient_data_health_status = "LastKnownStatus"

  tags = { Name = "${var.record_name}-primary-${var.region}" }
}

resource "aws_route53_record" "primary" {
  zone_id         = local.zone_id
  name            = var.record_name
  type            = "A"
  set_identifier  = "primary-${var.region}"
  health_check_id = aws_route53_health_check.primary.id

  failover_routing_policy {
    type = "PRIMARY"
  }

  alias {
    name                   = var.primary_endpoint.dns_name
    zone_id                = var.primary_endpoint.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "secondary" {
  zone_id        = local.zone_id
  name           = var.record_name
  type           = "A"
  set_identifier = "secondary-${var.standby_region}"

  failover_routing_policy {
    type = "SECONDARY"
  }

  # The S3 website endpoint's domain and the bucket's hosted zone (not bucket_domain_name, not the
  # website endpoint): that is what an alias to an S3 website needs.
  alias {
    name                   = aws_s3_bucket_website_configuration.error_page.website_domain
    zone_id                = aws_s3_bucket.error_page.hosted_zone_id
    evaluate_target_health = false
  }

  lifecycle {
    precondition {
      condition     = aws_s3_bucket.error_page.bucket == var.record_name
      error_message = "An S3 website alias only works when the bucket is named exactly like the record."
    }
  }
}

# --- the error page, in the standby region --------------------------------------------------------

resource "aws_s3_bucket" "error_page" {
  #checkov:skip=CKV2_AWS_6:It has a public access block (aws_s3_bucket_public_access_block.error_page), relaxed for the bucket policy on purpose.
  #checkov:skip=CKV_AWS_145:Anonymous website reads cannot decrypt SSE-KMS objects; SSE-S3 (AES256) is set instead.
  #checkov:skip=CKV_AWS_144:This bucket is itself the cross-region copy (standby region); its two pages are in the repo and re-uploaded by apply.
  #checkov:skip=CKV_AWS_18:Public static page with no data; server access logs would need a log bucket in the standby region for no audit value.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events from a static error page; the objects change only through Terraform.
  provider = aws.standby

  # Must equal the record name: S3 finds the website by the Host header.
  bucket = var.record_name

  # Off except for a teardown (README): versioned buckets are not emptied by accident.
  force_destroy = var.force_destroy_buckets
}

resource "aws_s3_bucket_ownership_controls" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Public read through a bucket policy, for this bucket alone: ACLs stay blocked.
resource "aws_s3_bucket_public_access_block" "error_page" {
  #checkov:skip=CKV_AWS_54:The error page is a public website; its bucket policy grants s3:GetObject to everyone by design. ACLs stay blocked.
  #checkov:skip=CKV_AWS_56:Same bucket: a public website cannot restrict public buckets. Only index.html and error.html live there.
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = false
  restrict_public_buckets = false
}

resource "aws_s3_bucket_server_side_encryption_configuration" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256" # anonymous website reads cannot use a KMS key
    }
  }
}

resource "aws_s3_bucket_versioning" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_website_configuration" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id

  index_document {
    suffix = "index.html"
  }

  error_document {
    key = "error.html"
  }
}

data "aws_iam_policy_document" "error_page_public_read" {
  statement {
    sid       = "PublicReadOfTheErrorPage"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.error_page.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }
}

resource "aws_s3_bucket_policy" "error_page" {
  provider = aws.standby
  bucket   = aws_s3_bucket.error_page.id
  policy   = data.aws_iam_policy_document.error_page_public_read.json

  depends_on = [aws_s3_bucket_public_access_block.error_page]
}

resource "aws_s3_object" "error_page" {
  provider = aws.standby
  for_each = toset(["index.html", "error.html"])

  bucket        = aws_s3_bucket.error_page.id
  key           = each.key
  source        = "${path.module}/site/${each.key}"
  etag          = filemd5("${path.module}/site/${each.key}")
  content_type  = "text/html; charset=utf-8"
  cache_control = "max-age=60"
}
