output "bucket_name" {
  description = "The bucket's name; flowbackup URLs are gs://<bucket_name>/<prefix>."
  value       = google_storage_bucket.backups.name
}

output "object_retention" {
  description = "Whether objects in the bucket can carry a retention (flowbackup --object-lock needs it)."
  value       = google_storage_bucket.backups.enable_object_retention
}
