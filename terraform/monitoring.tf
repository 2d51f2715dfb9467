# What the platform sees (operations.md, Alert catalogue): the dashboard of
# the KPIs and the Cloud Monitoring alert policies, each e-mailing the data
# team's addresses. What the program sees (budgets, Power BI, guardrails,
# dead letters' contents) is e-mailed by the alerting consumer instead.
#
# The program's metrics arrive through the collector sidecar (telemetry.tf)
# as workload.googleapis.com/<OTel name>, one time series per Cloud Run
# instance (generic_task): every query aligns per series and then reduces
# across instances by the metric's own labels.

locals {
  team_channels = [for c in google_monitoring_notification_channel.team : c.id]

  # Subscriptions by what their backlog means.
  dead_letter_subscriptions = sort([for name, s in local.subscriptions : name if endswith(s.topic, "-dead-letter")])
  worker_backlog_subscriptions = sort([
    for name, s in local.subscriptions : name if s.role == "worker" && contains(["extracts", "batches"], s.topic)
  ])
  delivery_backlog_subscriptions = sort([for name, s in local.subscriptions : name if contains(["sftp", "api", "email"], s.role)])

  # The batch step runs inside one worker request: its timeout.
  batch_step_timeout_secs = local.roles["worker"].request_timeout_secs

  quoted = { for k, v in {
    dead_letter      = local.dead_letter_subscriptions
    worker_backlog   = local.worker_backlog_subscriptions
    delivery_backlog = local.delivery_backlog_subscriptions
  } : k => join(", ", [for s in v : "\"${s}\""]) }

  # Services of this deployment, in Cloud Monitoring filters.
  services_filter = "resource.labels.service_name = monitoring.regex.full_match(\"datashare-.*\")"

  runbook = {
    dead_letter      = "Mensagens em dead letter esperando há 5 min: o consumidor de alertas não as arquivou. Rode `datashare status --date <D>`, veja o e-mail do alerta e, corrigida a causa, `datashare replay --dead-letters <subscription>`."
    worker_backlog   = "O worker não consome extracts/batches há 30 min. Veja o serviço datashare-worker (erros, instâncias) e `datashare status --date <D>`."
    delivery_backlog = "Um sink não entrega há 1 h (servidor do parceiro fora ou credencial errada). Rode `datashare check-sinks` e `datashare status --partner <P>`."
    service_errors   = "Mais de 5% de respostas 5xx em 10 min num papel: veja os logs do serviço (severity>=ERROR) e `datashare status`."
    error_logs       = "Logs de erro num papel nos últimos 10 min: abra o Logs Explorer filtrando o serviço e siga o trace."
    product_late     = "O produto do parceiro não foi entregue até o prazo do contrato + 1 h. Rode `datashare status --partner <P>`: lote retido → `datashare release --date <D>`; lote parado → `datashare replay --date <D>`."
    batch_timeout    = "O passo do lote (p95) passa de 80% do timeout do worker: aumente recursos do worker ou o timeout antes que lotes falhem."
    memory           = "Memória p99 acima de 85% do limite: aumente `resources` do papel antes de um OOM."
  }
}

# --------------------------------------------------------------- channels

resource "google_monitoring_notification_channel" "team" {
  for_each = toset(var.alert_emails)

  display_name = "datashare data team: ${each.key}"
  type         = "email"
  labels = {
    email_address = each.key
  }
  user_labels = {
    role = "monitoring"
    env  = var.env
  }

  depends_on = [google_project_service.apis]
}

# ------------------------------------------------------------- dashboard

resource "google_monitoring_dashboard" "kpis" {
  dashboard_json = file("${path.module}/monitoring/dashboard.json")

  depends_on = [google_project_service.apis]
}

# ----------------------------------------------------- log-based metric

# Lines of severity ERROR or above written by a datashare service, by role.
resource "google_logging_metric" "error_logs" {
  name        = "datashare_error_logs"
  description = "Log lines of severity >= ERROR from the datashare Cloud Run services"
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^datashare-\" AND severity>=ERROR"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "role"
      value_type  = "STRING"
      description = "The datashare role (service name without datashare-)"
    }
  }

  label_extractors = {
    role = "REGEXP_EXTRACT(resource.labels.service_name, \"^datashare-(.+)$\")"
  }

  depends_on = [google_project_service.apis]
}

# --------------------------------------------------------- alert policies

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "datashare: dead letters waiting"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.team_channels

  conditions {
    display_name = "undelivered messages on a *-dead-letter subscription for 5 min"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.labels.subscription_id = one_of(${local.quoted.dead_letter})"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.subscription_id"]
      }
    }
  }

  documentation {
    content   = local.runbook.dead_letter
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "alert"
    env  = var.env
  }
}

