output "instance_id" {
  description = "The Compute Engine instance."
  value       = google_compute_instance.node.id
}

output "private_ip" {
  description = "Internal address (use it in cluster addresses)."
  value       = google_compute_instance.node.network_interface[0].network_ip
}

output "recovery_disk_id" {
  description = "The persistent disk holding the recovery directory."
  value       = google_compute_disk.recovery.id
}
