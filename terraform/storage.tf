# Buckets, their lifecycle, and the notification that starts the pipeline.
# Names, versioning and retention come from the topology (retention is the
# spec's, products.md); storage classes are a cloud-only cost concern, here.

locals {
  # Move objects to cheaper classes once they are rarely read. Each class's
  # minimum storage duration (Nearline 30 d, Coldline 90 d, Archive 365 d,
  # counted from creation) ends before the object's deletion.
  storage_class_transitions = {
    # read once on arrival, then only by a replay
    raw = [
      { age_days = 30, from = ["STANDARD"], to = "NEARLINE" },
    ]
    # read by daily builds (30 trailing days) and monthly builds (M + late
    # days); after that only by on-demand rebuilds and audits
    curated = [
      { age_days = 60, from = ["STANDARD"], to = "NEARLINE" },
      { age_days = 180, from = ["NEARLINE"], to = "COLDLINE" },
    ]
    # read by the sinks on the day of delivery, then almost never
    products = [
      { age_days = 90, from = ["STANDARD"], to = "COLDLINE" },
      { age_days = 365, from = ["COLDLINE"], to = "ARCHIVE" },
    ]
    # claims, receipts and alert state are small and hot
    ops = []
  }

  # How long an overwritten or deleted version stays recoverable, on
  # versioned buckets. Products keep theirs until the 5-year retention: an
  # earlier version of a file was delivered too, and must be found again.
  noncurrent_retention_days = {
    raw     = 7
    curated = 30
  }
}

resource "google_storage_bucket" "this" {
  # checkov:skip=CKV_GCP_62: usage logs are superseded by Cloud Audit Logs (data access logs can be enabled per project); a log bucket would need its own retention and access model
  # checkov:skip=CKV_GCP_78: versioning follows the topology: off for ops only, whose objects (claims, receipts, alert state) are written with generation preconditions and are rebuilt from the other buckets
  for_each = local.buckets

  name          = each.value.name
  location      = var.region
  storage_class = "STANDARD"
  force_destroy = !var.deletion_protection

  # IAM only (no ACLs), never public: raw and curated hold personal data.
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = each.value.versioning
  }

  labels = {
    role          = "shared"
    zone          = each.key
    personal-data = contains(["raw", "curated"], each.key) ? "yes" : "no"
  }

  # Retention: delete every version (live or noncurrent) once older than the
  # zone's retention, so no copy outlives it (LGPD minimisation).
  dynamic "lifecycle_rule" {
    for_each = each.value.retention
    content {
      action {
        type = "Delete"
      }
      condition {
        age            = lifecycle_rule.value.delete_after_days
        with_state     = "ANY"
        matches_prefix = lifecycle_rule.value.prefix == null ? [] : [lifecycle_rule.value.prefix]
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.versioning && contains(keys(local.noncurrent_retention_days), each.key) ? [local.noncurrent_retention_days[each.key]] : []
    content {
      action {
        type = "Delete"
      }
      condition {
        days_since_noncurrent_time = lifecycle_rule.value
        with_state                 = "ARCHIVED"
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = lookup(local.storage_class_transitions, each.key, [])
    content {
      action {
        type          = "SetStorageClass"
        storage_class = lifecycle_rule.value.to
      }
      condition {
        age                   = lifecycle_rule.value.age_days
        matches_storage_class = lifecycle_rule.value.from
        with_state            = "ANY"
      }
    }
  }

  depends_on = [google_project_service.apis]
}

# Every new object in the raw bucket is announced on `extracts`.
resource "google_storage_notification" "this" {
  for_each = { for n in module.topology.notifications : "${n.bucket}-${n.topic}" => n }

  bucket         = google_storage_bucket.this[each.value.bucket].name
  topic          = google_pubsub_topic.this[each.value.topic].id
  event_types    = each.value.event_types
  payload_format = each.value.payload_format

  # GCS checks it may publish when the notification is created.
  depends_on = [google_pubsub_topic_iam_member.gcs_agent_publishes]
}

# The Cloud Storage service agent publishes the notifications.
resource "google_pubsub_topic_iam_member" "gcs_agent_publishes" {
  for_each = toset([for n in module.topology.notifications : n.topic])

  topic  = google_pubsub_topic.this[each.key].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}