resource "google_monitoring_alert_policy" "worker_backlog" {
  display_name          = "datashare: worker backlog"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.team_channels

  conditions {
    display_name = "oldest unacked message of extracts-worker / batches-worker > 30 min"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.labels.subscription_id = one_of(${local.quoted.worker_backlog})"
      comparison      = "COMPARISON_GT"
      threshold_value = 1800
      duration        = "60s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.subscription_id"]
      }
    }
  }

  documentation {
    content   = local.runbook.worker_backlog
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "worker"
    env  = var.env
  }
}

resource "google_monitoring_alert_policy" "delivery_backlog" {
  display_name          = "datashare: delivery backlog"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.team_channels

  conditions {
    display_name = "oldest unacked message of a sink subscription > 60 min"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.labels.subscription_id = one_of(${local.quoted.delivery_backlog})"
      comparison      = "COMPARISON_GT"
      threshold_value = 3600
      duration        = "60s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.subscription_id"]
      }
    }
  }

  documentation {
    content   = local.runbook.delivery_backlog
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "sinks"
    env  = var.env
  }
}

resource "google_monitoring_alert_policy" "service_errors" {
  display_name          = "datashare: service errors"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.team_channels

  conditions {
    display_name = "Cloud Run 5xx rate > 5% over 10 min, per role"
    condition_threshold {
      filter                  = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\" AND metric.labels.response_code_class = \"5xx\" AND ${local.services_filter}"
      denominator_filter      = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\" AND ${local.services_filter}"
      comparison              = "COMPARISON_GT"
      threshold_value         = 0.05
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  documentation {
    content   = local.runbook.service_errors
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "shared"
    env  = var.env
  }
}

resource "google_monitoring_alert_policy" "error_logs" {
  display_name          = "datashare: error logs"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.team_channels

  conditions {
    display_name = "log lines of severity >= ERROR over 10 min, per role"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.error_logs.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.role"]
      }
    }
  }

  documentation {
    content   = local.runbook.error_logs
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "shared"
    env  = var.env
  }
}

# One policy per partner: its daily and monthly products' freshness against
# its own deadline (var.partners). The worker records the freshness at every
# tick for each product the contract buys, once the product was delivered at
# least once (delivered/<partner>/<product>.json in the ops bucket); a
# product label the contract does not buy has no series and never fires.
resource "google_monitoring_alert_policy" "product_late" {
  for_each = var.partners

  display_name          = "datashare: ${each.key} product late"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.team_channels

  dynamic "conditions" {
    for_each = {
      daily          = each.value.daily_late_after_hours * 3600
      monthly        = each.value.monthly_late_after_days * 86400
      monthly_brands = each.value.monthly_late_after_days * 86400
    }
    content {
      display_name = "${each.key} ${conditions.key} product older than its deadline + 1 h"
      condition_threshold {
        filter          = "metric.type = \"workload.googleapis.com/datashare.product.freshness\" AND metric.labels.partner = \"${each.key}\" AND metric.labels.product = \"${conditions.key}\""
        comparison      = "COMPARISON_GT"
        threshold_value = conditions.value
        duration        = "600s"
        aggregations {
          alignment_period     = "600s"
          per_series_aligner   = "ALIGN_MEAN"
          cross_series_reducer = "REDUCE_MIN"
          group_by_fields      = ["metric.label.partner", "metric.label.product"]
        }
      }
    }
  }

  documentation {
    content   = local.runbook.product_late
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role    = "worker"
    partner = each.key
    env     = var.env
  }
}

resource "google_monitoring_alert_policy" "batch_near_timeout" {
  display_name          = "datashare: batch step near timeout"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.team_channels

  conditions {
    display_name = "batch step duration p95 > 80% of the step timeout"
    condition_threshold {
      filter          = "metric.type = \"workload.googleapis.com/datashare.stage.duration\" AND metric.labels.stage = \"batch_step\""
      comparison      = "COMPARISON_GT"
      threshold_value = floor(0.8 * local.batch_step_timeout_secs)
      duration        = "0s"
      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_95"
        group_by_fields      = ["metric.label.stage"]
      }
    }
  }

  documentation {
    content   = local.runbook.batch_timeout
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "worker"
    env  = var.env
  }
}

resource "google_monitoring_alert_policy" "memory_near_limit" {
  display_name          = "datashare: memory near limit"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.team_channels

  conditions {
    display_name = "Cloud Run memory utilization p99 > 85%, per role"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/container/memory/utilizations\" AND ${local.services_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0.85
      duration        = "300s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  documentation {
    content   = local.runbook.memory
    mime_type = "text/markdown"
  }
  alert_strategy {
    auto_close = "86400s"
  }
  user_labels = {
    role = "shared"
    env  = var.env
  }
}
