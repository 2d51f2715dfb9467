#!/usr/bin/env bash
# datashare's cleaner against a Polars baseline with the same rules (scripts/bench_polars.py),
# both on one thread, on the same generated day (the data `datashare bench clean` makes: seed 42,
# 1% of rows with a defect). Generates the day, then runs `datashare clean` and the Polars
# script in turn BENCH_RUNS times each under /usr/bin/time, checks that both give the same
# report counts and the same curated values, and prints CPU seconds (user+sys), wall time, peak
# RSS and the ratios (medians).
#
#   scripts/bench-polars.sh [ROWS] [PARTS]      defaults: 1000000 1 (e.g. 10000000 4)
#
# DATASHARE_BIN (default: the release build, built when missing), BENCH_DIR (out/bench-polars),
# BENCH_RUNS (3), BENCH_FAST_PATHS=0 to run the Polars rules on every value (no shortcut for
# values already canonical). Installs what it needs itself (idempotently): GNU time, and polars
# and pyarrow in the data venv (${DATASHARE_CACHE:-~/.cache/datashare}/venvs/data, shared with
# scripts/py-tests.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
parts="${2:-1}"
case "$rows$parts" in '' | *[!0-9]*) echo "ROWS and PARTS must be numbers" >&2; exit 2 ;; esac
runs="${BENCH_RUNS:-3}"
dir="$(realpath -m "${BENCH_DIR:-out/bench-polars}")"
day=2026-11-27
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
bin="${DATASHARE_BIN:-$CARGO_TARGET_DIR/release/datashare}"

if [ ! -x /usr/bin/time ]; then
  echo "bench-polars: installing GNU time"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq time >/dev/null
fi
venv="${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/data"
if [ ! -x "$venv/bin/python" ]; then
  echo "bench-polars: creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import polars, pyarrow" 2>/dev/null; then
  echo "bench-polars: installing polars, pyarrow"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check polars pyarrow
fi
py="$venv/bin/python"
if [ -z "${DATASHARE_BIN:-}" ]; then
  cargo build --locked --release --quiet
fi
fast=()
[ "${BENCH_FAST_PATHS:-1}" = 0 ] && fast=(--no-fast-paths)

rm -rf "$dir"
mkdir -p "$dir"
echo "== generating $day: $rows transaction rows, $parts part(s), 1% defects"
"$bin" generate --out "$dir/raw" --date "$day" --rows "$rows" --parts "$parts" \
  --defect-rate 0.01 >/dev/null 2>&1
echo "   $(du -sh "$dir/raw/extracts" | cut -f1) of extracts"

# One measured run: NAME OUT COMMAND...; appends "name cpu wall rss_kib" to $dir/runs.txt.
measure() {
  local name="$1" out="$2"
  shift 2
  rm -rf "$out"
  /usr/bin/time -v -o "$dir/time.txt" "$@" >"$dir/$name.log" 2>&1 || {
    echo "$name failed, see $dir/$name.log" >&2
    exit 1
  }
  awk -v name="$name" '
    /User time/ { u = $NF } /System time/ { s = $NF }
    /Maximum resident/ { rss = $NF }
    /Elapsed \(wall clock\)/ { n = split($NF, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
    END { printf "%s %.2f %.2f %d\n", name, u + s, w, rss }' "$dir/time.txt" | tee -a "$dir/runs.txt"
}

: >"$dir/runs.txt"
echo "== $runs runs each, alternated (name cpu_s wall_s peak_rss_kib); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$runs"); do
  measure datashare "$dir/out-datashare" "$bin" clean --input "$dir/raw" --output "$dir/out-datashare" --date "$day"
  measure polars "$dir/out-polars" env POLARS_MAX_THREADS=1 "$py" scripts/bench_polars.py \
    --input "$dir/raw" --output "$dir/out-polars" --date "$day" "${fast[@]}"
done
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== parity (report counts, curated values, quarantined lines and reasons)"
"$py" - "$dir" "$day" <<'EOF'
import json, sys
import polars as pl
root, day = sys.argv[1], sys.argv[2]
ds = json.load(open(f"{root}/out-datashare/reports/dt={day}/quality.json"))["tables"]
pl_ = json.load(open(f"{root}/out-polars/reports/dt={day}/quality.json"))["tables"]
keys = {"transactions": "transaction_id", "products": "product_code", "customers": "customer_id"}
same = True
for t in sorted(ds):
    a, b = ds[t], pl_.get(t, {})
    for k in ["rows_read", "rows_kept", "rows_quarantined", "duplicates_removed", "conflicts_resolved"]:
        if a[k] != b.get(k):
            print(f"   {t}: {k} datashare {a[k]} polars {b.get(k)}"); same = False
    ra, rb = a["quarantined_by_reason"], b.get("quarantined_by_reason", {})
    for r in sorted(set(ra) | set(rb)):
        if ra.get(r) != rb.get(r):
            print(f"   {t}: {r} datashare {ra.get(r)} polars {rb.get(r)}"); same = False
    ca = pl.read_parquet(f"{root}/out-datashare/curated/{t}/dt={day}/part-00000.parquet")
    cb = pl.read_parquet(f"{root}/out-polars/curated/{t}/dt={day}/part-00000.parquet")
    key = keys.get(t, ca.columns[0])
    if ca.schema != cb.schema or not ca.sort(key).equals(cb.sort(key)):
        print(f"   {t}: curated data differ"); same = False
    qa, qb = (pl.read_parquet(f"{root}/out-{w}/quarantine/{t}/dt={day}/part-00000.parquet")
              .select("source_object", "line_number", pl.col("reasons").list.join(","))
              .sort("source_object", "line_number") for w in ("datashare", "polars"))
    if not qa.equals(qb):
        print(f"   {t}: quarantined rows differ"); same = False
    print(f"   {t}: read {a['rows_read']} kept {a['rows_kept']} quarantined {a['rows_quarantined']} "
          f"duplicates {a['duplicates_removed']} conflicts {a['conflicts_resolved']}")
print("   same results" if same else "   RESULTS DIFFER")
EOF

echo "== medians"
awk '
  { cpu[$1] = cpu[$1] " " $2; wall[$1] = wall[$1] " " $3; rss[$1] = rss[$1] " " $4 }
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "   %-10s %8s %8s %10s\n", "", "CPU s", "wall s", "RSS MiB"
    for (k in cpu) { c[k] = median(cpu[k]); w[k] = median(wall[k]); r[k] = median(rss[k]) / 1024
      printf "   %-10s %8.2f %8.2f %10.1f\n", k, c[k], w[k], r[k] }
    printf "   polars / datashare: %.2fx on CPU seconds, %.2fx on wall time, %.2fx on peak RSS\n",
      c["polars"] / c["datashare"], w["polars"] / w["datashare"], r["polars"] / r["datashare"]
  }' "$dir/runs.txt"
