output "email" {
  description = "The service account the machines run as (gcp-node's service_account_email)."
  value       = google_service_account.agent.email
}

output "permissions" {
  description = "The permissions granted."
  value       = local.permissions
}

output "prune_email" {
  description = "With object_lock: the service account flowbackup prune runs as (the agent's cannot delete backups); null otherwise."
  value       = local.prune ? google_service_account.prune[0].email : null
}
