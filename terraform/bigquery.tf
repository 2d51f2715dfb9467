# Power BI and Metabase read the curated tables and the partners' products
# through BigQuery external tables over the Parquet in Cloud Storage (no load
# job, no second copy), hive-partitioned on `dt` with a partition filter
# required, so a query scans only the days it names (operations.md, Power BI
# and Metabase). The schemas are generated from the writer's own schema
# types (tests/it/bigquery_schemas.rs writes schemas/*.json and fails when
# they drift); none is typed here.
#
# Datasets by zone: curated (restricted: personal data), products (what
# partners receive), ops (KPIs: cost and bytes billed per tool); plus the
# billing dataset that Cloud Billing's export writes to (README.md, Cost).

locals {
  curated_schema_files = fileset("${path.module}/schemas/curated", "*.json")
  product_schema_files = fileset("${path.module}/schemas/products", "*.json")

  # Every external table: where its files are and how they are partitioned.
  #   curated:  gs://<prefix>-curated/curated/<table>/dt=<YYYY-MM-DD>/part-00000.parquet
  #   products: gs://<prefix>-products/tables/<daily|monthly>/dt=<period>/partner=<partner>/<file>.parquet
  #             (period = YYYY-MM-DD for daily, YYYY-MM for monthly)
  external_tables = merge(
    {
      for f in local.curated_schema_files : "curated/${trimsuffix(f, ".json")}" => {
        dataset        = "curated"
        table          = trimsuffix(f, ".json")
        bucket         = "curated"
        prefix         = "curated/${trimsuffix(f, ".json")}/"
        partition_keys = "{dt:DATE}"
        schema_file    = "schemas/curated/${f}"
        description    = "Curated ${trimsuffix(f, ".json")} (one Parquet file per batch day); filter on dt."
      }
    },
    {
      for f in local.product_schema_files : "products/${trimsuffix(f, ".json")}" => {
        dataset        = "products"
        table          = trimsuffix(f, ".json")
        bucket         = "products"
        prefix         = "tables/${trimsuffix(f, ".json")}/"
        partition_keys = "{dt:STRING}/{partner:STRING}"
        schema_file    = "schemas/products/${f}"
        description    = "The ${trimsuffix(f, ".json")} product of every partner, latest version of each period; filter on dt (the period) and partner."
      }
    },
  )

  datasets = {
    curated  = "Curated tables of datashare (external, over the curated bucket). Restricted: personal data."
    products = "The partners' data products (external, over the products bucket)."
    ops      = "datashare KPIs: cost per service, role and partner (billing export), BigQuery bytes billed per tool."
  }

  # The BI tools' accounts, told apart in INFORMATION_SCHEMA.JOBS.
  bi_tools = {
    powerbi  = "Power BI"
    metabase = "Metabase"
  }

  # What each tool may read: the prefixes behind the external tables it
  # queries, nothing else (no raw/, no quarantine/, no reports).
  bi_prefixes = {
    curated  = [for t in sort(tolist(var.bi_curated_tables)) : "curated/${t}/"]
    products = sort([for k, t in local.external_tables : t.prefix if t.bucket == "products"])
  }

  bi_bucket_grants = merge([
    for tool in keys(local.bi_tools) : {
      for bucket, prefixes in local.bi_prefixes : "${tool}/${bucket}" => { tool = tool, bucket = bucket, prefixes = prefixes } if length(prefixes) > 0
    }
  ]...)

  bi_dataset_grants = merge([
    for tool in keys(local.bi_tools) : {
      for ds in ["curated", "products"] : "${tool}/${ds}" => { tool = tool, dataset = ds }
    }
  ]...)

  billing_export_table = "${var.project_id}.${google_bigquery_dataset.billing.dataset_id}.gcp_billing_export_v1_${replace(var.billing_account, "-", "_")}"

  # Net cost of a billing export row: cost plus its (negative) credits.
  net_cost_sql = "cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS c), 0)"

  cost_views = {
    cost_by_service = {
      description = "Net cost per invoice month and Google Cloud service."
      query       = <<-SQL
        SELECT invoice.month AS invoice_month, service.description AS service, currency,
               ROUND(SUM(${local.net_cost_sql}), 2) AS net_cost
        FROM `${local.billing_export_table}`
        WHERE project.id = '${var.project_id}'
        GROUP BY invoice_month, service, currency
      SQL
    }
    cost_by_role = {
      description = "Net cost per invoice month, env and role label (shared: buckets, registry, network; unlabelled: resources without labels)."
      query       = <<-SQL
        SELECT invoice.month AS invoice_month,
               IFNULL((SELECT value FROM UNNEST(labels) WHERE key = 'env'), 'unlabelled') AS env,
               IFNULL((SELECT value FROM UNNEST(labels) WHERE key = 'role'), 'unlabelled') AS role,
               currency, ROUND(SUM(${local.net_cost_sql}), 2) AS net_cost
        FROM `${local.billing_export_table}`
        WHERE project.id = '${var.project_id}'
        GROUP BY invoice_month, env, role, currency
      SQL
    }
    cost_by_partner = {
      description = "Net cost per invoice month and partner label; `shared` is what no single partner causes (to split by delivered products, docs/cost.md)."
      query       = <<-SQL
        SELECT invoice.month AS invoice_month,
               IFNULL((SELECT value FROM UNNEST(labels) WHERE key = 'partner'), 'shared') AS partner,
               currency, ROUND(SUM(${local.net_cost_sql}), 2) AS net_cost
        FROM `${local.billing_export_table}`
        WHERE project.id = '${var.project_id}'
        GROUP BY invoice_month, partner, currency
      SQL
    }
  }

  bi_tool_cases = join(" ", [for tool in sort(keys(local.bi_tools)) : "WHEN '${google_service_account.bi[tool].email}' THEN '${tool}'"])

  bytes_billed_by_tool_sql = <<-SQL
    SELECT DATE(creation_time, 'America/Sao_Paulo') AS day,
           CASE user_email
             ${local.bi_tool_cases}
             ELSE 'other'
           END AS tool,
           IF(ENDS_WITH(user_email, '.gserviceaccount.com'), user_email, 'person') AS principal,
           COUNT(*) AS queries,
           SUM(total_bytes_processed) AS bytes_processed,
           SUM(total_bytes_billed) AS bytes_billed,
           ROUND(SUM(total_bytes_billed) / POW(1024, 4) * ${var.bigquery_price_per_tib}, 4) AS estimated_usd
    FROM `${var.project_id}`.`region-${var.region}`.INFORMATION_SCHEMA.JOBS
    WHERE job_type = 'QUERY' AND state = 'DONE'
    GROUP BY day, tool, principal
  SQL
}

