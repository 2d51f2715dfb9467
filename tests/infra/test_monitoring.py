"""The dashboard and the alert policies (terraform/monitoring/dashboard.json,
terraform/monitoring.tf) name only metrics the program emits, with the names
and labels of operations.md's metric table, in the form the collector sidecar
writes them to Cloud Monitoring (workload.googleapis.com/<OTel name>); every
alert policy e-mails the data team; the platform half of the alert catalogue
is there."""

import json
import pathlib
import re

import pytest

from infra_lib import REPO, expr, unquote

DASHBOARD = REPO / "terraform" / "monitoring" / "dashboard.json"
MONITORING_TF = REPO / "terraform" / "monitoring.tf"
PREFIX = "workload.googleapis.com/"

METRIC_TYPE = re.compile(r'metric\.type\s*=\s*\\?"([a-z0-9_.]+\.googleapis\.com/[A-Za-z0-9_./]+)')
METRIC_LABEL = re.compile(r"\bmetric\.labels?\.([a-z_]+)")


def spec_file(name):
    """shared/spec/<name>: beside the repository (CI, /work/main) or above a worktree."""
    for parent in REPO.parents:
        path = parent / "shared" / "spec" / name
        if path.exists():
            return path
    raise AssertionError(f"shared/spec/{name} not found above {REPO}")


def spec_metrics():
    """operations.md's metric table: name -> set of label keys."""
    table = {}
    for line in spec_file("operations.md").read_text().splitlines():
        m = re.match(r"^\|\s*`(datashare\.[a-z0-9_.]+)`\s*\|[^|]*\|([^|]*)\|", line)
        if not m:
            continue
        labels = re.sub(r"\([^)]*\)", "", m.group(2))
        table[m.group(1)] = {w.strip() for w in labels.split(",") if re.fullmatch(r"[a-z_]+", w.strip())}
    return table


def spec_alert_catalogue():
    """operations.md's alert catalogue: (alert, condition) rows."""
    rows, inside = [], False
    for line in spec_file("operations.md").read_text().splitlines():
        if line.startswith("| alert | condition"):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-", " "}:
                rows.append((cells[0], cells[1]))
    return rows


def emitted_literals():
    """Every string literal "datashare.…" in the program's sources."""
    found = set()
    for path in (REPO / "src").rglob("*.rs"):
        found |= set(re.findall(r'"(datashare\.[a-z0-9_.]+)"', path.read_text()))
    return found


def queries_of(node, filter_key, aggregation_key, group_key):
    """(filter, group-by fields) of every query in a parsed dashboard or policy."""
    if isinstance(node, dict):
        if filter_key in node and isinstance(node[filter_key], str):
            aggs = node.get(aggregation_key) or {}
            if isinstance(aggs, list):
                aggs = aggs[0] if aggs else {}
            yield node[filter_key], list(aggs.get(group_key) or [])
        for key, value in node.items():
            if key != "__comments__":
                yield from queries_of(value, filter_key, aggregation_key, group_key)
    elif isinstance(node, list):
        for item in node:
            yield from queries_of(item, filter_key, aggregation_key, group_key)


def dashboard_queries():
    doc = json.loads(DASHBOARD.read_text())
    return list(queries_of(doc, "filter", "aggregation", "groupByFields"))


def policy_queries(hcl):
    out = []
    for (rtype, name), body in hcl["resources"].items():
        if rtype == "google_monitoring_alert_policy":
            out += [(name, f, g) for f, g in queries_of(body, "filter", "aggregations", "group_by_fields")]
    return out


def program_metric_uses(queries):
    """(OTel metric name, label keys used) for each query on a program metric."""
    uses = []
    for f, group_by in queries:
        for metric in METRIC_TYPE.findall(f):
            if metric.startswith(PREFIX):
                labels = set(METRIC_LABEL.findall(f)) | {
                    m.group(1) for g in group_by for m in [METRIC_LABEL.search(unquote(g))] if m
                }
                uses.append((metric.removeprefix(PREFIX), labels))
    return uses


