"""The Power BI stand-in (fake-gcp/partner/powerbi.py): the Entra token endpoint, dataset and
dataflow refreshes with Power BI's refusals (400 while one runs, 429 over the daily quota),
scripted histories, token expiry, the request log; and the stack starting it with throwaway
credentials."""

import json
import os
import pathlib
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from fakegcp_lib import ROOT, wait_for

PYTHON = pathlib.Path(os.environ.get("DATASHARE_CACHE") or pathlib.Path.home() / ".cache" / "datashare") \
    / "venvs" / "partner" / "bin" / "python"
SCRIPT = ROOT / "fake-gcp" / "partner" / "powerbi.py"
SCOPE = "https://analysis.windows.net/powerbi/api/.default"
GROUP = str(uuid.uuid4())
DATASET = str(uuid.uuid4())
DATAFLOW = str(uuid.uuid4())


class PowerBI:
    """A running stand-in and a small client of it (stdlib only)."""

    def __init__(self, base, ca, tenant, client_id, secret, requests):
        self.base, self.tenant, self.client_id, self.secret = base, tenant, client_id, secret
        self.requests_file = requests
        self.ctx = ssl.create_default_context(cafile=ca)

    def call(self, method, path, body=None, token=None, form=None):
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                status, raw, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        return status, (json.loads(raw) if raw.strip() else None), hdrs

    def token_call(self, secret=None, tenant=None, scope=SCOPE, client_id=None):
        form = {"grant_type": "client_credentials", "client_id": client_id or self.client_id,
                "client_secret": self.secret if secret is None else secret, "scope": scope}
        return self.call("POST", f"/{tenant or self.tenant}/oauth2/v2.0/token", form=form)

    def token(self):
        status, doc, _ = self.token_call()
        assert status == 200, doc
        return doc["access_token"]

    def refresh(self, token, kind="datasets", item=DATASET, notify="NoNotification"):
        return self.call("POST", f"/v1.0/myorg/groups/{GROUP}/{kind}/{item}/refreshes",
                         {"notifyOption": notify}, token)

    def history(self, token, top=None):
        q = f"?$top={top}" if top else ""
        status, doc, _ = self.call("GET", f"/v1.0/myorg/groups/{GROUP}/datasets/{DATASET}/refreshes{q}",
                                   token=token)
        assert status == 200, doc
        return doc["value"]

    def transactions(self, token):
        status, doc, _ = self.call("GET", f"/v1.0/myorg/groups/{GROUP}/dataflows/{DATAFLOW}/transactions",
                                   token=token)
        assert status == 200, doc
        return doc["value"]

    def admin(self, path, body):
        status, doc, _ = self.call("POST", f"/_admin/{path}", body)
        assert status == 200, doc
        return doc

    def requests(self):
        status, doc, _ = self.call("GET", "/_admin/requests")
        assert status == 200, doc
        return doc["requests"]

    def refresh_posts(self):
        return [r for r in self.requests() if r["method"] == "POST" and r["path"].endswith("/refreshes")]


def item(kind="dataset", **extra):
    return {"kind": kind, "group": GROUP, "id": DATASET if kind == "dataset" else DATAFLOW, **extra}


