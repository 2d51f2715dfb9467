"""Product files read by external readers (pyarrow, DuckDB) and recomputed from the spec.

The SQL below is written from ../shared/spec/products.md and extracts.md, not from the Rust code:
latest version per transaction over the batches of M and the late days (greatest updated_at,
ties to the later batch), local month of sold_at in America/Sao_Paulo, completed sales, segment
figures over every brand, nulled with fewer than 3 other brands, k=5 suppression into OUTRAS per
(uf, product) with the merged row dropped below k, month-over-month on unsuppressed cells."""

import hashlib
import hmac
import json

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import Builder

K = 5
LATE_DAYS = 2
BRANDS = "('Hungry', 'Refrigerantes'), ('Ouch', 'Salgadinhos')"


def key(secret, message):
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()[:16]


def monthly_sql(month, k=K):
    """The monthly aggregate of `month` straight from the spec's table (unsuppressed cells,
    then suppression)."""
    first = f"DATE '{month}-01'"
    window = f"batch BETWEEN {first} AND {first} + INTERVAL 1 MONTH + INTERVAL {LATE_DAYS - 1} DAY"
    return f"""
    WITH latest AS (
        SELECT * FROM tx WHERE {window}
        QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY updated_at DESC NULLS LAST, batch DESC) = 1),
    prod AS (
        SELECT * FROM pr WHERE {window}
        QUALIFY row_number() OVER (PARTITION BY product_code ORDER BY batch DESC) = 1),
    l AS (
        SELECT t.*, p.name AS product_name, p.brand, p.segment, p.manufacturer,
               t.quantity * t.unit_price - t.discount AS net,
               CAST(round(t.unit_price * 100) AS BIGINT) AS price_cents
        FROM latest t JOIN prod p USING (product_code)
        WHERE t.status = 'completed'
          AND strftime(t.sold_at AT TIME ZONE 'America/Sao_Paulo', '%Y-%m') = '{month}'),
    mine AS (
        SELECT * FROM l WHERE manufacturer = 'OuchHungry' AND (brand, segment) IN ({BRANDS})),
    seg AS (
        SELECT uf, city, segment, sum(quantity) AS s_units, sum(net) AS s_net,
               sum(quantity * price_cents) AS s_list, list(DISTINCT brand) AS brands
        FROM l WHERE segment IN ('Refrigerantes', 'Salgadinhos') GROUP BY ALL),
    cell AS (
        SELECT uf, city, product_code, any_value(product_name) AS product_name, any_value(brand) AS brand,
               any_value(segment) AS segment, sum(quantity) AS units_sold, sum(net) AS net_revenue,
               sum(quantity * price_cents) AS list_cents, min(unit_price) AS min_unit_price,
               max(unit_price) AS max_unit_price, count(DISTINCT order_id) AS orders,
               count(DISTINCT customer_id) AS customers_reached
        FROM mine GROUP BY uf, city, product_code),
    big AS (
        SELECT c.*, 0 AS cities_merged, s.s_units, s.s_net, s.s_list, s.brands FROM cell c
        LEFT JOIN seg s USING (uf, city, segment) WHERE customers_reached >= {k}),
    small AS (SELECT uf, city, product_code FROM cell WHERE customers_reached < {k}),
    merged AS (
        SELECT m.uf, 'OUTRAS' AS city, m.product_code, any_value(m.product_name) AS product_name,
               any_value(m.brand) AS brand, any_value(m.segment) AS segment,
               sum(m.quantity) AS units_sold, sum(m.net) AS net_revenue,
               sum(m.quantity * m.price_cents) AS list_cents, min(m.unit_price) AS min_unit_price,
               max(m.unit_price) AS max_unit_price, count(DISTINCT m.order_id) AS orders,
               count(DISTINCT m.customer_id) AS customers_reached, count(DISTINCT m.city) AS cities_merged
        FROM mine m JOIN small USING (uf, city, product_code) GROUP BY m.uf, m.product_code),
    merged_seg AS (
        SELECT x.uf, x.product_code, sum(s.s_units) AS s_units, sum(s.s_net) AS s_net,
               sum(s.s_list) AS s_list, list_distinct(flatten(list(s.brands))) AS brands
        FROM small x JOIN cell c USING (uf, city, product_code)
        JOIN seg s ON s.uf = x.uf AND s.city = x.city AND s.segment = c.segment
        GROUP BY x.uf, x.product_code),
    rows AS (
        SELECT product_code, uf, city, product_name, brand, segment, units_sold, net_revenue, list_cents,
               min_unit_price, max_unit_price, orders, customers_reached, cities_merged,
               s_units, s_net, s_list, brands FROM big
        UNION ALL
        SELECT m.product_code, m.uf, m.city, m.product_name, m.brand, m.segment, m.units_sold, m.net_revenue,
               m.list_cents, m.min_unit_price, m.max_unit_price, m.orders, m.customers_reached,
               m.cities_merged, ms.s_units, ms.s_net, ms.s_list, ms.brands
        FROM merged m LEFT JOIN merged_seg ms USING (uf, product_code) WHERE m.customers_reached >= {k})
    SELECT uf, city, cities_merged, product_code, product_name, brand, segment, units_sold, net_revenue,
           -- Σ(quantity × unit_price) / units_sold, rounded half away from zero to cents
           (2 * list_cents + units_sold) // (2 * units_sold) AS avg_cents,
           min_unit_price, max_unit_price, orders, customers_reached,
           len(list_filter(brands, lambda b: b <> brand)) >= 3 AS visible,
           s_units, s_net, (2 * s_list + s_units) // (2 * s_units) AS seg_avg_cents
    FROM rows"""


