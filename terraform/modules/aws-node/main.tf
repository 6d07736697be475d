# A machine that runs flowrun and flowbackup agent as systemd services
# (cloud-init), with the recovery directory on its own EBS volume and the
# agent identity's instance profile.

locals {
  flowrun_args = join(" ", compact([
    var.flow, var.flow_args,
    "-w ${var.workers}", "-s ${var.snapshot_interval}", "-b ${var.backup_interval}",
    var.addresses == "" ? "" : "--process-id ${var.process_id} --addresses ${var.addresses}",
  ]))
  # A replaced machine of a cluster restores only its share of the partitions.
  restore_args = var.addresses == "" ? "" : "--process-id ${var.process_id} --processes ${length(split(",", var.addresses))}"
}

resource "aws_security_group" "node" {
  name_prefix = "${var.name}-"
  description = "flowkeep node ${var.name}"
  vpc_id      = var.vpc_id
  tags        = var.tags

  dynamic "ingress" {
    for_each = var.admin_cidrs
    content {
      description = "SSH and metrics from administrators"
      from_port   = 22
      to_port     = 22
      protocol    = "tcp"
      cidr_blocks = [ingress.value]
    }
  }

  dynamic "ingress" {
    for_each = var.cluster_cidrs
    content {
      description = "flowrun cluster traffic and agent metrics"
      from_port   = var.cluster_port
      to_port     = 9464
      protocol    = "tcp"
      cidr_blocks = [ingress.value]
    }
  }

  egress {
    description = "object storage, package mirrors"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "node" {
  ami                    = var.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  private_ip             = var.private_ip
  iam_instance_profile   = var.instance_profile_name
  vpc_security_group_ids = [aws_security_group.node.id]
  tags                   = merge(var.tags, { Name = var.name })

  metadata_options {
    http_tokens = "required"
  }

  root_block_device {
    encrypted = true
  }

  user_data = templatefile("${path.module}/../cloud-init/flowkeep.yaml.tftpl", {
    data_device       = var.data_device
    flowrun_args      = local.flowrun_args
    backup_url        = var.backup_url
    backup_schedule   = var.backup_schedule
    release_url       = var.release_url
    flowrun_sha256    = var.flowrun_sha256
    flowbackup_sha256 = var.flowbackup_sha256
    restore_args      = local.restore_args
    age_recipients    = join("\n      ", var.age_recipients)
    age_identity_file = var.age_identity_file
    init_partitions   = var.init_partitions
    run_on_calendar   = var.run_on_calendar
  })
}

resource "aws_ebs_volume" "recovery" {
  availability_zone = aws_instance.node.availability_zone
  size              = var.data_disk_gb
  type              = "gp3"
  encrypted         = true
  tags              = merge(var.tags, { Name = "${var.name}-recovery" })
}

resource "aws_volume_attachment" "recovery" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.recovery.id
  instance_id = aws_instance.node.id
}
