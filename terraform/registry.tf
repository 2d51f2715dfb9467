# The one repository of the one image that every role runs.
resource "google_artifact_registry_repository" "datashare" {
  # checkov:skip=CKV_GCP_84: Google-managed encryption is enough for an image that holds no data and no secret; a CMEK would add a key ring to operate for no gain
  location      = var.region
  repository_id = "datashare"
  description   = "The datashare image (every Cloud Run role runs it)"
  format        = "DOCKER"

  labels = {
    role = "shared"
  }

  docker_config {
    # A pushed tag never changes meaning: a deploy is reproducible from its tag.
    immutable_tags = true
  }

  # Untagged images (left over from re-pushed builds) are noise: keep the 20
  # most recent versions, delete untagged ones after 30 days.
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 20
    }
  }
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}
