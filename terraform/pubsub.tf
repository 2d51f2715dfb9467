# Topics and push subscriptions, exactly as the topology declares them.

locals {
  # The roles consuming each topic.
  topic_roles = {
    for t in local.topics : t => distinct([for s in values(local.subscriptions) : s.role if s.topic == t])
  }
}

resource "google_pubsub_topic" "this" {
  # checkov:skip=CKV_GCP_83: messages carry object references, delivery ids and alert summaries, never personal data rows; Google-managed encryption is enough and a CMEK would add a key ring to operate
  for_each = local.topics

  name = each.key

  # The role consuming it (cost per role), or shared when several do.
  labels = {
    role = length(local.topic_roles[each.key]) == 1 ? local.topic_roles[each.key][0] : "shared"
  }

  # Messages stay in Google regions in Brazil, like the data they point to.
  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "this" {
  for_each = local.subscriptions

  name   = each.key
  topic  = google_pubsub_topic.this[each.value.topic].id
  filter = each.value.filter

  labels = {
    role = each.value.role
  }

  # Pub/Sub waits this long for the push response: equal to the service's
  # request timeout (the topology checks it), so a request still running is
  # not delivered a second time.
  ack_deadline_seconds = each.value.ack_deadline_secs

  # Unacknowledged messages wait for a consumer that is down (nothing lost).
  message_retention_duration = "${each.value.message_retention_secs}s"
  retain_acked_messages      = false

  # Never expire: a dead-letter subscription may stay idle for months, and
  # the default policy deletes a subscription after 31 idle days.
  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "${each.value.min_backoff_secs}s"
    maximum_backoff = "${each.value.max_backoff_secs}s"
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter_topic == null ? [] : [each.value]
    content {
      dead_letter_topic     = google_pubsub_topic.this[dead_letter_policy.value.dead_letter_topic].id
      max_delivery_attempts = dead_letter_policy.value.max_delivery_attempts
    }
  }

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.role[each.value.role].uri}${each.value.push_path}"

    # Cloud Run only accepts requests carrying a token of an identity with
    # run.invoker: the dedicated invoker account, nothing else. The audience
    # is the role's custom audience (main.tf), which the program checks too.
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = local.push_audience[each.value.role]
    }
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to
# the dead-letter topic and acknowledge on the source subscription. Without
# these two bindings messages are retried forever instead (the step
# everybody forgets; the console adds them, Terraform does not).
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  for_each = local.dead_lettered

  topic  = google_pubsub_topic.this[each.value.dead_letter_topic].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_dead_lettered" {
  for_each = local.dead_lettered

  subscription = google_pubsub_subscription.this[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# Pub/Sub's agent mints the push requests' OIDC tokens as the invoker
# account (needed explicitly on projects created before April 2021).
resource "google_service_account_iam_member" "pubsub_agent_mints_invoker_tokens" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}
