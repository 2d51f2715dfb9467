"""Cost is told apart by labels (operations.md, KPIs: cost per role, per
partner): every resource that can carry labels has a `role` label, the
provider adds `env` (and app) to all of them, per-partner resources carry
`partner`. A resource type that is neither known to take labels nor known
not to fails the test, so a new kind of resource gets a decision."""

from infra_lib import expr, unquote

# Resource types with user labels, and the attribute that holds them.
LABELLED = {
    "google_artifact_registry_repository": "labels",
    "google_bigquery_dataset": "labels",
    "google_bigquery_table": "labels",
    "google_cloud_run_v2_service": "labels",
    "google_compute_address": "labels",
    "google_monitoring_alert_policy": "user_labels",
    "google_monitoring_notification_channel": "user_labels",
    "google_pubsub_subscription": "labels",
    "google_pubsub_topic": "labels",
    "google_secret_manager_secret": "labels",
    "google_storage_bucket": "labels",
}

# Resource types the API gives no labels to (IAM, identities, networking
# plumbing, schedules, dashboards, log metrics, the budget itself).
UNLABELLED = {
    "google_billing_budget",
    "google_cloud_run_v2_service_iam_member",
    "google_cloud_scheduler_job",
    "google_compute_firewall",
    "google_compute_network",
    "google_compute_router",
    "google_compute_router_nat",
    "google_compute_subnetwork",
    "google_logging_metric",
    "google_monitoring_dashboard",
    "google_project_iam_member",
    "google_project_service",
    "google_bigquery_dataset_iam_member",
    "google_pubsub_subscription_iam_member",
    "google_pubsub_topic_iam_member",
    "google_secret_manager_secret_iam_member",
    "google_service_account",
    "google_service_account_iam_member",
    "google_storage_bucket_iam_member",
    "google_storage_notification",
}


def label_keys(body, attr):
    """The label keys a resource sets, whether a literal map or merge(...) of literal maps."""
    value = body.get(attr)
    if value is None:
        return set()
    if isinstance(value, dict):
        return {unquote(k) for k in value if k != "__comments__"}
    text = str(value)
    return {k for k in ("role", "partner", "env", "zone") if f"{k} =" in text or f'"{k}"' in text}


def test_every_resource_type_is_classified(hcl):
    types = {t for t, _ in hcl["resources"]}
    assert types - set(LABELLED) - UNLABELLED == set()


def test_every_labelled_resource_has_a_role(hcl):
    missing = [
        f"{t}.{name}"
        for (t, name), body in hcl["resources"].items()
        if t in LABELLED and "role" not in label_keys(body, LABELLED[t])
    ]
    assert missing == []


def test_env_on_every_resource(hcl):
    versions = hcl["files"]["versions.tf"]
    provider = {unquote(k): v for k, v in versions["provider"][0].items()}["google"]
    defaults = provider["default_labels"]
    assert expr(defaults["env"]) == "var.env"
    # default_labels do not reach user_labels: those set env themselves.
    for (t, name), body in hcl["resources"].items():
        if LABELLED.get(t) == "user_labels":
            assert "env" in label_keys(body, "user_labels"), f"{t}.{name}"


def test_per_partner_resources_name_their_partner(hcl):
    secret = hcl["resources"][("google_secret_manager_secret", "this")]
    assert "partner" in label_keys(secret, "labels")
    late = hcl["resources"][("google_monitoring_alert_policy", "product_late")]
    assert expr(late["user_labels"]["partner"]) == "each.key"


def test_the_label_check_can_fail():
    assert label_keys({"labels": {"zone": '"raw"'}}, "labels") == {"zone"}
    assert "role" not in label_keys({}, "labels")
