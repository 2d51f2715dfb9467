"""The contract of the BigQuery external tables (terraform/bigquery.tf), checked with DuckDB on
files the program writes: reading a zone's prefix with hive partitioning on `dt` returns exactly
the rows of its Parquet files read one by one, a partition filter reads only its partition, and
every file's schema is the BigQuery schema Terraform gives the table (terraform/schemas/).

Curated: `datashare generate` then `datashare clean` write `curated/<table>/dt=<D>/part-00000.parquet`
as the batch step uploads it. Products: `datashare build` writes the product files; the test
places them under the external tables' layout `tables/<daily|monthly>/dt=<period>/partner=<p>/`
(the layout bigquery.tf reads), since the program names its delivered copies by delivery id."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import BIN, REPO

SCHEMAS = REPO / "terraform" / "schemas"
DAYS = ["2026-10-01", "2026-10-02", "2026-10-03"]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """Three generated days, cleaned by the program: the curated zone of a local bucket."""
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("curated-bucket")
    env = dict(os.environ)
    for cmd in (
        [BIN, "generate", "--out", str(raw), "--from", DAYS[0], "--to", DAYS[-1], "--rows", "400", "--seed", "7"],
        [BIN, "clean", "--input", str(raw), "--output", str(out)],
    ):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return out


@pytest.fixture(scope="module")
def product_tables(built, tmp_path_factory):
    """The program's product files, laid out as the products external tables read them."""
    root = tmp_path_factory.mktemp("products-bucket")
    partner = built.name
    placed = 0
    for kind in ("daily", "monthly"):
        for f in sorted((built / kind).glob("*.parquet")):
            period = f.stem.rsplit("_", 1)[-1]
            target = root / "tables" / kind / f"dt={period}" / f"partner={partner}" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            placed += 1
    assert placed == 4, "two daily and two monthly files"
    return root / "tables"


def direct_rows(con, files, keys):
    """Rows of each file read alone, with the hive keys taken from its path."""
    parts = []
    for f in files:
        values = dict(seg.split("=", 1) for seg in f.parts if "=" in seg)
        cols = ", ".join(f"'{values[k]}' AS {k}" for k in keys)
        # hive_partitioning off: DuckDB would otherwise take the keys from the path itself.
        parts.append(f"SELECT *, {cols} FROM read_parquet('{f}', hive_partitioning = false)")
    return sorted(con.execute(" UNION ALL ".join(parts)).fetchall(), key=repr)


def hive_rows(con, prefix, keys, where=""):
    """Rows of the whole prefix read with hive partitioning (keys as strings, like the direct read)."""
    q = f"SELECT * FROM read_parquet('{prefix}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)"
    cols = con.execute(f"DESCRIBE {q}").fetchall()
    names = [c[0] for c in cols]
    assert names[-len(keys):] == keys, names
    return sorted(con.execute(f"SELECT * FROM ({q}) {where}").fetchall(), key=repr)


BQ_OF_ARROW = {
    pa.string(): "STRING",
    pa.large_string(): "STRING",
    pa.int64(): "INTEGER",
    pa.int32(): "INTEGER",
    pa.float64(): "FLOAT",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
}


def bq_of(t):
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if t.tz else "DATETIME"
    if pa.types.is_decimal(t):
        return "NUMERIC" if t.scale <= 9 and t.precision - t.scale <= 29 else "BIGNUMERIC"
    return BQ_OF_ARROW.get(t, f"unmapped {t}")


def file_schema_as_bigquery(path):
    return [
        {"name": f.name, "type": bq_of(f.type), "mode": "NULLABLE" if f.nullable else "REQUIRED"}
        for f in pq.read_schema(path)
    ]


def terraform_schema(zone, table):
    return [{k: f[k] for k in ("name", "type", "mode")} for f in json.loads((SCHEMAS / zone / f"{table}.json").read_text())]


def test_curated_prefixes_read_with_hive_partitioning_equal_the_files(cleaned):
    con = duckdb.connect()
    curated = cleaned / "curated"
    tables = sorted(p.name for p in curated.iterdir())
    assert tables == ["customers", "products", "transactions"]
    for table in tables:
        files = sorted((curated / table).glob("dt=*/*.parquet"))
        assert [f.parent.name for f in files] == [f"dt={d}" for d in DAYS], table
        want = direct_rows(con, files, ["dt"])
        assert want, table
        assert hive_rows(con, curated / table, ["dt"]) == want, table
        # A partition filter reads exactly that day's file.
        one = hive_rows(con, curated / table, ["dt"], f"WHERE dt = '{DAYS[1]}'")
        assert one == direct_rows(con, [files[1]], ["dt"]), table
        assert 0 < len(one) < len(want)


def test_product_tables_read_with_hive_partitioning_equal_the_files(product_tables):
    con = duckdb.connect()
    for kind in ("daily", "monthly"):
        files = sorted((product_tables / kind).glob("dt=*/partner=*/*.parquet"))
        want = direct_rows(con, files, ["dt", "partner"])
        assert want, kind
        assert hive_rows(con, product_tables / kind, ["dt", "partner"]) == want, kind
        period = files[0].parent.parent.name.removeprefix("dt=")
        one = hive_rows(con, product_tables / kind, ["dt", "partner"], f"WHERE dt = '{period}' AND partner = 'ouchhungry'")
        assert one == direct_rows(con, [files[0]], ["dt", "partner"]), kind


def test_the_files_have_the_schemas_terraform_gives_the_tables(cleaned, product_tables):
    for table in ("customers", "products", "transactions"):
        for f in sorted((cleaned / "curated" / table).glob("dt=*/*.parquet")):
            assert file_schema_as_bigquery(f) == terraform_schema("curated", table), f
    for kind in ("daily", "monthly"):
        for f in sorted((product_tables / kind).glob("dt=*/partner=*/*.parquet")):
            assert file_schema_as_bigquery(f) == terraform_schema("products", kind), f


def test_a_drifted_schema_or_a_lost_row_is_caught(cleaned, tmp_path):
    con = duckdb.connect()
    files = sorted((cleaned / "curated" / "transactions").glob("dt=*/*.parquet"))
    schema = file_schema_as_bigquery(files[0])
    drifted = [dict(f, mode="NULLABLE") if f["name"] == "transaction_id" else f for f in schema]
    assert drifted != terraform_schema("curated", "transactions")
    # A prefix missing one file's rows no longer matches the files.
    partial = tmp_path / "transactions"
    for f in files[:-1]:
        target = partial / f.parent.name / f.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(f, target)
    assert hive_rows(con, partial, ["dt"]) != direct_rows(con, files, ["dt"])
