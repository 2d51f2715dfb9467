"""The rest of the cloud-only platform, read from the Terraform source: the
telemetry sidecar and exactly the roles it needs, the budget wired to the
`budgets` topic the alert consumer reads, the static egress address of the
partner-facing roles, and a dashboard whose layout Cloud Monitoring accepts."""

import json

from infra_lib import REPO, expr, unquote

DASHBOARD = REPO / "terraform" / "monitoring" / "dashboard.json"
WIDGET_TYPES = {"xyChart", "text", "scorecard", "timeSeriesTable", "collapsibleGroup", "sectionHeader"}


def test_telemetry_writers_have_exactly_the_trace_and_metric_roles(hcl):
    assert [unquote(r) for r in hcl["locals"]["telemetry_roles"]] == ["roles/cloudtrace.agent", "roles/monitoring.metricWriter"]
    grant = hcl["resources"][("google_project_iam_member", "role_telemetry")]
    assert expr(grant["for_each"]) == "local.telemetry_grants"
    assert expr(grant["role"]) == "each.value.iam_role"


def test_every_service_runs_the_collector_and_knows_its_endpoint(hcl):
    svc = hcl["resources"][("google_cloud_run_v2_service", "role")]
    template = svc["template"][0]
    main = template["containers"][0]
    assert unquote(main["name"]) == "datashare"
    assert expr(main["depends_on"]) == 'var.telemetry.enabled ? ["otel-collector"] : []'
    env = main["dynamic"][0]['"env"'] if '"env"' in main["dynamic"][0] else main["dynamic"][0]["env"]
    assert "local.otel_env[each.key]" in env["for_each"]
    sidecar = {unquote(k): v for d in template["dynamic"] for k, v in d.items()}["containers"]
    content = sidecar["content"][0]
    assert unquote(content["name"]) == "otel-collector"
    assert content["startup_probe"][0]["http_get"][0]["port"] == 13133
    telemetry = (REPO / "terraform" / "telemetry.tf").read_text()
    for needle in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", '"datashare-${role}"', "googlecloud"):
        assert needle in telemetry, needle


def test_the_budget_publishes_to_the_topic_the_alert_consumer_reads(hcl, topology):
    budget = hcl["resources"][("google_billing_budget", "project")]
    rule = budget["all_updates_rule"][0]
    assert expr(rule["pubsub_topic"]) == 'google_pubsub_topic.this["budgets"].id'
    assert topology["subscriptions"]["budgets-alert"]["topic"] == "budgets"
    assert topology["subscriptions"]["budgets-alert"]["role"] == "alert"
    rules = {unquote(k): v for d in budget["dynamic"] for k, v in d.items() if unquote(k) == "threshold_rules"}
    assert rules, "thresholds come from variables"
    text = (REPO / "terraform" / "budget.tf").read_text()
    assert "for_each = var.budget.thresholds" in text and "for_each = var.budget.forecast_thresholds" in text
    assert '"FORECASTED_SPEND"' in text and '"CURRENT_SPEND"' in text
    publisher = hcl["resources"][("google_pubsub_topic_iam_member", "billing_publishes_budgets")]
    assert unquote(publisher["member"]) == "serviceAccount:billing-budget-alert@system.gserviceaccount.com"


def test_partner_facing_roles_leave_from_one_reserved_address(hcl):
    # Only the roles that reach partner servers (the worker holds no sink credentials).
    assert {unquote(r) for r in hcl["locals"]["egress_roles"]} == {"sftp", "api"}
    svc = hcl["resources"][("google_cloud_run_v2_service", "role")]
    vpc = {unquote(k): v for d in svc["template"][0]["dynamic"] for k, v in d.items()}["vpc_access"]
    assert expr(vpc["for_each"]) == "contains(local.egress_roles, each.key) ? [1] : []"
    assert unquote(vpc["content"][0]["egress"]) == "ALL_TRAFFIC"
    nat = hcl["resources"][("google_compute_router_nat", "egress")]
    assert unquote(nat["nat_ip_allocate_option"]) == "MANUAL_ONLY"
    assert [expr(i) for i in nat["nat_ips"]] == ["google_compute_address.egress.self_link"]
    address = hcl["resources"][("google_compute_address", "egress")]
    assert unquote(address["address_type"]) == "EXTERNAL"
    outputs = hcl["files"]["outputs.tf"]["output"]
    names = {unquote(k): v for block in outputs for k, v in block.items()}
    assert expr(names["egress_ip"]["value"]) == "google_compute_address.egress.address"


def test_the_dashboard_layout_is_valid():
    doc = json.loads(DASHBOARD.read_text())
    layout = doc["mosaicLayout"]
    cols = layout["columns"]
    cells = set()
    for tile in layout["tiles"]:
        kinds = set(tile["widget"]) - {"title"}
        assert len(kinds) == 1 and kinds <= WIDGET_TYPES, tile
        assert 0 <= tile["xPos"] and tile["xPos"] + tile["width"] <= cols, tile
        for x in range(tile["xPos"], tile["xPos"] + tile["width"]):
            for y in range(tile.get("yPos", 0), tile.get("yPos", 0) + tile["height"]):
                assert (x, y) not in cells, f"tiles overlap at {(x, y)}"
                cells.add((x, y))
        for ds in tile["widget"].get("xyChart", {}).get("dataSets", []):
            q = ds["timeSeriesQuery"]
            f = q.get("timeSeriesFilter") or q["timeSeriesFilterRatio"]["numerator"]
            agg = f["aggregation"]
            assert agg["alignmentPeriod"].endswith("s") and agg["perSeriesAligner"].startswith("ALIGN_"), ds
            if "crossSeriesReducer" in agg:
                assert agg["crossSeriesReducer"].startswith("REDUCE_"), ds
                for g in agg["groupByFields"]:
                    assert g.startswith(("metric.label.", "resource.label.")), g
