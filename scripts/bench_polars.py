"""A Polars baseline of datashare's cleaning engine: the same rules, on one thread.

Reads one day of the raw bucket layout (`extracts/<table>/dt=<D>/part-*.csv[.gz]`, the parts the
marker lists), cleans every table of `config/tables.toml` with Polars expressions (the rules are
read from that file, like datashare does) and writes

- `curated/<table>/dt=<D>/part-00000.parquet` (typed columns: Decimal(18,2), Datetime(us, UTC),
  Date),
- `quarantine/<table>/dt=<D>/part-00000.parquet` (raw values as strings, `reasons`,
  `source_object`, `line_number`, `raw_record` for malformed rows),
- `reports/dt=<D>/quality.json` (rows_read, rows_kept, rows_quarantined, duplicates_removed,
  conflicts_resolved, quarantined_by_reason per table: the shape of datashare's report).

Usage (the data venv's python; POLARS_MAX_THREADS=1 is set before Polars is imported):

    python scripts/bench_polars.py --input RAW --output OUT --date 2026-11-27 [--timings]

The three tables are cleaned (products and customers first: transactions reference their kept
keys), so the work compares with `datashare clean`, which cleans the three too.

Rules applied (extracts.md and README "Cleaning rules where the spec is silent"), all as
vectorized Polars expressions: header names trimmed and lower-cased, `;`/`,` sniffed on the header,
gzip by magic bytes, UTF-8 else Windows-1252 per file; null markers (trimmed, any case); required
columns (`missing_<col>`); per kind: `id` (invisible characters removed, no white space or
control character, optional upper case), `product_code` (`ohb 000101` → `OHB-000101`), `int`
(`2.0`, `2 un`, units from the config, sign and max rules), `brl` (`R$`, Brazilian and US
grouping, last separator is the decimal one, a lone separator before three digits groups, at
most two decimals, DECIMAL(18,2) range), `enum` (folded synonyms), `timestamp` (ISO with or
without offset, `YYYY/MM/DD`, day-first `DD/MM/YYYY [HH:MM[:SS]]`, 9–11 digit epochs; naive
times are America/Sao_Paulo, ambiguous → earlier offset, gap → moved forward), `date` (same
formats, min / not_future), `cep` (`NNNNN-NNN`, lost leading zero, prefix in Correios' ranges),
`uf`, `municipality` (IBGE spelling for the row's UF by folded name, else title case),
`email`, `cpf` (check digits, not all one digit), `phone` (E.164, DDD list, 9-digit mobiles
start with 9, 8-digit lines with 2–5), `gtin13` (check digit), `text` (single spaces, known
canonical spellings), `pattern` (normalize, remove, anchored regex); `on_invalid` quarantine
(`invalid_<col>`) or null; `default` for null values; malformed rows (field count differs from
the header's) → `malformed_row`; dedup on the key: exact duplicates (same cleaned row) counted
`duplicates_removed`, other versions `conflicts_resolved`, the winner is the latest version
(`updated_at`, null oldest), ties by (part name, line); references checked on winners against the
referenced table's kept keys (`unknown_<entity>`), and added to rows already quarantined by a
field rule when their reference is readable.

Differences from datashare (none of them shows on generated data, see README "Benchmarks"):

- Malformed rows are found by a second, line-level pass (each line's delimiters outside
  quotes); a quoted field holding a line break or an unclosed quote is not handled (datashare
  quarantines the record's first line and reads on); Polars' reader would shift the rows.
- Encoding is decided per file (the spec allows it; datashare decides per field, same result
  unless a file mixes encodings); bytes undefined in Windows-1252 decode as Latin-1.
- Files rejected whole (`missing_column`, `undecodable`: broken gzip or UTF-16, `not_csv`:
  control bytes in the header or in over 1% of the first 4 KB) are skipped and named on stderr
  (datashare also lists them in the report's `files[]`); `too_large` is not checked.
- A NUL in a field is not refused (datashare: `invalid_<col>` / `malformed_row`); the per-record
  length limit (1 MiB), the part size and gzip-ratio limits are not applied.
- `fields.normalized` / `fields.nulled` counts and `conflicts.jsonl` are not produced; timestamps
  outside years 1–9999 are not checked; the title-case fallback of unknown municipalities uses
  Polars' `to_titlecase` (words also break at punctuation; datashare only at white space);
  Unicode white space inside identifiers/dates follows Polars' regex classes.
- Quarantined malformed rows: a missing trailing field is `""` (Polars pads short rows; datashare
  writes null) and `raw_record` is the line as read (datashare re-joins the unquoted fields);
  there is no `source_generation` column (local files have none).
- Python per-row code: none. Python runs per file (reading bytes, gzip, the Windows-1252
  transcoding via `bytes.decode`) and per table (building expressions from the config).

How it is fast (what a careful Polars user would do, all of it on one thread):
- Parts are read and field-checked one at a time; only cleaned values (and the raw values of
  rows a reference check may quarantine) are kept for the cross-part steps.
- Fast paths: a value already in canonical form (`2026-11-27T14:03:00Z`, `7.99`, `OHB-000101`,
  ...) is read by one cheap expression; the full rules run only on the other values, gathered
  and scattered back by index (`--no-fast-paths` runs them on every value: 1.7x the CPU at 1M).
- Multi-step rules materialize their intermediate columns stage by stage (`Stages`), since
  Polars evaluates a sub-expression once per use inside `when/then` trees (17x at first).
- Municipalities are looked up per distinct (name, UF) pair and joined back; reasons are built
  for the failing rows only; dedup sorts only the rows whose key repeats.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import tomllib
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")

import polars as pl  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NULL_MARKERS = ["", "null", "none", "nan", "n/a", "na", "-", "?"]
INVISIBLE = "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
UFS = ["AC", "AL", "AM", "AP", "BA", "CE", "DF", "ES", "GO", "MA", "MG", "MS", "MT", "PA", "PB",
       "PE", "PI", "PR", "RJ", "RN", "RO", "RR", "RS", "SC", "SE", "SP", "TO"]
DDDS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38, 41,
        42, 43, 44, 45, 46, 47, 48, 49, 51, 53, 54, 55, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71,
        73, 74, 75, 77, 79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 98,
        99]
CEP_RANGES = [(1000, 19999), (20000, 28999), (29000, 29999), (30000, 39999), (40000, 48999),
              (49000, 49999), (50000, 56999), (57000, 57999), (58000, 58999), (59000, 59999),
              (60000, 63999), (64000, 64999), (65000, 65999), (66000, 68899), (68900, 68999),
              (69000, 69299), (69300, 69399), (69400, 69899), (69900, 69999), (70000, 72799),
              (72800, 72999), (73000, 73699), (73700, 76799), (76800, 76999), (77000, 77999),
              (78000, 78899), (79000, 79999), (80000, 87999), (88000, 89999), (90000, 99999)]
MAX_CENTS = 999_999_999_999_999_999
FOLD_FROM = ["á", "à", "â", "ã", "ä", "é", "è", "ê", "ë", "í", "ì", "î", "ï", "ó", "ò", "ô", "õ",
             "ö", "ú", "ù", "û", "ü", "ç", "ñ"]
FOLD_TO = ["a"] * 5 + ["e"] * 4 + ["i"] * 4 + ["o"] * 5 + ["u"] * 4 + ["c", "n"]
SP = "America/Sao_Paulo"


def merged(ranges):
    """Merges touching ranges (Correios' CEP ranges cover 01000–99999 without a hole)."""
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def fold(s: str) -> str:
    """br::fold_name in Python, for the few config values (enum synonyms)."""
    out, space = [], False
    for c in s.lower():
        c = dict(zip(FOLD_FROM, FOLD_TO)).get(c, c)
        if c.isalnum():
            if space and out:
                out.append(" ")
            space = False
            out.append(c)
        else:
            space = True
    return "".join(out)


def fold_expr(e: pl.Expr) -> pl.Expr:
    """br::fold_name as an expression: lower case, no accents, other runs → one space."""
    return (e.str.to_lowercase()
            .str.replace_many(FOLD_FROM, FOLD_TO)
            .str.replace_all(r"[^\p{Alphabetic}\p{N}]+", " ")
            .str.strip_chars(" "))


# ---------------------------------------------------------------- reading parts


def read_bytes(path: Path) -> bytes:
    b = path.read_bytes()
    if b[:2] == b"\x1f\x8b":
        b = gzip.decompress(b)
    return b


def to_utf8(b: bytes) -> tuple[bytes, str]:
    if b.startswith(b"\xef\xbb\xbf"):
        b = b[3:]
    try:
        b.decode("utf-8")
        return b, "utf-8"
    except UnicodeDecodeError:
        try:
            return b.decode("cp1252").encode("utf-8"), "windows-1252"
        except UnicodeDecodeError:
            return b.decode("latin-1").encode("utf-8"), "windows-1252"


def sniff(header: bytes) -> str:
    commas = semis = 0
    quoted = False
    for ch in header:
        if ch == 0x22:
            quoted = not quoted
        elif ch == 0x2C and not quoted:
            commas += 1
        elif ch == 0x3B and not quoted:
            semis += 1
    return ";" if semis > commas else ","


class Rejected(Exception):
    """A file rejected whole: `undecodable`, `not_csv`, `missing_column`."""


def is_binary(b: bytes) -> bool:
    """datashare's sniff: a control byte in the header, or over 1% of the first 4 KB."""
    head = b[:4096]
    header = head.split(b"\n", 1)[0]
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13))
    return any(c < 32 and c not in (9, 10, 12, 13) for c in header) or (
        controls >= 8 and controls * 100 > len(head))


