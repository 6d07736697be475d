# Least-privilege identity for flowbackup on AWS: an IAM role (with an
# instance profile) allowed exactly the S3 actions the backup code calls,
# on the bucket and only under var.prefix. read_only = true gives what
# verify, list and restore need. The action lists must equal
# backup/s3.RequiredActions and ReadOnlyActions (a Go test checks it).

locals {
  agent_actions    = ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
  readonly_actions = ["s3:GetObject", "s3:ListBucket"]

  actions        = var.read_only ? local.readonly_actions : local.agent_actions
  object_actions = [for a in local.actions : a if a != "s3:ListBucket"]
  prefix         = trim(var.prefix, "/")
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
