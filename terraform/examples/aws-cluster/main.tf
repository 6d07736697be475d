# Three machines running one flow as a cluster (flowrun --process-id /
# --addresses), each with its own recovery disk holding some of the 6
# partitions, each backing up its own partitions to the same prefix.

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
  prefix    = "flows/${var.flow}"
  machines  = 3
  ips       = [for i in range(local.machines) : cidrhost(var.subnet_cidr, 10 + i)]
  addresses = join(",", [for ip in local.ips : "${ip}:7400"])
}

module "bucket" {
  source      = "../../modules/aws-bucket"
  bucket_name = var.bucket_name
}

module "agent" {
  source     = "../../modules/aws-agent-identity"
  name       = "flowkeep-${var.flow}"
  bucket_arn = module.bucket.bucket_arn
  prefix     = local.prefix
}

module "node" {
  source                = "../../modules/aws-node"
  count                 = local.machines
  name                  = "flowkeep-${var.flow}-${count.index}"
  ami_id                = var.ami_id
  vpc_id                = var.vpc_id
  subnet_id             = var.subnet_id
  private_ip            = local.ips[count.index]
  instance_profile_name = module.agent.instance_profile_name
  flow                  = var.flow
  flow_args             = var.flow_args
  workers               = 2
  process_id            = count.index
  init_partitions       = 6
  run_on_calendar       = "*:0/5"
  addresses             = local.addresses
  cluster_cidrs         = [var.subnet_cidr]
  backup_url            = "s3://${module.bucket.bucket_name}/${local.prefix}"
  release_url           = var.release_url
  flowrun_sha256        = var.flowrun_sha256
  flowbackup_sha256     = var.flowbackup_sha256
}
