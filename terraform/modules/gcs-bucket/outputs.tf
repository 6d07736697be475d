output "bucket_name" {
  description = "The bucket's name; flowbackup URLs are gs://<bucket_name>/<prefix>."
  value       = google_storage_bucket.backups.name
}
