#!/usr/bin/env python3
"""Power BI and its Microsoft Entra token endpoint over HTTPS, for the Power BI refresh monitor.

    PBI_TENANT=... PBI_CLIENT_ID=... PBI_CLIENT_SECRET=... powerbi.py --state-dir DIR [--config FILE]

Documented routes (the subset datashare uses, shapes as Microsoft documents them):
  POST /{tenant}/oauth2/v2.0/token          client credentials (form: grant_type=client_credentials,
                                            client_id, client_secret, scope=https://analysis.windows.net/
                                            powerbi/api/.default): 200 {"token_type": "Bearer",
                                            "expires_in", "ext_expires_in", "access_token"}; a wrong
                                            secret: 401 invalid_client (AADSTS7000215); an unknown client
                                            400 unauthorized_client; another tenant 400 invalid_request;
                                            a wrong grant or scope 400
  POST /v1.0/myorg/groups/{g}/datasets/{d}/refreshes    body {"notifyOption": ...}: 202 with headers
                                            RequestId and Location; 400 while a refresh of the item runs
                                            (status Unknown); 429 with Retry-After (seconds to the next
                                            UTC midnight) once the item's daily quota of refreshes
                                            started this UTC day is used
  GET  /v1.0/myorg/groups/{g}/datasets/{d}/refreshes[?$top=N]   {"value": [...]} newest first:
                                            requestId, id, refreshType, startTime, endTime (once ended),
                                            status (Unknown = running, Completed, Failed, Disabled,
                                            Cancelled), serviceExceptionJson (a JSON string, on Failed)
  POST /v1.0/myorg/groups/{g}/dataflows/{f}/refreshes   200 (same 400 and 429 rules)
  GET  /v1.0/myorg/groups/{g}/dataflows/{f}/transactions  {"@odata.context", "value": [...]}: id,
                                            refreshType, startTime, endTime, status (the dataset
                                            vocabulary: Microsoft does not document the dataflow one)
Every Power BI route needs "Authorization: Bearer <token>" from the token endpoint: none or an
unknown one gives 401, an expired one 403 {"error": {"code": "TokenExpired"}}; an unknown item 404.

Test controls (no credentials; loopback only):
  GET  /_admin/requests                     every token and Power BI request, in order (DIR/requests.jsonl)
  GET  /_admin/items                        the items and their histories as the API would show them
  POST /_admin/items                        {"items": [item, ...]}: adds or replaces items (see below)
  POST /_admin/script                       {"kind", "group", "id", "script": [outcome, ...]}: appends
  POST /_admin/answers                      [{"status": 500} | {"status": 429, "retry_after": "7"}, ...]:
                                            answers for the next refresh POSTs, whatever the item
  POST /_admin/settings                     {"token_ttl_secs": N, "refresh_secs": S}
  POST /_admin/clock                        {"advance_secs": N}: moves the stand-in's clock (token
                                            expiry, refresh durations, the quota's UTC day)

The configuration (--config FILE, JSON; every key optional):
  {"token_ttl_secs": 3600, "refresh_secs": 2,
   "items": [{"kind": "dataset" | "dataflow", "group": uuid, "id": uuid, "name": "...",
              "daily_quota": 8,
              "script": [outcome, ...],       what the next accepted refreshes do, in order; then
                                              {"status": "Completed", "after_secs": refresh_secs}
              "history": [entry, ...]}]}      refreshes that happened before the start
  outcome: {"status": "Completed" | "Failed" | "Cancelled" | "Disabled", "after_secs": S,
            "error": {...}} (error: the serviceExceptionJson of a Failed one), or
           {"status": "Unknown"}: a refresh stuck running for ever
  entry: an outcome plus "ago_secs" (started that long before the start) and "refresh_type"

Every token and Power BI request (not the controls) is appended to DIR/requests.jsonl (time,
method, path, status, kind, group, id, request_id, body of refresh POSTs, why it was refused;
never a secret or a token). Makes a throwaway CA
(DIR/powerbi-ca.pem) and server certificate at start. Prints {"ready": true, "port": N, "ca": ...,
"base_url": "https://127.0.0.1:N", "requests": ...}.
"""

