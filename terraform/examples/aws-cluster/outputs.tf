output "backup_url" {
  description = "Where the agents back up."
  value       = "s3://${module.bucket.bucket_name}/${local.prefix}"
}

output "addresses" {
  description = "The cluster's addresses, in process order."
  value       = local.addresses
}
