"""The names in fake-gcp/topology.yaml, in Terraform (as Terraform itself
computes them from that file) and in config/default.toml agree."""

import copy

import pytest
import yaml

from infra_lib import REPO, evaluate_topology, expr, unquote

ROLES = {"worker", "sftp", "api", "email", "alert", "powerbi"}


def topology_vs_config(topology, config):
    """Every disagreement between the topology and the program's defaults."""
    problems = []
    gcp = config["gcp"]

    want_buckets = {logical: f"datashare-{logical}" for logical in topology["buckets"]}
    if gcp["buckets"] != want_buckets:
        problems.append(f"buckets: config {gcp['buckets']} != topology {want_buckets}")

    dead_letters = {
        name: s["dead_letter_topic"]
        for name, s in topology["subscriptions"].items()
        if s["dead_letter_topic"] is not None
    }
    if gcp["dead_letter_topics"] != dead_letters:
        problems.append(f"dead-letter topics: config {gcp['dead_letter_topics']} != topology {dead_letters}")

    main_topics = {t for t in topology["topics"] if t not in dead_letters.values()}
    if set(gcp["topics"].values()) != main_topics or any(k != v for k, v in gcp["topics"].items()):
        problems.append(f"topics: config {gcp['topics']} != topology {sorted(main_topics)}")

    want_subs = {}
    for name, s in topology["subscriptions"].items():
        want_subs.setdefault(s["role"], {})[name] = s["push_path"]
    if gcp["subscriptions"] != want_subs:
        problems.append(f"subscriptions: config {gcp['subscriptions']} != topology {want_subs}")
    return problems


def topology_vs_terraform(topology, tf):
    """Every disagreement between the topology as Python reads it and the
    module outputs as Terraform computes them."""
    problems = []
    if set(tf["roles"]) != set(topology["roles"]):
        problems.append(f"roles: {sorted(tf['roles'])} != {sorted(topology['roles'])}")
    for role, r in topology["roles"].items():
        got = tf["roles"].get(role, {})
        if got.get("args") != [str(a) for a in r["args"]]:
            problems.append(f"role {role}: args {got.get('args')} != {r['args']}")

    tf_buckets = {k: v["name"] for k, v in tf["buckets"].items()}
    want = {logical: f"datashare-{logical}" for logical in topology["buckets"]}
    if tf_buckets != want:
        problems.append(f"buckets: terraform {tf_buckets} != topology {want}")
    for logical, b in topology["buckets"].items():
        got = tf["buckets"].get(logical)
        if got and (got["versioning"] != b["versioning"] or got["retention"] != b["retention"]):
            problems.append(f"bucket {logical}: terraform {got} != topology {b}")

    if sorted(tf["topics"]) != sorted(topology["topics"]):
        problems.append(f"topics: terraform {sorted(tf['topics'])} != topology {sorted(topology['topics'])}")

    if set(tf["subscriptions"]) != set(topology["subscriptions"]):
        problems.append(
            f"subscriptions: terraform {sorted(tf['subscriptions'])} != topology {sorted(topology['subscriptions'])}"
        )
    for name, s in topology["subscriptions"].items():
        got = tf["subscriptions"].get(name)
        if got is not None and got != s:
            problems.append(f"subscription {name}: terraform {got} != topology {s}")

    want_dl = {n for n, s in topology["subscriptions"].items() if s["dead_letter_topic"]}
    if set(tf["dead_lettered_subscriptions"]) != want_dl:
        problems.append(f"dead-lettered: {sorted(tf['dead_lettered_subscriptions'])} != {sorted(want_dl)}")
    return problems


# ------------------------------------------------------------------ tests

