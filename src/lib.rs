//! datashare: marketplace extracts in, partner data products out.
//!
//! The modules follow the data. Dependencies point one way, from the top of this list down:
//! - [`cli`]: every command's arguments, one runtime, one exit-code convention.
//! - [`pipeline`]: what the roles do, one file per step: stage a part, the batch step, deliver,
//!   notify; beside them schedules (ticks, monthly builds), release and replay, sink checks.
//! - [`alerting`]: the alerting consumer: dead-letter archive, grouping, e-mails to the data team,
//!   `replay --dead-letters`.
//! - [`service`]: the transport: roles behind pull and push front ends, one mapping of errors to
//!   ack, nack or dead letter, claims.
//! - [`sinks`]: delivery to partners (SFTP, REST API, e-mail) behind one trait, idempotent through
//!   receipts; connection checks.
//! - [`products`]: partner products: contracts, pseudonymous keys, daily and monthly files,
//!   privacy gate, manifests.
//! - [`clean`]: the cleaning engine: table schemas from config, validators, staging, the batch
//!   step, the quality report, guardrails.
//! - [`gcp`]: Cloud Storage and Pub/Sub clients, emulator-aware.
//! - [`generate`]: seeded synthetic extracts with injected defects and their ground truth.
//! - Leaves, importing nothing from the rest of the crate: [`extract`] (reading raw objects:
//!   layout, gzip, encodings, CSV dialects), [`config`] (typed settings of every module,
//!   validated at start-up), [`events`] (the Pub/Sub messages), [`br`] (Brazilian reference
//!   data), [`telemetry`] (logs and the W3C trace context).

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
pub mod pipeline;
pub mod products;
pub mod service;
pub mod sinks;
pub mod telemetry;
