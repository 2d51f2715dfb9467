"""The monthly brand view recomputed from the spec (products.md, "Monthly brand view").

The SQL is written from the spec, not from the Rust code: month M's lines (latest version over
the batches of M and the late days, completed, local month of sold_at), cells at three levels
with GROUPING SETS (city, whole state, whole country), distinct orders and customers counted at
each level, segment figures over every brand of the segment in the same cell nulled with fewer
than 3 other brands, city cells below k merged per (uf, brand) into OUTRAS (dropped when still
below k), state rows below k dropped, the country row always kept, month-over-month on
unsuppressed cells of the same (level, uf, city, brand)."""

import duckdb
import pyarrow.parquet as pq
import pytest

K = 5
LATE_DAYS = 2
BRANDS = "('Hungry', 'Refrigerantes'), ('Ouch', 'Salgadinhos')"
SEGMENTS = "('Refrigerantes', 'Salgadinhos')"
LEVEL = "CASE WHEN grouping(city) = 0 THEN 'city' WHEN grouping(uf) = 0 THEN 'uf' ELSE 'country' END"


def lines_sql(month):
    first = f"DATE '{month}-01'"
    window = f"batch BETWEEN {first} AND {first} + INTERVAL 1 MONTH + INTERVAL {LATE_DAYS - 1} DAY"
    return f"""
    latest AS (
        SELECT * FROM tx WHERE {window}
        QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY updated_at DESC NULLS LAST, batch DESC) = 1),
    prod AS (
        SELECT * FROM pr WHERE {window}
        QUALIFY row_number() OVER (PARTITION BY product_code ORDER BY batch DESC) = 1),
    seg_lines AS (
        SELECT t.*, p.brand, p.segment, p.manufacturer,
               t.quantity * t.unit_price - t.discount AS net,
               t.quantity * CAST(round(t.unit_price * 100) AS BIGINT) AS list_cents
        FROM latest t JOIN prod p USING (product_code)
        WHERE t.status = 'completed' AND p.segment IN {SEGMENTS}
          AND strftime(t.sold_at AT TIME ZONE 'America/Sao_Paulo', '%Y-%m') = '{month}'),
    mine AS (
        SELECT * FROM seg_lines WHERE manufacturer = 'OuchHungry' AND (brand, segment) IN ({BRANDS}))"""


def brands_sql(month, k=K):
    """Rows of the brand view of `month` (k = 0: every cell, unsuppressed)."""
    return f"""
    WITH {lines_sql(month)},
    cell AS (
        SELECT {LEVEL} AS level, uf, city, brand, segment, 0 AS cities_merged,
               count(DISTINCT product_code) AS skus_sold, sum(quantity) AS units_sold,
               count(DISTINCT order_id) AS orders, count(DISTINCT customer_id) AS customers_reached,
               sum(net) AS net_revenue, sum(list_cents) AS list_cents
        FROM mine GROUP BY GROUPING SETS ((uf, city, brand, segment), (uf, brand, segment), (brand, segment))),
    seg AS (
        SELECT {LEVEL} AS level, uf, city, segment, sum(quantity) AS s_units, sum(net) AS s_net,
               sum(list_cents) AS s_list, list(DISTINCT brand) AS brands,
               count(DISTINCT customer_id) AS s_customers
        FROM seg_lines GROUP BY GROUPING SETS ((uf, city, segment), (uf, segment), (segment))),
    small AS (SELECT uf, city, brand, segment FROM cell WHERE level = 'city' AND customers_reached < {k}),
    merged AS (
        SELECT 'city' AS level, m.uf, 'OUTRAS' AS city, m.brand, m.segment,
               count(DISTINCT m.city) AS cities_merged, count(DISTINCT m.product_code) AS skus_sold,
               sum(m.quantity) AS units_sold, count(DISTINCT m.order_id) AS orders,
               count(DISTINCT m.customer_id) AS customers_reached, sum(m.net) AS net_revenue,
               sum(m.list_cents) AS list_cents
        FROM mine m JOIN small USING (uf, city, brand, segment) GROUP BY m.uf, m.brand, m.segment),
    merged_seg AS (
        SELECT x.uf, x.brand, x.segment, sum(s.quantity) AS s_units, sum(s.net) AS s_net,
               sum(s.list_cents) AS s_list, list(DISTINCT s.brand) AS brands,
               count(DISTINCT s.customer_id) AS s_customers
        FROM small x JOIN seg_lines s ON s.uf = x.uf AND s.city = x.city AND s.segment = x.segment
        GROUP BY x.uf, x.brand, x.segment),
    rows AS (
        SELECT c.*, s.s_units, s.s_net, s.s_list, s.brands, s.s_customers FROM cell c
        LEFT JOIN seg s ON s.level = c.level AND s.uf IS NOT DISTINCT FROM c.uf
             AND s.city IS NOT DISTINCT FROM c.city AND s.segment = c.segment
        WHERE c.level = 'country' OR c.customers_reached >= {k}
        UNION ALL
        SELECT m.*, ms.s_units, ms.s_net, ms.s_list, ms.brands, ms.s_customers FROM merged m
        LEFT JOIN merged_seg ms USING (uf, brand, segment) WHERE m.customers_reached >= {k})
    SELECT *, (2 * list_cents + units_sold) // (2 * units_sold) AS avg_cents,
           (2 * s_list + s_units) // (2 * s_units) AS seg_avg_cents,
           len(list_filter(brands, lambda b: b <> brand)) >= 3 AS visible
    FROM rows"""