@pytest.fixture
def start(tmp_path):
    """Starts a stand-in with the given configuration; stops every one at the end."""
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run scripts/setup.sh")
    procs = []

    def run(config):
        n = len(procs)
        cfg = tmp_path / f"powerbi-{n}.json"
        cfg.write_text(json.dumps(config))
        creds = {"PBI_TENANT": str(uuid.uuid4()), "PBI_CLIENT_ID": str(uuid.uuid4()),
                 "PBI_CLIENT_SECRET": os.urandom(16).hex()}
        proc = subprocess.Popen([str(PYTHON), str(SCRIPT), "--state-dir", str(tmp_path / f"state-{n}"),
                                 "--config", str(cfg)], env={**os.environ, **creds},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line, "the stand-in exited before it was ready"
        ready = json.loads(line)
        assert ready["ready"] is True
        return PowerBI(ready["base_url"], ready["ca"], creds["PBI_TENANT"], creds["PBI_CLIENT_ID"],
                       creds["PBI_CLIENT_SECRET"], ready["requests"])

    yield run
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_token_for_the_right_secret_and_401_for_a_wrong_one(start):
    pbi = start({"token_ttl_secs": 1800, "items": [item()]})
    status, doc, _ = pbi.token_call()
    assert status == 200, doc
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 1800 and doc["access_token"]

    status, doc, _ = pbi.token_call(secret="not-the-secret")
    assert status == 401 and doc["error"] == "invalid_client"
    assert "AADSTS7000215" in doc["error_description"]
    assert pbi.token_call(tenant=str(uuid.uuid4()))[0] == 400
    assert pbi.token_call(client_id=str(uuid.uuid4()))[0] == 400
    assert pbi.token_call(scope="https://graph.microsoft.com/.default")[0] == 400

    # No token, or a made-up one: 401; the API never sees a secret in its log.
    assert pbi.refresh(None)[0] == 401
    assert pbi.refresh("made-up")[0] == 401
    log = pathlib.Path(pbi.requests_file).read_text()
    assert pbi.secret not in log
    assert [r["status"] for r in pbi.requests()] == [200, 401, 400, 400, 400, 401, 401]


def test_a_dataset_refresh_is_accepted_then_completes_after_its_delay(start):
    pbi = start({"refresh_secs": 0.5, "items": [item()]})
    token = pbi.token()
    status, body, headers = pbi.refresh(token)
    assert status == 202 and body is None
    request_id = headers["RequestId"]
    assert request_id and request_id in headers["Location"]
    first = pbi.history(token)
    assert [(r["requestId"], r["status"], r["refreshType"]) for r in first] == [(request_id, "Unknown", "ViaApi")]
    assert "endTime" not in first[0]
    done = wait_for(lambda: [r for r in pbi.history(token) if r["status"] == "Completed"], 10,
                    "the refresh to complete")
    assert done[0]["requestId"] == request_id and done[0]["endTime"] >= done[0]["startTime"]
    posts = pbi.refresh_posts()
    assert len(posts) == 1 and posts[0]["status"] == 202 and posts[0]["request_id"] == request_id
    assert posts[0]["body"] == {"notifyOption": "NoNotification"}


def test_400_while_a_refresh_runs(start):
    pbi = start({"items": [item(script=[{"status": "Unknown"}])]})
    token = pbi.token()
    assert pbi.refresh(token)[0] == 202
    status, doc, _ = pbi.refresh(token)
    assert status == 400, doc
    assert "already executing" in doc["error"]["message"]
    # A stuck refresh stays Unknown however long it runs.
    pbi.admin("clock", {"advance_secs": 6 * 3600})
    token = pbi.token()
    history = pbi.history(token)
    assert [r["status"] for r in history] == ["Unknown"] and "endTime" not in history[0]
    assert pbi.refresh(token)[0] == 400
    assert [r["status"] for r in pbi.refresh_posts()] == [202, 400, 400]


def test_429_with_retry_after_over_the_daily_quota(start):
    pbi = start({"refresh_secs": 0, "items": [item(daily_quota=2)]})
    token = pbi.token()
    assert pbi.refresh(token)[0] == 202
    assert pbi.refresh(token)[0] == 202
    status, doc, headers = pbi.refresh(token)
    assert status == 429, doc
    retry = int(headers["Retry-After"])
    assert 0 < retry <= 86401, retry
    assert len(pbi.history(token)) == 2, "a refused request starts no refresh"
    # The next UTC day the quota is whole again.
    pbi.admin("clock", {"advance_secs": retry})
    token = pbi.token()
    assert pbi.refresh(token)[0] == 202
    assert [r["status"] for r in pbi.refresh_posts()] == [202, 202, 429, 202]


def test_a_quota_of_zero_refuses_at_once(start):
    pbi = start({"items": [item(daily_quota=0)]})
    assert pbi.refresh(pbi.token())[0] == 429


def test_scripted_and_seeded_histories(start):
    error = {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
             "errorDescription": "credentials of the BigQuery source are missing"}
    pbi = start({"refresh_secs": 0, "items": [item(
        history=[{"status": "Completed", "ago_secs": 90000, "after_secs": 60},
                 {"status": "Cancelled", "ago_secs": 80000, "after_secs": 5}],
        script=[{"status": "Failed", "after_secs": 0, "error": error},
                {"status": "Completed", "after_secs": 0}])]})
    token = pbi.token()
    seeded = pbi.history(token)
    assert [(r["status"], r["refreshType"]) for r in seeded] == [("Cancelled", "Scheduled"),
                                                                 ("Completed", "Scheduled")]
    assert pbi.refresh(token)[0] == 202
    failed = pbi.history(token, top=1)
    assert len(failed) == 1 and failed[0]["status"] == "Failed"
    assert json.loads(failed[0]["serviceExceptionJson"]) == error
    assert pbi.refresh(token)[0] == 202
    statuses = [r["status"] for r in pbi.history(token)]
    assert statuses == ["Completed", "Failed", "Cancelled", "Completed"]
    assert [r["status"] for r in pbi.history(token, top=2)] == ["Completed", "Failed"]
    assert "serviceExceptionJson" not in pbi.history(token, top=1)[0]
    # More script through the controls: the next one sticks in Unknown.
    pbi.admin("script", {**item(), "script": [{"status": "Unknown"}]})
    assert pbi.refresh(token)[0] == 202
    assert pbi.history(token, top=1)[0]["status"] == "Unknown"


def test_an_expired_token_is_refused_and_a_new_one_works(start):
    pbi = start({"token_ttl_secs": 60, "refresh_secs": 0, "items": [item()]})
    old = pbi.token()
    assert pbi.refresh(old)[0] == 202
    pbi.admin("clock", {"advance_secs": 61})
    status, doc, _ = pbi.refresh(old)
    assert status == 403 and doc["error"]["code"] == "TokenExpired"
    status, doc, _ = pbi.call("GET", f"/v1.0/myorg/groups/{GROUP}/datasets/{DATASET}/refreshes", token=old)
    assert status == 403
    new = pbi.token()
    assert new != old
    assert pbi.refresh(new)[0] == 202
    # The lifetime can change while it runs.
    pbi.admin("settings", {"token_ttl_secs": 5})
    status, doc, _ = pbi.token_call()
    assert doc["expires_in"] == 5
    assert [r.get("auth") for r in pbi.refresh_posts()] == [None, "expired", None]


def test_dataflows_refresh_and_list_their_transactions(start):
    pbi = start({"refresh_secs": 0.3, "items": [item("dataflow", daily_quota=1)]})
    token = pbi.token()
    status, body, headers = pbi.refresh(token, "dataflows", DATAFLOW, notify="MailOnFailure")
    assert status == 200 and body is None and headers["RequestId"]
    assert pbi.refresh(token, "dataflows", DATAFLOW)[0] == 400, "one is running"
    running = pbi.transactions(token)
    assert [t["status"] for t in running] == ["Unknown"] and "@" in running[0]["id"]
    wait_for(lambda: pbi.transactions(token)[0]["status"] == "Completed", 10, "the dataflow to complete")
    assert pbi.refresh(token, "dataflows", DATAFLOW)[0] == 429, "quota of 1"
    # MailOnCompletion is not supported for dataflows.
    assert pbi.refresh(token, "dataflows", DATAFLOW, notify="MailOnCompletion")[0] == 400


def test_unknown_items_bad_bodies_and_forced_answers(start):
    pbi = start({"refresh_secs": 0, "items": [item()]})
    token = pbi.token()
    assert pbi.refresh(token, item=str(uuid.uuid4()))[0] == 404
    assert pbi.refresh(token, notify="Sometimes")[0] == 400
    pbi.admin("answers", [{"status": 503}, {"status": 429, "retry_after": "7"}])
    assert pbi.refresh(token)[0] == 503
    status, _, headers = pbi.refresh(token)
    assert status == 429 and headers["Retry-After"] == "7"
    assert pbi.refresh(token)[0] == 202
    assert [r["status"] for r in pbi.refresh_posts()] == [404, 400, 503, 429, 202]
    # Items can be added while it runs.
    other = str(uuid.uuid4())
    pbi.admin("items", {"items": [{"kind": "dataset", "group": GROUP, "id": other}]})
    assert pbi.refresh(token, item=other)[0] == 202


def test_a_bad_configuration_stops_it_with_one_line(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"items": [{"kind": "report", "group": GROUP, "id": DATASET}]}))
    env = {**os.environ, "PBI_TENANT": "t", "PBI_CLIENT_ID": "c", "PBI_CLIENT_SECRET": "s"}
    done = subprocess.run([str(PYTHON), str(SCRIPT), "--state-dir", str(tmp_path / "s"), "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "dataset or dataflow" in done.stderr


def test_the_stack_starts_it_with_throwaway_credentials(stack):
    env = stack.env
    for k in ("DATASHARE_POWERBI_AUTHORITY_URL", "DATASHARE_POWERBI_API_URL", "DATASHARE_POWERBI_CA_FILE",
              "DATASHARE_POWERBI_TENANT", "DATASHARE_POWERBI_CLIENT_ID",
              "DATASHARE_POWERBI_CLIENT_SECRET_FILE", "FAKE_GCP_POWERBI_URL", "FAKE_GCP_POWERBI_REQUESTS"):
        assert env.get(k), f"env lacks {k}"
    secret = pathlib.Path(env["DATASHARE_POWERBI_CLIENT_SECRET_FILE"]).read_text().strip()
    assert len(secret) >= 16
    assert oct(os.stat(env["DATASHARE_POWERBI_CLIENT_SECRET_FILE"]).st_mode & 0o777) == "0o600"
    printed = stack.stack("env").stdout + json.dumps(env) + stack.state_path.read_text()
    assert secret not in printed, "the client secret was printed"

    pbi = PowerBI(env["DATASHARE_POWERBI_API_URL"], env["DATASHARE_POWERBI_CA_FILE"],
                  env["DATASHARE_POWERBI_TENANT"], env["DATASHARE_POWERBI_CLIENT_ID"], secret,
                  env["FAKE_GCP_POWERBI_REQUESTS"])
    token = pbi.token()
    # The committed configuration: two datasets and one dataflow, each with a completed refresh.
    config = json.loads((ROOT / "fake-gcp" / "powerbi.json").read_text())
    kinds = sorted(i["kind"] for i in config["items"])
    assert kinds == ["dataflow", "dataset", "dataset"]
    for it in config["items"]:
        path = "refreshes" if it["kind"] == "dataset" else "transactions"
        status, doc, _ = pbi.call("GET", f"/v1.0/myorg/groups/{it['group']}/{it['kind']}s/{it['id']}/{path}",
                                  token=token)
        assert status == 200 and doc["value"][0]["status"] == "Completed", (it["name"], doc)
    assert "powerbi" in stack.state["processes"]
    assert pbi.token_call(secret="wrong")[0] == 401
    assert secret not in pathlib.Path(env["FAKE_GCP_POWERBI_REQUESTS"]).read_text()