def read_part(path: Path, obj: str, part: int, columns: list[str]) -> tuple[pl.DataFrame, list]:
    """One part as raw strings in schema order, with `_line`, `_part`, `_malformed`, `_record`."""
    try:
        raw = read_bytes(path)
    except (OSError, EOFError, gzip.BadGzipFile, __import__("zlib").error) as e:
        raise Rejected(f"undecodable ({e})") from e
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Rejected("undecodable (UTF-16)")
    if is_binary(raw):
        raise Rejected("not_csv (control bytes)")
    data, _encoding = to_utf8(raw)
    del raw
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    sep = sniff(first)
    df = pl.read_csv(data, separator=sep, infer_schema=False, truncate_ragged_lines=True,
                     empty_string_is_null=False, raise_if_empty=False)
    header = [h.strip().lower() for h in df.columns]
    width = len(header)
    df.columns = [f"_c{i}" for i in range(width)]
    # Polars' reader pads short rows and cuts long ones: a line-level pass counts each line's
    # delimiters; those inside quoted fields are the ones the parsed values hold.
    # (Polars' reader again, with quoting off and a separator that text does not hold: one
    # field per line, line ends as the reader sees them.)
    lines = pl.read_csv(data, has_header=False, separator="\x1f", quote_char=None,
                        infer_schema=False, new_columns=["t"], empty_string_is_null=False,
                        truncate_ragged_lines=True).get_column("t")
    del data
    lines = lines.slice(1, df.height)
    df = df.with_columns(_t=lines)
    del lines
    inner = pl.sum_horizontal([C(f"_c{i}").str.count_matches(sep, literal=True)
                               for i in range(width)])
    df = df.with_columns(
        _malformed=C("_t").str.count_matches(sep, literal=True) - inner + 1 != width,
        _blank=C("_t").str.strip_chars().str.len_bytes() == 0,
        _line=pl.int_range(2, df.height + 2, dtype=pl.Int64),
    )
    at = {h: i for i, h in reversed(list(enumerate(header)))}
    out = df.filter(~C("_blank")).select(
        [C(f"_c{at[c]}").alias(c) if c in at else pl.lit(None, pl.String).alias(c)
         for c in columns]
        + [C("_malformed"), pl.when(C("_malformed")).then(C("_t")).alias("_record"), C("_line"),
           pl.lit(part, pl.Int32).alias("_part"), pl.lit(obj).alias("_object")]
    )
    missing = [c for c in columns if c not in at]
    return out, missing