def expected_monthly(db, month, prev_month):
    rows = db.execute(monthly_sql(month)).fetchall()
    cols = [d[0] for d in db.description]
    prev = {}
    if prev_month:
        # MoM on unsuppressed cells of M−1 (k = 0 keeps every cell).
        for r in db.execute(monthly_sql(prev_month, k=0)).fetchall():
            prev[(r[0], r[1], r[3])] = r[7]
    out = {}
    for r in rows:
        r = dict(zip(cols, r))
        vis = r["visible"]
        p = prev.get((r["uf"], r["city"], r["product_code"])) if r["city"] != "OUTRAS" else None
        out[(r["uf"], r["city"], r["product_code"])] = {
            "cities_merged": r["cities_merged"], "product_name": r["product_name"], "brand": r["brand"],
            "segment": r["segment"], "units_sold": r["units_sold"], "net_revenue": r["net_revenue"],
            "avg_unit_price": r["avg_cents"], "min_unit_price": r["min_unit_price"],
            "max_unit_price": r["max_unit_price"], "orders": r["orders"],
            "customers_reached": r["customers_reached"],
            "segment_units": r["s_units"] if vis else None,
            "segment_share_units": r["units_sold"] / r["s_units"] if vis else None,
            "segment_share_revenue": float(r["net_revenue"] / r["s_net"]) if vis else None,
            "price_index": r["avg_cents"] / r["seg_avg_cents"] if vis else None,
            "units_mom_change": (r["units_sold"] / p - 1) if p else None,
        }
    return out


@pytest.mark.parametrize("month,prev", [("2026-09", None), ("2026-10", "2026-09")])
def test_monthly_equals_the_spec(db, built, month, prev):
    expected = expected_monthly(db, month, prev)
    t = pq.read_table(built / "monthly" / f"ouchhungry_monthly_{month}.parquet").to_pylist()
    got = {(r["uf"], r["city"], r["product_code"]): r for r in t}
    assert set(got) == set(expected)
    for k, e in expected.items():
        g = got[k]
        assert g["month"] == month
        for col, ev in e.items():
            gv = g[col]
            if col in ("avg_unit_price",):
                gv = int(gv * 100)
            if isinstance(ev, float) and gv is not None:
                assert gv == pytest.approx(ev, rel=1e-12), (k, col)
            else:
                assert gv == ev, (k, col, gv, ev)
    # The generated data covers what the spec's rules are about.
    assert any(k[1] == "OUTRAS" and v["cities_merged"] == 2 for k, v in expected.items())
    assert not any(k[0] == "RJ" and k[1] == "OUTRAS" for k in expected), "RJ merged row is dropped"
    assert any(v["segment_units"] is None for v in expected.values())
    assert any(v["segment_units"] is not None for v in expected.values())
    moms = [v["units_mom_change"] for v in expected.values()]
    assert all(m is None for m in moms) if prev is None else any(m is not None for m in moms)


