# Least-privilege identity for flowbackup on Google Cloud: a service account
# with a custom role holding exactly the permissions the backup code uses,
# bound on the bucket with a condition limiting objects to var.prefix.
# read_only = true gives what verify, list and restore need. The permission
# lists must equal backup/gcs.RequiredPermissions and ReadOnlyPermissions
# (a Go test checks it).

locals {
  agent_permissions    = ["storage.buckets.get", "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list"]
  readonly_permissions = ["storage.buckets.get", "storage.objects.get", "storage.objects.list"]

  permissions = var.read_only ? local.readonly_permissions : local.agent_permissions
  prefix      = trim(var.prefix, "/")
}

resource "google_service_account" "agent" {
  project      = var.project
  account_id   = var.account_id
  display_name = "flowkeep backup agent (${local.prefix})"
}

resource "google_project_iam_custom_role" "agent" {
  project     = var.project
  role_id     = replace("${var.account_id}_backups", "-", "_")
  title       = "flowkeep backup agent"
  description = "Exactly what flowbackup calls on its bucket."
  permissions = local.permissions
}

resource "google_storage_bucket_iam_member" "agent" {
  bucket = var.bucket_name
  role   = google_project_iam_custom_role.agent.id
  member = "serviceAccount:${google_service_account.agent.email}"
  condition {
    title       = "flowkeep-prefix"
    description = "Objects under ${local.prefix}/ only (listing and the bucket itself are not object-scoped)."
    expression  = "resource.type != 'storage.googleapis.com/Object' || resource.name.startsWith('projects/_/buckets/${var.bucket_name}/objects/${local.prefix}/')"
  }
}
