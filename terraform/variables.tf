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
}

variable "max_instances" {
  description = "Maximum Cloud Run instances per role. The worker is kept low because batch steps are claimed (extra instances would only wait) and each holds a batch in memory; sinks are low so a partner server is not flooded."
  type        = map(number)
  default = {
    worker = 4
    sftp   = 2
    api    = 2
    email  = 2
    alert  = 2
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
    worker = 1
    sftp   = 4
    api    = 8
    email  = 8
    alert  = 8
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
    worker = { cpu = "2", memory = "4Gi" }
    sftp   = { cpu = "1", memory = "512Mi" }
    api    = { cpu = "1", memory = "512Mi" }
    email  = { cpu = "1", memory = "512Mi" }
    alert  = { cpu = "1", memory = "512Mi" }
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
