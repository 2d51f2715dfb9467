variable "project_id" {
  description = "Google Cloud project that hosts datashare."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "A project ID is 6-30 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "Region of the Cloud Run services, Artifact Registry repository, buckets and scheduler jobs (southamerica-east1 keeps personal data in Brazil)."
  type        = string
  default     = "southamerica-east1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "The region must be a Google Cloud region name such as southamerica-east1."
  }
}

variable "bucket_prefix" {
  description = "Prefix of the bucket names (<prefix>-raw, <prefix>-curated, ...). Bucket names are global: use something unique to the project, e.g. the project ID."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.bucket_prefix))
    error_message = "The bucket prefix must be 3-42 characters of lower-case letters, digits and dashes."
  }
}

variable "topology_file" {
  description = "The topology shared with fake-gcp (topics, subscriptions, buckets). Change it only to test another topology."
  type        = string
  default     = null

  validation {
    condition     = var.topology_file == null ? true : fileexists(var.topology_file)
    error_message = "The topology file does not exist."
  }
}

variable "image_tag" {
  description = "Tag (or @sha256 digest suffix) of the datashare image in the Artifact Registry repository, e.g. the git commit."
  type        = string

  validation {
    condition     = can(regex("^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image_tag))
    error_message = "The image tag must be a valid Docker tag or @sha256:<digest>."
  }
}

variable "partners" {
  description = "Partners under contract, by config name: the sinks that deliver to each and how they authenticate. Decides which Secret Manager secrets exist."
  type = map(object({
    sinks               = set(string)
    sftp_key_passphrase = optional(bool, false)
    api_auth            = optional(string, "basic")
    # Age of the last delivered daily product (datashare.product.freshness)
    # past which the "product late" policy fires: 24 h + (the contract's
    # deadline - the usual delivery time) + 1 h.
    daily_late_after_hours = optional(number, 27)
    # Same for the monthly products, monthly and monthly_brands (built on the
    # 3rd: 31 days + 2).
    monthly_late_after_days = optional(number, 33)
  }))
  default = {
    ouchhungry = {
      sinks               = ["sftp", "api"]
      sftp_key_passphrase = true
      api_auth            = "basic"
    }
  }

  validation {
    condition     = alltrue([for name, p in var.partners : can(regex("^[a-z][a-z0-9]{1,30}$", name))])
    error_message = "Partner names are lower-case letters and digits (they become part of secret names)."
  }
  validation {
    condition     = alltrue([for p in values(var.partners) : length(setsubtract(p.sinks, ["sftp", "api"])) == 0])
    error_message = "A partner's sinks are among sftp and api (the e-mail sink follows them)."
  }
  validation {
    condition     = alltrue([for p in values(var.partners) : contains(["basic", "bearer"], p.api_auth)])
    error_message = "api_auth is basic (user and password) or bearer (token)."
  }
  validation {
    condition     = alltrue([for p in values(var.partners) : p.daily_late_after_hours >= 24 && p.monthly_late_after_days >= 28])
    error_message = "A daily product is late after at least 24 hours, a monthly one after at least 28 days."
  }
}

variable "max_instances" {
  description = "Maximum Cloud Run instances per role. The worker is kept low because batch steps are claimed (extra instances would only wait) and each holds a batch in memory; sinks are low so a partner server is not flooded."
  type        = map(number)
  default = {
    worker  = 4
    sftp    = 2
    api     = 2
    email   = 2
    alert   = 2
    powerbi = 1
  }

  validation {
    condition     = alltrue([for n in values(var.max_instances) : n >= 1 && n <= 100 && floor(n) == n])
    error_message = "Maximum instances are whole numbers between 1 and 100."
  }
}

variable "concurrency" {
  description = "Requests served at once by one instance, per role. The worker parses CSV and builds Parquet on the CPU, so 1 request per instance keeps memory predictable; sinks mostly wait on the network."
  type        = map(number)
  default = {
    worker  = 1
    sftp    = 4
    api     = 8
    email   = 8
    alert   = 8
    powerbi = 4
  }

  validation {
    condition     = alltrue([for n in values(var.concurrency) : n >= 1 && n <= 1000 && floor(n) == n])
    error_message = "Concurrency values are whole numbers between 1 and 1000."
  }
}

variable "resources" {
  description = "CPU and memory limits per role, in Cloud Run syntax. The worker holds a day's batch and builds products: it gets the most."
  type = map(object({
    cpu    = string
    memory = string
  }))
  default = {
    worker  = { cpu = "2", memory = "4Gi" }
    sftp    = { cpu = "1", memory = "512Mi" }
    api     = { cpu = "1", memory = "512Mi" }
    email   = { cpu = "1", memory = "512Mi" }
    alert   = { cpu = "1", memory = "512Mi" }
    powerbi = { cpu = "1", memory = "512Mi" }
  }

  validation {
    condition     = alltrue([for r in values(var.resources) : can(regex("^[0-9]+(\\.[0-9]+)?$|^[0-9]+m$", r.cpu)) && can(regex("^[0-9]+(Mi|Gi)$", r.memory))])
    error_message = "cpu is a number of vCPUs (e.g. 1, 2, 500m) and memory a size in Mi or Gi."
  }
}

variable "log_level" {
  description = "RUST_LOG filter for every service."
  type        = string
  default     = "info"

  validation {
    condition     = length(var.log_level) > 0
    error_message = "The log level must not be empty."
  }
}

variable "deletion_protection" {
  description = "Protects Cloud Run services from terraform destroy, and keeps buckets that still hold objects (force_destroy off)."
  type        = bool
  default     = true
}

variable "smtp" {
  description = "The SMTP relay of the partner e-mails and the team's alerts (the password is the datashare-smtp-password secret)."
  type = object({
    host = string
    port = optional(number, 587)
    tls  = optional(string, "starttls")
    from = string
    user = string
  })

  validation {
    condition     = contains(["starttls", "implicit"], var.smtp.tls)
    error_message = "smtp.tls is starttls (usually port 587) or implicit (usually port 465)."
  }
}

variable "env" {
  description = "Environment name, the `env` label of every resource (cost reports split by it)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}$", var.env))
    error_message = "env is a short lower-case name such as prod or staging."
  }
}

