#!/usr/bin/env bash
# The local demo, end to end on the local stack (fake-gcp/): starts Google's Pub/Sub emulator,
# fake-gcs-server and the partner stand-ins (OpenSSH sshd, HTTPS API, SMTP), checks the partner's
# sinks, runs the roles as background processes in pull mode (worker, one deliver per sink,
# alert, powerbi), uploads three generated days of dirty extracts to the raw bucket (two calm days at
# 2% defects, then one at 25% that trips a data-quality guardrail), waits until the products
# are built and delivered and the data team's alert e-mail is sent, shows where everything
# landed, which day alerted and where to see one upload's trace (a local OTLP receiver, the
# `otlp` venv of scripts/setup.sh, gets every role's spans and metrics), then stops all it
# started. Exits 1 when a day is not
# delivered, a calm day alerted or the dirty day did not.
# Installs what it needs itself (idempotently); writes under ./out/demo (or $DEMO_DIR).
# DEMO_PROFILE=release builds with LTO instead of the (faster to build) debug profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
profile="${DEMO_PROFILE:-debug}"
demo="$(realpath -m "${DEMO_DIR:-out/demo}")"
state="$demo/stack/stack.json"
days=(2026-11-24 2026-11-25 2026-11-26)
calm_rate=0.02  # the calm days: no guardrail trips
alert_rate=0.25 # the last day: ~8% of its transactions quarantined, above the 5% warning
wait_secs="${DEMO_WAIT_SECS:-300}"

bash scripts/setup.sh
# The local stack's own tools (fake-gcs-server, the Pub/Sub emulator check): a fresh machine
# has none of them until this runs.
bash fake-gcp/setup.sh >/dev/null
case "$profile" in
  release) cargo build --locked --release --quiet ;;
  debug) cargo build --locked --quiet ;;
  *) echo "DEMO_PROFILE must be debug or release" >&2; exit 2 ;;
esac
bin="$CARGO_TARGET_DIR/$profile/datashare"

# A previous demo killed halfway may have left its stack running: stop it, then start afresh.
python3 fake-gcp/stack.py --state "$state" down 2>/dev/null || true
rm -rf "$demo"
mkdir -p "$demo/logs" "$(dirname "$state")"

pids=()
otlp_pid=
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  echo
  echo "== stopping the roles and the stack"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # After the roles: their last spans and metric points go out as they stop.
  if [ -n "$otlp_pid" ]; then kill -TERM "$otlp_pid" 2>/dev/null || true; wait "$otlp_pid" 2>/dev/null || true; fi
  python3 fake-gcp/stack.py --state "$state" down || true
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== 1. generating extracts into $demo/raw: ${days[0]} and ${days[1]} calm (2% of rows with a defect),"
echo "      ${days[2]} dirty (25% of rows with a defect: trips the transactions' quarantine guardrail)"
"$bin" generate --out "$demo/raw" --from "${days[0]}" --to "${days[1]}" --rows 3000 --parts 2 \
  --defect-rate "$calm_rate" --gzip
"$bin" generate --out "$demo/raw" --date "${days[2]}" --rows 3000 --parts 2 \
  --defect-rate "$alert_rate" --gzip

echo "== 2. starting the local stack: emulators and partner stand-ins (logs in $demo/stack)"
python3 fake-gcp/stack.py --state "$state" up --retry-backoff-cap 1 >"$demo/stack.env"
# shellcheck disable=SC1091
source "$demo/stack.env"
export RUST_LOG="${RUST_LOG:-datashare=info,warn}"

