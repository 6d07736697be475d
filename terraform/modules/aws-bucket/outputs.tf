output "bucket_name" {
  description = "The bucket's name; flowbackup URLs are s3://<bucket_name>/<prefix>."
  value       = aws_s3_bucket.backups.id
}

output "bucket_arn" {
  description = "The bucket's ARN, for the agent identity module."
  value       = aws_s3_bucket.backups.arn
}

output "object_lock_enabled" {
  description = "Whether the bucket has S3 Object Lock (flowbackup --object-lock needs it)."
  value       = aws_s3_bucket.backups.object_lock_enabled
}
