"""Parquet compression is a contract option (products.md: Snappy or Zstd): files written with
either codec read to the same values in pyarrow, DuckDB and Polars."""

import json
import re

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import PARTNERS, Builder

PERIODS = (["--date", "2026-10-15"], ["--month", "2026-10"])
FILES = ("daily/ouchhungry_daily_2026-10-15.parquet",
         "monthly/ouchhungry_monthly_2026-10.parquet",
         "monthly_brands/ouchhungry_monthly_brands_2026-10.parquet")


def partners_with(tmp, parquet_line):
    """The shipped contract with its `parquet = ...` line replaced."""
    text = (PARTNERS / "ouchhungry.toml").read_text()
    text, n = re.subn(r"(?m)^parquet = .*$", parquet_line, text)
    assert n == 1
    d = tmp / "partners"
    d.mkdir()
    (d / "ouchhungry.toml").write_text(text)
    return d


@pytest.fixture(scope="module")
def codecs(tmp_path_factory, lake, secret):
    out = {}
    for name, line in (("snappy", 'parquet = { compression = "snappy" }'),
                       ("zstd", 'parquet = { compression = "zstd", zstd_level = 9 }')):
        tmp = tmp_path_factory.mktemp(name)
        b = Builder(lake, tmp / "out", secret, partners=partners_with(tmp, line))
        for p in PERIODS:
            b.run("ouchhungry", *p)
        out[name] = tmp / "out" / "products" / "ouchhungry"
    return out


@pytest.mark.parametrize("file", FILES)
def test_both_codecs_read_the_same_in_pyarrow_duckdb_and_polars(codecs, file):
    snappy, zstd = codecs["snappy"] / file, codecs["zstd"] / file
    assert snappy.read_bytes() != zstd.read_bytes()
    for path, codec in ((snappy, "SNAPPY"), (zstd, "ZSTD")):
        md = pq.ParquetFile(path).metadata
        got = {md.row_group(g).column(c).compression
               for g in range(md.num_row_groups) for c in range(md.num_columns)}
        assert got == {codec}, (path, got)
    a = pq.read_table(snappy)
    assert a.num_rows > 0
    assert pq.read_table(zstd).equals(a)
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    q = "SELECT * FROM read_parquet('{}')"
    rows = c.execute(q.format(zstd)).fetchall()
    assert rows == c.execute(q.format(snappy)).fetchall()
    assert rows == [tuple(r.values()) for r in a.to_pylist()]
    ps, pz = pl.read_parquet(snappy), pl.read_parquet(zstd)
    assert ps.height == a.num_rows
    assert pz.equals(ps)
    # Polars sees the same values as pyarrow (decimals, dates, timestamps in UTC).
    assert pz.to_arrow().to_pylist() == a.to_pylist()


def test_manifest_and_dictionary_name_the_codec(codecs):
    m = json.loads((codecs["zstd"] / "monthly" / "ouchhungry_monthly_2026-10.parquet.manifest.json").read_text())
    assert m["compression"] == "zstd(9)"
    s = json.loads((codecs["snappy"] / "monthly" / "ouchhungry_monthly_2026-10.parquet.manifest.json").read_text())
    assert s["compression"] == "snappy"
    csv = json.loads((codecs["zstd"] / "monthly" / "ouchhungry_monthly_2026-10.csv.manifest.json").read_text())
    assert "compression" not in csv
    d = (codecs["zstd"] / "monthly" / "ouchhungry_monthly_dictionary.pt-BR.md").read_text()
    assert "Parquet (Zstandard)" in d
