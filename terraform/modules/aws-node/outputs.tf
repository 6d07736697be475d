output "instance_id" {
  description = "The EC2 instance."
  value       = aws_instance.node.id
}

output "private_ip" {
  description = "Private address (use it in cluster addresses)."
  value       = aws_instance.node.private_ip
}

output "recovery_volume_id" {
  description = "The EBS volume holding the recovery directory (snapshot or detach it for migrations)."
  value       = aws_ebs_volume.recovery.id
}
