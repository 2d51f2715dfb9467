#!/usr/bin/env bash
# End-to-end benchmark on the local stack: one generated day of ROWS transaction rows (4 gzipped
# parts, 1% of rows with a defect) uploaded to the raw bucket and followed through every role
# in pull mode (worker, deliver --sink sftp|api|email, alert) until the partner's e-mail.
# Prints each stage's time (from the roles' logs), the upload -> partner e-mail latency, and each
# role's peak RSS (VmHWM) and CPU time, read from /proc just before the roles are stopped.
#
#   scripts/bench-e2e.sh ROWS            e.g. 100000, 1000000
#
# BENCH_DAYS=N (default 1) runs N consecutive days of ROWS rows through the same roles, one after
# the other (each day uploaded once the previous partner e-mail arrived), and prints each day's
# latency and the worker's resident memory after it: memory must not grow from day to day. The
# stage table is the first day's.
#
# BENCH_PROFILE=release (default; LTO, ~6 CPU-minutes to build from nothing) | profiling (release
# without LTO, about a minute) | debug; DATASHARE_BIN runs a given binary instead (not rebuilt:
# an earlier commit's build, to compare on the same machine state). BENCH_DIR (out/bench-e2e),
# BENCH_WAIT_SECS (900). BENCH_FIRST_DAY (2026-11-27): the first day; a run that crosses the
# 2nd of a month also requests that month's monthly build (which waits for the month's days).
# Installs what it needs itself (idempotently); stops everything it started, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:?usage: scripts/bench-e2e.sh ROWS}"
case "$rows" in '' | *[!0-9]*) echo "ROWS must be a number" >&2; exit 2 ;; esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
profile="${BENCH_PROFILE:-release}"
dir="$(realpath -m "${BENCH_DIR:-out/bench-e2e}")"
state="$dir/stack/stack.json"
day="${BENCH_FIRST_DAY:-2026-11-27}"
case "$day" in [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]) ;; *) echo "BENCH_FIRST_DAY must be YYYY-MM-DD" >&2; exit 2 ;; esac
days="${BENCH_DAYS:-1}"
case "$days" in '' | *[!0-9]* | 0) echo "BENCH_DAYS must be a positive number" >&2; exit 2 ;; esac
last_day="$(date -u -d "$day + $((days - 1)) days" +%F)"
wait_secs="${BENCH_WAIT_SECS:-900}"

bash scripts/setup.sh
bash fake-gcp/setup.sh >/dev/null
if [ -n "${DATASHARE_BIN:-}" ]; then
  bin="$DATASHARE_BIN"  # a given build (e.g. an earlier commit's, to compare), not rebuilt
else
  case "$profile" in
    release) cargo build --locked --release --quiet ;;
    profiling) cargo build --locked --profile profiling --quiet ;;
    debug) cargo build --locked --quiet ;;
    *) echo "BENCH_PROFILE must be release, profiling or debug" >&2; exit 2 ;;
  esac
  bin="$CARGO_TARGET_DIR/$profile/datashare"
fi

python3 fake-gcp/stack.py --state "$state" down 2>/dev/null || true
rm -rf "$dir"
mkdir -p "$dir/logs" "$(dirname "$state")"

pids=()
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  python3 fake-gcp/stack.py --state "$state" down 2>/dev/null || true
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== generating $day..$last_day: $rows rows a day, 4 gzipped parts, 1% defects ($profile build)"
start=$SECONDS
"$bin" generate --out "$dir/raw" --from "$day" --to "$last_day" --rows "$rows" --parts 4 --gzip \
  --defect-rate 0.01 >/dev/null 2>&1
echo "   $((SECONDS - start)) s, $(du -sh "$dir/raw/extracts" | cut -f1) of extracts"

