# Secret Manager secrets: the resources only. Their values (versions) are
# added outside Terraform (README.md), so no credential ever reaches the
# state file or the repository.

locals {
  # Every secret the partners' contracts need, and the one role that reads
  # it (least privilege): the worker, which parses untrusted files, holds
  # only the pseudonymization keys; each sink role holds only its own sink's
  # credentials (it also runs its own connection checks before deadlines).
  # tests/infra/test_least_privilege.py derives the same from the contracts
  # and the roles' code.
  secret_candidates = flatten([
    for partner, p in var.partners : [
      { id = "${partner}-hmac-key", roles = ["worker"], wanted = true },
      { id = "${partner}-sftp-key", roles = ["sftp"], wanted = contains(p.sinks, "sftp") },
      { id = "${partner}-sftp-passphrase", roles = ["sftp"], wanted = contains(p.sinks, "sftp") && p.sftp_key_passphrase },
      { id = "${partner}-api-password", roles = ["api"], wanted = contains(p.sinks, "api") && p.api_auth == "basic" },
      { id = "${partner}-api-token", roles = ["api"], wanted = contains(p.sinks, "api") && p.api_auth == "bearer" },
    ]
  ])

  # Short id (also the mount directory) => roles reading it. SMTP serves the
  # partner e-mails (email sink) and the team's alerts (alert consumer).
  secrets = merge(
    { for s in local.secret_candidates : s.id => s.roles if s.wanted },
    {
      "smtp-password" = ["email", "alert"]
      # Microsoft Entra client secret of the Power BI monitor (client
      # credentials; tenant and client id are configuration, not secrets).
      "powerbi-client-secret" = ["powerbi"]
    },
  )

  # The partner a secret belongs to (its `partner` label), if any.
  secret_partner = {
    for s in local.secret_candidates : s.id => split("-", s.id)[0] if s.wanted
  }

  secret_grants = {
    for g in flatten([
      for id, roles in local.secrets : [for role in roles : { id = id, role = role }]
    ]) : "${g.id}/${g.role}" => g
  }

  # Secrets mounted on each role's service, as files /secrets/<id>/value.
  role_secrets = {
    for role in keys(local.roles) : role => sort([for id, roles in local.secrets : id if contains(roles, role)])
  }
}

resource "google_secret_manager_secret" "this" {
  # Google-managed encryption: access is limited per secret and per reader,
  # and a CMEK would add a key ring to operate.
  for_each = local.secrets

  secret_id = "datashare-${each.key}"

  # Keys that protect personal data stay in the region of the data.
  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  labels = merge(
    { role = local.secrets[each.key][0] },
    contains(keys(local.secret_partner), each.key) ? { partner = local.secret_partner[each.key] } : {},
  )

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "role_reads" {
  for_each = local.secret_grants

  secret_id = google_secret_manager_secret.this[each.value.id].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.role[each.value.role].email}"
}
