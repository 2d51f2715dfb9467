"""Helpers of the fake-gcp tests: start and stop a stack with fake-gcp/stack.py,
and talk to its emulators over their REST APIs (stdlib only)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK = ROOT / "fake-gcp" / "stack.py"


def load_stack_module():
    """fake-gcp/stack.py as a module, for its topology readers."""
    spec = importlib.util.spec_from_file_location("fakegcp_stack", STACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_stack(state: pathlib.Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STACK), "--state", str(state), *args],
                          capture_output=True, text=True, timeout=timeout)


class Stack:
    """One running stack with its own state file, on free ports."""

    def __init__(self, state: pathlib.Path, *up_args: str):
        self.state_path = state
        self.up_args = up_args
        self.env: dict[str, str] = {}
        self.state: dict = {}

    def up(self) -> "Stack":
        done = run_stack(self.state_path, "up", "--json", *self.up_args)
        if done.returncode != 0:
            self.down()  # whatever it left
            raise AssertionError(f"stack up failed ({done.returncode}):\n{done.stderr}")
        self.env = json.loads(done.stdout)
        self.state = json.loads(self.state_path.read_text())
        return self

    def down(self) -> subprocess.CompletedProcess:
        done = run_stack(self.state_path, "down")
        assert done.returncode == 0, done.stderr
        return done

    def stack(self, *args: str) -> subprocess.CompletedProcess:
        return run_stack(self.state_path, *args)

    @property
    def project(self) -> str:
        return self.env["GOOGLE_CLOUD_PROJECT"]

    # -- Pub/Sub REST

    def pubsub(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        url = f"http://{self.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{self.project}/{path}"
        return request(method, url, body)

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        status, reply = self.pubsub("POST", f"topics/{topic}:publish", {"messages": [
            {"data": base64.b64encode(data).decode(), "attributes": attributes}]})
        assert status == 200, reply
        return reply["messageIds"][0]

    def pull(self, subscription: str, max_messages: int = 50) -> list[dict]:
        status, reply = self.pubsub("POST", f"subscriptions/{subscription}:pull",
                                    {"maxMessages": max_messages, "returnImmediately": True})
        assert status == 200, reply
        return reply.get("receivedMessages", [])

    def ack(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            status, reply = self.pubsub("POST", f"subscriptions/{subscription}:acknowledge",
                                        {"ackIds": ack_ids})
            assert status == 200, reply

    def nack(self, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            status, reply = self.pubsub("POST", f"subscriptions/{subscription}:modifyAckDeadline",
                                        {"ackIds": ack_ids, "ackDeadlineSeconds": 0})
            assert status == 200, reply

    def pull_until(self, subscription: str, match, timeout: float = 20,
                   ack_others: bool = True) -> dict:
        """Pulls until a received message satisfies `match`, acknowledges it and
        returns it; other messages are acknowledged (or nacked) on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.pull(subscription)
            hit = next((r for r in received if match(r["message"])), None)
            others = [r["ackId"] for r in received if r is not hit]
            (self.ack if ack_others else self.nack)(subscription, others)
            if hit:
                self.ack(subscription, [hit["ackId"]])
                return hit
            time.sleep(0.1)
        raise AssertionError(f"no matching message on {subscription} within {timeout} s")

    # -- Cloud Storage JSON API

    @property
    def gcs(self) -> str:
        return self.env["STORAGE_EMULATOR_HOST"]

    def upload_multipart(self, bucket: str, name: str, data: bytes, **params) -> tuple[int, dict]:
        """The official clients' upload for small objects (metadata + media in one request)."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{json.dumps({'name': name, 'contentType': 'text/plain'})}\r\n"
                f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n").encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
        query = urllib.parse.urlencode({"uploadType": "multipart", **params})
        return request("POST", f"{self.gcs}/upload/storage/v1/b/{bucket}/o?{query}", raw=body,
                       content_type=f"multipart/related; boundary={boundary}")

    def upload_media(self, bucket: str, name: str, data: bytes, **params) -> tuple[int, dict]:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name, **params})
        return request("POST", f"{self.gcs}/upload/storage/v1/b/{bucket}/o?{query}", raw=data,
                       content_type="text/plain")

    def object_meta(self, bucket: str, name: str) -> tuple[int, dict]:
        return request("GET", f"{self.gcs}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")

    def object_data(self, bucket: str, name: str) -> bytes:
        url = f"{self.gcs}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read()


def request(method: str, url: str, body: dict | None = None, raw: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        parsed = json.loads(text) if text.strip() else {}
    except ValueError:
        parsed = {"raw": text.decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"value": parsed}


def two_free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_with(needle: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains `needle`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in cmd and stat[stat.rindex(")") + 2] != "Z" and int(entry) != os.getpid():
            found.append((int(entry), cmd))
    return found


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
