//! `datashare replay --dead-letters <subscription>`: republishes the archived dead letters of a
//! source subscription to its topic, with their original data and attributes, once each.
//!
//! Each replayed message gets a create-only marker (`deadletters/<sub>/replayed/<id>.json`)
//! after it is published: a second run skips it. A crash between the publish and the marker
//! republishes that one message on the next run (consumers are idempotent).

use crate::config::Config;
use crate::events::Outgoing;
use crate::gcp::{Bus, Gcs};
use crate::service::Verdict;

use super::dead_letters::{Archived, archive_prefix, replayed_object};

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Message ids republished (archive id → new message id).
    pub replayed: Vec<(String, String)>,
    /// Archived messages replayed before.
    pub already: usize,
    /// Archives that could not be read (left in place).
    pub unreadable: Vec<String>,
}

/// Replays the archived dead letters of `source_subscription`.
pub async fn replay_dead_letters(
    cfg: &Config,
    gcs: &Gcs,
    bus: &Bus,
    source_subscription: &str,
) -> anyhow::Result<ReplayReport> {
    let ops = &cfg.gcp.buckets.ops;
    let prefix = archive_prefix(source_subscription);
    let objects = gcs.list(ops, &prefix).await?;
    let mut report = ReplayReport::default();
    for o in &objects {
        let rest = &o.name[prefix.len()..];
        if rest.contains('/') || !rest.ends_with(".json") {
            continue;
        }
        let Some((bytes, _)) = gcs.read(ops, &o.name, None).await? else {
            continue;
        };
        let a: Archived = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(object = %o.name, error = %e, "archive unreadable, skipped");
                report.unreadable.push(o.name.clone());
                continue;
            }
        };
        let marker = replayed_object(source_subscription, &a.message_id);
        if gcs.stat(ops, &marker).await?.is_some() {
            report.already += 1;
            continue;
        }
        let Ok(data) = a.original_data() else {
            report.unreadable.push(o.name.clone());
            continue;
        };
        let topic = if a.source_topic.is_empty() {
            cfg.source_topic(source_subscription)
                .unwrap_or_default()
                .to_string()
        } else {
            a.source_topic.clone()
        };
        let id = bus
            .publish(
                &topic,
                Outgoing {
                    data,
                    attributes: a.original_attributes(),
                },
            )
            .await?;
        let body = serde_json::json!({
            "archive": o.name,
            "topic": topic,
            "published_message_id": id,
            "replayed_at": chrono::Utc::now(),
        });
        match gcs
            .write(ops, &marker, body.to_string().into_bytes(), Some(0))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        report.replayed.push((a.message_id.clone(), id));
    }
    Ok(report)
}

/// Runs `datashare replay --dead-letters <subscription>`; prints what it did.
pub async fn run_dead_letters(cfg: &Config, sub: &str) -> anyhow::Result<Verdict> {
    if !cfg.gcp.dead_letter_topics.contains_key(sub) {
        anyhow::bail!("{sub} is not a subscription with a dead-letter topic in the configuration");
    }
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref()).await?;
    let topic = cfg
        .source_topic(sub)
        .ok_or_else(|| anyhow::anyhow!("{sub}: no source topic"))?
        .to_string();
    let bus = Bus::connect(
        &cfg.gcp.project,
        &[topic.as_str()],
        cfg.emulators.pubsub.as_deref(),
    )
    .await?;
    let r = replay_dead_letters(cfg, &gcs, &bus, sub).await?;
    for (archived, new_id) in &r.replayed {
        println!("replayed {archived} to {topic} as {new_id}");
    }
    for u in &r.unreadable {
        println!("unreadable, left in place: {u}");
    }
    println!(
        "{sub}: {} replayed, {} already replayed before",
        r.replayed.len(),
        r.already
    );
    Ok(Verdict::of(r.unreadable.is_empty()))
}
