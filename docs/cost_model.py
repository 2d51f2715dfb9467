#!/usr/bin/env python3
"""The monthly cost model of docs/cost.md: measured sizes and times, public prices, arithmetic.

    python3 docs/cost_model.py            # the tables of docs/cost.md

Plain Python, no dependency. Every input is named here with where it comes from; change one
(a price, a retention, a measured size) and run it again. USD, 30-day months.
"""

M, GB, GiB, TiB = 1e6, 1e9, 2**30, 2**40
DAYS = 30

# --- measured here (2026-12-05): one generated day of 100,000 transaction lines, 1 % defects ----
TX_ROWS = 100_590                   # transaction rows read (generator's truth)
TX_KEPT = 100_159                   # transaction rows curated
RAW_CSV = 17_712_661 + 364          # bytes: every table's CSV + the marker
RAW_GZ = 3_618_886 + 382            # bytes: the same, gzipped (`generate --gzip`)
CURATED = 3_628_512 + 43_536 + 22_573   # curated Parquet + quarantine Parquet + reports
TX_PARQUET = 2_774_222              # curated transactions Parquet alone
STAGING = 11_523_009                # Arrow IPC staging of the day as the worker stores it (LZ4
                                    # frames; a row's raw text only where its values do not give
                                    # it back): 11,523,925 B in gs://<curated>/staging/dt=<D>/
                                    # after `scripts/bench-e2e.sh 100000` (100,598 rows), scaled
                                    # to TX_ROWS: 114.6 B/row (169.7 B/row while every row's raw
                                    # text was staged)
PROD_LINES, PROD_PARQUET, PROD_CSV = 30_086, 1_000_218, 4_936_846   # OuchHungry's daily file

# --- measured before (README, Benchmarks: release build, 2026-11-28) -----------------------------
CLEAN_S_10M = 35.3                  # s for 10M (4 parts), 487.5 MiB peak RSS
# --- measured on a quiet machine (2026-12-05, release, `datashare bench clean --rows 1000000`) ----
CLEAN_S_1M = 2.25                   # s to clean 1M transaction rows (three runs 2.25-2.36 s), 68 MiB
                                    # peak RSS (the README's 2026-11-28 figure: 2.735 s, 89 MiB)

# --- measured here with a release build (2026-12-05, `/usr/bin/time datashare build`, issue 15) --
# The day alone: one partner's daily build streams the day's curated lines (64 B a line, files
# written a row group at a time).
BUILD_S_PER_M_DAY = 1.0     # 0.93-0.95 s user at 1M rows, 2.94-3.00 s at 3M (the first days; the
                            # model uses the steady state, BUILD_S_PER_M below)
BUILD_GIB_DAY_BASE = 0.06   # peak RSS 110-115 MB at 1M, 208 MB at 3M: a base + this per 1M rows
BUILD_GIB_DAY_PER_M = 0.05  # (before the build streamed: 4.58 s and 1.06 GB at 1M)
CLEAN_GIB_1M, CLEAN_GIB_10M = 68.0 / 1024, 487.5 / 1024   # the cleaning's peak RSS (above)

# --- the trailing 30-day window of the small-city rule, since 40b4cf1 (measured 2026-12-06) ------
# Each batch step writes, per daily contract, one window file (window/dt=<D>/<partner>-<filter>.arrow
# in the curated bucket: one 33-byte record per version of the partner's lines, LZ4); the daily
# build streams the window's 29 earlier files from the bucket and merges them, one 4,096-row record
# batch of each in memory (~4 MB for 30 files), so its memory no longer grows with the window and
# the worker no longer downloads curated days for it. Before 40b4cf1 (d6a3376) the build re-read
# the window: the 29 earlier curated days downloaded (27.7 B a row: 0.8 GB per 1M rows a day) and
# one 32-byte record per partner line held (~40 MB + 48 B a line: ~0.47 GB and ~11 s CPU per build
# at 1M rows a day at steady state, ~4.4 GB and ~111 s at 10M; 1.09-1.12 s CPU and 55 MB with 30
# days of 100k rows present).
WINDOW_DAYS = 30        # the small-city window (src/products/daily.rs, WINDOW_DAYS)
WINDOW_B_PER_ROW = 9.1  # bytes of one OuchHungry-sized partner's window file per transaction row of
                        # the day: `scripts/bench-e2e.sh` ("window files of the day"), generated data
