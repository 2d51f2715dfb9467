"""Generates curated Parquet like the cleaning engine writes it (names and Arrow types of
config/tables.toml as src/clean/columns.rs types them), for the product tests.

Batches every day from 2026-09-01 to 2026-11-02: September has no previous month, October has
one, and the batches of 11-01/11-02 carry late corrections of October's last days. Cells are
laid out so that some cities merge into OUTRAS, merged rows and a state (Acre) stay below k, Salgadinhos cells
mostly have fewer than 3 rival brands, and lines sold late in the local evening fall on the next
UTC day (local-date attribution)."""

import datetime as dt
import random
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq

SP = ZoneInfo("America/Sao_Paulo")
UTC = dt.timezone.utc
TS = pa.timestamp("us", tz="UTC")
BRL = pa.decimal128(18, 2)

TRANSACTIONS = pa.schema([
    pa.field("transaction_id", pa.string(), nullable=False),
    pa.field("order_id", pa.string(), nullable=False),
    pa.field("customer_id", pa.string(), nullable=False),
    pa.field("product_code", pa.string(), nullable=False),
    pa.field("quantity", pa.int64(), nullable=False),
    pa.field("unit_price", BRL, nullable=False),
    pa.field("discount", BRL),
    pa.field("status", pa.string(), nullable=False),
    pa.field("sold_at", TS, nullable=False),
    pa.field("delivery_cep", pa.string()),
    pa.field("city", pa.string(), nullable=False),
    pa.field("uf", pa.string(), nullable=False),
    pa.field("updated_at", TS),
])

PRODUCTS = pa.schema([
    pa.field("product_code", pa.string(), nullable=False),
    pa.field("ean", pa.string()),
    pa.field("name", pa.string(), nullable=False),
    pa.field("brand", pa.string(), nullable=False),
    pa.field("manufacturer", pa.string(), nullable=False),
    pa.field("segment", pa.string(), nullable=False),
    pa.field("unit_size", pa.string()),
    pa.field("updated_at", TS),
])

# code, name, brand, manufacturer, segment, unit_size, price
CATALOG = [
    ("HUN-000101", "Hungry Cola 350ml", "Hungry", "OuchHungry", "Refrigerantes", "350ml", "4.99"),
    ("HUN-000102", "Hungry Zero 2L", "Hungry", "OuchHungry", "Refrigerantes", "2L", "9.49"),
    ("OUC-000201", "Ouch Original 96g", "Ouch", "OuchHungry", "Salgadinhos", "96g", "7.49"),
    ("OUC-000202", "-Ouch Pimenta 45g", "Ouch", "OuchHungry", "Salgadinhos", None, "3.99"),
    ("RVA-000001", "Brisa Cola 350ml", "Brisa", "Brisa SA", "Refrigerantes", "350ml", "4.59"),
    ("RVB-000001", "Onda Guaraná 2L", "Onda", "Onda SA", "Refrigerantes", "2L", "7.99"),
    ("RVC-000001", "Pico Laranja 350ml", "Pico", "Pico SA", "Refrigerantes", "350ml", "4.29"),
    ("RVD-000001", "Croc Queijo 100g", "Croc", "Croc SA", "Salgadinhos", "100g", "6.99"),
    ("RVE-000001", "Zig Bacon 80g", "Zig", "Zig SA", "Salgadinhos", "80g", "6.49"),
    ("RVF-000001", "Milhito 90g", "Milhito", "Milhito SA", "Salgadinhos", "90g", "5.99"),
    ("CVJ-000001", "Malte Pilsen 350ml", "Malte", "Malte SA", "Cervejas", "350ml", "3.89"),
]

BIG = [("São Paulo", "SP", 80), ("Campinas", "SP", 40), ("Rio de Janeiro", "RJ", 60), ("Curitiba", "PR", 30)]
# Small cities: (city, uf, customers). SP's two merge above k=5; RJ's stays below and is dropped;
# Acre sells only in Rio Branco, so its state row of the brand view is below k too (dropped).
SMALL = [("Itu", "SP", 3), ("Salto", "SP", 3), ("Armação dos Búzios", "RJ", 2), ("Rio Branco", "AC", 2)]

FIRST = dt.date(2026, 9, 1)
LAST = dt.date(2026, 11, 2)


def local(d, h, m):
    return dt.datetime(d.year, d.month, d.day, h, m, tzinfo=SP).astimezone(UTC)


