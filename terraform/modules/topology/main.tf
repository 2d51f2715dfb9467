# Reads fake-gcp/topology.yaml and normalises it into maps that the root
# module iterates over. It has no provider and no resource on purpose: the
# infra tests evaluate it offline with a real Terraform (init/apply need no
# download), so the names they check are exactly what the resources use.

variable "topology_file" {
  description = "Path of the topology YAML shared with fake-gcp."
  type        = string

  validation {
    condition     = fileexists(var.topology_file)
    error_message = "The topology file does not exist."
  }
}

variable "bucket_prefix" {
  description = "Prefix of every bucket name: a bucket is named <prefix>-<logical name>."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.bucket_prefix))
    error_message = "The bucket prefix must be 3-42 characters of lower-case letters, digits and dashes."
  }
}

locals {
  raw = yamldecode(file(var.topology_file))

  roles = {
    for name, r in local.raw.roles : name => {
      args                 = [for a in r.args : tostring(a)]
      request_timeout_secs = tonumber(r.request_timeout_secs)
    }
  }

  buckets = {
    for logical, b in local.raw.buckets : logical => {
      name        = "${var.bucket_prefix}-${logical}"
      description = tostring(b.description)
      versioning  = tobool(b.versioning)
      retention = [
        for rule in b.retention : {
          prefix            = rule.prefix == null ? null : tostring(rule.prefix)
          delete_after_days = tonumber(rule.delete_after_days)
        }
      ]
    }
  }

  topics = toset([for t in local.raw.topics : tostring(t)])

  subscriptions = {
    for name, s in local.raw.subscriptions : name => {
      topic                  = tostring(s.topic)
      role                   = tostring(s.role)
      push_path              = tostring(s.push_path)
      filter                 = s.filter == null ? null : tostring(s.filter)
      ack_deadline_secs      = tonumber(s.ack_deadline_secs)
      min_backoff_secs       = tonumber(s.min_backoff_secs)
      max_backoff_secs       = tonumber(s.max_backoff_secs)
      max_delivery_attempts  = s.max_delivery_attempts == null ? null : tonumber(s.max_delivery_attempts)
      dead_letter_topic      = s.dead_letter_topic == null ? null : tostring(s.dead_letter_topic)
      message_retention_secs = tonumber(s.message_retention_secs)
    }
  }

  # The subscriptions with a dead-letter policy: each needs the Pub/Sub
  # service agent as publisher on its dead-letter topic and as subscriber on
  # itself, or dead-lettering silently does not happen.
  dead_lettered = {
    for name, s in local.subscriptions : name => s if s.dead_letter_topic != null
  }

  notifications = [
    for n in local.raw.notifications : {
      bucket         = tostring(n.bucket)
      topic          = tostring(n.topic)
      event_types    = [for e in n.event_types : tostring(e)]
      payload_format = tostring(n.payload_format)
    }
  ]

  schedules = {
    for name, s in local.raw.schedules : name => {
      topic     = tostring(s.topic)
      cron      = tostring(s.cron)
      time_zone = tostring(s.time_zone)
      kind      = tostring(s.kind)
    }
  }
}

output "roles" {
  description = "Roles of the binary: arguments and request timeout."
  value       = local.roles
}

output "buckets" {
  description = "Buckets by logical name: real name, versioning, retention rules."
  value       = local.buckets
}

output "topics" {
  description = "Every topic name, dead-letter topics included."
  value       = local.topics
}

output "subscriptions" {
  description = "Every subscription by name, with its delivery settings."
  value       = local.subscriptions

  # Fail the plan, not production, when the topology contradicts itself.
  precondition {
    condition = alltrue([
      for s in values(local.subscriptions) : contains(local.topics, s.topic) && contains(keys(local.roles), s.role)
    ])
    error_message = "Every subscription must name a declared topic and role."
  }
  precondition {
    condition = alltrue([
      for s in values(local.dead_lettered) : contains(local.topics, s.dead_letter_topic) && s.dead_letter_topic != s.topic
    ])
    error_message = "Every dead-letter topic must be declared, and differ from its source topic."
  }
  precondition {
    condition = alltrue([
      for s in values(local.dead_lettered) : s.max_delivery_attempts != null && s.max_delivery_attempts >= 5 && s.max_delivery_attempts <= 100
    ])
    error_message = "A subscription with a dead-letter topic needs max_delivery_attempts between 5 and 100."
  }
  precondition {
    condition = alltrue([
      for s in values(local.subscriptions) : s.ack_deadline_secs == local.roles[s.role].request_timeout_secs
    ])
    error_message = "A subscription's ack deadline must equal its role's request timeout, so a running request is not redelivered."
  }
  precondition {
    condition = alltrue([
      for s in values(local.subscriptions) : s.ack_deadline_secs >= 10 && s.ack_deadline_secs <= 600
    ])
    error_message = "Pub/Sub ack deadlines are between 10 and 600 seconds."
  }
}

output "dead_lettered_subscriptions" {
  description = "The subscriptions that have a dead-letter policy."
  value       = local.dead_lettered
}

output "notifications" {
  description = "GCS notifications (bucket logical name to topic)."
  value       = local.notifications
}

output "schedules" {
  description = "Messages published on a timetable."
  value       = local.schedules
}