WINDOW_KEPT_DAYS = 60   # lifecycle rule `window/` of the curated bucket (fake-gcp/topology.yaml)
BUILD_S_PER_M = 2.66    # s per partner per 1M rows of the day at steady state, window merge included:
                        # "batch step ran -> daily product released" on day 30 of 30 consecutive
                        # 1M-row days (`BENCH_FIRST_DAY=2026-12-03 BENCH_DAYS=30 scripts/bench-e2e.sh
                        # 1000000`, release, 40b4cf1; wall time, the product files' upload to the
                        # local bucket included; d6a3376, re-reading the window: 17.4 s). Scaled
                        # linearly with the rows: 10M rows a day at steady state is extrapolated
# The build's memory is the day alone's (BUILD_GIB_DAY_*): the worker's peak RSS end to end over the
# same 30 days went 140 -> 195 MiB (206 at most), where d6a3376's rose 133 -> 431 MiB (~10 MiB a
# day); on a single 10M-row day (the window short) it peaked at 551.6 MiB, 63-77 MiB at 100k rows.
# Compressing the staged files (LZ4) costs CPU the model leaves out: small next to the cleaning.

# --- estimated (not measured in the cloud; see docs/cost.md) ---------------------------------------
IO_BYTES_S = 100e6      # Cloud Storage read/write within the region, bytes/s
TICK_WORKER_S = 0.5     # worker time of one tick (listings, deadlines), s
CHECK_S = 1.0           # one sink's connection check, s
ALERT_TICK_S = 0.2      # alert consumer's time per tick, s
CHECK_TICKS = 24        # ticks within check_sinks_before_mins = 120 before a deadline
REFRESHES = 32          # Power BI refreshes per dataset per month (operations.md: 30 + monthly + fixes)
DATASETS = 2            # Power BI datasets reading curated transactions, 30-day window
NAT_INSTANCES = 8       # worst case: every instance of sftp (2), api (2), worker (4) all month

# --- prices (USD, read 2026-12-05; docs/cost.md says where each comes from) -----------------------
RUN_CPU, RUN_MEM, RUN_REQ = 0.0000336, 0.0000035, 0.40 / M    # Cloud Run tier 2, request-based
RUN_FREE = 180_000 * 0.000024 + 360_000 * 0.0000025           # free tier, valued at tier 1
RUN_FREE_REQ = 2 * M
STORAGE = {"STANDARD": 0.035, "NEARLINE": 0.020, "COLDLINE": 0.007, "ARCHIVE": 0.0030}  # GB-month
CLASS_A = 0.005 / 1000
PUBSUB_TIB, PUBSUB_FREE, PUBSUB_MIN = 40.0, 10 * GiB, 1000
NAT_GIB, NAT_IP_H, NAT_VM_H = 0.045, 0.005, 0.0014
EGRESS_GIB = 0.12
BQ_TIB, BQ_FREE_TIB = 6.25, 1.0
SECRET_VERSION, SECRET_FREE = 0.06, 6
FIXED_SMALL = 0.15      # Cloud Scheduler (2 jobs, 3 free), Artifact Registry, logs/metrics/traces

WORKER = 2 * RUN_CPU + 4 * RUN_MEM      # $/s of a worker instance as deployed (2 vCPU, 4 GiB)
SMALL = 1 * RUN_CPU + 0.5 * RUN_MEM     # $/s of sftp, api, email, alert, powerbi (1 vCPU, 512 MiB)
SHARE = PROD_LINES / TX_KEPT            # OuchHungry's share of the day's lines


def gb_months(days_kept, bytes_per_day, classes):
    """GB stored at steady state by class: a day's bytes kept `days_kept` days, the class
    changing at the ages of `classes` [(until age in days, class), ...]."""
    out, start = {}, 0
    for until, cls in classes:
        days = min(until, days_kept) - start
        if days > 0:
            out[cls] = out.get(cls, 0) + bytes_per_day * days / GB
        start = until
    return out


def build_gib(rows):
    """Peak memory (GiB) of one partner's daily build: the day alone's, as the window's files are
    merged as streams (flat in the window since 40b4cf1). Builds run one partner after the other."""
    return BUILD_GIB_DAY_BASE + BUILD_GIB_DAY_PER_M * rows / M


def window_bytes(partners, rows):
    """Bytes of the window files one batch step writes (every daily contract): an OuchHungry-sized
    partner's 9.1 B a row, scaled to the partners' lines (their share, capped at 100 %)."""
    return WINDOW_B_PER_ROW * rows * min(SHARE * partners, 1.0) / SHARE