# A pull subscription of the demo's own on `deliveries`, to see the delivery requests.
python3 - <<'PY'
import json, os, urllib.request
host, project = os.environ["PUBSUB_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"]
body = {"topic": f"projects/{project}/topics/deliveries", "ackDeadlineSeconds": 60}
req = urllib.request.Request(f"http://{host}/v1/projects/{project}/subscriptions/demo-deliveries",
                             data=json.dumps(body).encode(), method="PUT",
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
PY

echo "== 3. checking the partner's sinks (SFTP login + listing, API health, SMTP AUTH)"
"$bin" check-sinks || echo "   (a sink check failed: see above)"

echo "== 4. starting the roles in pull mode (logs in $demo/logs)"
# The local OTLP receiver (tests/py/otlp_receiver.py): the roles export their spans and metrics
# to it over OTLP http/protobuf, as they do to the collector sidecar on Cloud Run.
otlp_py="${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/otlp/bin/python"
otlp_out="$demo/otlp.jsonl"
otlp_env=()
if [ -x "$otlp_py" ]; then
  "$otlp_py" tests/py/otlp_receiver.py --out "$otlp_out" >"$demo/otlp.port" 2>"$demo/logs/otlp.log" &
  otlp_pid=$!
  for _ in $(seq 100); do [ -s "$demo/otlp.port" ] && break; sleep 0.1; done
  otlp_port=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$demo/otlp.port" 2>/dev/null || true)
  if [ -n "$otlp_port" ]; then
    otlp_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
              OTEL_BSP_SCHEDULE_DELAY=500 OTEL_METRIC_EXPORT_INTERVAL=5000)
    echo "   OTLP receiver on 127.0.0.1:$otlp_port (pid $otlp_pid): spans and metrics to $otlp_out"
  else
    echo "   (the OTLP receiver did not start: see $demo/logs/otlp.log; nothing exported)"
  fi
fi
start_role() {
  local name=$1
  shift
  env "${otlp_env[@]}" "$bin" "$@" >"$demo/logs/$name.log" 2>&1 &
  pids+=("$!")
  echo "   $name: datashare $* (pid $!)"
}
start_role worker worker --pull
delivering=0
if "$bin" help deliver >/dev/null 2>&1; then
  delivering=1
  for sink in sftp api email; do start_role "deliver-$sink" deliver --sink "$sink" --pull; done
else
  echo "   (no \`datashare deliver\` in this build: products are built, not delivered)"
fi
alerting=0
if "$bin" help alert >/dev/null 2>&1; then
  alerting=1
  start_role alert alert --pull
else
  echo "   (no \`datashare alert\` in this build)"
fi
if "$bin" help powerbi >/dev/null 2>&1; then start_role powerbi powerbi --pull; fi