def rows_of(db, sql):
    cur = db.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def expected_brands(db, month, prev_month):
    prev = {}
    if prev_month:
        for r in rows_of(db, brands_sql(prev_month, k=0)):
            prev[(r["level"], r["uf"], r["city"], r["brand"])] = r["units_sold"]
    out = {}
    for r in rows_of(db, brands_sql(month)):
        key = (r["level"], r["uf"], r["city"], r["brand"])
        vis = r["visible"]
        p = prev.get(key) if r["city"] != "OUTRAS" else None
        out[key] = {
            "cities_merged": r["cities_merged"], "segment": r["segment"], "skus_sold": r["skus_sold"],
            "units_sold": r["units_sold"], "orders": r["orders"], "customers_reached": r["customers_reached"],
            "net_revenue": r["net_revenue"], "avg_unit_price": r["avg_cents"],
            "segment_share_units": r["units_sold"] / r["s_units"] if vis else None,
            "segment_share_revenue": float(r["net_revenue"] / r["s_net"]) if vis else None,
            "price_index": r["avg_cents"] / r["seg_avg_cents"] if vis else None,
            "customers_share": r["customers_reached"] / r["s_customers"] if vis else None,
            "units_mom_change": (r["units_sold"] / p - 1) if p else None,
        }
    return out


def read(built, month):
    return pq.read_table(built / "monthly_brands" / f"ouchhungry_monthly_brands_{month}.parquet").to_pylist()


@pytest.mark.parametrize("month,prev", [("2026-09", None), ("2026-10", "2026-09")])
def test_brand_view_equals_the_spec(db, built, month, prev):
    expected = expected_brands(db, month, prev)
    t = read(built, month)
    got = {(r["level"], r["uf"], r["city"], r["brand"]): r for r in t}
    assert len(got) == len(t), "one row per (level, uf, city, brand)"
    assert set(got) == set(expected)
    for k, e in expected.items():
        g = got[k]
        assert g["month"] == month
        for col, ev in e.items():
            gv = g[col]
            if col == "avg_unit_price":
                gv = int(gv * 100)
            if isinstance(ev, float) and gv is not None:
                assert gv == pytest.approx(ev, rel=1e-12), (k, col)
            else:
                assert gv == ev, (k, col, gv, ev)
    # The generated data covers what the spec's rules are about.
    assert {k[0] for k in expected} == {"city", "uf", "country"}
    assert any(k[2] == "OUTRAS" and v["cities_merged"] == 2 for k, v in expected.items())
    assert not any(k[1] == "RJ" and k[2] == "OUTRAS" for k in expected), "RJ's merged row is dropped"
    assert not any(k[1] == "AC" for k in expected), "Acre's rows are below k"
    assert any(v["segment_share_units"] is None for v in expected.values())
    assert any(v["segment_share_units"] is not None for v in expected.values())
    moms = [v["units_mom_change"] for v in expected.values()]
    assert all(m is None for m in moms) if prev is None else any(m is not None for m in moms)


