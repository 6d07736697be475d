output "backup_url" {
  description = "Where the agent backs up."
  value       = "gs://${module.bucket.bucket_name}/${local.prefix}"
}
