# Backup bucket for flowbackup on Google Cloud Storage: versioned, encrypted
# at rest (Google-managed keys, or CMEK), public access prevented, uniform
# bucket-level access, non-current versions deleted after
# var.noncurrent_version_days. With var.object_retention the bucket is
# created with object retention enabled (only a bucket's creation can turn
# it on), for flowbackup --object-lock: each backup object then carries its
# own retention. A bucket retention policy is not used: it would keep the
# lock objects, latest pointers and heartbeats flowkeep rewrites and
# deletes in normal work from being rewritten or deleted.

resource "google_storage_bucket" "backups" {
  name                        = var.bucket_name
  project                     = var.project
  location                    = var.location
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  enable_object_retention     = var.object_retention
  labels                      = var.labels

  versioning {
    enabled = true
  }

  # With CMEK, Cloud Storage must be allowed to use the key first.
  depends_on = [google_kms_crypto_key_iam_member.storage]

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

# CMEK: Cloud Storage's own service agent encrypts and decrypts with the key
# (the backup agent's identity needs no key permission of its own).
data "google_storage_project_service_account" "storage" {
  count   = var.kms_key_name == null ? 0 : 1
  project = var.project
}

resource "google_kms_crypto_key_iam_member" "storage" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.storage[0].email_address}"
}
