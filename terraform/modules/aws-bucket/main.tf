# Backup bucket for flowbackup: versioned, encrypted at rest (SSE-S3, or
# SSE-KMS with a customer key), public access blocked, non-current versions
# expired after var.noncurrent_version_days. With var.object_lock the
# bucket is created with S3 Object Lock enabled (only a bucket's creation
# can turn it on), for flowbackup backup/agent --object-lock; an optional
# default retention locks every object version written without a lock of
# its own.

resource "aws_s3_bucket" "backups" {
  bucket              = var.bucket_name
  force_destroy       = var.force_destroy
  object_lock_enabled = var.object_lock
  tags                = var.tags
}

# A default retention locks every new object version (latest pointers,
# heartbeats and lock objects included, whose old versions it then keeps
# for as long); the agent's --object-lock locks exactly what a backup
# needs, and is the recommended way. The default is a backstop for writers
# that forget the flag.
resource "aws_s3_bucket_object_lock_configuration" "backups" {
  count  = var.object_lock && var.object_lock_default_retention != null ? 1 : 0
  bucket = aws_s3_bucket.backups.id
  rule {
    default_retention {
      mode = var.object_lock_default_retention.mode
      days = var.object_lock_default_retention.days
    }
  }
  depends_on = [aws_s3_bucket_versioning.backups]
}

resource "aws_s3_bucket_ownership_controls" "backups" {
  bucket = aws_s3_bucket.backups.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "backups" {
  bucket                  = aws_s3_bucket.backups.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "backups" {
  bucket = aws_s3_bucket.backups.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id
  # Lifecycle rules need versioning in place first.
  depends_on = [aws_s3_bucket_versioning.backups]

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    # Delete markers left alone once the versions under them expired
    # (prune's deletes, in a versioned bucket). A version under Object
    # Lock is never expired before its lock ends.
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.backups.arn,
      "${aws_s3_bucket.backups.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  bucket = aws_s3_bucket.backups.id
  policy = data.aws_iam_policy_document.tls_only.json
  # The public access block must exist before any bucket policy.
  depends_on = [aws_s3_bucket_public_access_block.backups]
}
