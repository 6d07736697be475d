# Least-privilege identity for flowbackup on AWS: an IAM role (with an
# instance profile) allowed exactly the S3 actions the backup code calls,
# on the bucket and only under var.prefix. read_only = true gives what
# verify, list and restore need. The action lists must equal
# backup/s3.RequiredActions, ReadOnlyActions, ObjectLockActions and
# UndeleteActions (a Go test checks it).
#
# object_lock = true (a bucket with S3 Object Lock, flowbackup
# --object-lock): the agent may write locked objects and lengthen locks,
# but delete only its lock objects and quarantine markers; deleting or
# unlocking backups (chunks, manifests, lineage events) is denied to it
# outright. Prune (and undelete) run under a second role, prune_role_name,
# which may delete (never a locked version: Object Lock refuses that to
# everyone) but is given no bypass of governance retention.

locals {
  agent_actions       = ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
  readonly_actions    = ["s3:GetObject", "s3:ListBucket"]
  object_lock_actions = ["s3:GetObjectRetention", "s3:PutObjectRetention"]
  prune_actions       = ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectVersion", "s3:GetObjectVersionRetention", "s3:ListBucket", "s3:ListBucketVersions", "s3:PutObject", "s3:PutObjectRetention"]

  actions = var.read_only ? local.readonly_actions : (
    var.object_lock ? concat([for a in local.agent_actions : a if a != "s3:DeleteObject"], local.object_lock_actions) : local.agent_actions
  )
  object_actions = [for a in local.actions : a if a != "s3:ListBucket"]
  prefix         = trim(var.prefix, "/")
  # What backups lock, and what only prune may delete.
  locked_objects = [for p in ["chunks", "manifests", "lineages"] : "${var.bucket_arn}/${local.prefix}/${p}/*"]
  prune          = var.object_lock && !var.read_only
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "agent" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "agent" {
  statement {
    sid       = "ListUnderPrefix"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefix}/*"]
    }
  }
  statement {
    sid       = "ObjectsUnderPrefix"
    actions   = local.object_actions
    resources = ["${var.bucket_arn}/${local.prefix}/*"]
  }
  # With object lock: the agent deletes only what it rewrites in normal
  # work (a lock it cannot read, a healed chunk's quarantine marker).
  dynamic "statement" {
    for_each = local.prune ? [1] : []
    content {
      sid       = "DeleteOwnLocksAndMarkers"
      actions   = ["s3:DeleteObject"]
      resources = ["${var.bucket_arn}/${local.prefix}/locks/*", "${var.bucket_arn}/${local.prefix}/quarantine/*"]
    }
  }
  dynamic "statement" {
    for_each = local.prune ? [1] : []
    content {
      sid       = "NeverDeleteOrUnlockBackups"
      effect    = "Deny"
      actions   = ["s3:BypassGovernanceRetention", "s3:DeleteObject", "s3:DeleteObjectVersion"]
      resources = local.locked_objects
    }
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "BucketKey"
      actions   = var.read_only ? ["kms:Decrypt"] : ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "agent" {
  name   = "${var.name}-backups"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.agent.json
}

resource "aws_iam_instance_profile" "agent" {
  name = var.name
  role = aws_iam_role.agent.name
}

# The prune identity (object_lock): flowbackup prune and undelete, run on
# their own schedule (a CronJob, a systemd timer on another machine).
resource "aws_iam_role" "prune" {
  count              = local.prune ? 1 : 0
  name               = "${var.name}-prune"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "prune" {
  statement {
    sid       = "ListUnderPrefix"
    actions   = ["s3:ListBucket", "s3:ListBucketVersions"]
    resources = [var.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefix}/*"]
    }
  }
  statement {
    sid       = "ObjectsUnderPrefix"
    actions   = [for a in local.prune_actions : a if !startswith(a, "s3:ListBucket")]
    resources = ["${var.bucket_arn}/${local.prefix}/*"]
  }
  statement {
    sid       = "NeverUnlockBackups"
    effect    = "Deny"
    actions   = ["s3:BypassGovernanceRetention"]
    resources = ["${var.bucket_arn}/${local.prefix}/*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "BucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "prune" {
  count  = local.prune ? 1 : 0
  name   = "${var.name}-prune"
  role   = aws_iam_role.prune[0].id
  policy = data.aws_iam_policy_document.prune.json
}

resource "aws_iam_instance_profile" "prune" {
  count = local.prune ? 1 : 0
  name  = "${var.name}-prune"
  role  = aws_iam_role.prune[0].name
}
