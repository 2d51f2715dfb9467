#!/usr/bin/env python3
"""A partner's REST API over HTTPS: takes `multipart/form-data` uploads of files and manifests.

    PARTNER_API_USER=... PARTNER_API_PASSWORD=... api.py --state-dir DIR     (HTTP Basic)
    PARTNER_API_TOKEN=... api.py --state-dir DIR                             (bearer token)

Routes:
  GET  [/prefix]/health             200 with valid credentials, 401 without
  POST [/prefix]/datasets/<product>/files   parts `file` and `manifest` (repeated), optional
                                    `dictionary` (stored with them); needs credentials and
                                    an Idempotency-Key; 201 and stored under
                                    DIR/received/<key>/; 409 when the key was seen; 422 when a
                                    file's SHA-256 is not its manifest's; the body is streamed
                                    to disk and hashed as it arrives (memory stays one
                                    chunk, whatever the upload's size)
  POST /_control/script             JSON list of answers for the next uploads, in order:
                                    {"status": 500} | {"status": 429, "retry_after": "1"} |
                                    {"status": 400} | {"hang": seconds}
Every request is appended to DIR/requests.jsonl (time, method, path, status, key; never a
credential). Makes a throwaway CA (DIR/api-ca.pem) and server certificate at start. Prints
{"ready": true, "port": N, "ca": ..., "base_url": "https://127.0.0.1:N"}.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

import multipart

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOCK = threading.Lock()
SCRIPT = []
SEEN = set()


CHUNK = 1 << 20


def boundary_of(content_type):
    """The multipart boundary of a `Content-Type` header, or None."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    return m.group(1) if m else None


