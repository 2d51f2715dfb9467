#!/usr/bin/env bash
# The local demo: generates three days of dirty extracts, cleans them, and shows what came out.
# Installs what it needs itself (idempotently); writes under ./out/demo (or $DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
bash scripts/setup.sh
cargo build --locked --release --quiet
bin="$CARGO_TARGET_DIR/release/datashare"
demo="${DEMO_DIR:-out/demo}"
rm -rf "$demo"
mkdir -p "$demo"

echo "== generating extracts for 2026-11-25..2026-11-27 (5% of rows with a defect) into $demo/raw"
"$bin" generate --out "$demo/raw" --from 2026-11-25 --to 2026-11-27 --rows 20000 --parts 3 --defect-rate 0.05 --gzip

echo "== cleaning every batch into $demo/lake"
"$bin" clean --input "$demo/raw" --output "$demo/lake"

echo "== what landed"
(cd "$demo/lake" && find . -type f | sort)
echo
echo "== quality report of 2026-11-27 (transactions)"
python3 - "$demo/lake/reports/dt=2026-11-27/quality.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["tables"]["transactions"]
print({k: t[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates_removed", "conflicts_resolved")})
print("quarantined by reason:", t["quarantined_by_reason"])
print("files:", [(f["object"].rsplit("/", 1)[-1], f["encoding"], f["delimiter"]) for f in t["files"]])
PY
