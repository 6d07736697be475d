variable "name" {
  description = "Machine name."
  type        = string
}

variable "ami_id" {
  description = "AMI with cloud-init and systemd (e.g. a current Debian or Ubuntu image)."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "c7i.large"
}

variable "vpc_id" {
  description = "VPC of the machine."
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the machine."
  type        = string
}

variable "private_ip" {
  description = "Fixed private address (clusters need them known in advance); null lets AWS choose."
  type        = string
  default     = null
}

variable "instance_profile_name" {
  description = "Instance profile from aws-agent-identity (the agent's only credentials)."
  type        = string
}

variable "data_disk_gb" {
  description = "Size of the EBS volume holding the recovery directory."
  type        = number
  default     = 50
}

variable "data_device" {
  description = "Device name the recovery volume shows up as inside the machine (Nitro instances: /dev/nvme1n1)."
  type        = string
  default     = "/dev/nvme1n1"
}

variable "flow" {
  description = "Flow flowrun runs (wordcount, logstats, or your binary's flow)."
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
  description = "flowbackup destination, e.g. s3://bucket/flows/wordcount."
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

variable "cluster_port" {
  description = "Port flowrun listens on for its peers."
  type        = number
  default     = 7400
}

variable "cluster_cidrs" {
  description = "CIDRs of the other cluster machines and of Prometheus."
  type        = list(string)
  default     = []
}

variable "admin_cidrs" {
  description = "CIDRs allowed to SSH in (empty: none)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
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
