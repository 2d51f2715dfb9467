# The project's monthly budget. Cloud Billing publishes every evaluation
# (several a day, mostly unchanged) to the `budgets` topic; the alerting
# consumer (subscription budgets-alert) e-mails the first crossing of each
# threshold in a cost interval as a `budget.threshold` alert
# (operations.md, Budget notifications). Google's own e-mails to the
# billing admins are off: one crossing, one e-mail, from one place.

resource "google_billing_budget" "project" {
  billing_account = var.billing_account
  display_name    = "datashare ${var.env}"

  budget_filter {
    projects               = ["projects/${data.google_project.this.number}"]
    calendar_period        = "MONTH"
    credit_types_treatment = "INCLUDE_ALL_CREDITS"
  }

  amount {
    specified_amount {
      currency_code = var.budget.currency
      units         = tostring(var.budget.amount)
    }
  }

  dynamic "threshold_rules" {
    for_each = var.budget.thresholds
    content {
      threshold_percent = threshold_rules.value
      spend_basis       = "CURRENT_SPEND"
    }
  }

  dynamic "threshold_rules" {
    for_each = var.budget.forecast_thresholds
    content {
      threshold_percent = threshold_rules.value
      spend_basis       = "FORECASTED_SPEND"
    }
  }

  all_updates_rule {
    pubsub_topic                   = google_pubsub_topic.this["budgets"].id
    schema_version                 = "1.0"
    disable_default_iam_recipients = true
  }

  depends_on = [google_pubsub_topic_iam_member.billing_publishes_budgets, google_project_service.apis]
}

# Cloud Billing publishes budget notifications as this Google-owned account.
resource "google_pubsub_topic_iam_member" "billing_publishes_budgets" {
  topic  = google_pubsub_topic.this["budgets"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:billing-budget-alert@system.gserviceaccount.com"
}