def test_late_corrections_count_in_the_month(db, built):
    """A line of 10-30/31 refunded in the batch of 11-01/11-02 is out of October's file."""
    late = db.execute("""
        SELECT count(*) FROM tx WHERE batch IN (DATE '2026-11-01', DATE '2026-11-02') AND status <> 'completed'
          AND strftime(sold_at AT TIME ZONE 'America/Sao_Paulo', '%Y-%m') = '2026-10'""").fetchone()[0]
    assert late > 0
    m = json.loads((built / "monthly" / "ouchhungry_monthly_2026-10.parquet.manifest.json").read_text())
    assert "2026-11-02" in m["source_batches"] and m["missing_batches"] == []


def test_daily_equals_the_spec(db, built, secret):
    d = "2026-10-31"
    rows = db.execute(f"""
        WITH p AS (SELECT * FROM pr WHERE batch = DATE '{d}'),
        win AS (
            SELECT t.* FROM tx t JOIN pr pp ON pp.product_code = t.product_code AND pp.batch = t.batch
            WHERE t.batch BETWEEN DATE '{d}' - 29 AND DATE '{d}'
              AND pp.manufacturer = 'OuchHungry' AND (pp.brand, pp.segment) IN ({BRANDS})
            QUALIFY row_number() OVER (PARTITION BY t.transaction_id ORDER BY t.updated_at DESC NULLS LAST, t.batch DESC) = 1),
        reach AS (
            SELECT uf, city, count(DISTINCT customer_id) AS n FROM win
            WHERE status = 'completed'
              AND CAST(sold_at AT TIME ZONE 'America/Sao_Paulo' AS DATE) BETWEEN DATE '{d}' - 29 AND DATE '{d}'
            GROUP BY ALL)
        SELECT t.transaction_id, t.customer_id, date_trunc('hour', t.sold_at) AS hour,
               t.quantity * t.unit_price - t.discount AS net,
               CASE WHEN coalesce(r.n, 0) < {K} THEN 'OUTRAS' ELSE t.city END AS city, t.product_code
        FROM tx t JOIN p USING (product_code) LEFT JOIN reach r USING (uf, city)
        WHERE t.batch = DATE '{d}' AND t.status = 'completed'
          AND CAST(t.sold_at AT TIME ZONE 'America/Sao_Paulo' AS DATE) = DATE '{d}'
          AND p.manufacturer = 'OuchHungry' AND (p.brand, p.segment) IN ({BRANDS})""").fetchall()
    expected = {key(secret, f"l:{tid}"): (key(secret, f"c:2026-10:{cid}"), hour, net, city, code)
                for tid, cid, hour, net, city, code in rows}
    t = pq.read_table(built / "daily" / f"ouchhungry_daily_{d}.parquet").to_pylist()
    got = {r["line_key"]: (r["customer_key"], r["sold_at"], r["net_amount"], r["city"], r["product_code"]) for r in t}
    assert got == expected
    assert any(v[3] == "OUTRAS" for v in got.values())
    assert all(str(r["date"]) == d for r in t)
    # The 22:30 local sale of 10-31 (01:30 UTC on 11-01) is in the file of 10-31.
    assert any(r["sold_at"].day == 1 and r["sold_at"].hour == 1 for r in t)


