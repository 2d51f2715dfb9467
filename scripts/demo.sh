#!/usr/bin/env bash
# The local demo: generates a month of dirty extracts, cleans every batch, builds OuchHungry's
# monthly and daily products, and shows what came out. Installs what it needs itself
# (idempotently); writes under ./out/demo (or $DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
bash scripts/setup.sh
cargo build --locked --release --quiet
bin="$CARGO_TARGET_DIR/release/datashare"
demo="${DEMO_DIR:-out/demo}"
rm -rf "$demo"
mkdir -p "$demo"

echo "== 1. generating extracts for 2026-10-01..2026-11-02 (2% of rows with a defect) into $demo/raw"
"$bin" generate --out "$demo/raw" --from 2026-10-01 --to 2026-11-02 --rows 3000 --parts 2 --defect-rate 0.02 --gzip

echo "== 2. cleaning every batch into $demo/lake (curated/, quarantine/, reports/)"
"$bin" clean --input "$demo/raw" --output "$demo/lake" | tail -n 4

echo "== 3. building OuchHungry's products (a throwaway pseudonymization key for this run only)"
DATASHARE_OUCHHUNGRY_HMAC_KEY="$(head -c 32 /dev/urandom | base64)"
export DATASHARE_OUCHHUNGRY_HMAC_KEY
"$bin" build --partner ouchhungry --month 2026-10 --input "$demo/lake" --output "$demo"
"$bin" build --partner ouchhungry --date 2026-11-02 --input "$demo/lake" --output "$demo"

echo
echo "== what landed"
(cd "$demo" && find lake/reports products -type f | sort | sed 's/^/  /')
echo
echo "== quality of batch 2026-11-02 (transactions)"
python3 - "$demo/lake/reports/dt=2026-11-02/quality.json" "$demo/products/ouchhungry/monthly/ouchhungry_monthly_2026-10.csv" <<'PY'
import csv, json, sys
t = json.load(open(sys.argv[1]))["tables"]["transactions"]
print(" ", {k: t[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates_removed", "conflicts_resolved")})
print("  quarantined by reason:", t["quarantined_by_reason"])
print("\n== first rows of ouchhungry_monthly_2026-10.csv")
for i, row in enumerate(csv.reader(open(sys.argv[2], encoding="utf-8"))):
    print("  " + ",".join(row))
    if i == 4:
        break
PY