variable "alert_emails" {
  description = "The data team's addresses: the notification channels of every Cloud Monitoring alert policy and of the budget."
  type        = list(string)
  default = [
    "correa.igor@aiqfome.com",
    "diego.pastrello@aiqfome.com",
    "leonardo.artur@aiqfome.com",
  ]

  validation {
    condition     = length(var.alert_emails) > 0 && alltrue([for a in var.alert_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", a))])
    error_message = "At least one e-mail address, each of the form name@domain."
  }
}

variable "billing_account" {
  description = "Cloud Billing account ID (XXXXXX-XXXXXX-XXXXXX) paying for the project: the budget is set on it, and the billing export tables are named after it."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$", var.billing_account))
    error_message = "A billing account ID is three groups of six upper-case hex digits separated by dashes."
  }
}

variable "budget" {
  description = "Monthly budget of the project: amount (whole currency units), currency, the fractions of actual spend and of forecast spend that notify (budgets topic, then the alerting consumer's e-mail)."
  type = object({
    amount              = number
    currency            = optional(string, "BRL")
    thresholds          = optional(list(number), [0.5, 0.9, 1.0])
    forecast_thresholds = optional(list(number), [1.0])
  })
  default = {
    amount = 1000
  }

  validation {
    condition     = var.budget.amount > 0 && floor(var.budget.amount) == var.budget.amount
    error_message = "The budget amount is a positive whole number of currency units."
  }
  validation {
    condition     = alltrue([for t in concat(var.budget.thresholds, var.budget.forecast_thresholds) : t > 0 && t <= 10])
    error_message = "Thresholds are fractions of the budget (0.5 = 50%), at most 10."
  }
  validation {
    condition     = can(regex("^[A-Z]{3}$", var.budget.currency))
    error_message = "The currency is an ISO 4217 code such as BRL (it must be the billing account's currency)."
  }
}

variable "billing_export_enabled" {
  description = "Set to true once the Cloud Billing export to the billing dataset is switched on and its table exists (README.md, Cost): the cost views read it."
  type        = bool
  default     = false
}

variable "telemetry" {
  description = "OpenTelemetry: an OpenTelemetry Collector sidecar in every service receives the program's OTLP and writes traces to Cloud Trace and metrics to Cloud Monitoring (workload.googleapis.com/<name>). Disabled: no sidecar, no OTLP endpoint set, nothing exported."
  type = object({
    enabled         = optional(bool, true)
    collector_image = optional(string, "us-docker.pkg.dev/cloud-ops-agents-artifacts/google-cloud-opentelemetry-collector/otelcol-google:0.143.0")
    cpu             = optional(string, "1")
    memory          = optional(string, "256Mi")
    # How often the program exports its metrics (ms); Cloud Monitoring
    # accepts one point per time series every 5 s at most.
    metric_export_interval_ms = optional(number, 60000)
  })
  default = {}

  validation {
    condition     = can(regex("^[a-z0-9.-]+(/[a-z0-9._-]+)+(:[A-Za-z0-9._-]+|@sha256:[a-f0-9]{64})$", var.telemetry.collector_image))
    error_message = "The collector image is a registry path with a tag or digest (never implicitly latest)."
  }
  validation {
    condition     = var.telemetry.metric_export_interval_ms >= 10000
    error_message = "Export metrics at most every 10 s (Cloud Monitoring's write rate limit per series)."
  }
}

variable "egress_subnet_cidr" {
  description = "Range of the subnet that the sftp, api and worker services send their traffic through (Direct VPC egress), so partners see one static address (Cloud NAT)."
  type        = string
  default     = "10.8.0.0/26"

  validation {
    condition     = can(cidrhost(var.egress_subnet_cidr, 0)) && tonumber(split("/", var.egress_subnet_cidr)[1]) <= 26
    error_message = "A private IPv4 range of at least /26 (Direct VPC egress takes addresses as instances scale)."
  }
}

variable "egress_tcp_ports" {
  description = "TCP ports the egress subnet may reach: the partners' SFTP and HTTPS ports (contracts), SMTP submission, and 443 for Google APIs."
  type        = list(string)
  default     = ["22", "443", "465", "587"]

  validation {
    condition     = contains(var.egress_tcp_ports, "443") && alltrue([for p in var.egress_tcp_ports : can(regex("^[0-9]{1,5}$", p))])
    error_message = "Ports are numbers, and 443 stays open (Google APIs, HTTPS partners)."
  }
}

variable "bi_curated_tables" {
  description = "Curated tables that Power BI and Metabase may read (object read on exactly their prefixes). customers holds names, e-mails and CPFs: add it only with the DPO's agreement."
  type        = set(string)
  default     = ["transactions", "products"]

  validation {
    condition     = length(setsubtract(var.bi_curated_tables, ["transactions", "products", "customers"])) == 0
    error_message = "Curated tables are transactions, products and customers."
  }
}

variable "bigquery_price_per_tib" {
  description = "On-demand BigQuery price per TiB billed (USD), for the bytes-billed-per-tool view's estimate. The default is the US multi-region list price; regions such as southamerica-east1 cost more: set the current price of yours."
  type        = number
  default     = 6.25

  validation {
    condition     = var.bigquery_price_per_tib > 0
    error_message = "The price is positive."
  }
}
