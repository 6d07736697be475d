variable "project" {
  description = "Google Cloud project."
  type        = string
}

variable "zone" {
  description = "Zone of the machine and its disk."
  type        = string
}

variable "name" {
  description = "Machine name."
  type        = string
}

variable "machine_type" {
  description = "Compute Engine machine type."
  type        = string
  default     = "c3-standard-4"
}

variable "image" {
  description = "Boot image with cloud-init (e.g. ubuntu-os-cloud/ubuntu-2404-lts-amd64)."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork of the machine."
  type        = string
}

variable "service_account_email" {
  description = "Service account from gcs-agent-identity (the agent's only credentials)."
  type        = string
}

variable "data_disk_gb" {
  description = "Size of the persistent disk holding the recovery directory."
  type        = number
  default     = 50
}

variable "flow" {
  description = "Flow flowrun runs."
  type        = string
}

variable "flow_args" {
  description = "The flow's own flags, e.g. \"-i /data/in -o /data/out.csv\"."
  type        = string
  default     = ""
}

variable "workers" {
  description = "flowrun -w: workers on this machine."
  type        = number
  default     = 2
}

variable "snapshot_interval" {
  description = "flowrun -s."
  type        = string
  default     = "10s"
}

variable "backup_interval" {
  description = "flowrun -b; keep it at least the backup schedule's period."
  type        = string
  default     = "10m"
}

variable "backup_url" {
  description = "flowbackup destination, e.g. gs://bucket/flows/wordcount."
  type        = string
}

variable "backup_schedule" {
  description = "flowbackup agent schedule; its period must not exceed backup_interval."
  type        = string
  default     = "*/5 * * * *"
}

variable "release_url" {
  description = "Base URL serving the flowrun and flowbackup binaries."
  type        = string
}

variable "flowrun_sha256" {
  description = "sha256 of the flowrun binary at release_url (the machine refuses a binary that differs)."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.flowrun_sha256))
    error_message = "flowrun_sha256 must be 64 lowercase hex digits (sha256sum flowrun)."
  }
}

variable "flowbackup_sha256" {
  description = "sha256 of the flowbackup binary at release_url (the machine refuses a binary that differs)."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.flowbackup_sha256))
    error_message = "flowbackup_sha256 must be 64 lowercase hex digits (sha256sum flowbackup)."
  }
}

variable "init_partitions" {
  description = "flowrun --init-partitions: on a first start (no partitions on the disk and no backups to restore) create this many; every machine of a cluster gets the same count and creates its share. 0: never create (only restore)."
  type        = number
  default     = 0
}

variable "process_id" {
  description = "This machine's index in a cluster (flowrun --process-id)."
  type        = number
  default     = 0
}

variable "addresses" {
  description = "Cluster addresses host:port,… in process order (empty: a single machine)."
  type        = string
  default     = ""
}

variable "labels" {
  description = "Labels for every resource."
  type        = map(string)
  default     = {}
}

variable "age_recipients" {
  description = "age public keys (age1...) to encrypt backups to; empty: backups are not encrypted. A location is encrypted or not, never both."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for r in var.age_recipients : can(regex("^age1[0-9a-z]+$", r))])
    error_message = "age_recipients must be age public keys (age1...), one per element."
  }
}

variable "age_identity_file" {
  description = "Path, on the machine, of the age identity file the restore step opens encrypted backups with (provided out of band, e.g. by a secret manager; readable by the user flowkeep). Empty: none."
  type        = string
  default     = ""
}

variable "run_on_calendar" {
  description = "Empty: the flow tails its input (e.g. Kafka with tail=true) and runs as a long-running service. A systemd calendar spec (e.g. \"*:0/5\", every 5 minutes): the flow ends at the end of its input (files) and a timer runs it again on those ticks; keep their period within backup_interval."
  type        = string
  default     = ""
}
