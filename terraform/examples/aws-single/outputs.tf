output "backup_url" {
  description = "Where the agent backs up: give it to flowbackup list/verify/restore."
  value       = "s3://${module.bucket.bucket_name}/${local.prefix}"
}

output "instance_id" {
  description = "The machine."
  value       = module.node.instance_id
}
