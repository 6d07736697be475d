variable "project" {
  description = "Google Cloud project."
  type        = string
}

variable "location" {
  description = "Bucket location."
  type        = string
  default     = "EU"
}

variable "zone" {
  description = "Zone of the machine."
  type        = string
}

variable "bucket_name" {
  description = "Name of the backup bucket to create."
  type        = string
}

variable "image" {
  description = "Boot image with cloud-init."
  type        = string
  default     = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
}

variable "subnetwork" {
  description = "Subnetwork of the machine."
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