def test_topology_is_the_contract(topology):
    """The topology declares what events.md's table requires."""
    assert set(topology["roles"]) == ROLES
    assert set(topology["buckets"]) == {"raw", "curated", "products", "ops"}
    assert {"extracts", "batches", "deliveries", "notify", "schedules", "alerts", "budgets", "updates"} <= set(
        topology["topics"]
    )
    subs = topology["subscriptions"]
    expected = {
        "extracts-worker": ("extracts", "worker"),
        "batches-worker": ("batches", "worker"),
        "deliveries-sftp": ("deliveries", "sftp"),
        "deliveries-api": ("deliveries", "api"),
        "notify-email": ("notify", "email"),
        "schedules-worker": ("schedules", "worker"),
        "schedules-alert": ("schedules", "alert"),
        "alerts-alert": ("alerts", "alert"),
        # Cloud Billing budget notifications, read by the alert consumer (operations.md).
        "budgets-alert": ("budgets", "alert"),
        # What a batch step updated, read by the Power BI monitor.
        "updates-powerbi": ("updates", "powerbi"),
    }
    for name, (topic, role) in expected.items():
        assert subs[name]["topic"] == topic and subs[name]["role"] == role, name
        if name != "alerts-alert":
            assert subs[name]["dead_letter_topic"] == f"{name}-dead-letter", name
    assert subs["alerts-alert"]["dead_letter_topic"] is None
    assert subs["deliveries-sftp"]["filter"] == 'attributes.sink_sftp = "true"'
    assert subs["deliveries-api"]["filter"] == 'attributes.sink_api = "true"'

    # Every dead-letter topic is declared and read by the alert consumer.
    dead_letter_topics = [t for t in topology["topics"] if t.endswith("-dead-letter")]
    assert sorted(dead_letter_topics) == sorted(s["dead_letter_topic"] for s in subs.values() if s["dead_letter_topic"])
    for t in dead_letter_topics:
        alert_sub = subs.get(f"{t}-alert")
        assert alert_sub and alert_sub["topic"] == t and alert_sub["role"] == "alert", t

    # Cloud Scheduler sends {"kind": <kind>} and nothing else: only kinds the consumers
    # understand without further fields (src/events/schedule.rs: `tick`, `monthly`).
    kinds = {name: sched["kind"] for name, sched in topology["schedules"].items()}
    assert set(kinds.values()) <= {"tick", "monthly"}, kinds
    assert "tick" in kinds.values() and "monthly" in kinds.values(), kinds

    # Retention, products.md.
    b = topology["buckets"]
    assert b["raw"]["retention"] == [{"prefix": None, "delete_after_days": 90}]
    assert b["curated"]["retention"][0] == {"prefix": None, "delete_after_days": 400}
    # Window files outlive the 30-day window and the late days, and go long before curated/.
    window = [r for r in b["curated"]["retention"] if r["prefix"] == "window/"]
    assert window and 30 + 2 < window[0]["delete_after_days"] < 400, window
    assert b["products"]["retention"] == [{"prefix": None, "delete_after_days": 1825}]
    assert {"prefix": "deadletters/", "delete_after_days": 30} in b["ops"]["retention"]
    # What every tick lists stays bounded (src/service/schedules.rs, src/alerting/).
    assert {"prefix": "alerts/state/", "delete_after_days": 30} in b["ops"]["retention"]
    claims = [r for r in b["ops"]["retention"] if r["prefix"] == "claims/"]
    assert claims and claims[0]["delete_after_days"] >= b["curated"]["retention"][0]["delete_after_days"]

    # Ack deadlines equal the consumer's request timeout; every key spelled out.
    keys = set(subs["extracts-worker"])
    for name, s in subs.items():
        assert set(s) == keys, name
        assert s["ack_deadline_secs"] == topology["roles"][s["role"]]["request_timeout_secs"], name
        assert s["push_path"].startswith("/push/"), name
        assert s["min_backoff_secs"] <= s["max_backoff_secs"] <= 600, name


def test_terraform_computes_the_same_names(topology, tf_topology):
    assert topology_vs_terraform(topology, tf_topology) == []


def test_default_config_uses_the_same_names(topology, config):
    assert topology_vs_config(topology, config) == []


def test_terraform_names_equal_config_names(tf_topology, config):
    gcp = config["gcp"]
    assert {k: v["name"] for k, v in tf_topology["buckets"].items()} == gcp["buckets"]
    assert set(tf_topology["topics"]) == set(gcp["topics"].values()) | set(gcp["dead_letter_topics"].values())
    config_subs = {name for subs in gcp["subscriptions"].values() for name in subs}
    assert set(tf_topology["subscriptions"]) == config_subs
    for role, subs in gcp["subscriptions"].items():
        for name, path in subs.items():
            assert tf_topology["subscriptions"][name]["role"] == role
            assert tf_topology["subscriptions"][name]["push_path"] == path


