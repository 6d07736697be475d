variable "bucket_name" {
  description = "Name of the S3 bucket that holds flowkeep backups."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days after which non-current object versions (overwritten or deleted backups) expire."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "kms_key_arn" {
  description = "ARN of a customer-managed KMS key for SSE-KMS; null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete a bucket that still holds backups."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for the bucket."
  type        = map(string)
  default     = {}
}

variable "object_lock" {
  description = "Create the bucket with S3 Object Lock enabled, for flowbackup --object-lock (only a new bucket can have it; it keeps versioning on for good)."
  type        = bool
  default     = false
}

variable "object_lock_default_retention" {
  description = "With object_lock: a default retention ({mode = \"GOVERNANCE\" or \"COMPLIANCE\", days = N}) for every object version written without a lock of its own; null (default) leaves locking to flowbackup --object-lock."
  type = object({
    mode = string
    days = number
  })
  default = null
  validation {
    condition     = var.object_lock_default_retention == null ? true : contains(["GOVERNANCE", "COMPLIANCE"], var.object_lock_default_retention.mode) && var.object_lock_default_retention.days >= 1
    error_message = "object_lock_default_retention: mode is GOVERNANCE or COMPLIANCE, days at least 1."
  }
}
