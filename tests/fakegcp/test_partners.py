"""The partner stand-ins of the local stack: `up` starts sshd, the HTTPS API and the SMTP
relay with throwaway secrets, writes a local partners folder and the env a client needs;
`down` stops them all; `--no-partners` leaves them out."""

import base64
import json
import os
import socket
import ssl
import stat
import tomllib
import urllib.error
import urllib.request

from fakegcp_lib import Stack, listening, processes_with

PARTNER_ENV = [
    "DATASHARE_PARTNERS_DIR", "DATASHARE_GCP_PROJECT",
    "DATASHARE_SMTP_HOST", "DATASHARE_SMTP_PORT", "DATASHARE_SMTP_TLS", "DATASHARE_SMTP_FROM",
    "DATASHARE_SMTP_USER", "DATASHARE_SMTP_PASSWORD_FILE", "DATASHARE_SMTP_CA_FILE",
    "FAKE_GCP_SECRETS_DIR", "FAKE_GCP_SFTP_ROOT", "FAKE_GCP_API_RECEIVED", "FAKE_GCP_MAIL_DIR",
]


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(200)


def health(base_url: str, ca: str, password: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    token = base64.b64encode(f"datashare:{password}".encode()).decode()
    req = urllib.request.Request(f"{base_url}/health", headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_up_starts_the_stand_ins_and_down_stops_them(tmp_path):
    stack = Stack(tmp_path / "stack.json")
    try:
        stack.up()
        env, state = stack.env, stack.state
        missing = [k for k in PARTNER_ENV if not env.get(k)]
        assert not missing, f"env lacks {missing}"
        procs = state["processes"]
        assert {"pubsub", "gcs", "gcs-front", "sftp", "api", "smtp", "powerbi"} <= set(procs)
        for name in ("sftp", "api", "smtp", "powerbi"):
            assert listening(procs[name]["port"]), name

        # The ports answer as the real thing.
        assert banner(procs["sftp"]["port"]).startswith(b"SSH-2.0-OpenSSH")
        assert banner(int(env["DATASHARE_SMTP_PORT"])).startswith(b"220 ")

        # The local contract points at them, with secrets in files of the state dir.
        with open(os.path.join(env["DATASHARE_PARTNERS_DIR"], "ouchhungry.toml"), "rb") as f:
            contract = tomllib.load(f)
        sinks = {s["type"]: s for s in contract["sinks"]}
        assert sinks["sftp"]["port"] == procs["sftp"]["port"]
        assert sinks["sftp"]["host"] == "127.0.0.1"
        assert sinks["sftp"]["root"] == env["FAKE_GCP_SFTP_ROOT"]
        host_pub = (tmp_path / "partner" / "sftp" / "ssh_host_ed25519_key.pub").read_text()
        assert sinks["sftp"]["host_key"] == host_pub.strip(), "the local sshd's key is pinned"
        secrets = env["FAKE_GCP_SECRETS_DIR"]
        refs = [sinks["sftp"]["private_key"], sinks["sftp"]["passphrase"],
                sinks["api"]["auth"]["password"], contract["pseudonymization"]["secret"]]
        values = []
        for ref in refs:
            assert set(ref) == {"file"} and ref["file"].startswith(secrets + "/"), ref
            assert stat.S_IMODE(os.stat(ref["file"]).st_mode) == 0o600
            values.append(open(ref["file"]).read().strip())
        values.append(open(env["DATASHARE_SMTP_PASSWORD_FILE"]).read().strip())
        assert all(len(v) >= 16 for v in values)

        # The API checks the throwaway password over HTTPS from the throwaway CA.
        api = sinks["api"]
        password = open(api["auth"]["password"]["file"]).read().strip()
        assert health(api["base_url"], api["ca_file"], password) == 200
        assert health(api["base_url"], api["ca_file"], "wrong-password") == 401

        # No secret is printed or kept in the state file.
        printed = stack.stack("env").stdout + json.dumps(env) + stack.state_path.read_text()
        for v in values:
            assert v not in printed, "a throwaway secret was printed"
    finally:
        stack.down()
    for name in ("sftp", "api", "smtp", "powerbi"):
        assert not listening(procs[name]["port"]), f"{name} still listens"
        assert processes_with(str(tmp_path / "partner" / name)) == [], f"{name} left a process"
    assert processes_with(f"{tmp_path}/partner/sftp/sshd_config") == [], "sshd left behind"


def test_no_partners_starts_only_the_emulators(tmp_path):
    stack = Stack(tmp_path / "stack.json", "--no-partners")
    try:
        stack.up()
        assert set(stack.state["processes"]) == {"pubsub", "gcs", "gcs-front"}
        assert "DATASHARE_PARTNERS_DIR" not in stack.env
    finally:
        stack.down()
