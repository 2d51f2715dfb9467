"""docs/architecture.md draws what fake-gcp/topology.yaml deploys: every topic, subscription,
dead-letter topic, bucket and role appears, each subscription's edge goes from its topic to
its role, each dead-letter edge from the subscription's topic to its dead-letter topic, and the
diagrams name nothing that does not exist."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
NAME = r"([a-z][a-z0-9-]*[a-z0-9])"


def node(prefix, name):
    """The Mermaid node id the diagrams use for a topic (T), role (R) or bucket (B)."""
    return f"{prefix}_{name.replace('-', '_')}"


def mermaid_blocks(text):
    return re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)


def diagram_vs_topology(text, topology):
    """Every disagreement between the architecture page and the topology."""
    problems = []
    blocks = mermaid_blocks(text)
    if len(blocks) < 3:
        return [f"expected at least 3 Mermaid diagrams, found {len(blocks)}"]
    if not any(b.lstrip().startswith("sequenceDiagram") for b in blocks):
        problems.append("no sequence diagram of one day's messages")
    diagrams = "\n".join(blocks)
    # Prose may name them too, in backticks: `topic x`, `sub y`.
    prose = " ".join(re.findall(r"`((?:topic|sub) [a-z0-9-]+)`", re.sub(r"```.*?```", "", text, flags=re.S)))
    named = diagrams + "\n" + prose

    subs = topology["subscriptions"]
    topics, roles, buckets = set(topology["topics"]), set(topology["roles"]), set(topology["buckets"])

    def compare(what, found, want):
        for n in sorted(want - found):
            problems.append(f"{what} {n} of the topology is not in the diagrams")
        for n in sorted(found - want):
            problems.append(f"{what} {n} is in the diagrams but not in the topology")

    compare("topic", set(re.findall(rf"\btopic {NAME}", named)), topics)
    compare("subscription", set(re.findall(rf"\bsub {NAME}", named)), set(subs))
    compare("bucket", set(re.findall(rf"\bbucket {NAME}", diagrams)), buckets)
    role_nodes = {n for n in re.findall(r"\bR_([a-z0-9_]+)\b", diagrams)}
    compare("role", role_nodes, {r.replace("-", "_") for r in roles})

    # A topic's node carries its name: T_x{{"topic x"}}.
    for ident, name in re.findall(rf'\b(T_\w+)\{{\{{"topic {NAME}"\}}\}}', diagrams):
        if ident != node("T", name):
            problems.append(f"node {ident} is labelled topic {name}")

    # Each `sub` edge: from its topic's node to its role's node.
    seen_edges = set()
    for src, name, dst in re.findall(rf'\b(\w+)\s*-->\|"sub {NAME}"\|\s*(\w+)', diagrams):
        spec = subs.get(name)
        if spec is None:
            continue  # reported above
        seen_edges.add(name)
        if src != node("T", spec["topic"]):
            problems.append(f"sub {name} is drawn from {src}, its topic is {spec['topic']}")
        if dst != node("R", spec["role"]):
            problems.append(f"sub {name} is drawn to {dst}, its role is {spec['role']}")
    for name in sorted(set(subs) - seen_edges):
        problems.append(f"sub {name} has no edge from its topic to its role")

    # Each dead-letter edge: from the subscription's topic to its dead-letter topic.
    drawn_dlq = set()
    for src, name, dst in re.findall(rf'\b(\w+)\s*-\.->\|"DLQ of {NAME}"\|\s*(\w+)', diagrams):
        spec = subs.get(name)
        if spec is None or not spec["dead_letter_topic"]:
            problems.append(f"DLQ of {name}: the topology has no such dead-lettered subscription")
            continue
        drawn_dlq.add(name)
        if src != node("T", spec["topic"]) or dst != node("T", spec["dead_letter_topic"]):
            problems.append(f"DLQ of {name} is drawn {src} -> {dst}, not {spec['topic']} -> "
                            f"{spec['dead_letter_topic']}")
    for name in sorted(n for n, s in subs.items() if s["dead_letter_topic"] and n not in drawn_dlq):
        problems.append(f"the dead letters of {name} are not drawn (DLQ of {name})")

    # The notification that starts it all.
    for note in topology.get("notifications") or []:
        edge = rf'\b{node("B", note["bucket"])}\s*-->\|"OBJECT_FINALIZE[^"]*"\|\s*{node("T", note["topic"])}\b'
        if not re.search(edge, diagrams):
            problems.append(f"the notification of bucket {note['bucket']} to topic {note['topic']} is not drawn")
    return problems


def test_the_architecture_diagrams_match_the_topology(topology):
    problems = diagram_vs_topology(DOC.read_text(), topology)
    assert not problems, "docs/architecture.md and fake-gcp/topology.yaml disagree:\n" + "\n".join(problems)


def test_the_check_catches_drift(topology):
    text = DOC.read_text()
    # A topic and subscription added to the topology but not drawn.
    grown = {**topology, "topics": [*topology["topics"], "refunds"],
             "subscriptions": {**topology["subscriptions"], "refunds-worker": {
                 **topology["subscriptions"]["extracts-worker"], "topic": "refunds",
                 "dead_letter_topic": None}}}
    problems = diagram_vs_topology(text, grown)
    assert "topic refunds of the topology is not in the diagrams" in problems
    assert "subscription refunds-worker of the topology is not in the diagrams" in problems
    # A diagram naming a subscription that does not exist, or drawing one to the wrong role.
    bad = text.replace('-->|"sub deliveries-api"| R_api', '-->|"sub deliveries-apis"| R_api', 1)
    assert "subscription deliveries-apis is in the diagrams but not in the topology" in \
        diagram_vs_topology(bad, topology)
    wrong = text.replace('-->|"sub notify-email"| R_email', '-->|"sub notify-email"| R_alert', 1)
    assert "sub notify-email is drawn to R_alert, its role is email" in diagram_vs_topology(wrong, topology)
    dlq = text.replace('"DLQ of batches-worker"| T_batches_worker_dead_letter',
                       '"DLQ of batches-worker"| T_extracts_worker_dead_letter', 1)
    assert any(p.startswith("DLQ of batches-worker is drawn") for p in diagram_vs_topology(dlq, topology))
