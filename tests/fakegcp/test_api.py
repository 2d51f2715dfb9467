"""The partner API stand-in (fake-gcp/partner/api.py): an upload is streamed to disk and hashed
as it arrives (the stand-in's memory stays flat whatever the upload's size), stored whole under
received/<key>/ only when every file matches its manifest; 422, 409 and 400 keep nothing."""

import base64
import hashlib
import json
import os
import pathlib
import re
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from fakegcp_lib import ROOT

PYTHON = pathlib.Path(os.environ.get("DATASHARE_CACHE") or pathlib.Path.home() / ".cache" / "datashare") \
    / "venvs" / "partner" / "bin" / "python"
SCRIPT = ROOT / "fake-gcp" / "partner" / "api.py"
BOUNDARY = "datashare-test-boundary"


class Api:
    """A running stand-in (HTTP Basic) and a small client of it (stdlib only)."""

    def __init__(self, proc, state, base, ca, password):
        self.proc, self.state, self.base, self.password = proc, state, base, password
        self.ctx = ssl.create_default_context(cafile=ca)

    def post(self, body, key, content_type=f"multipart/form-data; boundary={BOUNDARY}"):
        token = base64.b64encode(f"datashare:{self.password}".encode()).decode()
        req = urllib.request.Request(
            f"{self.base}/v1/datasets/daily/files", data=body, method="POST",
            headers={"Authorization": f"Basic {token}", "Idempotency-Key": key,
                     "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def received(self, key):
        folder = self.state / "received" / key
        return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}

    def incoming(self):
        folder = self.state / "incoming"
        return list(folder.iterdir()) if folder.exists() else []

    def peak_rss_mib(self):
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def multipart(parts):
    """A multipart/form-data body of (field, file name, bytes) parts."""
    out = bytearray()
    for field, name, data in parts:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def upload(name, data, sha256=None):
    """The parts of one file, its manifest (with `sha256`, else the file's) and a dictionary."""
    manifest = json.dumps({"file": name, "sha256": sha256 or hashlib.sha256(data).hexdigest()})
    return [("file", name, data), ("manifest", f"{name}.manifest.json", manifest.encode()),
            ("dictionary", "dictionary.pt-BR.md", "# Dicionário\n".encode())]


@pytest.fixture
def api(tmp_path):
    """A stand-in on a free loopback port; stopped at the end."""
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run scripts/setup.sh")
    password = os.urandom(12).hex()
    proc = subprocess.Popen([str(PYTHON), str(SCRIPT), "--state-dir", str(tmp_path)],
                            env={**os.environ, "PARTNER_API_USER": "datashare", "PARTNER_API_PASSWORD": password},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the stand-in exited before it was ready"
        ready = json.loads(line)
        yield Api(proc, tmp_path, ready["base_url"], ready["ca"], password)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_large_upload_is_stored_whole_in_bounded_memory_and_once(api):
    # 80 MiB of data that is not one repeated chunk: a part boundary cut between two reads
    # must not lose or duplicate bytes.
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(80 * 2**20 // 32))
    body = multipart(upload("daily.csv", data))
    assert api.post(body, "key-large-1") == (201, {"id": "key-large-1", "files": ["daily.csv"]})
    got = api.received("key-large-1")
    assert got["daily.csv"] == data
    assert set(got) == {"daily.csv", "daily.csv.manifest.json", "dictionary.pt-BR.md"}
    assert got["dictionary.pt-BR.md"] == "# Dicionário\n".encode()
    assert api.incoming() == []
    # The body is never held whole: the old stand-in peaked at several times its size.
    assert api.peak_rss_mib() < 64, api.peak_rss_mib()
    status, doc = api.post(body, "key-large-1")
    assert (status, doc["error"]) == (409, "already received")


def test_a_file_that_is_not_its_manifest_is_refused_and_kept_nowhere(api):
    data = os.urandom(3 * 2**20)
    status, doc = api.post(multipart(upload("daily.csv", data, sha256="0" * 64)), "key-mismatch")
    assert status == 422 and "does not match its manifest" in doc["error"]
    assert api.received("key-mismatch") == {} and api.incoming() == []
    # The key was not used up: the right file under it is stored.
    assert api.post(multipart(upload("daily.csv", data)), "key-mismatch")[0] == 201
    assert api.received("key-mismatch")["daily.csv"] == data


def test_malformed_bodies_get_a_400_and_the_server_goes_on(api):
    whole = multipart(upload("daily.csv", b"a,b\n1,2\n"))
    status, doc = api.post(whole[: len(whole) // 2], "key-cut-short")
    assert status == 400 and "bad multipart body" in doc["error"]
    status, doc = api.post(b"a,b\n", "key-no-boundary", content_type="text/csv")
    assert (status, doc["error"]) == (400, "need file and manifest parts")
    status, doc = api.post(multipart([("file", "daily.csv", b"a,b\n")]), "key-no-manifest")
    assert (status, doc["error"]) == (400, "need file and manifest parts")
    assert api.incoming() == [] and not (api.state / "received").exists()
    assert api.post(whole, "key-after-errors")[0] == 201


def test_file_names_cannot_leave_the_upload_folder(api):
    for name in ("..", "../escape.csv", ".hidden"):
        status, _ = api.post(multipart(upload(name, b"a,b\n")), f"key-name-{len(name):02}")
        assert status == 201, name
    received = api.state / "received"
    assert sorted(p.name for p in received.iterdir()) == ["key-name-02", "key-name-07", "key-name-13"]
    assert all(p.is_file() for key in received.iterdir() for p in key.iterdir())
    assert not (api.state / "escape.csv").exists() and not (received / "escape.csv").exists()