C = pl.col


# ---------------------------------------------------------------- validators (kind → expressions)
#
# Each validator adds its intermediate columns stage by stage (`Stages`): an expression tree
# that reuses a sub-expression in several `when` branches evaluates it once per use (Polars does
# not eliminate common sub-expressions there), so the parts are materialized as columns instead.


class Stages:
    """Groups of expressions evaluated one `with_columns` after the other."""

    def __init__(self):
        self.stages: list[dict[str, pl.Expr]] = [{}]
        self.temp: list[str] = []

    def at(self, depth: int, name: str, expr: pl.Expr, temp: bool = True) -> str:
        while len(self.stages) <= depth:
            self.stages.append({})
        self.stages[depth][name] = expr
        if temp:
            self.temp.append(name)
        return name

    def run(self, df: pl.DataFrame) -> pl.DataFrame:
        for stage in self.stages:
            if stage:
                df = df.with_columns(**stage)
        return df


def brl(st: Stages, p: str, t: str, d: int = 1) -> tuple[str, int]:
    """brl_cents: the amount in hundredths (null when unreadable); returns (column, depth)."""
    neg1 = st.at(d, p + "neg1", C(t).str.starts_with("-"))
    unsigned = C(t).str.strip_prefix("-").str.strip_chars_start()
    u = st.at(d + 1, p + "u", pl.when(C(neg1)).then(unsigned).otherwise(C(t))
              .str.strip_prefix("R$").str.replace_all("[ \u00a0]", ""))
    neg2 = st.at(d + 2, p + "neg2", C(u).str.starts_with("-"))
    body = st.at(d + 2, p + "body", C(u).str.strip_prefix("-"))
    g = st.at(d + 3, p + "g", C(body).str.extract_groups(
        r"^([0-9]+(?:[.,][0-9]{3})*)?[.,]([0-9]{0,2})$"))
    shape = st.at(d + 3, p + "shape",
                  ~(C(neg1) & C(neg2)) & C(body).str.contains(r"^[0-9.,]{0,40}$"))
    nsep = st.at(d + 3, p + "nsep", C(body).str.count_matches(r"[.,]"))
    both = st.at(d + 3, p + "both", C(body).str.contains(".", literal=True)
                 & C(body).str.contains(",", literal=True))
    is_int = st.at(d + 3, p + "isint", C(body).str.contains(r"^[0-9]+(?:\.[0-9]{3})*$")
                   | C(body).str.contains(r"^[0-9]+(?:,[0-9]{3})*$"))
    gi, gf = C(g).struct.field("1"), C(g).struct.field("2")
    is_dec = st.at(d + 4, p + "isdec", gf.is_not_null() & (C(both) | (C(nsep) == 1))
                   & (gi.is_not_null() | (gf.str.len_bytes() > 0)))
    int_txt = st.at(d + 5, p + "int", pl.when(C(is_dec)).then(gi.fill_null("0")).otherwise(C(body)))
    frac = st.at(d + 5, p + "frac",
                 pl.when(C(is_dec)).then(gf.str.pad_end(2, "0")).otherwise(pl.lit("00")))
    cents = (C(int_txt).str.replace_all(r"[.,]", "").str.to_integer(strict=False) * 100
             + C(frac).str.to_integer(strict=False))
    ok = C(shape) & (C(is_dec) | C(is_int)) & (C(int_txt).str.len_bytes() <= 24)
    cents = pl.when(ok).then(cents)
    cents = pl.when(cents <= MAX_CENTS).then(cents)
    out = st.at(d + 6, p + "cents", pl.when(C(neg1) | C(neg2)).then(-cents).otherwise(cents))
    return out, d + 7


TS_RE = (r"^(?:([0-9]{4})-([0-9]{2})-([0-9]{2})|([0-9]{4})/([0-9]{2})/([0-9]{2})"
         r"|([0-9]{2})/([0-9]{2})/([0-9]{4}))[T ]*"
         r"(?:([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]*)?)?[ \t]*"
         r"(Z|z|UTC|[+-][0-9]{2}:?[0-9]{2}|[+-][0-9]{2})?)?$")