def receive_parts(rfile, length, boundary, folder):
    """Streams a `multipart/form-data` body of `length` bytes from `rfile` into `folder`, one
    file per part (under its file name's last segment, else its field name), hashing each as
    it arrives: memory stays one chunk whatever the size. Returns the parts as dicts (field,
    filename, name: the safe file name to store it under, path, sha256, bytes); raises `multipart.MultipartError` on a malformed body."""
    parts, out, digest = [], None, None
    left = length
    try:
        with multipart.PushMultipartParser(boundary, content_length=length) as parser:
            while not parser.closed:
                chunk = rfile.read(min(CHUNK, left)) if left else b""
                left -= len(chunk)
                if left and not chunk:
                    raise multipart.MultipartError("the body ended early")
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        name = os.path.basename(event.filename or event.name or "") or "part"
                        if name.startswith("."):
                            name = "part" + name
                        path = os.path.join(folder, f"{len(parts):03}-{name}")
                        parts.append({"field": event.name, "filename": event.filename or "",
                                      "name": name, "path": path, "bytes": 0})
                        out, digest = open(path, "wb"), hashlib.sha256()
                    elif event:
                        out.write(event)
                        digest.update(event)
                        parts[-1]["bytes"] += len(event)
                    else:
                        out.close()
                        parts[-1]["sha256"] = digest.hexdigest()
                        out = None
    finally:
        if out is not None:  # a part cut short: its file is closed, the caller removes it
            out.close()
    while left:  # an epilogue after the closing boundary
        chunk = rfile.read(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
    return parts


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "partner-api"

    def log_message(self, fmt, *args):
        common.log("api: " + fmt % args)

    def record(self, status, **extra):
        entry = {
            "time": time.time(),
            "method": self.command,
            "path": self.path,
            "status": status,
            "key": self.headers.get("Idempotency-Key"),
            **extra,
        }
        with LOCK, open(os.path.join(self.server.state, "requests.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def answer(self, status, payload=None, headers=None):
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        got = self.headers.get("Authorization", "")
        cfg = self.server.credentials
        if "token" in cfg:
            want = "Bearer " + cfg["token"]
        else:
            raw = f"{cfg['user']}:{cfg['password']}".encode()
            want = "Basic " + base64.b64encode(raw).decode()
        return hmac.compare_digest(got.encode(), want.encode())

    def body_length(self):
        return int(self.headers.get("Content-Length") or 0)

    def read_body(self):
        n = self.body_length()
        return self.rfile.read(n) if n else b""

    def drain_body(self):
        """Reads the request's body and drops it (an answer that does not need it)."""
        left = self.body_length()
        while left:
            chunk = self.rfile.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)

    def do_GET(self):
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)*/health", self.path):
            self.record(404)
            return self.answer(404, {"error": "not found"})
        if not self.authorized():
            self.record(401)
            return self.answer(401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Basic realm="partner"'})
        self.record(200)
        self.answer(200, {"status": "ok"})

    def do_POST(self):
        if self.path == "/_control/script":
            with LOCK:
                SCRIPT.extend(json.loads(self.read_body() or b"[]"))
            return self.answer(200, {"queued": len(SCRIPT)})
        m = re.fullmatch(r"(?:/[A-Za-z0-9_.-]+)*/datasets/([a-z]+)/files", self.path)
        if not m:
            self.drain_body()
            self.record(404)
            return self.answer(404, {"error": "not found"})
        with LOCK:
            scripted = SCRIPT.pop(0) if SCRIPT else None
        if scripted:
            self.drain_body()
            if "hang" in scripted:
                self.record("hang")
                time.sleep(float(scripted["hang"]))
                self.close_connection = True
                return
            status = int(scripted["status"])
            headers = {}
            if "retry_after" in scripted:
                headers["Retry-After"] = str(scripted["retry_after"])
            self.record(status, scripted=True)
            return self.answer(status, {"error": "scripted"}, headers)
        if not self.authorized():
            self.drain_body()
            self.record(401)
            return self.answer(401, {"error": "unauthorized"})
        key = self.headers.get("Idempotency-Key", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,128}", key):
            self.drain_body()
            self.record(400)
            return self.answer(400, {"error": "missing or bad Idempotency-Key"})
        incoming = os.path.join(self.server.state, "incoming")
        os.makedirs(incoming, exist_ok=True)
        folder = tempfile.mkdtemp(dir=incoming)
        try:
            status, payload = self.store_upload(key, m.group(1), folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.answer(status, payload)

    def store_upload(self, key, product, folder):
        """Receives an upload into `folder` (streamed, hashed as it arrives), checks it and,
        when it is new and whole, moves it to received/<key>/; returns (status, payload)."""
        boundary = boundary_of(self.headers.get("Content-Type"))
        try:
            if boundary:
                parts = receive_parts(self.rfile, self.body_length(), boundary, folder)
            else:
                self.drain_body()
                parts = []
        except multipart.MultipartError as e:
            self.close_connection = True  # where the body ended is unknown
            self.record(400)
            return 400, {"error": f"bad multipart body: {e}"}
        files = [p for p in parts if p["field"] == "file"]
        manifests = [p for p in parts if p["field"] == "manifest"]
        dictionaries = [p for p in parts if p["field"] == "dictionary"]
        if not files or not manifests:
            self.record(400)
            return 400, {"error": "need file and manifest parts"}
        by_file = {}
        for mf in manifests:
            try:
                with open(mf["path"], "rb") as f:
                    doc = json.loads(f.read(CHUNK))
                by_file[doc["file"]] = doc
            except (ValueError, KeyError, TypeError):
                self.record(400)
                return 400, {"error": f"bad manifest {mf['filename']}"}
        for f in files:
            doc = by_file.get(f["filename"])
            if doc is None or doc.get("sha256") != f["sha256"]:
                self.record(422)
                return 422, {"error": f"{f['filename']} does not match its manifest"}
        with LOCK:
            duplicate = key in SEEN
            SEEN.add(key)
        if duplicate:
            self.record(409)
            return 409, {"error": "already received", "id": key}
        stored = files + manifests + dictionaries
        target = os.path.join(self.server.state, "received", key)
        os.makedirs(target, exist_ok=True)
        for p in stored:  # under a name that cannot leave the folder (no "..", no dot file)
            os.replace(p["path"], os.path.join(target, p["name"]))
        self.record(201, product=product, files=[p["filename"] for p in stored])
        return 201, {"id": key, "files": [p["filename"] for p in files]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    if os.environ.get("PARTNER_API_TOKEN"):
        credentials = {"token": os.environ["PARTNER_API_TOKEN"]}
    elif os.environ.get("PARTNER_API_USER") and os.environ.get("PARTNER_API_PASSWORD"):
        credentials = {"user": os.environ["PARTNER_API_USER"], "password": os.environ["PARTNER_API_PASSWORD"]}
    else:
        sys.exit("api.py: set PARTNER_API_USER and PARTNER_API_PASSWORD, or PARTNER_API_TOKEN")
    state = os.path.abspath(a.state_dir)
    os.makedirs(state, exist_ok=True)
    server, port, ca = common.https_server(Handler, state, "api", a.port)
    server.state = state
    server.credentials = credentials
    common.stop_on_sigterm()
    common.announce(port=port, ca=ca, base_url=f"https://127.0.0.1:{port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
