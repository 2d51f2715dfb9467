# Messages on a timetable, from the topology: the monthly build backstop and
# the 5-minute tick. Cloud Scheduler's own service agent publishes them.
resource "google_cloud_scheduler_job" "this" {
  for_each = module.topology.schedules

  name        = "datashare-${each.key}"
  region      = var.region
  description = "Publishes a ${each.value.kind} message on ${each.value.topic}"
  schedule    = each.value.cron
  time_zone   = each.value.time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.this[each.value.topic].id
    data       = base64encode(jsonencode({ kind = each.value.kind }))
    attributes = {
      kind = each.value.kind
    }
  }

  depends_on = [google_project_service.apis]
}
