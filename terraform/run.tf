# One Cloud Run service per role, all from the one image: the role is chosen
# by the container arguments (`datashare worker`, `datashare deliver --sink
# sftp`, ...). Each listens on $PORT for Pub/Sub push requests.
resource "google_cloud_run_v2_service" "role" {
  for_each = local.roles

  name                = "datashare-${each.key}"
  location            = var.region
  deletion_protection = var.deletion_protection

  # Pub/Sub push from this project counts as internal traffic: nothing on
  # the internet can even reach the services (and every request must carry
  # the invoker's token anyway: no allUsers binding anywhere).
  ingress = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  # The audience of the push tokens (pubsub.tf): Cloud Run accepts tokens
  # for it as well as for the service URL.
  custom_audiences = [local.push_audience[each.key]]

  # Billing export rows carry these: cost per role (views in bigquery.tf).
  labels = {
    role = each.key
  }

  template {
    service_account = google_service_account.role[each.key].email

    labels = {
      role = each.key
    }

    # Partners allowlist one client address: the roles that connect to
    # partner servers (the sinks, and the worker's check-sinks) send all
    # their traffic through the egress subnet, whose Cloud NAT uses the
    # reserved address (network.tf).
    dynamic "vpc_access" {
      for_each = contains(local.egress_roles, each.key) ? [1] : []
      content {
        egress = "ALL_TRAFFIC"
        network_interfaces {
          network    = google_compute_network.egress.id
          subnetwork = google_compute_subnetwork.egress.id
          tags       = ["datashare-${each.key}"]
        }
      }
    }

    # Equal to the ack deadline of every subscription pushing here.
    timeout = "${each.value.request_timeout_secs}s"

    max_instance_request_concurrency = var.concurrency[each.key]
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    # Scale to zero: messages arrive a few times a day, plus the tick.
    scaling {
      min_instance_count = 0
      max_instance_count = var.max_instances[each.key]
    }

    containers {
      name  = "datashare"
      image = local.image
      args  = each.value.args

      # The collector must be up before the program exports to it.
      depends_on = var.telemetry.enabled ? ["otel-collector"] : []

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.resources[each.key].cpu
          memory = var.resources[each.key].memory
        }
        # CPU only while a request runs: all work happens inside a push request.
        cpu_idle          = true
        startup_cpu_boost = true
      }

      # Real bucket names (the defaults in config/default.toml are the local
      # ones), the project, the log filter, the SMTP relay where it is used.
      dynamic "env" {
        for_each = merge(local.bucket_env, local.role_env[each.key], local.otel_env[each.key], {
          DATASHARE_GCP_PROJECT = var.project_id
          RUST_LOG              = var.log_level
        })
        content {
          name  = env.key
          value = env.value
        }
      }

      # Secrets as files, read when used (a rotated version is picked up
      # without a redeploy): /secrets/<id>/value.
      dynamic "volume_mounts" {
        for_each = local.role_secrets[each.key]
        content {
          name       = volume_mounts.value
          mount_path = "/secrets/${volume_mounts.value}"
        }
      }
    }

    # The OpenTelemetry Collector sidecar (telemetry.tf): OTLP in on
    # localhost, Cloud Trace and Cloud Monitoring out, as the service's
    # account.
    dynamic "containers" {
      for_each = var.telemetry.enabled ? [1] : []
      content {
        name  = "otel-collector"
        image = var.telemetry.collector_image
        args  = ["--config=env:OTELCOL_CONFIG"]

        env {
          name  = "OTELCOL_CONFIG"
          value = local.otelcol_config
        }

        resources {
          limits = {
            cpu    = var.telemetry.cpu
            memory = var.telemetry.memory
          }
          cpu_idle = true
        }

        startup_probe {
          http_get {
            path = "/"
            port = 13133
          }
          period_seconds    = 2
          failure_threshold = 15
        }
      }
    }

    dynamic "volumes" {
      for_each = local.role_secrets[each.key]
      content {
        name = volumes.value
        secret {
          secret = google_secret_manager_secret.this[volumes.value].secret_id
          # Default mode 0444: the files are owned by root and the image runs
          # as a non-root user, so a stricter mode would hide them from it.
          items {
            version = "latest"
            path    = "value"
          }
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = contains(keys(var.max_instances), each.key) && contains(keys(var.concurrency), each.key) && contains(keys(var.resources), each.key)
      error_message = "max_instances, concurrency and resources must each have an entry for every role of the topology."
    }
  }

  # A revision whose account cannot read its secrets does not start.
  depends_on = [google_secret_manager_secret_iam_member.role_reads, google_project_service.apis, google_compute_router_nat.egress]
}