resource "google_bigquery_dataset" "zone" {
  # checkov:skip=CKV_GCP_81: the external tables hold no data (it stays in the buckets, encrypted by Google) and the views only queries; a CMEK would add a key ring to operate for nothing stored
  for_each = local.datasets

  dataset_id                 = "datashare_${each.key}"
  location                   = var.region
  description                = each.value
  delete_contents_on_destroy = false

  labels = {
    role = "bigquery"
    zone = each.key
  }

  depends_on = [google_project_service.apis]
}

# Cloud Billing's export writes here (switched on in the console: README.md).
resource "google_bigquery_dataset" "billing" {
  # checkov:skip=CKV_GCP_81: billing export rows hold costs and labels, no personal data; Google-managed encryption is enough
  dataset_id                 = "datashare_billing"
  location                   = var.region
  description                = "Cloud Billing export (standard usage cost) of the billing account; read by the cost views of datashare_ops."
  delete_contents_on_destroy = false

  labels = {
    role = "billing"
  }

  depends_on = [google_project_service.apis]
}

resource "google_bigquery_table" "external" {
  # checkov:skip=CKV_GCP_80: an external table stores nothing in BigQuery: its Parquet files stay in the buckets
  # checkov:skip=CKV_GCP_121: dropping an external table loses no data (the files stay in the buckets) and a schema change may need a replacement
  for_each = local.external_tables

  dataset_id  = google_bigquery_dataset.zone[each.value.dataset].dataset_id
  table_id    = each.value.table
  description = each.value.description
  # Dropping an external table loses no data; it is recreated from here.
  deletion_protection = false

  labels = {
    role = "bigquery"
    zone = each.value.dataset
  }

  external_data_configuration {
    autodetect    = false
    source_format = "PARQUET"
    source_uris   = ["gs://${local.buckets[each.value.bucket].name}/${each.value.prefix}*"]
    # The writer's schema, generated from the Rust types (tests/it).
    schema = file("${path.module}/${each.value.schema_file}")

    hive_partitioning_options {
      mode                     = "CUSTOM"
      source_uri_prefix        = "gs://${local.buckets[each.value.bucket].name}/${each.value.prefix}${each.value.partition_keys}"
      require_partition_filter = true
    }
  }
}