def test_terraform_resources_take_names_from_the_topology(hcl):
    """No name is typed twice: buckets, topics and subscriptions iterate
    over the topology module's outputs."""
    assert unquote(hcl["modules"]["topology"]["source"]) == "./modules/topology"
    assert "../fake-gcp/topology.yaml" in hcl["modules"]["topology"]["topology_file"]
    for local, output in {
        "buckets": "buckets",
        "topics": "topics",
        "subscriptions": "subscriptions",
        "roles": "roles",
        "dead_lettered": "dead_lettered_subscriptions",
    }.items():
        assert expr(hcl["locals"][local]) == f"module.topology.{output}", local
    checks = {
        ("google_storage_bucket", "this"): ("local.buckets", "name", "each.value.name"),
        ("google_pubsub_topic", "this"): ("local.topics", "name", "each.key"),
        ("google_pubsub_subscription", "this"): ("local.subscriptions", "name", "each.key"),
        ("google_cloud_run_v2_service", "role"): ("local.roles", None, None),
        ("google_service_account", "role"): ("local.roles", None, None),
    }
    for key, (for_each, attr, value) in checks.items():
        body = hcl["resources"][key]
        assert expr(body["for_each"]) == for_each, key
        if attr:
            assert expr(body[attr]) == value, key
    # No other resource of these types could carry a hand-typed name.
    for rtype in ("google_storage_bucket", "google_pubsub_topic", "google_pubsub_subscription"):
        assert [k for k in hcl["resources"] if k[0] == rtype] == [(rtype, "this")]


def test_terraform_role_settings_cover_every_role(hcl, topology):
    roles = set(topology["roles"])
    for var in ("max_instances", "concurrency", "resources"):
        default = hcl["variables"][var]["default"]
        assert set(default) == roles, var
    for local in ("bucket_access", "publishes_to"):
        assert set(hcl["locals"][local]) == roles, local
    for role, access in hcl["locals"]["bucket_access"].items():
        assert set(access) <= set(topology["buckets"]), role
    for role, topics in hcl["locals"]["publishes_to"].items():
        for t in topics:
            assert unquote(t) in topology["topics"], (role, t)
    assert set(hcl["locals"]["storage_class_transitions"]) <= set(topology["buckets"])
    assert set(hcl["locals"]["noncurrent_retention_days"]) <= set(topology["buckets"])


def test_bucket_env_vars_are_documented(topology):
    readme = (REPO / "terraform" / "README.md").read_text()
    for logical in topology["buckets"]:
        assert f"DATASHARE_BUCKET_{logical.upper()}" in readme, logical


# ---------------------------------------------- the checks can fail at all

def renamed(topology, old, new):
    t = copy.deepcopy(topology)
    t["subscriptions"][new] = t["subscriptions"].pop(old)
    return t


def test_a_subscription_renamed_in_the_topology_only_is_caught(topology, config):
    problems = topology_vs_config(renamed(topology, "deliveries-api", "deliveries-rest"), config)
    assert any("subscriptions" in p for p in problems)


def test_a_bucket_renamed_in_the_config_only_is_caught(topology, config):
    c = copy.deepcopy(config)
    c["gcp"]["buckets"]["ops"] = "datashare-state"
    assert any("buckets" in p for p in topology_vs_config(topology, c))


def test_terraform_sees_a_renamed_subscription(topology, config, scratch):
    """End to end through a real Terraform: a topology whose subscription
    was renamed yields Terraform names that no longer match the config."""
    mutated = renamed(topology, "notify-email", "notify-mail")
    path = scratch / "topology.yaml"
    path.write_text(yaml.safe_dump(mutated, sort_keys=False))
    (scratch / "tf").mkdir()
    tf = evaluate_topology(scratch / "tf", path, "datashare")
    assert "notify-mail" in tf["subscriptions"]
    config_subs = {name for subs in config["gcp"]["subscriptions"].values() for name in subs}
    assert set(tf["subscriptions"]) != config_subs
    assert topology_vs_terraform(topology, tf) != []


def test_terraform_rejects_an_inconsistent_topology(topology, scratch):
    """The module's preconditions stop a plan whose ack deadline differs
    from the consumer's request timeout."""
    broken = copy.deepcopy(topology)
    broken["subscriptions"]["extracts-worker"]["ack_deadline_secs"] = 30
    path = scratch / "topology.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    (scratch / "tf").mkdir()
    with pytest.raises(RuntimeError, match="ack deadline"):
        evaluate_topology(scratch / "tf", path, "datashare")
