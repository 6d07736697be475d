variable "bucket_name" {
  description = "Name of the GCS bucket that holds flowkeep backups."
  type        = string
}

variable "project" {
  description = "Google Cloud project of the bucket."
  type        = string
}

variable "location" {
  description = "Bucket location (region, dual-region or multi-region), e.g. EU."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days after which non-current object versions are deleted."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "kms_key_name" {
  description = "Cloud KMS key for CMEK (projects/…/cryptoKeys/…); null uses Google-managed keys."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete a bucket that still holds backups."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels for the bucket."
  type        = map(string)
  default     = {}
}

variable "object_retention" {
  description = "Create the bucket with object retention enabled, for flowbackup --object-lock (only a new bucket can have it)."
  type        = bool
  default     = false
}
