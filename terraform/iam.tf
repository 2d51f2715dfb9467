# One service account per role, and exactly the access each role uses:
# object roles on single buckets, publisher on single topics, accessor on
# single secrets. No project-wide data access, no primitive role.

locals {
  # Object roles per role and bucket. objectUser reads, creates and
  # overwrites objects (claims, receipts, state) without any IAM power.
  bucket_access = {
    worker = {
      raw      = "roles/storage.objectViewer" # stages extracts, never changes them
      curated  = "roles/storage.objectUser"   # staging, curated, quarantine, reports
      products = "roles/storage.objectUser"   # product files and manifests
      ops      = "roles/storage.objectUser"   # batch claims and done markers
    }
    sftp = {
      products = "roles/storage.objectViewer" # uploads the files
      ops      = "roles/storage.objectUser"   # receipts
    }
    api = {
      products = "roles/storage.objectViewer"
      ops      = "roles/storage.objectUser"
    }
    email = {
      products = "roles/storage.objectViewer" # highlights computed from the file
      ops      = "roles/storage.objectUser"   # receipt of the e-mail
    }
    alert = {
      ops = "roles/storage.objectUser" # alert groups, budget thresholds seen, the dead-letter archive
    }
    powerbi = {
      ops = "roles/storage.objectUser" # refresh requests made (a redelivery does not refresh twice)
    }
  }

  # Topics each role publishes to, besides the dead-letter topics of its own
  # subscriptions (a consumer dead-letters permanent failures itself).
  publishes_to = {
    worker  = ["batches", "deliveries", "schedules", "alerts", "updates"] # schedules: monthly build requests; updates: what a batch step updated
    sftp    = ["notify"]                                                  # the sink completing the set notifies
    api     = ["notify"]
    email   = []
    alert   = []
    powerbi = ["alerts"] # failed, stuck or stale refreshes go through the alert consumer
  }

  bucket_grants = merge([
    for role, access in local.bucket_access : {
      for logical, iam_role in access : "${role}/${logical}" => { role = role, bucket = logical, iam_role = iam_role }
    }
  ]...)

  topic_grants = merge([
    for role in keys(local.roles) : {
      for topic in distinct(concat(
        local.publishes_to[role],
        [for s in values(local.dead_lettered) : s.dead_letter_topic if s.role == role],
      )) : "${role}/${topic}" => { role = role, topic = topic }
    }
  ]...)

  # Telemetry writers: traces and metrics of every role (OpenTelemetry
  # exporters). Write-only, project-level because that is where they apply.
  telemetry_roles = ["roles/cloudtrace.agent", "roles/monitoring.metricWriter"]
  telemetry_grants = merge([
    for role in keys(local.roles) : {
      for r in local.telemetry_roles : "${role}/${r}" => { role = role, iam_role = r }
    }
  ]...)
}

resource "google_service_account" "role" {
  for_each = local.roles

  account_id   = "datashare-${each.key}"
  display_name = "datashare ${each.key}"
  description  = "Runs the datashare ${each.key} role on Cloud Run"
}

# Pub/Sub push identity: the only account allowed to invoke the services.
resource "google_service_account" "invoker" {
  account_id   = "datashare-invoker"
  display_name = "datashare Pub/Sub invoker"
  description  = "Identity of Pub/Sub push requests to the datashare services"
}

resource "google_storage_bucket_iam_member" "role_objects" {
  for_each = local.bucket_grants

  bucket = google_storage_bucket.this[each.value.bucket].name
  role   = each.value.iam_role
  member = "serviceAccount:${google_service_account.role[each.value.role].email}"
}

resource "google_pubsub_topic_iam_member" "role_publishes" {
  for_each = local.topic_grants

  topic  = google_pubsub_topic.this[each.value.topic].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.role[each.value.role].email}"
}

resource "google_project_iam_member" "role_telemetry" {
  for_each = local.telemetry_grants

  project = var.project_id
  role    = each.value.iam_role
  member  = "serviceAccount:${google_service_account.role[each.value.role].email}"
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.roles

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.role[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.invoker.email}"
}
