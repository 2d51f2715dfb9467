"""Shared fixtures: generated curated data, throwaway secrets, and a runner of `datashare build`."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import curated_gen  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("DATASHARE_BIN", str(Path.home() / ".cache/datashare-target/debug/datashare"))
PARTNERS = Path(os.environ.get("DATASHARE_PARTNERS", REPO / "partners"))
KEY_VAR = "DATASHARE_OUCHHUNGRY_HMAC_KEY"


@pytest.fixture(scope="session")
def lines():
    return curated_gen.generate()


@pytest.fixture(scope="session")
def lake(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("lake")
    curated_gen.write(root, lines)
    return root


@pytest.fixture(scope="session")
def db(lake):
    """DuckDB over the curated lake: `tx` and `pr` with each row's batch day."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute(f"""
        CREATE VIEW tx AS SELECT *, CAST(regexp_extract(filename, 'dt=([0-9-]+)', 1) AS DATE) AS batch
        FROM read_parquet('{lake}/curated/transactions/*/*.parquet', filename = true)""")
    c.execute(f"""
        CREATE VIEW pr AS SELECT *, CAST(regexp_extract(filename, 'dt=([0-9-]+)', 1) AS DATE) AS batch
        FROM read_parquet('{lake}/curated/products/*/*.parquet', filename = true)""")
    return c


@pytest.fixture(scope="session")
def secret():
    """A throwaway HMAC secret, made for this run only."""
    return secrets.token_hex(32)


class Builder:
    def __init__(self, lake, out, secret, partners=PARTNERS):
        self.lake, self.out, self.secret, self.partners = lake, out, secret, partners

    def run(self, partner, *period, env_extra=None, check=True):
        env = dict(os.environ)
        env[KEY_VAR] = self.secret
        env.update(env_extra or {})
        cmd = [BIN, "build", "--partner", partner, *period, "--input", str(self.lake),
               "--output", str(self.out), "--partners", str(self.partners)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} failed: {r.stderr}")
        return r


@pytest.fixture(scope="session")
def built(tmp_path_factory, lake, secret):
    """OuchHungry's daily 2026-10-15 and 2026-10-31 and monthly 2026-09 and 2026-10."""
    out = tmp_path_factory.mktemp("out")
    b = Builder(lake, out, secret)
    for args in (["--date", "2026-10-15"], ["--date", "2026-10-31"], ["--month", "2026-09"], ["--month", "2026-10"]):
        b.run("ouchhungry", *args)
    return out / "products" / "ouchhungry"
