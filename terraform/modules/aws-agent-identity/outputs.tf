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
