# A machine that runs flowrun and flowbackup agent as systemd services
# (cloud-init), with the recovery directory on its own persistent disk and
# the agent identity's service account.

locals {
  flowrun_args = join(" ", compact([
    var.flow, var.flow_args,
    "-w ${var.workers}", "-s ${var.snapshot_interval}", "-b ${var.backup_interval}",
    var.addresses == "" ? "" : "--process-id ${var.process_id} --addresses ${var.addresses}",
  ]))
  # A replaced machine of a cluster restores only its share of the partitions.
  restore_args = var.addresses == "" ? "" : "--process-id ${var.process_id} --processes ${length(split(",", var.addresses))}"
}

resource "google_compute_disk" "recovery" {
  project = var.project
  zone    = var.zone
  name    = "${var.name}-recovery"
  type    = "pd-ssd"
  size    = var.data_disk_gb
  labels  = var.labels
}

resource "google_compute_instance" "node" {
  project      = var.project
  zone         = var.zone
  name         = var.name
  machine_type = var.machine_type
  labels       = var.labels
  tags         = ["flowkeep"]

  boot_disk {
    initialize_params {
      image = var.image
    }
  }

  attached_disk {
    source      = google_compute_disk.recovery.id
    device_name = "flowkeep-data"
  }

  network_interface {
    subnetwork = var.subnetwork
  }

  shielded_instance_config {
    enable_secure_boot = true
  }

  service_account {
    email  = var.service_account_email
    scopes = ["cloud-platform"]
  }

  metadata = {
    block-project-ssh-keys = "true"
    user-data = templatefile("${path.module}/../cloud-init/flowkeep.yaml.tftpl", {
      data_device       = "/dev/disk/by-id/google-flowkeep-data"
      flowrun_args      = local.flowrun_args
      backup_url        = var.backup_url
      backup_schedule   = var.backup_schedule
      release_url       = var.release_url
      flowrun_sha256    = var.flowrun_sha256
      flowbackup_sha256 = var.flowbackup_sha256
      restore_args      = local.restore_args
      age_recipients    = join("\n      ", var.age_recipients)
      age_identity_file = var.age_identity_file
      init_partitions   = var.init_partitions
      run_on_calendar   = var.run_on_calendar
    })
  }
}
