variable "project" {
  description = "Google Cloud project of the service account and custom role."
  type        = string
}

variable "account_id" {
  description = "Service account id (6-30 characters), e.g. flowkeep-agent."
  type        = string
}

variable "bucket_name" {
  description = "The backup bucket (gcs-bucket's bucket_name)."
  type        = string
}

variable "prefix" {
  description = "Object prefix the agent may use, e.g. flows/wordcount (the path of gs://bucket/<prefix>)."
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

variable "object_lock" {
  description = "The bucket has object retention and the agent runs with --object-lock: the agent may delete only what it rewrites, and a separate prune service account (prune_email) is created."
  type        = bool
  default     = false
}
