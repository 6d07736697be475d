variable "region" {
  description = "AWS region."
  type        = string
}

variable "bucket_name" {
  description = "Name of the backup bucket to create."
  type        = string
}

variable "kms_key_arn" {
  description = "Customer KMS key for the bucket (null: SSE-S3)."
  type        = string
  default     = null
}

variable "ami_id" {
  description = "AMI with cloud-init and systemd."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the machine."
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the machine."
  type        = string
}

variable "flow" {
  description = "Flow to run."
  type        = string
  default     = "wordcount"
}

variable "flow_args" {
  description = "The flow's flags."
  type        = string
  default     = "-i /var/lib/flowkeep-input -o /var/lib/flowkeep-output/counts.csv"
}

variable "release_url" {
  description = "Base URL serving the flowrun and flowbackup binaries."
  type        = string
}

variable "flowrun_sha256" {
  description = "sha256 of the flowrun binary at release_url (sha256sum flowrun)."
  type        = string
}

variable "flowbackup_sha256" {
  description = "sha256 of the flowbackup binary at release_url (sha256sum flowbackup)."
  type        = string
}

variable "init_partitions" {
  description = "Partitions the first start creates when the disk holds none and no backups exist (a replaced machine restores instead); fixed for the life of the flow."
  type        = number
  default     = 4
}