def metric_problems(uses, table, literals):
    problems = []
    for metric, labels in uses:
        if metric not in table:
            problems.append(f"{metric}: not in operations.md's metric table")
            continue
        if metric not in literals:
            problems.append(f"{metric}: the program does not emit it (no \"{metric}\" literal in src/)")
        extra = labels - table[metric]
        if extra:
            problems.append(f"{metric}: labels {sorted(extra)} are not among {sorted(table[metric])}")
    return sorted(set(problems))


# ------------------------------------------------------------------ tests

def test_the_spec_tables_parse():
    table = spec_metrics()
    assert len(table) >= 17, table
    assert table["datashare.rows.quarantined"] == {"table", "reason"}
    assert table["datashare.batch.lateness"] == set()
    assert len(spec_alert_catalogue()) >= 10


def test_the_dashboard_shows_every_metric_of_the_table():
    shown = {m for m, _ in program_metric_uses(dashboard_queries())}
    assert set(spec_metrics()) - shown == set()


def test_every_metric_named_is_emitted_by_the_program_as_operations_md_names_it(hcl):
    uses = program_metric_uses(dashboard_queries()) + program_metric_uses(
        [(f, g) for _, f, g in policy_queries(hcl)]
    )
    assert len(uses) >= 20
    assert metric_problems(uses, spec_metrics(), emitted_literals()) == []


def test_metric_filters_use_the_collectors_form(hcl):
    """The googlecloud exporter writes workload.googleapis.com/<OTel name>:
    no other spelling of a program metric (prometheus.googleapis.com/...,
    custom.googleapis.com/..., datashare_rows_read) may appear."""
    texts = [DASHBOARD.read_text(), MONITORING_TF.read_text()]
    for text in texts:
        for metric in METRIC_TYPE.findall(text):
            if "datashare" in metric and not metric.startswith("logging.googleapis.com/user/"):
                assert metric.startswith(PREFIX + "datashare."), metric
    telemetry = (REPO / "terraform" / "telemetry.tf").read_text()
    assert 'prefix = "workload.googleapis.com"' in telemetry


def test_every_alert_policy_notifies_the_team(hcl):
    policies = {name: body for (t, name), body in hcl["resources"].items() if t == "google_monitoring_alert_policy"}
    assert len(policies) >= 8
    for name, body in policies.items():
        assert expr(body.get("notification_channels", "")) == "local.team_channels", name
    assert expr(hcl["locals"]["team_channels"]) == "[for c in google_monitoring_notification_channel.team : c.id]"
    channel = hcl["resources"][("google_monitoring_notification_channel", "team")]
    assert expr(channel["for_each"]) == "toset(var.alert_emails)"
    assert unquote(channel["type"]) == "email"
    emails = hcl["variables"]["alert_emails"]
    assert emails["default"], "the team's addresses have a default"
    assert any("length(var.alert_emails) > 0" in str(v["condition"]) for v in emails["validation"])


def test_the_platform_alerts_of_the_catalogue_are_policies(hcl):
    names = [
        unquote(body["display_name"])
        for (t, _), body in hcl["resources"].items()
        if t == "google_monitoring_alert_policy"
    ]
    for alert, condition in spec_alert_catalogue():
        if "consumer e-mail" in condition:
            continue  # the alerting consumer's (budget, Power BI)
        assert any(n.endswith(alert) for n in names), f"no policy for {alert!r} in {names}"


def test_the_checks_can_fail():
    table = spec_metrics()
    uses = [
        ("datashare.rows.read", {"table"}),
        ("datashare.rows.readd", set()),
        ("datashare.deliveries", {"sink", "customer_id"}),
        ("datashare.batch.lateness", set()),
    ]
    problems = metric_problems(uses, table, {"datashare.rows.read", "datashare.deliveries"})
    assert problems == [
        "datashare.batch.lateness: the program does not emit it (no \"datashare.batch.lateness\" literal in src/)",
        "datashare.deliveries: labels ['customer_id'] are not among ['outcome', 'partner', 'sink']",
        "datashare.rows.readd: not in operations.md's metric table",
    ]
    q = [('metric.type="workload.googleapis.com/datashare.rows.read" metric.label.table="x"', ["metric.label.reason"])]
    assert program_metric_uses(q) == [("datashare.rows.read", {"table", "reason"})]