echo "== starting the local stack and the roles (pull mode, logs in $dir/logs)"
python3 fake-gcp/stack.py --state "$state" up --retry-backoff-cap 1 >"$dir/stack.env" 2>"$dir/stack.log"
# shellcheck disable=SC1091
source "$dir/stack.env"
export RUST_LOG="${RUST_LOG:-datashare=info,warn}"
roles=()
start_role() {
  local name=$1
  shift
  "$bin" "$@" >"$dir/logs/$name.log" 2>&1 &
  pids+=("$!")
  roles+=("$name=$!")
}
start_role worker worker --pull
for sink in sftp api email; do start_role "deliver-$sink" deliver --sink "$sink" --pull; done
start_role alert alert --pull

echo "== uploading the day and waiting for the partner's e-mail (up to $wait_secs s)"
python3 - "$dir" "$wait_secs" "${roles[@]}" <<'PY'
import datetime as dt, json, os, pathlib, re, sys, time, urllib.parse, urllib.request

root, limit = pathlib.Path(sys.argv[1]), float(sys.argv[2])
roles = dict(r.split("=") for r in sys.argv[3:])
env = os.environ
gcs, bucket = env["STORAGE_EMULATOR_HOST"], env["DATASHARE_BUCKET_RAW"]
mail_dir = pathlib.Path(env["FAKE_GCP_MAIL_DIR"])

def wait_ready():
    """Every role has logged that it pulls: uploads start on a ready pipeline."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all("pulling" in (root / "logs" / f"{n}.log").read_text(errors="replace") for n in roles):
            return
        time.sleep(0.2)
    sys.exit("the roles did not start: see " + str(root / "logs"))

def proc(pid):
    """(peak RSS MiB, CPU seconds) of a live process."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm, cpu

def partner_mails():
    out = []
    for p in sorted(mail_dir.glob("*.eml")):
        try:
            rcpt = json.loads(p.with_suffix(".json").read_text())["rcpt_tos"]
        except (OSError, ValueError, KeyError):
            continue
        if any(r.endswith("@ouchhungry.example") for r in rcpt):
            out.append(p)
    return out

def rss(pid, field="VmRSS"):
    """Resident memory now (MiB): all of it, or one part (RssAnon: heap and stacks; RssFile:
    the binary's and libraries' pages read so far)."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(field + r":\s+(\d+) kB", status).group(1)) / 1024

def threads(pid):
    """(threads, open sockets) of a live process."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    def link(fd):
        try:
            return os.readlink(fd)
        except OSError:  # closed between the listing and the read
            return ""
    fds = pathlib.Path(f"/proc/{pid}/fd").iterdir()
    sockets = sum(1 for fd in fds if link(fd).startswith("socket:"))
    return int(re.search(r"Threads:\s+(\d+)", status).group(1)), sockets

def heap_after(log, n):
    """The heap in use (KiB) the worker logged at the end of its n-th batch step (0-based)."""
    found = re.findall(r"batch step done.*?heap_used_kib=(\d+)", log.read_text(errors="replace"))
    return int(found[n]) if len(found) > n else None

def listed_bytes(bucket, prefix):
    """Bytes of the objects under a prefix of a bucket of the stack."""
    total, token = 0, None
    while True:
        q = {"prefix": prefix, "fields": "items(size),nextPageToken"}
        if token:
            q["pageToken"] = token
        url = f"{gcs}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(q)}"
        page = json.load(urllib.request.urlopen(url, timeout=60))
        total += sum(int(o["size"]) for o in page.get("items", []))
        token = page.get("nextPageToken")
        if not token:
            return total

