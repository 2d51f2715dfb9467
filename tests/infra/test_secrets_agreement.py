"""The deployed services can read what the contracts and the configuration ask for: the image
ships the contracts, every secret file a contract names is a Secret Manager secret that
Terraform creates and mounts, and the SMTP password file is mounted where the relay settings
point."""

import re

from infra_lib import REPO

MOUNT = re.compile(r'file = "/secrets/([a-z0-9-]+)/value"')


def secret_ids_declared():
    """The secret ids secrets.tf can create, with `<partner>` for the partner's name."""
    text = (REPO / "terraform" / "secrets.tf").read_text()
    ids = set(re.findall(r'id = "\$\{partner\}-([a-z0-9-]+)"', text))
    fixed = set(re.findall(r'^\s+"([a-z0-9-]+)"\s+= \[', text, re.M))
    return {f"<partner>-{i}" for i in ids} | fixed


def test_the_image_ships_the_contracts():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY partners/ /app/partners/$", text, re.M), "the runtime stage copies partners/"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "partners" not in ignored and "partners/" not in ignored


def test_every_secret_file_of_a_contract_is_a_mounted_secret():
    declared = secret_ids_declared()
    assert "<partner>-hmac-key" in declared and "smtp-password" in declared, declared
    for contract in (REPO / "partners").glob("*.toml"):
        partner = contract.stem
        text = contract.read_text()
        active = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        named = MOUNT.findall(active)
        assert named, f"{contract.name} names no Secret Manager file"
        for sid in named:
            assert sid.startswith(f"{partner}-"), (contract.name, sid)
            assert f"<partner>-{sid.removeprefix(partner + '-')}" in declared, (contract.name, sid)


def test_the_smtp_password_file_is_the_mounted_secret():
    main = (REPO / "terraform" / "main.tf").read_text()
    m = re.search(r'DATASHARE_SMTP_PASSWORD_FILE\s*=\s*"/secrets/([a-z0-9-]+)/value"', main)
    assert m, "the SMTP password comes from a mounted secret file"
    assert m.group(1) in secret_ids_declared()


def test_the_agreement_check_can_fail():
    assert "<partner>-sftp-key" in secret_ids_declared()
    assert "<partner>-no-such-secret" not in secret_ids_declared()
