# One static egress address for the partners' allowlists: the services that
# connect to partner servers (the sftp and api sinks, which also run their
# own connection checks; never the worker) use Direct VPC egress with all traffic
# into a small subnet, and Cloud NAT translates it to one reserved address.
# Google APIs stay on Google's network (Private Google Access).

locals {
  egress_roles = ["sftp", "api"]
}

resource "google_compute_network" "egress" {
  name                    = "datashare-egress"
  description             = "Egress of the datashare services that reach partner servers"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.apis]
}

resource "google_compute_subnetwork" "egress" {
  name          = "datashare-egress-${var.region}"
  region        = var.region
  network       = google_compute_network.egress.id
  ip_cidr_range = var.egress_subnet_cidr

  # Cloud Storage, Pub/Sub, Secret Manager, telemetry: over Google's
  # network, not through NAT.
  private_ip_google_access = true

  # Who talked to which partner address, for a dispute or an audit.
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_address" "egress" {
  name         = "datashare-egress"
  region       = var.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"
  description  = "The one address partners allowlist (SFTP and API sinks)"

  labels = {
    role = "egress"
  }

  # Losing it means every partner changing their allowlist.
  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_project_service.apis]
}

resource "google_compute_router" "egress" {
  name    = "datashare-egress"
  region  = var.region
  network = google_compute_network.egress.id
}

resource "google_compute_router_nat" "egress" {
  name   = "datashare-egress"
  router = google_compute_router.egress.name
  region = var.region

  nat_ip_allocate_option             = "MANUAL_ONLY"
  nat_ips                            = [google_compute_address.egress.self_link]
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.egress.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  # Ports per instance: a handful of SFTP/HTTPS connections each.
  min_ports_per_vm = 64

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Only what the sinks need goes out: the partners' SSH and HTTPS ports to
# anywhere (their addresses are in the contracts, not here) and SMTP
# submission for the worker's check of the relay; everything else is denied.
resource "google_compute_firewall" "egress_allow" {
  name        = "datashare-egress-allow"
  network     = google_compute_network.egress.id
  direction   = "EGRESS"
  priority    = 1000
  description = "Partner SFTP and HTTPS APIs, SMTP submission"

  destination_ranges = ["0.0.0.0/0"]
  allow {
    protocol = "tcp"
    ports    = var.egress_tcp_ports
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "egress_deny" {
  name        = "datashare-egress-deny"
  network     = google_compute_network.egress.id
  direction   = "EGRESS"
  priority    = 65000
  description = "Nothing else leaves the egress subnet"

  destination_ranges = ["0.0.0.0/0"]
  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
