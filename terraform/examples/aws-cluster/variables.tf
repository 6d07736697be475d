variable "region" {
  description = "AWS region."
  type        = string
}

variable "bucket_name" {
  description = "Name of the backup bucket to create."
  type        = string
}

variable "ami_id" {
  description = "AMI with cloud-init and systemd."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the machines."
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the machines."
  type        = string
}

variable "subnet_cidr" {
  description = "CIDR of that subnet: the machines get fixed addresses .10, .11, .12 in it."
  type        = string
}

variable "flow" {
  description = "Flow to run."
  type        = string
  default     = "wordcount"
}

variable "flow_args" {
  description = "The flow's flags (every machine reads the same input list)."
  type        = string
  default     = "-i /mnt/shared/input -o /mnt/shared/counts.csv"
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
