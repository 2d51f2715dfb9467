"""What `terraform validate` would catch first, done offline: every
variable, local, resource, data source and module output that the
configuration references is declared (validate needs the google provider,
which cannot be downloaded here)."""

import re

import hcl2
import pytest

from infra_lib import REPO, literal_strings, parse_terraform_dir, unquote

REF = re.compile(
    r"(?<![\w.])(?:(var)\.(\w+)|(local)\.(\w+)|(module)\.(\w+)\.(\w+)|(data)\.(\w+)\.(\w+)|(google_\w+)\.(\w+))"
)


def references(doc):
    for s in literal_strings(doc):
        if isinstance(s, str) and "${" in s:
            for m in REF.finditer(s):
                yield tuple(g for g in m.groups() if g is not None)


def declared_outputs(module_dir):
    names = set()
    for path in module_dir.glob("*.tf"):
        with path.open() as f:
            for block in hcl2.load(f).get("output", []):
                names |= {unquote(k) for k in block}
    return names


def declared_data(hcl):
    names = set()
    for doc in hcl["files"].values():
        for block in doc.get("data", []):
            for dtype, named in block.items():
                names |= {(unquote(dtype), unquote(n)) for n in named}
    return names


def test_every_reference_is_declared(hcl):
    outputs = {name: declared_outputs(REPO / "terraform" / unquote(body["source"]))
               for name, body in hcl["modules"].items()}
    data = declared_data(hcl)
    resources = set(hcl["resources"])
    missing = set()
    for ref in references(hcl["files"]):
        kind = ref[0]
        if kind == "var" and ref[1] not in hcl["variables"]:
            missing.add(ref)
        elif kind == "local" and ref[1] not in hcl["locals"]:
            missing.add(ref)
        elif kind == "module" and (ref[1] not in outputs or ref[2] not in outputs[ref[1]]):
            missing.add(ref)
        elif kind == "data" and (ref[1], ref[2]) not in data:
            missing.add(ref)
        elif kind.startswith("google_") and (kind, ref[1]) not in resources:
            missing.add(ref)
    assert not missing, sorted(missing)


def test_the_reference_check_can_fail(tmp_path):
    (tmp_path / "main.tf").write_text(
        'resource "google_pubsub_topic" "t" {\n  name = var.missing\n  labels = local.nope\n}\n'
    )
    refs = set(references(parse_terraform_dir(tmp_path)["files"]))
    assert ("var", "missing") in refs and ("local", "nope") in refs


def test_every_variable_has_a_description_and_validation(hcl):
    for name, body in hcl["variables"].items():
        assert unquote(body.get("description", "")).strip(), name
        if expr_type(body) != "bool":  # a bool has nothing to validate
            assert body.get("validation"), f"variable {name} has no validation"


def expr_type(body):
    t = body.get("type", "")
    return t[2:-1] if isinstance(t, str) and t.startswith("${") else t