def test_external_readers_see_types_and_values(built):
    daily = built / "daily" / "ouchhungry_daily_2026-10-15.parquet"
    monthly = built / "monthly" / "ouchhungry_monthly_2026-10.parquet"
    s = pq.read_schema(daily)
    assert str(s.field("date").type) == "date32[day]"
    assert str(s.field("sold_at").type) == "timestamp[us, tz=UTC]"
    assert str(s.field("unit_price").type) == "decimal128(12, 2)"
    assert str(s.field("net_amount").type) == "decimal128(14, 2)"
    assert str(s.field("quantity").type) == "int64"
    m = pq.read_schema(monthly)
    assert str(m.field("net_revenue").type) == "decimal128(16, 2)"
    assert str(m.field("cities_merged").type) == "int32"
    assert str(m.field("price_index").type) == "double"
    # Parquet logical types, as any reader sees them.
    ps = pq.ParquetFile(daily).schema
    logical = {ps.column(i).name: str(ps.column(i).logical_type) for i in range(len(ps))}
    assert logical["date"] == "Date"
    assert "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds" in logical["sold_at"]
    assert logical["unit_price"] == "Decimal(precision=12, scale=2)"
    assert pq.ParquetFile(daily).metadata.row_group(0).column(0).compression == "SNAPPY"
    # DuckDB reads both formats to the same values.
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    for f in (daily, monthly):
        csv = str(f).replace(".parquet", ".csv")
        pqrows = c.execute(f"SELECT * FROM read_parquet('{f}')").fetchall()
        cols = [d[0] for d in c.description]
        text_cols = {"product_name"}
        csvrows = c.execute(
            f"SELECT * FROM read_csv('{csv}', header = true, all_varchar = true)").fetchall()
        assert len(pqrows) == len(csvrows) > 0
        for a, b in zip(pqrows, csvrows):
            for col, x, y in zip(cols, a, b):
                if x is None:
                    assert y is None
                elif col in text_cols and str(x).startswith(("=", "+", "-", "@")):
                    assert y == "'" + x
                elif isinstance(x, float):
                    assert float(y) == x
                elif col == "sold_at":
                    assert y == x.strftime("%Y-%m-%dT%H:%M:%SZ")
                else:
                    assert y == str(x), (col, x, y)
    # Formula injection guard: the raw CSV cell is quoted and prefixed.
    raw = (built / "daily" / "ouchhungry_daily_2026-10-15.csv").read_text()
    assert '"\'-Ouch Pimenta 45g"' in raw
    manifest = json.loads((built / "daily" / "ouchhungry_daily_2026-10-15.parquet.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(daily.read_bytes()).hexdigest()
    assert manifest["delivery_id"] == hashlib.sha256(
        f"ouchhungry|daily|2026-10-15|{manifest['sha256']}".encode()).hexdigest()
    csv_manifest = json.loads((built / "daily" / "ouchhungry_daily_2026-10-15.csv.manifest.json").read_text())
    assert csv_manifest["product_version"] == manifest["sha256"]
    dictionary = (built / "daily" / "ouchhungry_daily_dictionary.pt-BR.md").read_text()
    for col in s.names:
        assert f"| `{col}` |" in dictionary


def test_building_twice_gives_the_same_bytes(tmp_path, lake, secret):
    outs = []
    for run in ("a", "b"):
        b = Builder(lake, tmp_path / run, secret)
        b.run("ouchhungry", "--month", "2026-10")
        outs.append(tmp_path / run / "products/ouchhungry/monthly/ouchhungry_monthly_2026-10.parquet")
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_missing_secret_fails_clearly(tmp_path, lake):
    b = Builder(lake, tmp_path, "unused")
    r = b.run("ouchhungry", "--date", "2026-10-15", env_extra={"DATASHARE_OUCHHUNGRY_HMAC_KEY": ""}, check=False)
    assert r.returncode != 0
    assert "environment variable DATASHARE_OUCHHUNGRY_HMAC_KEY" in r.stderr
