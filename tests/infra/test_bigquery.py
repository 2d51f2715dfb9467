"""The BigQuery external tables (terraform/bigquery.tf) read the Parquet the
program writes: one table per curated table and per product, each with the
writer's schema (terraform/schemas/, generated from the Rust schema types by
tests/it/bigquery_schemas.rs, which fails when they drift), hive-partitioned
on dt with a partition filter required; the Power BI and Metabase accounts
read exactly the prefixes behind the tables, never raw/ or quarantine/."""

import json
import tomllib

from infra_lib import REPO, expr, unquote

SCHEMAS = REPO / "terraform" / "schemas"
BQ_TYPES = {"STRING", "INTEGER", "FLOAT", "BOOLEAN", "DATE", "TIMESTAMP", "DATETIME", "NUMERIC", "BIGNUMERIC"}

# The writer's Arrow type of each tables.toml kind (src/clean/columns.rs,
# data_type), as BigQuery reads it from Parquet.
KIND_TO_BQ = {"int": "INTEGER", "brl": "NUMERIC", "timestamp": "TIMESTAMP", "date": "DATE"}


def curated_tables():
    with (REPO / "config" / "tables.toml").open("rb") as f:
        return tomllib.load(f)["tables"]


def schema_file(zone, name):
    return json.loads((SCHEMAS / zone / f"{name}.json").read_text())


def curated_problems(tables, zone_files):
    """Differences between tables.toml (the curated writer's source) and the schema files."""
    problems = []
    if set(zone_files) != set(tables):
        problems.append(f"schema files {sorted(zone_files)} != curated tables {sorted(tables)}")
    for name, table in tables.items():
        fields = zone_files.get(name)
        if fields is None:
            continue
        want = [
            (c["name"], KIND_TO_BQ.get(c["kind"], "STRING"), "REQUIRED" if c.get("required") else "NULLABLE")
            for c in table["columns"]
        ]
        have = [(f["name"], f["type"], f["mode"]) for f in fields]
        if want != have:
            problems.append(f"curated/{name}: {have} != writer's {want}")
    return problems


def test_one_schema_file_per_curated_table_and_product():
    assert sorted(p.stem for p in (SCHEMAS / "curated").glob("*.json")) == sorted(curated_tables())
    assert {"daily", "monthly"} <= {p.stem for p in (SCHEMAS / "products").glob("*.json")}


def test_curated_schemas_equal_the_writers():
    files = {p.stem: json.loads(p.read_text()) for p in (SCHEMAS / "curated").glob("*.json")}
    assert curated_problems(curated_tables(), files) == []


def test_schema_files_are_bigquery_schemas_without_partition_keys():
    for path in SCHEMAS.rglob("*.json"):
        fields = json.loads(path.read_text())
        assert fields, path
        names = [f["name"] for f in fields]
        assert len(names) == len(set(names)), path
        assert not {"dt", "partner"} & set(names), f"{path}: a hive key is also a column"
        for f in fields:
            assert f["type"] in BQ_TYPES and f["mode"] in {"REQUIRED", "NULLABLE"}, (path, f)


def test_external_tables_take_the_generated_schemas(hcl):
    body = hcl["resources"][("google_bigquery_table", "external")]
    assert expr(body["for_each"]) == "local.external_tables"
    ext = body["external_data_configuration"][0]
    assert expr(ext["schema"]) == 'file("${path.module}/${each.value.schema_file}")'
    assert ext["autodetect"] is False
    assert unquote(ext["source_format"]) == "PARQUET"
    hive = ext["hive_partitioning_options"][0]
    assert hive["require_partition_filter"] is True
    assert unquote(hive["mode"]) == "CUSTOM"
    locals_text = (REPO / "terraform" / "bigquery.tf").read_text()
    # Tables come from the schema files, nothing typed by hand.
    assert 'fileset("${path.module}/schemas/curated", "*.json")' in locals_text
    assert 'fileset("${path.module}/schemas/products", "*.json")' in locals_text
    # Hive partitioning on dt: the partition key schema of each zone.
    assert 'partition_keys = "{dt:DATE}"' in locals_text
    assert 'partition_keys = "{dt:STRING}/{partner:STRING}"' in locals_text


def test_bi_readers_are_least_privilege(hcl):
    res = hcl["resources"]
    sa = res[("google_service_account", "bi")]
    assert expr(sa["for_each"]) == "local.bi_tools"
    assert set(hcl["locals"]["bi_tools"]) == {"powerbi", "metabase"}
    # jobUser on the project, dataViewer on curated and products only.
    assert unquote(res[("google_project_iam_member", "bi_job_user")]["role"]) == "roles/bigquery.jobUser"
    assert unquote(res[("google_bigquery_dataset_iam_member", "bi_reads")]["role"]) == "roles/bigquery.dataViewer"
    text = (REPO / "terraform" / "bigquery.tf").read_text()
    assert 'for ds in ["curated", "products"]' in text
    # Object read, conditioned on the table prefixes (objects and listing).
    objects = res[("google_storage_bucket_iam_member", "bi_objects")]
    assert unquote(objects["role"]) == "roles/storage.objectViewer"
    condition = objects["condition"][0]
    assert "resource.name.startsWith" in condition["expression"]
    assert "objectListPrefix" in condition["expression"]
    assert set(hcl["locals"]["bi_prefixes"]) == {"curated", "products"}
    default = {unquote(t) for t in hcl["variables"]["bi_curated_tables"]["default"]}
    assert default and "customers" not in default, default
    # Nothing of the BI accounts anywhere near raw, quarantine or reports.
    grants = [body for (t, _), body in res.items() if t.endswith("_iam_member") and "bi[" in str(body.get("member"))]
    assert len(grants) == 3
    for g in grants:
        for word in ("raw", "quarantine", "reports", "ops"):
            assert f'"{word}' not in str(g), (word, g)


def test_the_schema_check_can_fail():
    tables = curated_tables()
    files = {name: schema_file("curated", name) for name in tables}
    assert curated_problems(tables, files) == []
    broken = dict(files)
    broken["transactions"] = [dict(f) for f in files["transactions"]]
    broken["transactions"][0]["mode"] = "NULLABLE"
    del broken["customers"]
    problems = curated_problems(tables, broken)
    assert len(problems) == 2 and "transactions" in problems[1], problems
