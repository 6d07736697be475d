variable "name" {
  description = "Name of the IAM role and instance profile."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of the backup bucket (aws-bucket's bucket_arn)."
  type        = string
}

variable "prefix" {
  description = "Key prefix the agent may use, e.g. flows/wordcount (the path of s3://bucket/<prefix>)."
  type        = string
  validation {
    condition     = length(trim(var.prefix, "/")) > 0
    error_message = "Give the agent a prefix: it must not have the whole bucket."
  }
}

variable "read_only" {
  description = "Grant only what verify, list and restore need."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "The bucket's KMS key, if it uses SSE-KMS."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for the role."
  type        = map(string)
  default     = {}
}

variable "object_lock" {
  description = "The bucket has S3 Object Lock and the agent runs with --object-lock: deny the agent deleting or unlocking backups, and create a separate prune identity (prune_role_name)."
  type        = bool
  default     = false
}
