output "role_name" {
  description = "The IAM role the agent runs as."
  value       = aws_iam_role.agent.name
}

output "instance_profile_name" {
  description = "Instance profile to attach to the machines (aws-node's instance_profile_name)."
  value       = aws_iam_instance_profile.agent.name
}

output "actions" {
  description = "The S3 actions granted."
  value       = local.actions
}

output "prune_role_name" {
  description = "With object_lock: the IAM role flowbackup prune and undelete run as (the agent's role cannot delete backups); null otherwise."
  value       = local.prune ? aws_iam_role.prune[0].name : null
}

output "prune_instance_profile_name" {
  description = "With object_lock: an instance profile of the prune role, for the machine that runs prune; null otherwise."
  value       = local.prune ? aws_iam_instance_profile.prune[0].name : null
}
