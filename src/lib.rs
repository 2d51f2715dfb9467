//! datashare: marketplace extracts in, partner data products out.
//!
//! The modules follow the data:
//! - [`br`]: Brazilian reference data (states, area codes, CEP ranges, CPF and GTIN check digits, IBGE municipalities).
//! - [`generate`]: seeded synthetic extracts with injected defects and their ground truth.
//! - [`extract`]: reading raw objects: object layout, gzip, encodings, CSV dialects.
//! - [`clean`]: the cleaning engine: table schemas from config, validators, staging, the batch step, the quality report.
//! - [`products`]: partner products: contracts, pseudonymous keys, daily and monthly files, privacy gate, manifests.
//! - [`sinks`]: delivery to partners (SFTP, REST API, e-mail) behind one trait, idempotent through receipts.
//! - [`config`]: typed settings (resource names, worker settings), file + environment, validated at start-up.
//! - [`events`]: Pub/Sub messages: GCS notifications, batch-ready, delivery requests, dead letters.
//! - [`gcp`]: Cloud Storage and Pub/Sub clients, emulator-aware.
//! - [`alerting`]: the alerting consumer: dead-letter archive, grouping, e-mails to the data team, replay.
//! - [`service`]: the worker: one handler per subscription behind pull and push front ends.
//! - [`telemetry`]: logs, and the W3C trace context carried in message attributes.

#![warn(missing_docs)]

pub mod alerting;
pub mod br;
pub mod clean;
pub mod cli;
pub mod config;
pub mod events;
pub mod extract;
pub mod gcp;
pub mod generate;
pub mod products;
pub mod service;
pub mod sinks;
pub mod telemetry;