def test_customers_are_counted_at_each_level_never_summed(db, built):
    """Distinct customers of each brand in SP, in SP's cities and in the country, straight from
    the lines; a customer buying in two cities counts once in the state."""
    month = "2026-10"
    t = read(built, month)
    got = {(r["level"], r["uf"], r["city"], r["brand"]): r["customers_reached"] for r in t}
    direct = db.execute(f"""
        WITH {lines_sql(month)}
        SELECT brand,
               count(DISTINCT customer_id) AS country,
               count(DISTINCT customer_id) FILTER (WHERE uf = 'SP') AS sp,
               count(DISTINCT customer_id) FILTER (WHERE uf = 'SP' AND city = 'São Paulo') AS sao_paulo,
               count(DISTINCT customer_id) FILTER (WHERE uf = 'SP' AND city IN ('Itu', 'Salto')) AS outras,
               count(DISTINCT (city, customer_id)) FILTER (WHERE uf = 'SP') AS sp_summed
        FROM mine GROUP BY brand ORDER BY brand""").fetchall()
    assert [r[0] for r in direct] == ["Hungry", "Ouch"]
    for brand, country, sp, sao_paulo, outras, sp_summed in direct:
        assert got[("country", None, None, brand)] == country
        assert got[("uf", "SP", None, brand)] == sp
        assert got[("city", "SP", "São Paulo", brand)] == sao_paulo
        assert got[("city", "SP", "OUTRAS", brand)] == outras
        # Customers buy in São Paulo and Campinas: adding the cities would count them twice.
        assert sp < sp_summed
        city_rows = [v for (lv, uf, _, b), v in got.items() if lv == "city" and uf == "SP" and b == brand]
        assert sum(city_rows) > sp


def test_country_rows_reconcile_with_the_monthly_file(db, built):
    """Σ per brand of the monthly file (with its dropped cells, from the lines) = the country row;
    the dropped Acre and RJ cells are in the country row, not in any state row."""
    month = "2026-10"
    t = read(built, month)
    m = pq.read_table(built / "monthly" / f"ouchhungry_monthly_{month}.parquet").to_pylist()
    lines = {b: (u, n) for b, u, n in db.execute(f"""
        WITH {lines_sql(month)} SELECT brand, sum(quantity), sum(net) FROM mine GROUP BY brand""").fetchall()}
    dropped = {b: (u, n) for b, u, n in db.execute(f"""
        WITH {lines_sql(month)},
        cell AS (SELECT uf, city, product_code, count(DISTINCT customer_id) AS n FROM mine GROUP BY ALL),
        small AS (SELECT * FROM cell WHERE n < {K}),
        merged AS (
            SELECT m.uf, m.product_code, any_value(m.brand) AS brand, sum(m.quantity) AS units,
                   sum(m.net) AS net, count(DISTINCT m.customer_id) AS n
            FROM mine m JOIN small USING (uf, city, product_code) GROUP BY m.uf, m.product_code)
        SELECT brand, sum(units), sum(net) FROM merged WHERE n < {K} GROUP BY brand""").fetchall()}
    for r in t:
        if r["level"] != "country":
            continue
        b = r["brand"]
        du, dn = dropped.get(b, (0, 0))
        assert r["net_revenue"] == sum(x["net_revenue"] for x in m if x["brand"] == b) + dn == lines[b][1]
        assert r["units_sold"] == sum(x["units_sold"] for x in m if x["brand"] == b) + du == lines[b][0]
        states = sum(x["net_revenue"] for x in t if x["level"] == "uf" and x["brand"] == b)
        assert states < r["net_revenue"], "Acre's state row is dropped, its sales stay in the country"
    assert all(v[1] > 0 for v in dropped.values()) and len(dropped) == 2


def test_brand_view_is_delivered_like_the_others(built):
    """Manifest, CSV twin and the pt-BR dictionary beside it; readers agree on the nulls."""
    d = built / "monthly_brands"
    f = d / "ouchhungry_monthly_brands_2026-10.parquet"
    csv = d / "ouchhungry_monthly_brands_2026-10.csv"
    assert (d / "ouchhungry_monthly_brands_2026-10.parquet.manifest.json").exists()
    dictionary = (d / "ouchhungry_monthly_brands_dictionary.pt-BR.md").read_text()
    s = pq.read_schema(f)
    for col in s.names:
        assert f"| `{col}` |" in dictionary
    assert str(s.field("net_revenue").type) == "decimal128(16, 2)"
    assert str(s.field("skus_sold").type) == "int32"
    c = duckdb.connect()
    country = c.execute(f"SELECT count(*) FROM read_csv('{csv}', header = true) WHERE level = 'country' "
                        "AND uf IS NULL AND city IS NULL").fetchone()[0]
    assert country == 2