echo "== 5. uploading the extracts to gs://$DATASHARE_BUCKET_RAW (parts first, then each day's marker)"
python3 - "$demo/raw" <<'PY'
import os, pathlib, sys, urllib.parse, urllib.request
root = pathlib.Path(sys.argv[1])
gcs, bucket = os.environ["STORAGE_EMULATOR_HOST"], os.environ["DATASHARE_BUCKET_RAW"]
files = sorted(p for p in (root / "extracts").rglob("*") if p.is_file())
files.sort(key=lambda p: p.name == "_SUCCESS")  # markers last
for p in files:
    name = p.relative_to(root).as_posix()
    q = urllib.parse.urlencode({"uploadType": "media", "name": name})
    req = urllib.request.Request(f"{gcs}/upload/storage/v1/b/{bucket}/o?{q}", data=p.read_bytes(),
                                 method="POST", headers={"content-type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=30).read()
print(f"   {len(files)} objects uploaded")
PY

echo "== 6. waiting for the products and their delivery requests (up to $wait_secs s)"
python3 - "$demo" "${#days[@]}" "$wait_secs" "$delivering" "$alerting" "${days[-1]}" "${days[@]}" <<'PY'
import base64, email, email.header, json, os, pathlib, re, sys, time, urllib.parse, urllib.request
demo, want, limit = pathlib.Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
delivering, alerting, alert_day, days = sys.argv[4] == "1", sys.argv[5] == "1", sys.argv[6], sys.argv[7:]
env = os.environ
host, project = env["PUBSUB_EMULATOR_HOST"], env["GOOGLE_CLOUD_PROJECT"]

def call(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")

def pull():
    base = f"http://{host}/v1/projects/{project}/subscriptions/demo-deliveries"
    got = call(f"{base}:pull", {"maxMessages": 50, "returnImmediately": True}).get("receivedMessages", [])
    if got:
        call(f"{base}:acknowledge", {"ackIds": [m["ackId"] for m in got]})
    return [json.loads(base64.b64decode(m["message"]["data"])) for m in got]

def objects(bucket, prefix=""):
    q = urllib.parse.urlencode({"prefix": prefix})
    return [o["name"] for o in call(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?{q}").get("items", [])]

def files(folder, pattern="*"):
    return sorted(p for p in pathlib.Path(folder).rglob(pattern) if p.is_file())

def mails(partner):
    """E-mails to the partner's contacts (partner=True), or to the data team (the alert role
    e-mails it through the same relay)."""
    out = []
    for p in files(env["FAKE_GCP_MAIL_DIR"], "*.eml"):
        try:
            rcpt = json.loads(p.with_suffix(".json").read_text())["rcpt_tos"]
        except (OSError, ValueError, KeyError):
            continue
        if any(r.endswith("@ouchhungry.example") for r in rcpt) == partner:
            out.append(p)
    return out

def partner_mails():
    return mails(True)

def subject(p):
    msg = email.message_from_bytes(p.read_bytes())
    return " ".join(str(email.header.make_header(email.header.decode_header(msg["Subject"] or ""))).split())

def team_mails_by_day():
    """The data team's e-mails by the day their subject names (None: no day named)."""
    out = {}
    for p in mails(False):
        s = subject(p)
        m = re.search(r"\d{4}-\d{2}-\d{2}", s)
        out.setdefault(m.group(0) if m else None, []).append(s)
    return out

requests, started, last = [], time.monotonic(), None
delivered = lambda: (len(files(env["FAKE_GCP_SFTP_ROOT"], "*.manifest.json")) >= want
                     and len(files(env["FAKE_GCP_API_RECEIVED"], "*.manifest.json")) >= want
                     and len(partner_mails()) >= want)
while True:
    requests += pull()
    status = (f"{len(requests)}/{want} delivery requests; SFTP "
              f"{len(files(env['FAKE_GCP_SFTP_ROOT']))} files, API "
              f"{len(files(env['FAKE_GCP_API_RECEIVED']))} files, "
              f"{len(partner_mails())} partner e-mails, "
              f"{len(files(env['FAKE_GCP_MAIL_DIR'], '*.eml')) - len(partner_mails())} alert e-mails to the data team")
    if status != last:
        print(f"   {time.monotonic() - started:5.0f} s  {status}", flush=True)
        last = status
    if (len(requests) >= want and (not delivering or delivered())
            and (not alerting or alert_day in team_mails_by_day())):
        # A late alert about a calm day would show in the next few seconds.
        time.sleep(3)
        break
    if time.monotonic() - started > limit:
        print(f"   gave up after {limit:.0f} s: see the logs in {demo}/logs", flush=True)
        break
    time.sleep(1)

print("\n== what landed")
print(f"products (gs://{env['DATASHARE_BUCKET_PRODUCTS']}):")
for n in objects(env["DATASHARE_BUCKET_PRODUCTS"]):
    print(f"  {n}")
print("delivery requests (topic deliveries, seen on the demo's subscription demo-deliveries):")
for r in requests:
    print(f"  {r['partner']} {r['product']} {r['period']} -> {', '.join(r['sinks'])}  "
          f"delivery_id {r['delivery_id'][:12]}…  files {', '.join(str(f.get('name')) for f in r['files'])}")
for title, folder, pattern in [("SFTP server", env["FAKE_GCP_SFTP_ROOT"], "*"),
                               ("partner API (received/<idempotency key>/)", env["FAKE_GCP_API_RECEIVED"], "*"),
                               ("e-mails to the partner and the data team (SMTP catcher)", env["FAKE_GCP_MAIL_DIR"], "*.eml")]:
    found = files(folder, pattern)
    print(f"{title}: {folder}")
    for p in found:
        line = f"  {p.relative_to(folder)}"
        if p.suffix == ".eml":
            msg = email.message_from_bytes(p.read_bytes())
            line += f"  To: {' '.join(str(msg['To']).split())}  Subject: {subject(p)}"
        print(line)
    if not found:
        print("  (nothing)")
alerts = team_mails_by_day()
print("\n== which day alerted (the data team's e-mails, from the SMTP catcher)")
alerts_ok = True
for d in days:
    got = alerts.get(d, [])
    said = f"ALERTED  {len(got)} e-mail(s) to the data team" if got else "calm     no alert e-mail"
    right = (d == alert_day) == bool(got)
    print(f"  {d}  {said}  ({'as expected' if right else 'NOT as expected'})")
    for s in got:
        print(f"      {s}")
    alerts_ok = alerts_ok and (right or not alerting)
for s in alerts.get(None, []):
    print(f"  (about no day) {s}")
ok = len(requests) >= want and (not delivering or delivered()) and alerts_ok
if not alerts_ok:
    print(f"  the alerts are not as expected: only {alert_day} should alert", flush=True)
sys.exit(0 if ok else 1)
PY
if "$bin" help powerbi >/dev/null 2>&1 && [ -n "${FAKE_GCP_POWERBI_URL:-}" ]; then
  python3 - <<'PY' || true
import json, os, ssl, time, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["DATASHARE_POWERBI_CA_FILE"])
get = lambda p: json.loads(urllib.request.urlopen(os.environ["FAKE_GCP_POWERBI_URL"] + p, context=ctx, timeout=10).read())
deadline, done = time.monotonic() + 60, []
while not done and time.monotonic() < deadline:
    via_api = [(i["kind"], i["name"], r) for i in get("/_admin/items")["items"] for r in i["history"] if r["refreshType"] == "ViaApi"]
    done = [x for x in via_api if x[2]["status"] == "Completed"]
    time.sleep(1)
print(f"Power BI (stand-in {os.environ['FAKE_GCP_POWERBI_URL']}): {len(via_api)} refresh(es) requested by datashare powerbi, {len(done)} completed")
for kind, name, r in via_api:
    print(f"  {kind} {name}: {r['status']} (started {r['startTime']})")
PY
fi
echo
echo "== datashare status: did each day go out? (from the ops and curated buckets)"
# Exit code 1 means a day is held, stalled or missing: shown, not a demo failure.
"$bin" status --from "${days[0]}" --to "${days[-1]}" || true
if [ -n "${otlp_port:-}" ]; then
  echo
  echo "== where to see the trace (the local OTLP receiver; on Cloud Run the same spans go to Cloud Trace)"
  python3 - "$otlp_out" <<'PY' || true
import base64, json, pathlib, sys, time
out = pathlib.Path(sys.argv[1])

def exports():
    if not out.exists():
        return []
    return [json.loads(l) for l in out.read_text().splitlines() if l.strip()]

def spans(got):
    res = []
    for e in got:
        if e["signal"] != "traces":
            continue
        for rs in e["body"].get("resourceSpans", []):
            attrs = rs.get("resource", {}).get("attributes", [])
            svc = next((a["value"].get("stringValue", "?") for a in attrs if a["key"] == "service.name"), "?")
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    res.append((base64.b64decode(s["traceId"]).hex(), svc.removeprefix("datashare-"), s["name"]))
    return res

# The trace of an upload that reached the partner: the one with the partner e-mail's span
# (batch spans of 500 ms: it is there within a second or two of the e-mail).
deadline, best = time.monotonic() + 15, None
while best is None and time.monotonic() < deadline:
    got = exports()
    all_spans = spans(got)
    mailed = {t for t, svc, name in all_spans if svc == "email" and name == "send_email"}
    if mailed:
        best = max(mailed, key=lambda t: sum(1 for s in all_spans if s[0] == t))
    else:
        time.sleep(0.5)
if best is None:
    print(f"   no partner e-mail's trace received yet; every export so far is in {out}")
    sys.exit(0)
trace = [s for s in all_spans if s[0] == best]
services = sorted({svc for _, svc, _ in trace})
print(f"   one upload's trace: {best}")
print(f"     {len(trace)} spans from {', '.join(services)}: marker upload -> worker -> sinks -> partner e-mail")
names = []
for _, svc, name in trace:
    if (svc, name) not in names:
        names.append((svc, name))
print("     " + ", ".join(f"{svc}:{name}" for svc, name in names))
metrics = sum(1 for e in got if e["signal"] == "metrics")
print(f"   spans and metrics of every role: {out}")
print(f"     (one OTLP export a line, protobuf JSON with base64 ids: {len(got) - metrics} span exports and")
print(f"      {metrics} metric exports so far, then the roles' last ones as they stop)")
PY
fi
echo
echo "logs of the roles: $demo/logs; of the stack and stand-ins: $demo/stack"
