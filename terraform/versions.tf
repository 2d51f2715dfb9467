terraform {
  required_version = ">= 1.6.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }

  # State lives in a GCS bucket created once by hand (see README.md); the
  # bucket name is given at init time: terraform init -backend-config=bucket=...
  backend "gcs" {
    prefix = "datashare"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  # The Billing Budgets API bills its quota to a project: with user
  # credentials (gcloud auth application-default login) it needs one named.
  billing_project       = var.project_id
  user_project_override = true

  default_labels = {
    app        = "datashare"
    managed-by = "terraform"
    env        = var.env
  }
}