import argparse
import datetime
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SCOPE = "https://analysis.windows.net/powerbi/api/.default"
STATUSES = {"Unknown", "Completed", "Failed", "Cancelled", "Disabled"}
NOTIFY = {"dataset": {"NoNotification", "MailOnFailure", "MailOnCompletion"},
          "dataflow": {"NoNotification", "MailOnFailure"}}
ITEM_PATH = re.compile(
    r"/v1\.0/myorg/groups/([0-9A-Za-z-]+)/(datasets|dataflows)/([0-9A-Za-z-]+)/(refreshes|transactions)"
)


class ConfigError(Exception):
    """A configuration or control request the stand-in cannot use."""


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_to_utc_midnight(now):
    """Whole seconds from `now` to the next UTC midnight, when the daily quota is whole again."""
    day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date() + datetime.timedelta(days=1)
    return int(datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp() - now) + 1


def parse_outcome(o, where):
    if not isinstance(o, dict):
        raise ConfigError(f"{where}: an outcome is an object")
    status = o.get("status", "Completed")
    if status not in STATUSES:
        raise ConfigError(f"{where}: status {status!r} is not one of {sorted(STATUSES)}")
    after = o.get("after_secs")
    if status != "Unknown" and after is not None and (not isinstance(after, (int, float)) or after < 0):
        raise ConfigError(f"{where}: after_secs must be a number >= 0")
    error = o.get("error")
    if error is not None and status != "Failed":
        raise ConfigError(f"{where}: only a Failed refresh has an error")
    return {"status": status, "after_secs": after, "error": error}


class Item:
    """A dataset or dataflow: its quota, its script of outcomes and its refresh history."""

    def __init__(self, spec, now, default_secs):
        kind = spec.get("kind")
        if kind not in ("dataset", "dataflow"):
            raise ConfigError(f"item kind {kind!r}: dataset or dataflow")
        for key in ("group", "id"):
            if not re.fullmatch(r"[0-9A-Za-z-]+", str(spec.get(key, ""))):
                raise ConfigError(f"item {key} {spec.get(key)!r}: letters, digits and '-'")
        self.kind, self.group, self.id = kind, spec["group"], spec["id"]
        self.name = spec.get("name", self.id)
        quota = spec.get("daily_quota", 8)
        if not isinstance(quota, int) or quota < 0:
            raise ConfigError(f"{self.key}: daily_quota must be an integer >= 0")
        self.daily_quota = quota
        self.script = [parse_outcome(o, f"{self.key} script") for o in spec.get("script", [])]
        self.history = []  # oldest first
        for n, h in enumerate(spec.get("history", [])):
            o = parse_outcome(h, f"{self.key} history[{n}]")
            ago = h.get("ago_secs", 3600)
            if not isinstance(ago, (int, float)) or ago < 0:
                raise ConfigError(f"{self.key} history[{n}]: ago_secs must be a number >= 0")
            self.start(o, now - ago, h.get("refresh_type", "Scheduled"), default_secs)
        self.history.sort(key=lambda r: r["start"])
        for n, r in enumerate(self.history, 1):
            r["n"] = n

    @property
    def key(self):
        return (self.kind, self.group, self.id)

    def start(self, outcome, at, refresh_type, default_secs):
        after = outcome["after_secs"]
        if outcome["status"] != "Unknown" and after is None:
            after = default_secs
        r = {
            "request_id": str(uuid.uuid4()),
            "start": at,
            "end": None if outcome["status"] == "Unknown" else at + after,
            "outcome": outcome["status"],
            "error": outcome["error"],
            "refresh_type": refresh_type,
            "n": len(self.history) + 1,
        }
        self.history.append(r)
        return r

    def running(self, now):
        return any(r["end"] is None or r["end"] > now for r in self.history)

    def started_today(self, now):
        day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
        return sum(1 for r in self.history
                   if datetime.datetime.fromtimestamp(r["start"], datetime.timezone.utc).date() == day)

    def view(self, r, now):
        """One refresh as the API shows it at `now`."""
        done = r["end"] is not None and r["end"] <= now
        status = r["outcome"] if done else "Unknown"
        if self.kind == "dataflow":
            out = {"id": f"{iso(r['start'])}@{r['request_id']}${r['n']}",
                   "refreshType": r["refresh_type"], "startTime": iso(r["start"]), "status": status}
        else:
            out = {"requestId": r["request_id"], "id": r["n"], "refreshType": r["refresh_type"],
                   "startTime": iso(r["start"]), "status": status}
        if done:
            out["endTime"] = iso(r["end"])
            if status == "Failed" and self.kind == "dataset":
                out["serviceExceptionJson"] = json.dumps(
                    r["error"] or {"errorCode": "ModelRefreshFailed", "errorDescription": "scripted failure"})
        return out


