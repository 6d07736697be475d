output "email" {
  description = "The service account the machines run as (gcp-node's service_account_email)."
  value       = google_service_account.agent.email
}

output "permissions" {
  description = "The permissions granted."
  value       = local.permissions
}
