# Least-privilege identity for flowbackup on Google Cloud: a service account
# with a custom role holding exactly the permissions the backup code uses,
# bound on the bucket with a condition limiting objects to var.prefix.
# read_only = true gives what verify, list and restore need. The permission
# lists must equal backup/gcs.RequiredPermissions, ReadOnlyPermissions and
# ObjectLockPermissions (a Go test checks it).
#
# object_lock = true (a bucket with object retention, flowbackup
# --object-lock): the agent may set and lengthen retentions, and may
# delete (or overwrite: on GCS an overwrite needs storage.objects.delete)
# only what it rewrites in normal work: lock objects, latest pointers,
# heartbeats, quarantine markers and the location's config. Retained
# objects cannot be deleted by anyone before their retention ends; nobody
# here is given storage.objects.overrideUnlockedRetention. Prune runs as a
# second service account, prune_email, allowed to delete.

locals {
  agent_permissions       = ["storage.buckets.get", "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list"]
  readonly_permissions    = ["storage.buckets.get", "storage.objects.get", "storage.objects.list"]
  object_lock_permissions = ["storage.objects.setRetention"]

  permissions = var.read_only ? local.readonly_permissions : (
    var.object_lock ? concat([for p in local.agent_permissions : p if p != "storage.objects.delete"], local.object_lock_permissions) : local.agent_permissions
  )
  prefix  = trim(var.prefix, "/")
  objects = "projects/_/buckets/${var.bucket_name}/objects/${local.prefix}"
  prune   = var.object_lock && !var.read_only
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

# With object lock: deleting (and so overwriting) only the objects the
# agent rewrites in normal work.
resource "google_project_iam_custom_role" "agent_rewrite" {
  count       = local.prune ? 1 : 0
  project     = var.project
  role_id     = replace("${var.account_id}_rewrite", "-", "_")
  title       = "flowkeep backup agent: rewrite"
  description = "Delete and overwrite the objects flowbackup rewrites (locks, latest pointers, heartbeats, quarantine markers, config)."
  permissions = ["storage.objects.delete"]
}

resource "google_storage_bucket_iam_member" "agent_rewrite" {
  count  = local.prune ? 1 : 0
  bucket = var.bucket_name
  role   = google_project_iam_custom_role.agent_rewrite[0].id
  member = "serviceAccount:${google_service_account.agent.email}"
  condition {
    title       = "flowkeep-rewritten"
    description = "Only what flowbackup rewrites under ${local.prefix}/; never chunks, manifests or lineage events."
    expression  = join(" || ", concat([for p in ["locks", "latest", "heartbeats", "quarantine"] : "resource.name.startsWith('${local.objects}/${p}/')"], ["resource.name == '${local.objects}/config.json'"]))
  }
}

# The prune identity (object_lock): flowbackup prune, on its own schedule.
resource "google_service_account" "prune" {
  count        = local.prune ? 1 : 0
  project      = var.project
  account_id   = "${substr(var.account_id, 0, 24)}-prune"
  display_name = "flowkeep prune (${local.prefix})"
}

resource "google_project_iam_custom_role" "prune" {
  count       = local.prune ? 1 : 0
  project     = var.project
  role_id     = replace("${var.account_id}_prune", "-", "_")
  title       = "flowkeep prune"
  description = "What flowbackup prune calls on its bucket: no retention override."
  permissions = local.agent_permissions
}

resource "google_storage_bucket_iam_member" "prune" {
  count  = local.prune ? 1 : 0
  bucket = var.bucket_name
  role   = google_project_iam_custom_role.prune[0].id
  member = "serviceAccount:${google_service_account.prune[0].email}"
  condition {
    title       = "flowkeep-prefix"
    description = "Objects under ${local.prefix}/ only (listing and the bucket itself are not object-scoped)."
    expression  = "resource.type != 'storage.googleapis.com/Object' || resource.name.startsWith('${local.objects}/')"
  }
}
