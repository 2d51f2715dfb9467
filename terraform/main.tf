# datashare on Google Cloud: what fake-gcp emulates on a laptop, from the same
# topology file. One file per concern: storage.tf, pubsub.tf, run.tf, iam.tf,
# secrets.tf, scheduler.tf, registry.tf, telemetry.tf, monitoring.tf,
# budget.tf, network.tf, bigquery.tf.

data "google_project" "this" {
  project_id = var.project_id
}

# The Cloud Storage service agent publishes the raw bucket's notifications.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

module "topology" {
  source = "./modules/topology"

  topology_file = coalesce(var.topology_file, "${path.root}/../fake-gcp/topology.yaml")
  bucket_prefix = var.bucket_prefix
}

locals {
  roles         = module.topology.roles
  buckets       = module.topology.buckets
  topics        = module.topology.topics
  subscriptions = module.topology.subscriptions
  dead_lettered = module.topology.dead_lettered_subscriptions

  # Pub/Sub's service agent forwards messages to dead-letter topics and mints
  # the OIDC tokens of push requests.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  image = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.datashare.repository_id}/datashare${startswith(var.image_tag, "@") ? "" : ":"}${var.image_tag}"

  # How the program learns the real bucket names (config/default.toml has the
  # local ones): DATASHARE_BUCKET_<LOGICAL>.
  bucket_env = {
    for logical, b in local.buckets : "DATASHARE_BUCKET_${upper(logical)}" => b.name
  }

  # The SMTP relay of the partner e-mails and the team's alerts (the email
  # role also checks it before deadlines); its password is the smtp-password
  # secret, mounted on those two roles only (secrets.tf).
  smtp_env = {
    DATASHARE_SMTP_HOST          = var.smtp.host
    DATASHARE_SMTP_PORT          = tostring(var.smtp.port)
    DATASHARE_SMTP_TLS           = var.smtp.tls
    DATASHARE_SMTP_FROM          = var.smtp.from
    DATASHARE_SMTP_USER          = var.smtp.user
    DATASHARE_SMTP_PASSWORD_FILE = "/secrets/smtp-password/value"
  }
  role_env = {
    for role in keys(local.roles) : role => merge(
      contains(["email", "alert"], role) ? local.smtp_env : {},
      local.push_env[role],
    )
  }

  # Push requests carry an OIDC token minted for the invoker account with
  # the role's own audience (pubsub.tf); Cloud Run checks it (IAM) and so
  # does the program ([push] in config/default.toml), so one wrong IAM
  # binding is not enough to forge a message. A custom audience, not the
  # service URL: the service's own settings cannot refer to its URL.
  push_audience = {
    for role in keys(local.roles) : role => "https://datashare-${role}.push.${var.project_id}.invalid"
  }
  push_env = {
    for role in keys(local.roles) : role => {
      DATASHARE_PUSH_VERIFY          = "true"
      DATASHARE_PUSH_AUDIENCE        = local.push_audience[role]
      DATASHARE_PUSH_SERVICE_ACCOUNT = google_service_account.invoker.email
    }
  }
}

# APIs the platform uses. disable_on_destroy is off: destroying datashare must
# not switch an API off for anything else in the project.
resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
