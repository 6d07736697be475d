# Backup bucket for flowbackup on Google Cloud Storage: versioned, encrypted
# at rest (Google-managed keys, or CMEK), public access prevented, uniform
# bucket-level access, non-current versions deleted after
# var.noncurrent_version_days.

resource "google_storage_bucket" "backups" {
  name                        = var.bucket_name
  project                     = var.project
  location                    = var.location
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
}
