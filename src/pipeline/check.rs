//! `datashare check-sinks`: runs every partner sink's connection check ([`check_all`]), prints
//! one line per (partner, sink), and publishes each failure to `alerts` as `sink.check_failed`
//! when Pub/Sub is configured (else logs it).

use crate::config::Config;
use crate::events::alert::Alert;
use crate::products::contract;
use crate::service::{Verdict, publish_alert};
use crate::sinks::check::{CheckResult, check_all};

/// Runs `datashare check-sinks`: one line per (partner, sink); `Failed` when a check failed.
pub async fn run(config: &Config, partner: Option<&str>) -> anyhow::Result<Verdict> {
    let mut contracts = contract::load_dir(&config.worker.partners_dir)?;
    if let Some(p) = partner {
        contracts.retain(|c| c.name == p);
        anyhow::ensure!(
            !contracts.is_empty(),
            "no contract named {p:?} in {}",
            config.worker.partners_dir.display()
        );
    }
    let results = check_all(&contracts, &config.sink_settings()).await;
    for r in &results {
        println!("{}", r.line());
    }
    let alerts: Vec<Alert> = results.iter().filter_map(CheckResult::alert).collect();
    if !alerts.is_empty() {
        publish(config, &alerts).await;
    }
    Ok(Verdict::of(alerts.is_empty()))
}

/// Publishes the alerts to `alerts` when Pub/Sub is configured (an emulator, or a real project
/// with credentials); otherwise they are only logged.
async fn publish(config: &Config, alerts: &[Alert]) {
    let emulator = config.emulators.pubsub.as_deref();
    let project_set = ["DATASHARE_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if emulator.is_none() && !project_set {
        for a in alerts {
            a.log();
        }
        eprintln!("Pub/Sub is not configured: alerts logged, not published");
        return;
    }
    let topics = [config.gcp.topics.alerts.as_str()];
    match crate::gcp::Bus::connect(&config.gcp.project, &topics, emulator).await {
        Ok(bus) => {
            for a in alerts {
                publish_alert(config, &bus, a).await;
            }
        }
        Err(e) => {
            for a in alerts {
                a.log();
            }
            eprintln!("cannot connect to Pub/Sub, alerts logged only: {e}");
        }
    }
}