resource "google_bigquery_table" "cost" {
  # checkov:skip=CKV_GCP_80: a view stores nothing
  # checkov:skip=CKV_GCP_121: a view holds no data; it is recreated from this file
  for_each = { for name, v in local.cost_views : name => v if var.billing_export_enabled }

  dataset_id          = google_bigquery_dataset.zone["ops"].dataset_id
  table_id            = each.key
  description         = each.value.description
  deletion_protection = false

  labels = {
    role = "billing"
  }

  view {
    query          = each.value.query
    use_legacy_sql = false
  }
}

resource "google_bigquery_table" "bytes_billed_by_tool" {
  # checkov:skip=CKV_GCP_80: a view stores nothing
  # checkov:skip=CKV_GCP_121: a view holds no data; it is recreated from this file
  dataset_id          = google_bigquery_dataset.zone["ops"].dataset_id
  table_id            = "bytes_billed_by_tool"
  description         = "BigQuery bytes billed per day and tool (Power BI, Metabase: their service accounts; other), with an on-demand cost estimate."
  deletion_protection = false

  labels = {
    role = "bigquery"
  }

  view {
    query          = local.bytes_billed_by_tool_sql
    use_legacy_sql = false
  }
}

# ------------------------------------------------ Power BI and Metabase

# One account per tool, so their cost is told apart and each can be cut off
# alone. Their keys are made by hand and given to the tool (README.md): a
# key made by Terraform would sit in the state.
resource "google_service_account" "bi" {
  for_each = local.bi_tools

  account_id   = "datashare-reader-${each.key}"
  display_name = "datashare reader: ${each.value}"
  description  = "${each.value} reads the datashare curated and products tables in BigQuery"
}

# Run query jobs (billed to the project, visible per account in JOBS).
resource "google_project_iam_member" "bi_job_user" {
  for_each = local.bi_tools

  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${google_service_account.bi[each.key].email}"
}

# See the tables of the curated and products datasets (not ops, not billing).
resource "google_bigquery_dataset_iam_member" "bi_reads" {
  for_each = local.bi_dataset_grants

  dataset_id = google_bigquery_dataset.zone[each.value.dataset].dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.bi[each.value.tool].email}"
}

# External tables are read with the querying account's own credentials:
# object read on exactly the prefixes behind the tables it may query. The
# condition covers both the objects (their names) and the listing BigQuery
# does to expand the table's wildcard (the list prefix).
resource "google_storage_bucket_iam_member" "bi_objects" {
  for_each = local.bi_bucket_grants

  bucket = google_storage_bucket.this[each.value.bucket].name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.bi[each.value.tool].email}"

  condition {
    title       = "datashare-${each.value.bucket}-tables"
    description = "Only the prefixes behind the ${each.value.bucket} external tables"
    expression = join(" || ", flatten([
      for p in each.value.prefixes : [
        "resource.name.startsWith(\"projects/_/buckets/${local.buckets[each.value.bucket].name}/objects/${p}\")",
        "api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${p}\")",
      ]
    ]))
  }
}
