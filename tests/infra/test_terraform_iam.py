"""IAM read from the Terraform source (python-hcl2), evaluated against the
topology as Terraform computes it: dead-lettering works, and no account
holds a primitive role."""

import re

from infra_lib import PRIMITIVE_ROLES, expr, literal_strings, resolve_collection, unquote

IAM_RESOURCE = re.compile(r"^google_.*_iam_(member|binding|policy)$")


def resources_of(hcl, rtype):
    return {name: body for (t, name), body in hcl["resources"].items() if t == rtype}


def pubsub_agent_bindings(hcl, rtype, role):
    """The resources of `rtype` granting `role` to the Pub/Sub service agent."""
    agent = unquote(hcl["locals"]["pubsub_service_agent"])
    assert re.fullmatch(
        r"serviceAccount:service-\$\{data\.google_project\.this\.number\}@gcp-sa-pubsub\.iam\.gserviceaccount\.com",
        agent,
    ), agent
    return {
        name: body
        for name, body in resources_of(hcl, rtype).items()
        if unquote(body["role"]) == role and expr(body["member"]) == "local.pubsub_service_agent"
    }


def test_every_dead_letter_policy_has_the_pubsub_agent_bindings(hcl, topology, tf_topology):
    # The subscriptions Terraform gives a dead-letter policy: those of the
    # subscription resource's for_each whose dead_letter_topic is set.
    sub = hcl["resources"][("google_pubsub_subscription", "this")]
    dynamic = {unquote(k): v for d in sub["dynamic"] for k, v in d.items()}
    policy = dynamic["dead_letter_policy"]
    assert expr(policy["for_each"]) == "each.value.dead_letter_topic == null ? [] : [each.value]"
    assert expr(policy["content"][0]["dead_letter_topic"]) == (
        "google_pubsub_topic.this[dead_letter_policy.value.dead_letter_topic].id"
    )
    subs = resolve_collection(hcl, expr(sub["for_each"]), tf_topology)
    with_policy = {name: s["dead_letter_topic"] for name, s in subs.items() if s["dead_letter_topic"] is not None}
    assert with_policy == {
        name: s["dead_letter_topic"] for name, s in topology["subscriptions"].items() if s["dead_letter_topic"]
    }
    assert len(with_policy) == 10

    publishers = pubsub_agent_bindings(hcl, "google_pubsub_topic_iam_member", "roles/pubsub.publisher")
    subscribers = pubsub_agent_bindings(hcl, "google_pubsub_subscription_iam_member", "roles/pubsub.subscriber")
    assert publishers and subscribers

    # Publisher on each dead-letter topic.
    granted_topics = set()
    for body in publishers.values():
        assert expr(body["topic"]) == "google_pubsub_topic.this[each.value.dead_letter_topic].id"
        for value in resolve_collection(hcl, expr(body["for_each"]), tf_topology).values():
            granted_topics.add(value["dead_letter_topic"])
    # Subscriber on each source subscription.
    granted_subs = set()
    for body in subscribers.values():
        assert expr(body["subscription"]) == "google_pubsub_subscription.this[each.key].id"
        granted_subs |= set(resolve_collection(hcl, expr(body["for_each"]), tf_topology))

    for name, dead_letter_topic in with_policy.items():
        assert dead_letter_topic in granted_topics, f"no publisher binding on {dead_letter_topic}"
        assert name in granted_subs, f"no subscriber binding on {name}"


def test_the_gcs_agent_publishes_notifications(hcl, tf_topology):
    body = hcl["resources"][("google_pubsub_topic_iam_member", "gcs_agent_publishes")]
    assert unquote(body["role"]) == "roles/pubsub.publisher"
    assert "data.google_storage_project_service_account.gcs.email_address" in body["member"]
    notes = tf_topology["notifications"]
    assert notes == [{"bucket": "raw", "topic": "extracts", "event_types": ["OBJECT_FINALIZE"],
                      "payload_format": "JSON_API_V1"}]


def test_no_primitive_role_anywhere(hcl):
    roles = [s for s in literal_strings(hcl["files"]) if isinstance(s, str) and s.startswith("roles/")]
    assert roles, "no role found: the parse is broken"
    assert not PRIMITIVE_ROLES & set(roles), roles


def test_every_iam_grant_is_additive_and_named(hcl):
    """Only *_iam_member (never authoritative bindings or policies, which
    would silently drop grants made elsewhere), no public member, and every
    role either a literal or taken from a local whose literals were checked."""
    iam = {k: v for k, v in hcl["resources"].items() if IAM_RESOURCE.match(k[0])}
    assert iam
    for (rtype, name), body in iam.items():
        assert rtype.endswith("_iam_member"), (rtype, name)
        member = str(body["member"])
        assert "allUsers" not in member and "allAuthenticatedUsers" not in member, (rtype, name)
        role = body["role"]
        if expr(role) is None:
            assert unquote(role) not in PRIMITIVE_ROLES, (rtype, name)
        else:
            assert expr(role) == "each.value.iam_role", (rtype, name)
    assert not [k for k in hcl["resources"] if k[0] in ("google_project_iam_binding", "google_project_iam_policy")]


def test_services_are_private_and_invoked_by_the_invoker_only(hcl):
    invokers = resources_of(hcl, "google_cloud_run_v2_service_iam_member")
    assert list(invokers) == ["invoker"]
    assert unquote(invokers["invoker"]["role"]) == "roles/run.invoker"
    assert expr(invokers["invoker"]["member"]) is None  # an interpolated literal, checked below
    assert "google_service_account.invoker.email" in invokers["invoker"]["member"]
    svc = hcl["resources"][("google_cloud_run_v2_service", "role")]
    assert unquote(svc["ingress"]) == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    scaling = svc["template"][0]["scaling"][0]
    assert scaling["min_instance_count"] == 0
    sub = hcl["resources"][("google_pubsub_subscription", "this")]
    oidc = sub["push_config"][0]["oidc_token"][0]
    assert expr(oidc["service_account_email"]) == "google_service_account.invoker.email"


def test_each_role_runs_as_its_own_account(hcl):
    svc = hcl["resources"][("google_cloud_run_v2_service", "role")]
    assert expr(svc["template"][0]["service_account"]) == "google_service_account.role[each.key].email"
