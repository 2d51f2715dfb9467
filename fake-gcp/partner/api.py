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
                                    file's SHA-256 is not its manifest's
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
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOCK = threading.Lock()
SCRIPT = []
SEEN = set()


def parse_multipart(body, content_type):
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        return None
    delim = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        disp = headers.get("content-disposition", "")
        name = re.search(r'\bname="([^"]*)"', disp)
        filename = re.search(r'filename="([^"]*)"', disp)
        parts.append(
            {
                "field": name.group(1) if name else "",
                "filename": filename.group(1) if filename else "",
                "content_type": headers.get("content-type", ""),
                "data": data,
            }
        )
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

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

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
        body = self.read_body()
        if self.path == "/_control/script":
            with LOCK:
                SCRIPT.extend(json.loads(body or b"[]"))
            return self.answer(200, {"queued": len(SCRIPT)})
        m = re.fullmatch(r"(?:/[A-Za-z0-9_.-]+)*/datasets/([a-z]+)/files", self.path)
        if not m:
            self.record(404)
            return self.answer(404, {"error": "not found"})
        with LOCK:
            scripted = SCRIPT.pop(0) if SCRIPT else None
        if scripted:
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
            self.record(401)
            return self.answer(401, {"error": "unauthorized"})
        key = self.headers.get("Idempotency-Key", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,128}", key):
            self.record(400)
            return self.answer(400, {"error": "missing or bad Idempotency-Key"})
        parts = parse_multipart(body, self.headers.get("Content-Type"))
        files = [p for p in parts or [] if p["field"] == "file"]
        manifests = [p for p in parts or [] if p["field"] == "manifest"]
        dictionaries = [p for p in parts or [] if p["field"] == "dictionary"]
        if not files or not manifests:
            self.record(400)
            return self.answer(400, {"error": "need file and manifest parts"})
        by_file = {}
        for mf in manifests:
            try:
                doc = json.loads(mf["data"])
                by_file[doc["file"]] = doc
            except (ValueError, KeyError):
                self.record(400)
                return self.answer(400, {"error": f"bad manifest {mf['filename']}"})
        for f in files:
            doc = by_file.get(f["filename"])
            if doc is None or doc.get("sha256") != hashlib.sha256(f["data"]).hexdigest():
                self.record(422)
                return self.answer(422, {"error": f"{f['filename']} does not match its manifest"})
        with LOCK:
            if key in SEEN:
                duplicate = True
            else:
                SEEN.add(key)
                duplicate = False
        if duplicate:
            self.record(409)
            return self.answer(409, {"error": "already received", "id": key})
        folder = os.path.join(self.server.state, "received", key)
        os.makedirs(folder, exist_ok=True)
        for p in files + manifests + dictionaries:
            common.write_atomic(os.path.join(folder, os.path.basename(p["filename"])), p["data"])
        self.record(201, product=m.group(1), files=[p["filename"] for p in files + manifests + dictionaries])
        self.answer(201, {"id": key, "files": [p["filename"] for p in files]})


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