def generate(seed=11):
    rnd = random.Random(seed)
    lines = []  # dicts with batch
    n = 0

    def add(d, customer, city, uf, prod, status=None, hour=None):
        nonlocal n
        n += 1
        code, _, _, _, _, _, price = prod
        h = hour if hour is not None else rnd.choice([0, 7, 9, 11, 12, 13, 15, 18, 19, 20, 21, 22, 23])
        sold = local(d, h, rnd.randrange(60))
        st = status or rnd.choices(["completed", "cancelled", "refunded"], [85, 9, 6])[0]
        q = rnd.randint(1, 5)
        p = Decimal(price) + Decimal(rnd.choice([-10, 0, 0, 5])) / 100
        disc = Decimal(rnd.choice([0, 0, 0, 50, 125])) / 100
        lines.append(dict(
            batch=d, transaction_id=f"T{n:07d}", order_id=f"O{(n + 1) // 2:07d}",
            customer_id=customer, product_code=code, quantity=q, unit_price=p, discount=disc,
            status=st, sold_at=sold, delivery_cep="20040-002", city=city, uf=uf,
            updated_at=sold + dt.timedelta(minutes=5)))

    d = FIRST
    while d <= dt.date(2026, 10, 31):
        for city, uf, customers in BIG:
            for _ in range(rnd.randint(8, 14)):
                prod = rnd.choice(CATALOG)
                # Milhito sells only in São Paulo: the only Salgadinhos cell with 3 rivals.
                if prod[2] == "Milhito" and city != "São Paulo":
                    prod = CATALOG[7]
                # Pico stops selling in Curitiba: Refrigerantes there has 2 rivals only.
                if prod[2] == "Pico" and city == "Curitiba":
                    prod = CATALOG[4]
                add(d, f"K{uf}{rnd.randrange(customers):04d}", city, uf, prod)
        d += dt.timedelta(days=1)
    # Small cities: each customer buys each partner product once a month, completed.
    for month in (9, 10):
        for i, (city, uf, customers) in enumerate(SMALL):
            for c in range(customers):
                for prod in CATALOG[:4]:
                    add(dt.date(2026, month, 5 + c + 3 * i), f"S{city[:3]}{c}", city, uf, prod, "completed")
    # A sale at 22:30 local on 10-31 is 01:30 UTC on 11-01 and belongs to October.
    add(dt.date(2026, 10, 31), "KSP0001", "São Paulo", "SP", CATALOG[0], "completed", hour=22)
    # A small city's sale on 10-31: written as OUTRAS in that day's file.
    add(dt.date(2026, 10, 31), "SItu0", "Itu", "SP", CATALOG[2], "completed", hour=12)
    # Corrections in later batches; late ones in the batches of 11-01 and 11-02.
    corrections = []
    for l in lines:
        if l["status"] != "completed":
            continue
        late = l["batch"] >= dt.date(2026, 10, 30) and l["transaction_id"][-1] in "27"
        if late or rnd.random() < 0.04:
            days = 2 if late else rnd.randint(1, 3)
            c = dict(l)
            c["batch"] = l["batch"] + dt.timedelta(days=days)
            c["status"] = rnd.choice(["refunded", "cancelled"])
            c["updated_at"] = l["updated_at"] + dt.timedelta(days=days)
            if c["batch"] <= LAST:
                corrections.append(c)
    seen = set()
    for c in corrections:
        if (c["batch"], c["transaction_id"]) not in seen:
            seen.add((c["batch"], c["transaction_id"]))
            lines.append(c)
    return lines


def write(root, lines):
    root = Path(root)
    by_batch = {}
    for l in lines:
        by_batch.setdefault(l["batch"], []).append(l)
    d = FIRST
    while d <= LAST:
        rows = by_batch.get(d, [])
        cols = {f.name: [r[f.name] for r in rows] for f in TRANSACTIONS}
        t = pa.table(cols, schema=TRANSACTIONS)
        out = root / "curated" / "transactions" / f"dt={d}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out / "part-00000.parquet")
        prods = {
            "product_code": [p[0] for p in CATALOG], "ean": [None] * len(CATALOG),
            "name": [p[1] for p in CATALOG], "brand": [p[2] for p in CATALOG],
            "manufacturer": [p[3] for p in CATALOG], "segment": [p[4] for p in CATALOG],
            "unit_size": [p[5] for p in CATALOG], "updated_at": [None] * len(CATALOG),
        }
        out = root / "curated" / "products" / f"dt={d}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(prods, schema=PRODUCTS), out / "part-00000.parquet")
        d += dt.timedelta(days=1)
