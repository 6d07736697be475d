# One machine on Google Cloud: wordcount backed up every 5 minutes to a
# versioned bucket, with a service account scoped to its prefix.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project
}

locals {
  prefix = "flows/${var.flow}"
}

module "bucket" {
  source      = "../../modules/gcs-bucket"
  project     = var.project
  bucket_name = var.bucket_name
  location    = var.location
}

module "agent" {
  source      = "../../modules/gcs-agent-identity"
  project     = var.project
  account_id  = "flowkeep-${var.flow}"
  bucket_name = module.bucket.bucket_name
  prefix      = local.prefix
}

module "node" {
  source                = "../../modules/gcp-node"
  project               = var.project
  zone                  = var.zone
  name                  = "flowkeep-${var.flow}"
  image                 = var.image
  subnetwork            = var.subnetwork
  service_account_email = module.agent.email
  flow                  = var.flow
  flow_args             = var.flow_args
  backup_url            = "gs://${module.bucket.bucket_name}/${local.prefix}"
  release_url           = var.release_url
  flowrun_sha256        = var.flowrun_sha256
  flowbackup_sha256     = var.flowbackup_sha256
  init_partitions       = 4
  run_on_calendar       = "*:0/5"
}