class PowerBI:
    """The stand-in's state: the clock, issued tokens, items, forced answers, the request log."""

    def __init__(self, state_dir, tenant, client_id, client_secret, config):
        self.lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.state_dir = state_dir
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        self.offset = 0.0
        self.tokens = {}
        self.answers = []
        self.token_ttl_secs = 3600
        self.refresh_secs = 2.0
        self.items = {}
        self.settings(config)
        self.add_items(config.get("items", []))

    def now(self):
        return time.time() + self.offset

    def settings(self, s):
        if "token_ttl_secs" in s:
            ttl = s["token_ttl_secs"]
            if not isinstance(ttl, (int, float)) or ttl <= 0:
                raise ConfigError("token_ttl_secs must be a number > 0")
            self.token_ttl_secs = ttl
        if "refresh_secs" in s:
            secs = s["refresh_secs"]
            if not isinstance(secs, (int, float)) or secs < 0:
                raise ConfigError("refresh_secs must be a number >= 0")
            self.refresh_secs = secs

    def add_items(self, specs):
        items = [Item(spec, self.now(), self.refresh_secs) for spec in specs]
        for item in items:
            self.items[item.key] = item
        return len(items)

    def record(self, entry):
        line = json.dumps({"time": time.time(), **entry})
        with self.log_lock, open(os.path.join(self.state_dir, "requests.jsonl"), "a") as f:
            f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "powerbi-standin"

    def log_message(self, fmt, *args):
        common.log("powerbi: " + fmt % args)

    @property
    def pbi(self):
        return self.server.pbi

    def answer(self, status, payload=None, headers=None, note=None):
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {"RequestId": str(uuid.uuid4()), **(headers or {})}  # on every answer, as Power BI does
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if note is not None:
            self.pbi.record({"method": self.command, "path": self.path, "status": status, **note})

    def error(self, status, code, message, headers=None, note=None):
        self.answer(status, {"error": {"code": code, "message": message}}, headers, note)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # ------------------------------------------------------------------ routes

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_admin/requests":
            path = os.path.join(self.pbi.state_dir, "requests.jsonl")
            with self.pbi.log_lock:
                lines = open(path).read().splitlines() if os.path.exists(path) else []
            return self.answer(200, {"requests": [json.loads(x) for x in lines]})
        if url.path == "/_admin/items":
            with self.pbi.lock:
                now = self.pbi.now()
                items = [{"kind": i.kind, "group": i.group, "id": i.id, "name": i.name,
                          "daily_quota": i.daily_quota, "started_today": i.started_today(now),
                          "script_left": len(i.script),
                          "history": [i.view(r, now) for r in reversed(i.history)]}
                         for i in self.pbi.items.values()]
            return self.answer(200, {"items": items, "now": iso(now)})
        m = ITEM_PATH.fullmatch(url.path)
        if not m or (m.group(2), m.group(4)) not in (("datasets", "refreshes"), ("dataflows", "transactions")):
            return self.error(404, "NotFound", "no such route", note={})
        self.item_get(m, urllib.parse.parse_qs(url.query))

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if url.path.startswith("/_admin/"):
            return self.admin(url.path, body)
        m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", url.path)
        if m:
            return self.token(m.group(1), body)
        m = ITEM_PATH.fullmatch(url.path)
        if m and m.group(4) == "refreshes":
            return self.refresh(m, body)
        self.error(404, "NotFound", "no such route", note={})

    # ------------------------------------------------------------------ Entra ID

    def token(self, tenant, body):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        pbi = self.pbi
        note = {"kind": "token", "client_id": form.get("client_id")}

        def oauth_error(status, error, code, text):
            payload = {"error": error, "error_description": f"AADSTS{code}: {text}",
                       "error_codes": [code], "timestamp": iso(time.time()),
                       "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}
            self.answer(status, payload, note={**note, "error": error})

        if tenant != pbi.tenant:
            return oauth_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", 70003,
                               "The app requested an unsupported grant type.")
        if form.get("client_id") != pbi.client_id:
            return oauth_error(400, "unauthorized_client", 700016,
                               "Application was not found in the directory.")
        secret = form.get("client_secret", "")
        if not hmac.compare_digest(secret.encode(), pbi.client_secret.encode()):
            return oauth_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != SCOPE:
            return oauth_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        with pbi.lock:
            token = secrets.token_urlsafe(32)
            ttl = pbi.token_ttl_secs
            pbi.tokens[token] = pbi.now() + ttl
        self.answer(200, {"token_type": "Bearer", "expires_in": int(ttl), "ext_expires_in": int(ttl),
                          "access_token": token}, note=note)

    def authorized(self, note):
        """Checks the bearer token; answers and returns False when it is missing, unknown or expired."""
        got = self.headers.get("Authorization", "")
        token = got[7:] if got.startswith("Bearer ") else None
        with self.pbi.lock:
            expiry = self.pbi.tokens.get(token) if token else None
            now = self.pbi.now()
        if expiry is None:
            self.error(401, "PowerBINotAuthorizedException", "no valid access token",
                       {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
                                            f'{self.pbi.tenant}/oauth2/authorize"'},
                       note={**note, "auth": "missing" if token is None else "unknown"})
            return False
        if expiry <= now:
            self.error(403, "TokenExpired", "Access token has expired, resubmit with a new access token",
                       note={**note, "auth": "expired"})
            return False
        return True

    # ------------------------------------------------------------------ Power BI

    def item_get(self, m, query):
        kind = "dataset" if m.group(2) == "datasets" else "dataflow"
        note = {"kind": kind, "group": m.group(1), "id": m.group(3)}
        if not self.authorized(note):
            return
        top = None
        if "$top" in query:
            try:
                top = int(query["$top"][0])
                if top < 1:
                    raise ValueError
            except ValueError:
                return self.error(400, "InvalidRequest", "$top must be a positive integer", note=note)
        with self.pbi.lock:
            item = self.pbi.items.get((kind, m.group(1), m.group(3)))
            if item is None:
                return self.error(404, "ItemNotFound", f"{kind} {m.group(3)} not found", note=note)
            now = self.pbi.now()
            value = [item.view(r, now) for r in reversed(item.history)][: top or 60]
        payload = {"value": value}
        if kind == "dataflow":
            payload = {"@odata.context": f"{self.base()}/v1.0/myorg/groups/{m.group(1)}/$metadata#transactions",
                       **payload}
        self.answer(200, payload, note={**note, "returned": len(value)})

    def refresh(self, m, body):
        kind = "dataset" if m.group(2) == "datasets" else "dataflow"
        note = {"kind": kind, "group": m.group(1), "id": m.group(3)}
        try:
            doc = json.loads(body) if body.strip() else None
        except ValueError:
            doc = None
        note["body"] = doc if isinstance(doc, dict) else None
        if not self.authorized(note):
            return
        pbi = self.pbi
        with pbi.lock:
            item = pbi.items.get((kind, m.group(1), m.group(3)))
            forced = pbi.answers.pop(0) if item is not None and pbi.answers else None
        if item is None:
            return self.error(404, "ItemNotFound", f"{kind} {m.group(3)} not found", note=note)
        if forced is not None:
            headers = {"Retry-After": str(forced["retry_after"])} if "retry_after" in forced else {}
            return self.error(int(forced["status"]), "Scripted", "scripted answer", headers,
                              note={**note, "scripted": True})
        if not isinstance(doc, dict) or doc.get("notifyOption") not in NOTIFY[kind]:
            return self.error(400, "InvalidRequest",
                              f"notifyOption must be one of {sorted(NOTIFY[kind])}", note=note)
        with pbi.lock:
            now = pbi.now()
            running, quota_used = item.running(now), item.started_today(now) >= item.daily_quota
            if not running and not quota_used:
                outcome = item.script.pop(0) if item.script else \
                    {"status": "Completed", "after_secs": None, "error": None}
                r = item.start(outcome, now, "ViaApi", pbi.refresh_secs)
        if running:
            return self.error(400, "InvalidRequest",
                              f"Invalid {kind} refresh request. Another refresh request is already executing",
                              note={**note, "refused": "running"})
        if quota_used:
            return self.error(429, "TooManyRequests", f"daily refresh quota of {item.daily_quota} reached",
                              {"Retry-After": str(seconds_to_utc_midnight(now))},
                              note={**note, "refused": "quota"})
        location = f"{self.base()}/v1.0/myorg/groups/{item.group}/{m.group(2)}/{item.id}/refreshes/{r['request_id']}"
        headers = {"RequestId": r["request_id"], "Location": location}
        note = {**note, "request_id": r["request_id"], "accepted": True}
        if kind == "dataset":
            self.answer(202, None, headers, note=note)
        else:
            self.answer(200, None, headers, note=note)

    def base(self):
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    # ------------------------------------------------------------------ controls

    def admin(self, path, body):
        pbi = self.pbi
        try:
            doc = json.loads(body or b"{}")
            with pbi.lock:
                if path == "/_admin/items":
                    return self.answer(200, {"added": pbi.add_items(doc.get("items", []))})
                if path == "/_admin/script":
                    item = pbi.items.get((doc.get("kind"), doc.get("group"), doc.get("id")))
                    if item is None:
                        raise ConfigError("no such item")
                    item.script.extend(parse_outcome(o, f"{item.key} script") for o in doc.get("script", []))
                    return self.answer(200, {"script_left": len(item.script)})
                if path == "/_admin/answers":
                    if not isinstance(doc, list) or not all(isinstance(a, dict) and "status" in a for a in doc):
                        raise ConfigError("a list of {\"status\": N, \"retry_after\": \"S\"}")
                    pbi.answers.extend(doc)
                    return self.answer(200, {"queued": len(pbi.answers)})
                if path == "/_admin/settings":
                    pbi.settings(doc)
                    return self.answer(200, {"token_ttl_secs": pbi.token_ttl_secs,
                                             "refresh_secs": pbi.refresh_secs})
                if path == "/_admin/clock":
                    step = doc.get("advance_secs", 0)
                    if not isinstance(step, (int, float)) or step < 0:
                        raise ConfigError("advance_secs must be a number >= 0")
                    pbi.offset += step
                    return self.answer(200, {"now": iso(pbi.now())})
        except (ValueError, ConfigError) as e:
            return self.answer(400, {"error": str(e)})
        self.answer(404, {"error": "no such control"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", help="JSON configuration: items, scripts, histories, token lifetime")
    a = ap.parse_args()
    env = {k: os.environ.get(f"PBI_{k.upper()}") for k in ("tenant", "client_id", "client_secret")}
    missing = [f"PBI_{k.upper()}" for k, v in env.items() if not v]
    if missing:
        sys.exit(f"powerbi.py: set {', '.join(missing)}")
    state = os.path.abspath(a.state_dir)
    os.makedirs(state, exist_ok=True)
    try:
        config = json.load(open(a.config)) if a.config else {}
        pbi = PowerBI(state, env["tenant"], env["client_id"], env["client_secret"], config)
    except (OSError, ValueError, ConfigError) as e:
        sys.exit(f"powerbi.py: {a.config}: {e}")
    server, port, ca = common.https_server(Handler, state, "powerbi", a.port)
    server.pbi = pbi
    common.stop_on_sigterm()
    common.announce(port=port, ca=ca, base_url=f"https://127.0.0.1:{port}",
                    requests=os.path.join(state, "requests.jsonl"))
    server.serve_forever()


if __name__ == "__main__":
    main()
