output "buckets" {
  description = "Bucket names by logical name."
  value       = { for logical, b in google_storage_bucket.this : logical => b.name }
}

output "bucket_env" {
  description = "Environment variables that tell the program the real bucket names (set on every service)."
  value       = local.bucket_env
}

output "topics" {
  description = "Topic IDs by name."
  value       = { for name, t in google_pubsub_topic.this : name => t.id }
}

output "subscriptions" {
  description = "Subscription push endpoints by name."
  value       = { for name, s in google_pubsub_subscription.this : name => s.push_config[0].push_endpoint }
}

output "service_urls" {
  description = "Cloud Run service URL by role."
  value       = { for role, s in google_cloud_run_v2_service.role : role => s.uri }
}

output "service_accounts" {
  description = "Service account e-mail by role, and the Pub/Sub invoker."
  value = merge(
    { for role, sa in google_service_account.role : role => sa.email },
    { invoker = google_service_account.invoker.email },
  )
}

output "image_repository" {
  description = "Where to push the image: docker push <this>:<tag>."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.datashare.repository_id}/datashare"
}

output "image" {
  description = "The image the services run."
  value       = local.image
}

output "secrets" {
  description = "Secret Manager secret IDs that need a version (value) before the services can start, with the roles reading each."
  value       = { for id, roles in local.secrets : google_secret_manager_secret.this[id].secret_id => roles }
}

output "egress_ip" {
  description = "The static address partners allowlist: every connection of the sftp and api sinks (and the worker's check-sinks) leaves from it."
  value       = google_compute_address.egress.address
}

output "bi_service_accounts" {
  description = "The accounts Power BI and Metabase use to read BigQuery (make a key by hand and give it to the tool: README.md)."
  value       = { for tool, sa in google_service_account.bi : tool => sa.email }
}

output "bigquery_tables" {
  description = "External tables (dataset.table) over the curated and products Parquet; queries must filter on dt."
  value       = sort([for t in google_bigquery_table.external : "${t.dataset_id}.${t.table_id}"])
}

output "dashboard" {
  description = "The KPI dashboard's ID in Cloud Monitoring."
  value       = google_monitoring_dashboard.kpis.id
}