def upload(paths):
    for p in paths:
        q = urllib.parse.urlencode({"uploadType": "media", "name": p.relative_to(raw).as_posix()})
        req = urllib.request.Request(f"{gcs}/upload/storage/v1/b/{bucket}/o?{q}", data=p.read_bytes(),
                                     method="POST", headers={"content-type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=600).read()

wait_ready()
raw = root / "raw"
by_day = {}
for p in sorted(p for p in (raw / "extracts").rglob("*") if p.is_file()):
    d = next(x[3:] for x in p.parts if x.startswith("dt="))
    by_day.setdefault(d, []).append(p)
runs = []
cutoff = float("inf")  # the first day's events end where the second day's upload starts
for n, d in enumerate(sorted(by_day)):
    day_files = sorted(by_day[d], key=lambda p: p.name == "_SUCCESS")  # the marker last
    t0 = time.time()
    if n == 1:
        cutoff = t0
    upload(day_files)
    t_marker = time.time()
    while len(partner_mails()) <= n:
        if time.time() - t0 > limit:
            sys.exit(f"no partner e-mail for {d} after {limit:.0f} s: see the logs in {root}/logs")
        time.sleep(0.05)
    t_mail = partner_mails()[n].stat().st_mtime
    time.sleep(0.5)  # let the e-mail role log its receipt
    # The RSS "after" a day is read once the worker's batch step has ended (the partner's e-mail
    # can arrive before the step's last writes), then two seconds: the freed heap goes back and
    # the step's idle blocking threads exit (after 1 s, `BLOCKING_KEEP_ALIVE`).
    worker_log = root / "logs" / "worker.log"
    while worker_log.read_text(errors="replace").count("batch step done") <= n:
        if time.time() - t0 > limit:
            sys.exit(f"no end of the batch step for {d} after {limit:.0f} s: see {worker_log}")
        time.sleep(0.05)
    time.sleep(2.0)
    runs.append({"day": d, "upload_to_mail_s": t_mail - t0, "marker_to_mail_s": t_mail - t_marker,
                 "worker_rss_mib": rss(roles["worker"]), "worker_peak_mib": proc(roles["worker"])[0],
                 "worker_rss_anon_mib": rss(roles["worker"], "RssAnon"),
                 "worker_rss_file_mib": rss(roles["worker"], "RssFile"),
                 "worker_threads_sockets": threads(roles["worker"]),
                 "worker_heap_kib": heap_after(worker_log, n)})
    if n == 0:
        files, first_t0, first_marker, first_mail = day_files, t0, t_marker, t_mail
        usage = {name: proc(pid) for name, pid in roles.items()}
        staged_bytes = listed_bytes(env["DATASHARE_BUCKET_CURATED"], f"staging/dt={d}/")
        window_bytes = listed_bytes(env["DATASHARE_BUCKET_CURATED"], f"window/dt={d}/")
t0, t_marker, t_mail = first_t0, first_marker, first_mail

# Stage times from the roles' logs (RFC 3339 UTC timestamps, one event a line).
def events(name):
    out = []
    for line in (root / "logs" / f"{name}.log").read_text(errors="replace").splitlines():
        m = re.match(r"(\S+Z)\s+\w+\s+(.*)", line)
        if m:
            t = dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            if t < cutoff:  # the first day's events
                out.append((t, m.group(2)))
    return out

def first(name, text):
    return min((t for t, l in events(name) if text in l), default=None)

def last(name, text):
    return max((t for t, l in events(name) if text in l), default=None)

def ms(line, key="elapsed_ms"):
    m = re.search(rf"{key}=(\d+)", line)
    return int(m.group(1)) if m else 0

staged = [(t, l) for t, l in events("worker") if "part staged" in l]
step = [l for _, l in events("worker") if "batch step ran" in l]
rows = sum(ms(l, "rows") for _, l in staged if "/transactions/" in l)
sizes = sum(p.stat().st_size for p in files)
print(f"\n{rows:,} transaction rows staged ({len(staged)} parts of all tables), "
      f"{sizes / 2**20:.1f} MiB of gzipped extracts uploaded")
claim = first("worker", "batch claim taken")
step_ran = last("worker", "batch step ran")
released = last("worker", "product released")
requested = first("worker", "delivery request published")
notified = min(filter(None, [first("deliver-sftp", "notify published"),
                             first("deliver-api", "notify published")]), default=None)
stages = [
    ("upload (every part, then the marker)", t0, t_marker),
    ("staging (first part staged .. last)", first("worker", "part staged"), last("worker", "part staged")),
    ("batch ready published (last)", last("worker", "part staged"), last("worker", "batch ready published")),
    ("batch claim taken", last("worker", "batch ready published"), claim),
    ("batch step: dedup, references, curated", claim, step_ran),
    ("batch step: uploads, daily product built", step_ran, released),
    ("delivery request published", released, requested),
    ("SFTP delivered", requested, first("deliver-sftp", "delivered already_present")),
    ("API delivered", requested, first("deliver-api", "delivered already_present")),
    ("notify published (by the last sink)", requested, notified),
    ("partner e-mail captured (SMTP catcher)", notified, t_mail),
]
print(f"\n{'stage':44} {'at (s after upload start)':>26} {'took (s)':>9}")
for name, a, b in stages:
    at = f"{b - t0:.2f}" if b else "-"
    took = f"{b - a:.2f}" if a and b else ""
    print(f"{name:44} {at:>26} {took:>9}")
parts = ", ".join(f"{ms(l) / 1000:.2f}" for _, l in staged if "/transactions/" in l)
print(f"  staging each transactions part (s): {parts}")
if step:
    print(f"  batch step as the worker logs it: {ms(step[-1]) / 1000:.2f} s")
for n in ("deliver-sftp", "deliver-api", "deliver-email"):
    d = [ms(l) for _, l in events(n) if "delivered already_present" in l]
    if d:
        print(f"  {n} as the sink logs it: {d[0] / 1000:.2f} s")
print(f"staged files of the day in the curated bucket: {staged_bytes / 2**20:.1f} MiB "
      f"({staged_bytes / max(rows, 1):.1f} bytes per transaction row)")
print(f"window files of the day (read by the next 29 days' daily builds): {window_bytes / 2**20:.1f} MiB "
      f"({window_bytes / max(rows, 1):.1f} bytes per transaction row)")
print(f"\nupload -> partner e-mail: {t_mail - t0:.2f} s from the first byte uploaded, "
      f"{t_mail - t_marker:.2f} s from the marker's upload")
print(f"\n{'role':16} {'peak RSS (MiB)':>15} {'CPU (s)':>8}   (after the first day)")
for n, (hwm, cpu) in usage.items():
    print(f"{n:16} {hwm:15.1f} {cpu:8.2f}")
if len(runs) > 1:
    print(f"\n{'day':12} {'upload -> e-mail (s)':>21} {'worker RSS after (MiB)':>23} {'anon + file':>14} "
          f"{'worker peak (MiB)':>18} {'threads, sockets':>17} {'heap in use (KiB)':>18}")
    for r in runs:
        parts = f"{r['worker_rss_anon_mib']:.1f} + {r['worker_rss_file_mib']:.1f}"
        print(f"{r['day']:12} {r['upload_to_mail_s']:21.2f} {r['worker_rss_mib']:23.1f} {parts:>14} "
              f"{r['worker_peak_mib']:18.1f} {'%d, %d' % r['worker_threads_sockets']:>17} "
              f"{r['worker_heap_kib'] or '-':>18}")
    for key, what in [("worker_rss_mib", "RSS"), ("worker_rss_anon_mib", "anonymous RSS (heap, stacks)")]:
        growth = runs[-1][key] / runs[0][key] - 1
        print(f"worker {what} after the last day vs after the first: {growth * 100:+.1f}%")
json.dump({"rows": rows, "upload_to_mail_s": t_mail - t0, "marker_to_mail_s": t_mail - t_marker,
           "stages": {n: (a and b and b - a, b and b - t0) for n, a, b in stages},
           "roles": {n: {"peak_rss_mib": h, "cpu_s": c} for n, (h, c) in usage.items()},
           "staged_bytes": staged_bytes, "window_bytes": window_bytes, "days": runs},
          open(root / "result.json", "w"), indent=2)
PY
echo
echo "logs: $dir/logs; figures: $dir/result.json"