def naive_and_offset(st: Stages, p: str, t: str) -> tuple[str, str]:
    """The naive date-time of any spec format and its offset in seconds (null: local time)."""
    g = st.at(1, p + "g", C(t).str.extract_groups(TS_RE))
    f = C(g).struct.field
    y = pl.coalesce(f("1"), f("4"), f("9"))
    text = pl.concat_str([y, pl.lit("-"), pl.coalesce(f("2"), f("5"), f("8")), pl.lit("-"),
                          pl.coalesce(f("3"), f("6"), f("7")), pl.lit(" "), f("10").fill_null("00"),
                          pl.lit(":"), f("11").fill_null("00"), pl.lit(":"),
                          f("12").fill_null("00")])
    naive = pl.when(y != "0000").then(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us", strict=False))
    zd = st.at(2, p + "zd", f("13").str.replace_all(":", "", literal=True))
    zh = C(zd).str.slice(1, 2).str.to_integer(strict=False)
    zm = C(zd).str.slice(3, 2).str.to_integer(strict=False).fill_null(0)
    sign = pl.when(C(zd).str.starts_with("-")).then(-1).otherwise(1)
    off = st.at(3, p + "off", pl.when(C(zd).is_in(["Z", "z", "UTC"])).then(0)
                .when((zh <= 14) & (zm <= 59)).then(sign * (zh * 3600 + zm * 60)))
    naive = st.at(3, p + "naive", pl.when(f("13").is_null() | C(zd).is_in(["Z", "z", "UTC"])
                                          | ((zh <= 14) & (zm <= 59))).then(naive))
    return naive, off


def timestamp(st: Stages, p: str, t: str) -> str:
    """An instant, Datetime(us, UTC); null when unreadable."""
    naive, off = naive_and_offset(st, p, t)
    local = C(naive).dt.replace_time_zone(SP, ambiguous="earliest", non_existent="null")
    # In a spring-forward gap (before 2019): the offset in force just before it, an hour later.
    gap = (C(naive) + pl.duration(hours=1)).dt.replace_time_zone(SP, ambiguous="earliest",
                                                                 non_existent="null")
    local = st.at(4, p + "local", pl.when(C(off).is_null()).then(local))
    local = st.at(5, p + "local2", pl.when(C(local).is_null() & C(off).is_null())
                  .then(gap).otherwise(C(local)).dt.convert_time_zone("UTC"))
    fixed = (C(naive) - pl.duration(seconds=C(off))).dt.replace_time_zone("UTC")
    epoch = (pl.from_epoch(C(t).str.to_integer(strict=False), time_unit="s")
             .dt.cast_time_unit("us").dt.replace_time_zone("UTC"))
    digits = st.at(1, p + "digits", C(t).str.contains(r"^[0-9]+$"))
    return st.at(6, p + "ts", pl.when(C(digits)).then(
        pl.when(C(t).str.len_bytes() >= 9).then(epoch))
        .when(C(off).is_not_null()).then(fixed).otherwise(C(local)))


def date_kind(st: Stages, p: str, t: str, opts: dict, today) -> str:
    naive, _ = naive_and_offset(st, p, t)
    epoch = (pl.from_epoch(C(t).str.to_integer(strict=False), time_unit="s")
             .dt.replace_time_zone("UTC").dt.convert_time_zone(SP).dt.date())
    digits = C(t).str.contains(r"^[0-9]+$")
    d = pl.when(digits).then(pl.when(C(t).str.len_bytes().is_between(9, 11)).then(epoch)) \
        .otherwise(C(naive).dt.date())
    d = st.at(4, p + "date", d)
    v = C(d)
    ok = pl.lit(True)
    if opts.get("min"):
        ok = ok & (v >= pl.lit(opts["min"]).str.to_date())
    if opts.get("not_future"):
        ok = ok & (v <= pl.lit(today))
    return st.at(5, p + "date2", pl.when(ok).then(v))


def sign_rule(v: pl.Expr, opts: dict) -> pl.Expr:
    ok = pl.lit(True)
    if opts.get("positive"):
        ok = ok & (v > 0)
    if opts.get("non_negative"):
        ok = ok & (v >= 0)
    if opts.get("max") is not None:
        ok = ok & (v <= opts["max"])
    return pl.when(ok).then(v)


def digits_of(n: pl.Expr, width: int) -> list[pl.Expr]:
    return [(n // 10 ** (width - 1 - i)) % 10 for i in range(width)]


def cpf(st: Stages, p: str, t: str) -> str:
    s = st.at(1, p + "s", pl.when(C(t).str.contains(r"^[0-9. \-]*$")).then(
        C(t).str.replace_all(r"[. \-]", "")))
    n = st.at(2, p + "n", pl.when(C(s).str.contains(r"^[0-9]{11}$")).then(
        C(s).str.to_integer(strict=False)))
    ds = [st.at(3, f"{p}d{i}", e) for i, e in enumerate(digits_of(C(n), 11))]
    d = [C(x) for x in ds]
    r1 = (sum(d[i] * (10 - i) for i in range(9)) * 10) % 11
    c1 = st.at(4, p + "c1", pl.when(r1 == 10).then(0).otherwise(r1))
    r2 = ((sum(d[i] * (11 - i) for i in range(9)) + C(c1) * 2) * 10) % 11
    c2 = pl.when(r2 == 10).then(0).otherwise(r2)
    same = pl.all_horizontal([d[i] == d[0] for i in range(1, 11)])
    return st.at(5, p + "cpf", pl.when((C(c1) == d[9]) & (c2 == d[10]) & ~same).then(C(s)))


def gtin13(st: Stages, p: str, t: str) -> str:
    s = st.at(1, p + "s", pl.when(C(t).str.contains(r"^[0-9 \-]*$")).then(
        C(t).str.replace_all(r"[ \-]", "")))
    n = st.at(2, p + "n", pl.when(C(s).str.contains(r"^[0-9]{13}$")).then(
        C(s).str.to_integer(strict=False)))
    d = digits_of(C(n), 13)
    total = sum(d[i] * (1 if i % 2 == 0 else 3) for i in range(12))
    return st.at(3, p + "gtin", pl.when((10 - total % 10) % 10 == d[12]).then(C(s)))


def phone(st: Stages, p: str, t: str) -> str:
    ok_chars = st.at(1, p + "okc", C(t).str.contains(r"^[0-9+ \-().]*$"))
    digits = st.at(1, p + "dg", C(t).str.replace_all(r"[^0-9]", ""))
    dg, n = C(digits), C(digits).str.len_bytes()
    national = st.at(2, p + "nat", pl.when(C(t).str.starts_with("+"))
                     .then(pl.when(dg.str.starts_with("55")).then(dg.str.slice(2)))
                     .when(dg.str.starts_with("0")).then(dg.str.slice(1))
                     .when(((n == 12) | (n == 13)) & dg.str.starts_with("55")).then(dg.str.slice(2))
                     .otherwise(dg))
    nat = C(national)
    ln = nat.str.len_bytes()
    ddd = nat.str.slice(0, 2).str.to_integer(strict=False)
    sub = nat.str.slice(2)
    ok_sub = (pl.when(ln == 11).then(sub.str.starts_with("9"))
              .when(ln == 10).then(sub.str.contains(r"^[2-5]")).otherwise(False))
    return st.at(3, p + "phone",
                 pl.when(C(ok_chars) & ddd.is_in(DDDS) & ok_sub).then(pl.lit("+55") + nat))


def cep(st: Stages, p: str, t: str) -> str:
    ok = st.at(1, p + "ok", C(t).str.contains(r"^[0-9. \-]*$"))
    d = C(t).str.replace_all(r"[. \-]", "")
    d = st.at(2, p + "d", pl.when(C(ok)).then(
        pl.when(d.str.len_bytes() == 7).then(pl.lit("0") + d).otherwise(d)))
    prefix = C(d).str.slice(0, 5).str.to_integer(strict=False)
    in_range = pl.any_horizontal([prefix.is_between(lo, hi) for lo, hi in merged(CEP_RANGES)])
    return st.at(3, p + "cep", pl.when((C(d).str.len_bytes() == 8) & in_range).then(
        C(d).str.slice(0, 5) + pl.lit("-") + C(d).str.slice(5)))


def title_case(t: pl.Expr) -> pl.Expr:
    return t.str.replace_all(r"\s+", " ").str.strip_chars().str.to_titlecase()


def validate(st: Stages, kind: str, opts: dict, r: str, t: str, today) -> str:
    """Adds the cleaned value of a raw value (null when no rule can read it); returns its column."""
    p = f"_{r}_"
    if kind in ("id", "product_code"):
        s = st.at(1, p + "s", C(t).str.replace_all(INVISIBLE, "").str.strip_chars())
        if kind == "id":
            v = pl.when(C(s).str.contains(r"^[^\s\p{Cc}]+$")).then(C(s))
            return st.at(2, p + "v", v.str.to_uppercase() if opts.get("upper") else v)
        pat = r"^([A-Za-z]{3})[\- _.]*([0-9]{6})$"
        return st.at(2, p + "v", pl.when(C(s).str.contains(pat)).then(
            C(s).str.replace(pat, "${1}-${2}").str.to_uppercase()))
    if kind == "int":
        units = [u.lower() for u in opts.get("units", [])]
        st.at(1, p + "num", C(t).str.extract(r"^([^\p{Alphabetic}]*)", 1).str.strip_chars())
        st.at(1, p + "unit", C(t).str.extract(r"^[^\p{Alphabetic}]*(.*)$", 1)
              .str.strip_chars().str.to_lowercase())
        cents, d = brl(st, p, p + "num", 2)
        v = pl.when((C(p + "unit") == "") | C(p + "unit").is_in(units))
        v = v.then(pl.when(~C(p + "num").str.contains("R$", literal=True) & (C(p + "num") != ""))
                   .then(C(cents)))
        v = pl.when(v % 100 == 0).then(v // 100)
        return st.at(d, p + "v", sign_rule(v, opts))
    if kind == "brl":
        cents, d = brl(st, p, t)
        return st.at(d, p + "v", sign_rule(C(cents), opts))
    if kind == "enum":
        mapping = {}
        for canonical, syns in opts["values"].items():
            mapping[fold(canonical)] = canonical
            for s in syns:
                mapping.setdefault(fold(s), canonical)
        return st.at(1, p + "v", fold_expr(C(t)).replace_strict(mapping, default=None,
                                                                return_dtype=pl.String))
    if kind == "timestamp":
        return timestamp(st, p, t)
    if kind == "date":
        return date_kind(st, p, t, opts, today)
    if kind == "cep":
        return cep(st, p, t)
    if kind == "uf":
        u = C(t).str.to_uppercase()
        return st.at(1, p + "v", pl.when(u.is_in(UFS)).then(u))
    if kind == "email":
        e = C(t).str.to_lowercase()
        re = (r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
              r"(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
        e = st.at(1, p + "e", e)
        e = C(e)
        return st.at(2, p + "v", pl.when((e.str.len_bytes() <= 254) & e.str.contains(re)
                                         & ~e.str.contains("..", literal=True)).then(e))
    if kind == "cpf":
        return cpf(st, p, t)
    if kind == "phone":
        return phone(st, p, t)
    if kind == "gtin13":
        return gtin13(st, p, t)
    if kind == "text":
        s = C(t).str.replace_all(r"\s+", " ")
        known = opts.get("known") or []
        if known:
            s = s.str.to_lowercase().replace_strict(
                {k.lower(): k for k in reversed(known)}, default=s, return_dtype=pl.String)
        return st.at(1, p + "v", s)
    if kind == "pattern":
        s = C(r)
        norm = opts.get("normalize", [])
        if "trim" in norm:
            s = s.str.strip_chars()
        if "upper" in norm:
            s = s.str.to_uppercase()
        if "lower" in norm:
            s = s.str.to_lowercase()
        if opts.get("remove"):
            s = s.str.replace_many(list(opts["remove"]), [""] * len(opts["remove"]))
        s = C(st.at(1, p + "s", s))
        return st.at(2, p + "v", pl.when(s.str.contains(rf"^(?:{opts['pattern']})$")).then(s))
    raise ValueError(f"kind {kind} is not known")


def municipalities() -> pl.DataFrame:
    m = pl.read_csv(REPO / "data/municipios.csv", infer_schema=False)
    return (m.select(_fold=fold_expr(pl.col("name")), _uf=pl.col("uf"), _canon=pl.col("name"))
            .unique(subset=["_fold", "_uf"], keep="last"))


def fast_path(kind: str, opts: dict, t: pl.Expr) -> pl.Expr | None:
    """The value of a trimmed raw value already in canonical form (the common case), else null.

    Canonical values are read by the full rules to the same value: the full (staged) rules then
    run only on the other values, gathered and scattered back (`--no-fast-paths` runs them on
    every value).
    """
    if kind == "id":
        v = pl.when(t.str.contains(r"^[!-~]+$")).then(t)
        return v.str.to_uppercase() if opts.get("upper") else v
    if kind == "product_code":
        return pl.when(t.str.contains(r"^[A-Z]{3}-[0-9]{6}$")).then(t)
    if kind == "int":
        return sign_rule(pl.when(t.str.contains(r"^[0-9]{1,15}$"))
                         .then(t.str.to_integer(strict=False)), opts)
    if kind == "brl":
        return sign_rule(pl.when(t.str.contains(r"^[0-9]{1,16}\.[0-9]{2}$")).then(
            t.str.replace(".", "", literal=True).str.to_integer(strict=False)), opts)
    if kind == "timestamp":
        return pl.when(t.str.len_bytes() == 20).then(
            t.str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_unit="us", strict=False)
            .dt.replace_time_zone("UTC"))
    if kind == "enum":
        return pl.when(t.is_in(list(opts["values"]))).then(t)
    if kind == "cep":
        lo, hi = merged(CEP_RANGES)[0]
        return pl.when(t.str.contains(r"^[0-9]{5}-[0-9]{3}$")
                       & t.str.slice(0, 5).str.to_integer(strict=False).is_between(lo, hi)).then(t)
    return None


NULL_RE = r"^\s*(?i:null|none|nan|n/a|na|-|\?)?\s*$"


def column_value(df: pl.DataFrame, c: dict, today, fast: bool,
                 is_null: pl.Series | None = None) -> pl.Series:
    """The cleaned values of one column (null: unreadable; `is_null`: its null markers)."""
    n = c["name"]
    t = C(n).str.strip_chars()
    f = fast_path(c["kind"], c, t) if fast else None

    def full(frame: pl.DataFrame) -> pl.Series:
        st = Stages()
        st.at(0, "_t", C(n).str.strip_chars())
        v = validate(st, c["kind"], c, n, "_t", today)
        return st.run(frame.select(n)).get_column(v)

    if f is None:
        return full(df).alias(n)
    values = df.select(f.alias(n)).to_series()
    if is_null is None:
        is_null = df.select(C(n).is_null() | C(n).str.contains(NULL_RE)).to_series()
    idx = (values.is_null() & ~is_null).arg_true()
    if len(idx):
        slow = full(df.select(n)[idx]).cast(values.dtype)
        values = values.scatter(idx, slow)
    return values


def default_value(c: dict, today):
    frame = pl.DataFrame({c["name"]: [c["default"]]})
    return column_value(frame, c, today, fast=False)[0]


def field_rules(df: pl.DataFrame, cols: list[dict], today, fast: bool):
    """Adds `v_<col>` (cleaned values); returns the rows that pass and those that fail (with
    `_reasons`)."""
    values = {}
    null_flags = df.select([(C(c["name"]).is_null() | C(c["name"]).str.contains(NULL_RE))
                            .alias(c["name"]) for c in cols])
    for c in cols:
        if c["kind"] == "municipality":
            continue
        n = c["name"]
        v = column_value(df, c, today, fast, null_flags.get_column(n))
        if c.get("default") is not None:
            d = default_value(c, today)
            v = null_flags.select(pl.when(C(n)).then(pl.lit(d, v.dtype)).otherwise(v)).to_series()
        else:
            v = null_flags.select(pl.when(~C(n)).then(v)).to_series()
        values[f"v_{n}"] = v
    df = df.with_columns(**values)
    for c in cols:
        if c["kind"] != "municipality":
            continue
        n = c["name"]
        # The folded spelling is looked up per distinct (raw name, UF): few pairs, many rows.
        pairs = (df.select(C(n), C(f"v_{c['uf_column']}").alias("_uf")).unique()
                 .with_columns(_fold=fold_expr(C(n).str.strip_chars()))
                 .join(municipalities(), on=["_fold", "_uf"], how="left")
                 .select(C(n), C("_uf"),
                         pl.coalesce(C("_canon"), title_case(C(n))).alias(f"v_{n}")))
        df = df.join(pairs, left_on=[n, f"v_{c['uf_column']}"], right_on=[n, "_uf"], how="left",
                     maintain_order="left", nulls_equal=True)
        df = df.with_columns(pl.when(~null_flags.get_column(n)).then(C(f"v_{n}")).alias(f"v_{n}"))
    df = df.with_columns(null_flags.select(pl.all().name.prefix("_n_")))
    conds = []
    for c in cols:
        n = c["name"]
        if c.get("required") and c.get("default") is None:
            conds.append((f"missing_{n}", C(f"_n_{n}")))
        if c.get("on_invalid", "quarantine") == "quarantine":
            conds.append((f"invalid_{n}", ~C(f"_n_{n}") & C(f"v_{n}").is_null()))
    df = df.with_columns(_bad=pl.any_horizontal([e for _, e in conds]))
    flags = [f"_n_{c['name']}" for c in cols]
    passed = df.filter(~C("_bad")).drop(["_bad"] + flags)
    # Reasons in column order, built for the (few) bad rows only.
    failed = df.filter(C("_bad")).with_columns(
        _reasons=pl.concat_list([pl.when(e).then(pl.lit(r)) for r, e in conds]).list.drop_nulls()
    ).drop(["_bad"] + flags)
    return passed, failed


# ---------------------------------------------------------------- one table


def clean_table(name: str, spec: dict, parts: list[tuple[Path, str]], keysets: dict, today,
                out: Path, dt: str, timings: dict, fast: bool) -> tuple[dict, pl.Series]:
    cols = spec["columns"]
    names = [c["name"] for c in cols]
    key = f"v_{spec['key']}"
    version = f"v_{spec['version']}" if spec.get("version") else None
    refs = [(c["name"], c["references"]) for c in cols if c.get("references")]

    def tick(stage, t0):
        timings[f"{name}: {stage}"] = timings.get(f"{name}: {stage}", 0) + time.process_time() - t0

    unknown_exprs = [(pl.lit(f"unknown_{target.removesuffix('s')}"),
                      C(f"v_{col}").is_not_null() & ~C(f"v_{col}").is_in(keysets[target].implode()))
                     for col, target in refs]
    # Per part (like datashare's staging): read, field rules; the parts are then put together.
    passed, failed, malformed, orphan_raw, rows_read = [], [], [], [], 0
    for i, (path, obj) in enumerate(sorted(parts, key=lambda p: p[1])):
        t0 = time.process_time()
        try:
            df, missing = read_part(path, obj, i, names)
        except Rejected as e:
            print(f"{obj}: {e}, file rejected", file=sys.stderr)
            continue
        if any(c.get("required") for c in cols if c["name"] in missing):
            print(f"{obj}: missing_column ({', '.join(missing)}), file rejected", file=sys.stderr)
            continue
        rows_read += df.height
        malformed.append(df.filter(C("_malformed")).drop("_malformed"))
        df = df.filter(~C("_malformed")).drop("_malformed", "_record")
        tick("read", t0)
        t0 = time.process_time()
        good, bad = field_rules(df, cols, today, fast)
        del df
        # Raw values are only needed again for rows a reference check quarantines: the others'
        # are dropped now (datashare reads them back from its staged raw file the same way).
        good = good.with_columns(_orphan=pl.any_horizontal([e for _, e in unknown_exprs])
                                 if unknown_exprs else pl.lit(False))
        orphan_raw.append(good.filter(C("_orphan")).select(names + ["_part", "_line", "_object"]))
        passed.append(good.select([f"v_{n}" for n in names] + ["_orphan", "_part", "_line"]))
        del good
        failed.append(bad)
        tick("field rules", t0)

    t0 = time.process_time()
    passed = pl.concat(passed)
    failed = pl.concat(failed)
    malformed = pl.concat(malformed)
    # Dedup: the latest version wins, ties by (part, line); the others are duplicates (same
    # cleaned row) or conflicts (another version). Only keys seen twice need any of it.
    vcols = [f"v_{c}" for c in names]
    passed = passed.with_columns(_i=pl.int_range(pl.len(), dtype=pl.UInt32))
    dup_idx = passed.select(C(key).is_duplicated().arg_true()).to_series()
    dups = passed[dup_idx].select(vcols + ["_part", "_line", "_i"])
    order = [version, "_part", "_line"] if version else ["_part", "_line"]
    winners = dups.sort(order, nulls_last=False).unique(subset=[key], keep="last")
    distinct = dups.select(key, _h=pl.struct(vcols).hash()).unique().height
    duplicates_removed = dups.height - distinct
    conflicts_resolved = distinct - winners.height
    losers = dups.filter(~C("_i").is_in(winners.get_column("_i").implode())).get_column("_i")
    passed = passed.filter(~C("_i").is_in(losers.implode())).drop("_i")
    # References: the winners that fail them are quarantined; rows already quarantined get
    # the reasons too.
    if unknown_exprs:
        orphans = passed.filter(C("_orphan")).with_columns(
            _reasons=pl.concat_list([pl.when(e).then(r) for r, e in unknown_exprs])
            .list.drop_nulls()
        ).join(pl.concat(orphan_raw), on=["_part", "_line"], how="left")
        kept = passed.filter(~C("_orphan")).drop("_orphan")
        failed = failed.with_columns(_reasons=pl.concat_list(
            [C("_reasons")] + [pl.when(e).then(r) for r, e in unknown_exprs]).list.drop_nulls())
    else:
        orphans = passed.clear().join(pl.concat(orphan_raw), on=["_part", "_line"]).with_columns(
            _reasons=pl.lit(None, pl.List(pl.String)))
        kept = passed.drop("_orphan")
    del passed
    tick("dedup + references", t0)

    t0 = time.process_time()
    curated = kept.select([C(f"v_{c}").alias(c) for c in names])
    # Cents to DECIMAL(18,2): the multiplication by 0.01 is exact.
    casts = {c["name"]: (C(c["name"]).cast(pl.Decimal(20, 2))
                         * pl.lit("0.01").cast(pl.Decimal(3, 2))).cast(pl.Decimal(18, 2))
             for c in cols if c["kind"] == "brl"}
    if casts:
        curated = curated.with_columns(**casts)
    (out / f"curated/{name}/dt={dt}").mkdir(parents=True, exist_ok=True)
    curated.write_parquet(out / f"curated/{name}/dt={dt}/part-00000.parquet", compression="snappy")
    q_cols = names + ["_reasons", "_object", "_line"]
    quarantine = pl.concat([
        failed.select(q_cols).with_columns(raw_record=pl.lit(None, pl.String)),
        orphans.select(q_cols).with_columns(raw_record=pl.lit(None, pl.String)),
        malformed.with_columns(_reasons=pl.lit(["malformed_row"], pl.List(pl.String)))
        .select(q_cols + [C("_record").alias("raw_record")]),
    ]).rename({"_reasons": "reasons", "_object": "source_object", "_line": "line_number"})
    (out / f"quarantine/{name}/dt={dt}").mkdir(parents=True, exist_ok=True)
    quarantine.write_parquet(out / f"quarantine/{name}/dt={dt}/part-00000.parquet",
                             compression="snappy")
    tick("write", t0)
    by_reason = (quarantine.select(C("reasons").explode()).group_by("reasons").len()
                 .sort("reasons"))
    report = {
        "rows_read": rows_read,
        "rows_kept": curated.height,
        "rows_quarantined": quarantine.height,
        "duplicates_removed": duplicates_removed,
        "conflicts_resolved": conflicts_resolved,
        "quarantined_by_reason": {r: n for r, n in by_reason.iter_rows()},
    }
    return report, kept.get_column(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--date", required=True)
    ap.add_argument("--tables", type=Path, default=REPO / "config/tables.toml")
    ap.add_argument("--timings", action="store_true", help="print each stage's time on stderr")
    ap.add_argument("--no-fast-paths", action="store_true",
                    help="run the full rules on every value (no canonical-form shortcut)")
    args = ap.parse_args()
    started = time.process_time()
    spec = tomllib.loads(args.tables.read_text())["tables"]
    marker = json.loads((args.input / f"extracts/dt={args.date}/_SUCCESS").read_text())
    import datetime as _dt
    import zoneinfo
    today = _dt.datetime.now(zoneinfo.ZoneInfo(SP)).date()
    # Referenced tables first.
    order, seen = [], set()

    def visit(t):
        if t in seen:
            return
        seen.add(t)
        for c in spec[t]["columns"]:
            if c.get("references"):
                visit(c["references"])
        order.append(t)
    for t in sorted(spec):
        visit(t)
    keysets, report, timings = {}, {"dt": args.date, "tables": {}}, {}
    for t in order:
        parts = [(args.input / f, f) for f in marker["files"]
                 if f.startswith(f"extracts/{t}/dt={args.date}/")]
        rep, keys = clean_table(t, spec[t], parts, keysets, today, args.output, args.date, timings,
                                not args.no_fast_paths)
        keysets[t] = keys
        report["tables"][t] = rep
    path = args.output / f"reports/dt={args.date}/quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    if args.timings:
        for k, v in timings.items():
            print(f"  {k:40s} {v:7.2f} s", file=sys.stderr)
        print(f"  {'total':40s} {time.process_time() - started:7.2f} s", file=sys.stderr)
    for t, r in report["tables"].items():
        print(f"dt={args.date} {t}: read {r['rows_read']} kept {r['rows_kept']} quarantined "
              f"{r['rows_quarantined']} duplicates {r['duplicates_removed']} conflicts "
              f"{r['conflicts_resolved']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