def worker_size(rows):
    """The smallest Cloud Run worker (vCPU, GiB) whose memory holds the larger of the day's
    cleaning and one product build at steady state, with 0.5 GiB to spare (Cloud Run: up to 8 GiB
    on 2 vCPU, 16 GiB on 4, 32 GiB on 8). The temporary files, which count against a Cloud Run
    instance's memory, are not in it (docs/cost.md, section 4)."""
    clean = CLEAN_GIB_1M if rows <= M else CLEAN_GIB_10M * rows / (10 * M)
    need = max(clean, build_gib(rows)) + 0.5
    for cpu, gib in ((2, 4), (2, 8), (4, 16), (8, 32)):
        if need <= gib:
            return cpu, gib
    raise ValueError(f"{rows} rows need {need:.0f} GiB: more than a Cloud Run instance has")


def model(partners, rows, staging_days=400, formats=("parquet", "csv"), nat=True, checks_per_window=24,
          secrets_per_partner=4):
    """Monthly cost by line for `partners` partners and `rows` transaction rows a day."""
    cpu, gib = worker_size(rows)
    worker = cpu * RUN_CPU + gib * RUN_MEM
    f = rows / TX_ROWS
    raw, curated, staging = RAW_GZ * f, CURATED * f, STAGING * f
    lines = min(SHARE * partners, 1.0) * rows * TX_KEPT / TX_ROWS
    per_line = (PROD_PARQUET if "parquet" in formats else 0) + (PROD_CSV if "csv" in formats else 0)
    products = lines * per_line / PROD_LINES          # bytes a day, every partner, every format
    cost, facts = {}, {}

    clean_s = CLEAN_S_1M * rows / M if rows <= M else CLEAN_S_10M * rows / (10 * M)
    # the batch step uploads the day's window files and the daily builds stream the 29 earlier
    # days' (counted at the I/O rate on top of BUILD_S_PER_M, which streamed them locally: a bound)
    window_day = window_bytes(partners, rows)
    window = WINDOW_DAYS * window_day
    io_s = (raw + 2 * staging + curated + window + products) / IO_BYTES_S
    build_s = BUILD_S_PER_M * partners * rows / M
    batch_s = clean_s + build_s + io_s
    worker_ticks_s = 288 * TICK_WORKER_S + checks_per_window * partners * 2 * CHECK_S
    sinks_s = partners * 2 * (1.0 + products / partners / 10e6) + partners * 1.0
    gross = DAYS * (worker * (batch_s + worker_ticks_s) + SMALL * (sinks_s + 288 * ALERT_TICK_S))
    requests = DAYS * (576 + 20 + 5 * partners)
    cost["Cloud Run"] = max(0.0, gross - RUN_FREE) + max(0, requests - RUN_FREE_REQ) * RUN_REQ
    facts.update(batch_s=batch_s, build_s=build_s, io_s=io_s, build_gib=build_gib(rows),
                 worker_ticks_s=worker_ticks_s, run_gross=gross, requests=requests,
                 worker=f"{cpu} vCPU / {gib} GiB")

    pubsub_bytes = DAYS * PUBSUB_MIN * (864 + 14 + 4 + 5 * partners + 2)
    cost["Pub/Sub"] = max(0.0, pubsub_bytes - PUBSUB_FREE) / TiB * PUBSUB_TIB

    stored = {}
    for part in (gb_months(90, raw, [(30, "STANDARD"), (90, "NEARLINE")]),
                 gb_months(400, curated, [(60, "STANDARD"), (180, "NEARLINE"), (400, "COLDLINE")]),
                 gb_months(staging_days, staging, [(60, "STANDARD"), (180, "NEARLINE"), (400, "COLDLINE")]),
                 gb_months(WINDOW_KEPT_DAYS, window_day, [(60, "STANDARD")]),
                 gb_months(1825, products, [(90, "STANDARD"), (365, "COLDLINE"), (1825, "ARCHIVE")])):
        for cls, gb in part.items():
            stored[cls] = stored.get(cls, 0) + gb
    cost["Cloud Storage"] = sum(STORAGE[c] * gb for c, gb in stored.items()) \
        + DAYS * (1500 + 11 * partners) * CLASS_A   # 11: 10 + the window file
    facts.update(stored_gb=stored, staging_mb_day=staging / 1e6, products_mb_day=products / 1e6,
                 window_mb_day=window_day / 1e6)

    egress_gib = DAYS * 2 * products / GiB                # SFTP and API each deliver every file
    cost["Network (Cloud NAT, egress)"] = egress_gib * EGRESS_GIB + (
        730 * (NAT_IP_H + NAT_VM_H * NAT_INSTANCES) + egress_gib * NAT_GIB if nat else 0.0)
    facts.update(egress_gib=egress_gib)

    scanned = DATASETS * REFRESHES * 30 * rows * TX_PARQUET / TX_KEPT
    cost["BigQuery (Power BI refreshes)"] = max(0.0, scanned / TiB - BQ_FREE_TIB) * BQ_TIB
    facts.update(scanned_gib=scanned / GiB, scanned_no_filter_gib=scanned * 400 / 30 / GiB)

    cost["Secret Manager"] = max(0, secrets_per_partner * partners + 2 - SECRET_FREE) * SECRET_VERSION
    cost["Scheduler, registry, telemetry"] = FIXED_SMALL
    return cost, facts


