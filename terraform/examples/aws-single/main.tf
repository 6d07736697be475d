# One machine: wordcount with 4 partitions, backed up every 5 minutes to a
# versioned, KMS-encrypted bucket, with an agent identity scoped to its prefix.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

locals {
  prefix = "flows/${var.flow}"
}

module "bucket" {
  source      = "../../modules/aws-bucket"
  bucket_name = var.bucket_name
  kms_key_arn = var.kms_key_arn
}

module "agent" {
  source      = "../../modules/aws-agent-identity"
  name        = "flowkeep-${var.flow}"
  bucket_arn  = module.bucket.bucket_arn
  prefix      = local.prefix
  kms_key_arn = var.kms_key_arn
}

module "node" {
  source                = "../../modules/aws-node"
  name                  = "flowkeep-${var.flow}"
  ami_id                = var.ami_id
  vpc_id                = var.vpc_id
  subnet_id             = var.subnet_id
  instance_profile_name = module.agent.instance_profile_name
  flow                  = var.flow
  flow_args             = var.flow_args
  backup_url            = "s3://${module.bucket.bucket_name}/${local.prefix}"
  backup_schedule       = "*/5 * * * *"
  backup_interval       = "10m"
  release_url           = var.release_url
  flowrun_sha256        = var.flowrun_sha256
  flowbackup_sha256     = var.flowbackup_sha256
  init_partitions       = var.init_partitions
  run_on_calendar       = "*:0/5"
}
