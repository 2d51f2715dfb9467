# Traces and metrics from Cloud Run to Cloud Trace and Cloud Monitoring: an
# OpenTelemetry Collector sidecar in every service (run.tf). The program
# exports OTLP to it on localhost (the standard OTEL_* variables); the
# collector batches, retries and writes with the service account's own
# credentials: traces to Cloud Trace, metrics to Cloud Monitoring as
# workload.googleapis.com/<OTel name> (googlecloud exporter). Why a sidecar
# rather than Google's OTLP endpoint from the program: README.md, Monitoring.
#
# Roles it needs, and nothing else (iam.tf, telemetry_roles):
# roles/cloudtrace.agent and roles/monitoring.metricWriter. Logs do not go
# through it: Cloud Run ships stdout/stderr (JSON lines) to Cloud Logging.

locals {
  # The collector's configuration, passed in an environment variable
  # (--config=env:OTELCOL_CONFIG): no file, no secret to manage.
  otelcol_config = yamlencode({
    receivers = {
      otlp = {
        protocols = {
          grpc = { endpoint = "localhost:4317" }
          http = { endpoint = "localhost:4318" }
        }
      }
    }
    processors = {
      # CPU is only allocated while a request runs (cpu_idle): flush soon
      # after a request's spans end, while the instance still has CPU.
      batch = {
        send_batch_size     = 200
        send_batch_max_size = 200
        timeout             = "2s"
      }
      memory_limiter = {
        check_interval         = "1s"
        limit_percentage       = 65
        spike_limit_percentage = 20
      }
      # Cloud Run's resource attributes (project, region, service,
      # instance): the exporter maps them to the generic_task resource
      # (job = service.name = datashare-<role>).
      resourcedetection = {
        detectors = ["env", "gcp"]
        timeout   = "10s"
        override  = false
      }
    }
    exporters = {
      googlecloud = {
        metric = {
          # Metric type = workload.googleapis.com/<OTel name>, e.g.
          # workload.googleapis.com/datashare.rows.read (monitoring.tf and
          # monitoring/dashboard.json use exactly this form).
          prefix = "workload.googleapis.com"
        }
      }
    }
    extensions = {
      # Cloud Run's startup probe of the sidecar (run.tf).
      health_check = { endpoint = "0.0.0.0:13133" }
    }
    service = {
      extensions = ["health_check"]
      pipelines = {
        traces = {
          receivers  = ["otlp"]
          processors = ["memory_limiter", "resourcedetection", "batch"]
          exporters  = ["googlecloud"]
        }
        metrics = {
          receivers  = ["otlp"]
          processors = ["memory_limiter", "resourcedetection", "batch"]
          exporters  = ["googlecloud"]
        }
      }
    }
  })

  # What the program reads (operations.md, Telemetry): the standard OTel
  # variables. Without them nothing is exported.
  otel_env = {
    for role in keys(local.roles) : role => var.telemetry.enabled ? {
      OTEL_EXPORTER_OTLP_ENDPOINT = "http://localhost:4318"
      OTEL_EXPORTER_OTLP_PROTOCOL = "http/protobuf"
      OTEL_SERVICE_NAME           = "datashare-${role}"
      OTEL_RESOURCE_ATTRIBUTES    = "gcp.project_id=${var.project_id},cloud.region=${var.region},deployment.environment=${var.env}"
      OTEL_METRIC_EXPORT_INTERVAL = tostring(var.telemetry.metric_export_interval_ms)
    } : {}
  }
}