def directquery(rows, queries_a_day=1000, window_days=30):
    """Monthly BigQuery bill if dashboards queried the external tables at every interaction."""
    scanned = DAYS * queries_a_day * window_days * rows * TX_PARQUET / TX_KEPT
    return scanned / TiB, max(0.0, scanned / TiB - BQ_FREE_TIB) * BQ_TIB


def total(cost):
    return sum(cost.values())


def main():
    print("bytes per transaction row (all tables):",
          f"raw CSV {RAW_CSV / TX_ROWS:.1f}, gzipped {RAW_GZ / TX_ROWS:.1f},",
          f"curated {CURATED / TX_ROWS:.1f} (transactions Parquet {TX_PARQUET / TX_KEPT:.1f}/row),",
          f"staging {STAGING / TX_ROWS:.1f}; product line: Parquet {PROD_PARQUET / PROD_LINES:.1f},",
          f"CSV {PROD_CSV / PROD_LINES:.1f}; partner share {SHARE:.3f}")
    print(f"worker ${WORKER:.7f}/s, small role ${SMALL:.7f}/s, Cloud Run free tier ${RUN_FREE:.2f}/month")
    scenarios = [(p, r) for r in (M, 10 * M) for p in (1, 10, 100)]
    lines = list(model(1, M)[0])
    print("\n| line | " + " | ".join(f"{p} × {r / M:.0f}M" for p, r in scenarios) + " |")
    print("|---|" + "---:|" * len(scenarios))
    results = [model(p, r) for p, r in scenarios]
    for line in lines:
        print(f"| {line} | " + " | ".join(f"{c[line]:.2f}" for c, _ in results) + " |")
    print("| **total (USD/month)** | " + " | ".join(f"**{total(c):.2f}**" for c, _ in results) + " |")
    print("| per million rows | " + " | ".join(f"{total(c) / (DAYS * r / M):.3f}" for (c, _), (p, r)
                                               in zip(results, scenarios)) + " |")
    print("| per delivered daily product | " + " | ".join(f"{total(c) / (DAYS * p):.3f}" for (c, _), (p, r)
                                                          in zip(results, scenarios)) + " |")
    for (p, r), (_, facts) in zip(scenarios, results):
        stored = ", ".join(f"{k.lower()} {v:.0f}" for k, v in facts["stored_gb"].items())
        print(f"\n{p} partners, {r / M:.0f}M rows: worker {facts['worker']} (one build's peak "
              f"{facts['build_gib']:.2f} GiB), batch step {facts['batch_s']:.0f} s/day (builds "
              f"{facts['build_s']:.0f} s, I/O {facts['io_s']:.0f} s), worker ticks "
              f"{facts['worker_ticks_s']:.0f} s/day, Cloud Run gross ${facts['run_gross']:.2f}, "
              f"{facts['requests']:.0f} requests; stored GB {stored}; staging {facts['staging_mb_day']:.0f} MB/day, "
              f"window files {facts['window_mb_day']:.0f} MB/day, products {facts['products_mb_day']:.0f} MB/day; egress {facts['egress_gib']:.1f} GiB; "
              f"BigQuery {facts['scanned_gib']:.0f} GiB scanned ({facts['scanned_no_filter_gib']:.0f} GiB "
              f"without the partition filter)")
    for r in (M, 10 * M):
        tib, usd = directquery(r)
        print(f"\nDirectQuery, 1,000 queries a day over 30 days at {r / M:.0f}M rows: {tib:.1f} TiB, ${usd:.0f}/month")
    levers = {
        "staging/ deleted after 90 days (with raw: no replay lost)": dict(staging_days=90),
        "staging/ deleted after 30 days": dict(staging_days=30),
        "Parquet only to partners (no CSV)": dict(formats=("parquet",)),
        "no Cloud NAT / static address": dict(nat=False),
        "check-sinks 2 times per deadline window, not 24": dict(checks_per_window=2),
        "one secret per partner, not 4": dict(secrets_per_partner=1),
    }
    print("\n| lever | " + " | ".join(f"{p} × {r / M:.0f}M" for p, r in scenarios) + " |")
    print("|---|" + "---:|" * len(scenarios))
    for name, kw in levers.items():
        saved = [total(model(p, r)[0]) - total(model(p, r, **kw)[0]) for p, r in scenarios]
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in saved) + " |")


if __name__ == "__main__":
    main()
