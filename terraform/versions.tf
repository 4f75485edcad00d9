terraform {
  # 1.9 for validations that look at other variables; check blocks and mock providers need 1.5 / 1.7.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0.0, < 7.0.0"
    }
  }
}
