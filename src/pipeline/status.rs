//! `datashare status`: "did yesterday go out?", answered from the ops and curated buckets
//! alone (no raw data is read, so the command needs no access to personal data).
//!
//! Per day: the marker (seen through the batch versions that claimed it) and its parts, staged
//! or failed (the staged summaries, or the quality report's files once the batch ran); the
//! batch (done, held and why, running, stalled, waiting, missing past its deadline); rows in /
//! curated / quarantined per table (`reports/dt=D/quality.json`); then per partner product
//! version published by the batch: each sink's receipt, the partner e-mail, and the open alerts
//! of the day with their fingerprints. A table on a terminal (colours only on a tty), JSON for
//! scripts. Exit code 1 when a day is held, stalled or missing past its deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::America::Sao_Paulo;
use serde::{Deserialize, Serialize};

use super::names;
use super::schedules::{MAX_TAKEOVERS, deadline};
use crate::clean::QualityReport;
use crate::clean::stage::PartSummary;
use crate::config::Config;
use crate::events::{Alert, Receipt, Severity};
use crate::gcp::{Gcs, GcsError};
use crate::service::Verdict;
use crate::service::claim::ClaimBody;

/// What one day came to, from the batch's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DayState {
    /// Batch done and every product version at every sink and e-mailed.
    Delivered,
    /// Batch done, some receipts still missing (sinks working or failing).
    Delivering,
    /// Batch done without delivering: a failed file or a blocking guardrail.
    Held,
    /// A batch step holds its claim now.
    Running,
    /// A batch step's worker died (lease out) or it was given up after its takeovers.
    Stalled,
    /// Parts staged, no batch step yet, deadline not passed.
    Waiting,
    /// No finished batch and its deadline has passed.
    Missing,
    /// Nothing yet, deadline not passed.
    NotYet,
}

impl DayState {
    fn label(self) -> &'static str {
        match self {
            DayState::Delivered => "DELIVERED",
            DayState::Delivering => "DELIVERING",
            DayState::Held => "HELD",
            DayState::Running => "RUNNING",
            DayState::Stalled => "STALLED",
            DayState::Waiting => "WAITING",
            DayState::Missing => "MISSING",
            DayState::NotYet => "NOT YET",
        }
    }

    /// Whether someone must act (exit code 1).
    pub fn needs_action(self) -> bool {
        matches!(self, DayState::Held | DayState::Stalled | DayState::Missing)
    }
}

/// One part of the day (a listed file at one generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// Table.
    pub table: String,
    /// Raw object name.
    pub object: String,
    /// Its generation.
    pub generation: String,
    /// `staged` or `failed`.
    pub state: String,
    /// Data rows read.
    pub rows: u64,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One batch step version of the day (`claims/batch/dt=D/<key>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Step key (`<marker generation>-<hash>`, `.release`, `.replay-<n>`).
    pub key: String,
    /// `done`, `held`, `running`, `stalled` or `retrying` (its holder gave it back).
    pub state: String,
    /// Who holds or held its claim.
    pub owner: String,
    /// When its claim was taken.
    pub taken_at: String,
    /// When it finished (done marker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why its products are held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// Delivery ids it published.
    pub published: Vec<String>,
    /// Delivery ids it found already delivered.
    pub redelivered: Vec<String>,
    /// Takeovers of its claim.
    pub takeovers: u32,
}

/// The marker as the ops bucket knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkerStatus {
    /// Whether a batch step ever claimed a version of it.
    pub seen: bool,
    /// The marker generations those versions had.
    pub generations: Vec<String>,
    /// Parts staged.
    pub staged: usize,
    /// Parts failed.
    pub failed: usize,
}

/// Counts of one table (`reports/dt=D/quality.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Rows read.
    pub rows_in: u64,
    /// Rows written to curated data.
    pub curated: u64,
    /// Rows quarantined.
    pub quarantined: u64,
    /// Duplicates removed.
    pub duplicates: u64,
}

/// One sink's receipt of a product version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    /// Sink name.
    pub sink: String,
    /// Whether its receipt exists.
    pub delivered: bool,
    /// When it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Whether the destination already had the content.
    pub already_present: bool,
    /// Where the first file is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The destination's reference (the e-mail's Message-ID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// One partner product version published by the day's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductStatus {
    /// Partner (`?` when no receipt names it yet and no contract is known).
    pub partner: String,
    /// `daily` or `monthly` (empty when unknown yet).
    pub product: String,
    /// Period (empty when unknown yet).
    pub period: String,
    /// The delivery id (the product version).
    pub delivery_id: String,
    /// The data sinks (`sftp`, `api`): a receipt each, or not yet.
    pub sinks: Vec<SinkStatus>,
    /// The partner e-mail (the `email` sink's receipt), when the contract has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<SinkStatus>,
    /// Every sink and the e-mail have their receipt.
    pub delivered: bool,
}

/// An open alert (its fingerprint's state in `alerts/state/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAlert {
    /// The fingerprint (grouping key; in every e-mail).
    pub fingerprint: String,
    /// Kind.
    pub kind: String,
    /// Severity.
    pub severity: Severity,
    /// Partner (`*` for every partner).
    pub partner: String,
    /// Period.
    pub period: String,
    /// One line.
    pub summary: String,
    /// First seen.
    pub first_seen: DateTime<Utc>,
    /// Last seen.
    pub last_seen: DateTime<Utc>,
    /// Times seen.
    pub total: u64,
    /// The day its details name (`dt`, or an object under `dt=D/`), when its period does not.
    #[serde(skip)]
    about_day: Option<String>,
}

/// Everything `status` says about one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayStatus {
    /// The day.
    pub date: NaiveDate,
    /// The verdict.
    pub state: DayState,
    /// Why, in one line.
    pub reason: String,
    /// The day's deadline (UTC).
    pub deadline: DateTime<Utc>,
    /// The marker.
    pub marker: MarkerStatus,
    /// Its parts.
    pub parts: Vec<Part>,
    /// The batch step versions, oldest claim first.
    pub steps: Vec<Step>,
    /// Counts per table, once the batch ran.
    pub tables: BTreeMap<String, TableCounts>,
    /// Partner product versions.
    pub products: Vec<ProductStatus>,
    /// Open alerts about the day (or its month).
    pub alerts: Vec<OpenAlert>,
}

/// The contracts' partners and their sinks, when the partners folder can be read.
pub type PartnerSinks = BTreeMap<String, Vec<String>>;

/// The subset of an alert state object that status reads.
#[derive(Debug, Deserialize)]
struct AlertState {
    fingerprint: String,
    alert: Alert,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    total: u64,
    #[serde(default)]
    resolved_at: Option<DateTime<Utc>>,
}

/// Reads the status of `days` (optionally one partner's products and alerts only) at `now`.
pub async fn collect(
    gcs: &Gcs,
    config: &Config,
    partners: &PartnerSinks,
    days: &[NaiveDate],
    partner: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<DayStatus>, GcsError> {
    let ops = &config.gcp.buckets.ops;
    let alerts = open_alerts(gcs, ops).await?;
    let mut out = Vec::with_capacity(days.len());
    for &dt in days {
        out.push(day(gcs, config, partners, &alerts, dt, partner, now).await?);
    }
    Ok(out)
}

async fn open_alerts(gcs: &Gcs, ops: &str) -> Result<Vec<OpenAlert>, GcsError> {
    let mut out = Vec::new();
    for o in gcs.list(ops, "alerts/state/").await? {
        let Some((bytes, _)) = gcs.read(ops, &o.name, None).await? else {
            continue;
        };
        let Ok(s) = serde_json::from_slice::<AlertState>(&bytes) else {
            continue;
        };
        if s.resolved_at.is_some() {
            continue;
        }
        let detail = |k: &str| s.alert.details.get(k).and_then(|v| v.as_str());
        let about_day = detail("dt").map(String::from).or_else(|| {
            let o = detail("object")?;
            let at = o.find("/dt=")? + "/dt=".len();
            o.get(at..at + 10).map(String::from)
        });
        out.push(OpenAlert {
            about_day,
            fingerprint: s.fingerprint,
            kind: s.alert.kind,
            severity: s.alert.severity,
            partner: s.alert.partner,
            period: s.alert.period,
            summary: s.alert.summary,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            total: s.total,
        });
    }
    out.sort_by_key(|a| (a.severity, a.first_seen));
    Ok(out)
}

async fn day(
    gcs: &Gcs,
    config: &Config,
    partners: &PartnerSinks,
    alerts: &[OpenAlert],
    dt: NaiveDate,
    partner: Option<&str>,
    now: DateTime<Utc>,
) -> Result<DayStatus, GcsError> {
    let b = &config.gcp.buckets;
    let due = deadline(dt, config.worker.deadline_local_hour);
    let steps = steps(gcs, &b.ops, dt, now).await?;
    let report = match gcs
        .read(&b.curated, &format!("reports/dt={dt}/quality.json"), None)
        .await?
    {
        Some((bytes, _)) => serde_json::from_slice::<QualityReport>(&bytes).ok(),
        None => None,
    };
    let parts = match &report {
        Some(r) => r
            .tables
            .iter()
            .flat_map(|(t, tr)| tr.files.iter().map(move |f| (t, f)))
            .map(|(t, f)| Part {
                table: t.clone(),
                object: f.object.clone(),
                generation: f.generation.clone(),
                state: if f.error.is_some() {
                    "failed"
                } else {
                    "staged"
                }
                .into(),
                rows: f.rows,
                error: f
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.kind, e.message)),
            })
            .collect(),
        None => staged_parts(gcs, &b.curated, dt).await?,
    };
    let tables = report
        .as_ref()
        .map(|r| {
            r.tables
                .iter()
                .map(|(t, tr)| {
                    let c = TableCounts {
                        rows_in: tr.rows_read,
                        curated: tr.rows_kept,
                        quarantined: tr.rows_quarantined,
                        duplicates: tr.duplicates_removed,
                    };
                    (t.clone(), c)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for s in &steps {
        for id in s.published.iter().chain(&s.redelivered) {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    let mut products = Vec::new();
    for id in &ids {
        if let Some(p) = product(gcs, &b.ops, partners, id).await?
            && partner.is_none_or(|want| p.partner == want || p.partner == "?")
        {
            products.push(p);
        }
    }
    let month = dt.format("%Y-%m").to_string();
    let day_alerts: Vec<OpenAlert> = alerts
        .iter()
        .filter(|a| {
            let day = dt.to_string();
            a.period == day || a.period == month || a.about_day.as_deref() == Some(day.as_str())
        })
        .filter(|a| {
            partner.is_none_or(|want| a.partner == want || a.partner == "*" || a.partner.is_empty())
        })
        .cloned()
        .collect();
    let marker = MarkerStatus {
        seen: !steps.is_empty(),
        generations: steps
            .iter()
            .filter_map(|s| s.key.split_once('-').map(|(g, _)| g.to_string()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        staged: parts.iter().filter(|p| p.state == "staged").count(),
        failed: parts.iter().filter(|p| p.state == "failed").count(),
    };
    let (state, reason) = verdict(&steps, &parts, &products, due, now);
    Ok(DayStatus {
        date: dt,
        state,
        reason,
        deadline: due,
        marker,
        parts,
        steps,
        tables,
        products,
        alerts: day_alerts,
    })
}

/// The day's verdict from its steps, parts and products.
fn verdict(
    steps: &[Step],
    parts: &[Part],
    products: &[ProductStatus],
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DayState, String) {
    let failed: Vec<&str> = parts
        .iter()
        .filter(|p| p.state == "failed")
        .map(|p| p.object.as_str())
        .collect();
    // The latest claim tells where the day is now.
    let latest = steps.iter().max_by(|a, b| a.taken_at.cmp(&b.taken_at));
    match latest {
        Some(s) if s.state == "running" => {
            (DayState::Running, format!("batch step {} running", s.key))
        }
        Some(s) if s.state == "stalled" => (
            DayState::Stalled,
            format!(
                "batch step {} lost its worker ({} takeovers); `datashare replay --date` restarts it",
                s.key, s.takeovers
            ),
        ),
        Some(s) if s.state == "retrying" => (
            DayState::Running,
            format!("batch step {} failed and is retried", s.key),
        ),
        Some(s) if s.state == "held" => {
            let mut why = s.held.join("; ");
            if !failed.is_empty() {
                why = format!("failed part(s): {}", failed.join(", "));
            }
            (DayState::Held, format!("products held: {why}"))
        }
        Some(_) => {
            let pending: Vec<String> = products
                .iter()
                .filter(|p| !p.delivered)
                .map(|p| format!("{} {}", p.partner, p.product))
                .collect();
            if pending.is_empty() {
                (
                    DayState::Delivered,
                    format!(
                        "batch done, {} product version(s) delivered",
                        products.len()
                    ),
                )
            } else {
                (
                    DayState::Delivering,
                    format!("batch done, receipts missing for {}", pending.join(", ")),
                )
            }
        }
        None if now >= due => (
            DayState::Missing,
            format!(
                "no batch by its deadline {} ({} part(s) staged, {} failed): marker or parts missing",
                local(due),
                parts.len() - failed.len(),
                failed.len()
            ),
        ),
        None if !parts.is_empty() => (
            DayState::Waiting,
            format!(
                "{} part(s) staged, waiting for the marker or the other parts",
                parts.len()
            ),
        ),
        None => (DayState::NotYet, "nothing received yet".into()),
    }
}

async fn steps(
    gcs: &Gcs,
    ops: &str,
    dt: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<Step>, GcsError> {
    let listed: BTreeSet<String> = gcs
        .list(ops, &format!("claims/batch/dt={dt}/"))
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut out = Vec::new();
    for name in &listed {
        let Some((_, key)) = names::parse_batch_claim(name) else {
            continue;
        };
        let claim: Option<ClaimBody> = gcs
            .read(ops, name, None)
            .await?
            .and_then(|(b, _)| serde_json::from_slice(&b).ok());
        let done_name = names::batch_done(dt, key);
        let done: Option<serde_json::Value> = if listed.contains(&done_name) {
            gcs.read(ops, &done_name, None)
                .await?
                .and_then(|(b, _)| serde_json::from_slice(&b).ok())
        } else {
            None
        };
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let held = strings(done.as_ref().and_then(|d| d.get("held")));
        let state = match (&done, &claim) {
            (Some(_), _) if !held.is_empty() => "held",
            (Some(_), _) => "done",
            (None, Some(c)) if c.released => "retrying",
            (None, Some(c)) if c.abandoned(now) || c.takeovers >= MAX_TAKEOVERS => "stalled",
            (None, _) => "running",
        };
        out.push(Step {
            key: key.to_string(),
            state: state.into(),
            owner: claim.as_ref().map(|c| c.owner.clone()).unwrap_or_default(),
            taken_at: claim
                .as_ref()
                .map(|c| c.taken_at.clone())
                .unwrap_or_default(),
            finished_at: done
                .as_ref()
                .and_then(|d| d.get("finished_at"))
                .and_then(|v| v.as_str())
                .map(String::from),
            held,
            published: strings(done.as_ref().and_then(|d| d.get("published"))),
            redelivered: strings(done.as_ref().and_then(|d| d.get("redelivered"))),
            takeovers: claim.as_ref().map_or(0, |c| c.takeovers),
        });
    }
    out.sort_by(|a, b| a.taken_at.cmp(&b.taken_at));
    Ok(out)
}

/// The parts staged so far (before the batch step): the latest generation of each object.
async fn staged_parts(gcs: &Gcs, curated: &str, dt: NaiveDate) -> Result<Vec<Part>, GcsError> {
    let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for o in gcs.list(curated, &format!("staging/dt={dt}/")).await? {
        let Some(stem) = o.name.strip_suffix(".summary.json") else {
            continue;
        };
        let Some((file, generation)) = stem.rsplit_once('@') else {
            continue;
        };
        let g: i64 = generation.parse().unwrap_or(0);
        if latest.get(file).is_none_or(|(have, _)| *have < g) {
            latest.insert(file.to_string(), (g, o.name.clone()));
        }
    }
    let mut out = Vec::new();
    for (_, (_, name)) in latest {
        let Some((bytes, _)) = gcs.read(curated, &name, None).await? else {
            continue;
        };
        let Ok(s) = serde_json::from_slice::<PartSummary>(&bytes) else {
            continue;
        };
        out.push(Part {
            table: s.table,
            object: s.file.object,
            generation: s.file.generation,
            state: if s.file.error.is_some() {
                "failed"
            } else {
                "staged"
            }
            .into(),
            rows: s.file.rows,
            error: s.file.error.map(|e| format!("{}: {}", e.kind, e.message)),
        });
    }
    Ok(out)
}

/// A product version's receipts; its partner is the contract with a receipt for it (or the
/// only contract, or `?`).
async fn product(
    gcs: &Gcs,
    ops: &str,
    partners: &PartnerSinks,
    delivery_id: &str,
) -> Result<Option<ProductStatus>, GcsError> {
    let mut found: Option<(String, Vec<Receipt>)> = None;
    for p in partners.keys() {
        let receipts = receipts(gcs, ops, p, delivery_id).await?;
        if !receipts.is_empty() {
            found = Some((p.clone(), receipts));
            break;
        }
    }
    if found.is_none() && partners.is_empty() {
        // No contract known: the receipts say whose it is.
        for o in gcs.list(ops, "receipts/").await? {
            let mut seg = o.name.split('/');
            let (_, Some(p), Some(id)) = (seg.next(), seg.next(), seg.next()) else {
                continue;
            };
            if id == delivery_id {
                found = Some((p.to_string(), receipts(gcs, ops, p, delivery_id).await?));
                break;
            }
        }
    }
    let (partner, receipts) = match found {
        Some(f) => f,
        None if partners.len() == 1 => {
            (partners.keys().next().cloned().unwrap_or_default(), vec![])
        }
        None => ("?".to_string(), vec![]),
    };
    let expected: Vec<String> = partners
        .get(&partner)
        .cloned()
        .unwrap_or_else(|| receipts.iter().map(|r| r.sink.clone()).collect());
    let sink_status = |sink: &str| {
        let r = receipts.iter().find(|r| r.sink == sink);
        SinkStatus {
            sink: sink.to_string(),
            delivered: r.is_some(),
            delivered_at: r.map(|r| r.delivered_at),
            already_present: r.is_some_and(|r| r.already_present),
            location: r.and_then(|r| r.files.first()).map(|f| f.location.clone()),
            reference: r.and_then(|r| r.reference.clone()),
        }
    };
    let sinks: Vec<SinkStatus> = expected
        .iter()
        .filter(|s| *s != "email")
        .map(|s| sink_status(s))
        .collect();
    let email = expected
        .iter()
        .any(|s| s == "email")
        .then(|| sink_status("email"));
    let delivered = !expected.is_empty()
        && sinks.iter().all(|s| s.delivered)
        && email.as_ref().is_none_or(|e| e.delivered);
    let first = receipts.first();
    Ok(Some(ProductStatus {
        partner,
        product: first
            .map(|r| r.product.as_str().to_string())
            .unwrap_or_default(),
        period: first.map(|r| r.period.clone()).unwrap_or_default(),
        delivery_id: delivery_id.to_string(),
        sinks,
        email,
        delivered,
    }))
}

async fn receipts(
    gcs: &Gcs,
    ops: &str,
    partner: &str,
    delivery_id: &str,
) -> Result<Vec<Receipt>, GcsError> {
    let mut out = Vec::new();
    for o in gcs
        .list(ops, &format!("receipts/{partner}/{delivery_id}/"))
        .await?
    {
        if let Some((bytes, _)) = gcs.read(ops, &o.name, None).await?
            && let Ok(r) = serde_json::from_slice::<Receipt>(&bytes)
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// `dd/mm HH:MM (São Paulo) / HH:MM UTC`.
fn local(t: DateTime<Utc>) -> String {
    format!(
        "{} (São Paulo) / {}",
        t.with_timezone(&Sao_Paulo).format("%d/%m %H:%M"),
        t.format("%H:%M UTC")
    )
}

/// The table for a terminal; `colour` adds ANSI colours (only on a tty).
pub fn render(days: &[DayStatus], colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let state = |s: DayState| {
        let code = match s {
            DayState::Delivered => "1;32",
            s if s.needs_action() => "1;31",
            _ => "1;33",
        };
        paint(code, &format!("{:<10}", s.label()))
    };
    let mut o = String::new();
    for d in days {
        let _ = writeln!(o, "{}  {}  {}", d.date, state(d.state), d.reason);
        let _ = writeln!(o, "  deadline  {}", local(d.deadline));
        let gens = if d.marker.generations.is_empty() {
            "not claimed by a batch".to_string()
        } else {
            format!("generation {}", d.marker.generations.join(", "))
        };
        let _ = writeln!(
            o,
            "  marker    {gens}; parts: {} staged, {} failed",
            d.marker.staged, d.marker.failed
        );
        for p in d.parts.iter().filter(|p| p.state == "failed") {
            let _ = writeln!(
                o,
                "            {} {}@{}: {}",
                paint("31", "failed"),
                p.object,
                p.generation,
                p.error.as_deref().unwrap_or("")
            );
        }
        for s in &d.steps {
            let mut line = format!("  batch     {} {}", s.key, s.state);
            if let Some(f) = &s.finished_at {
                line.push_str(&format!(" at {f}"));
            } else if !s.owner.is_empty() {
                line.push_str(&format!(" by {} since {}", s.owner, s.taken_at));
            }
            if !s.held.is_empty() {
                line.push_str(&format!(" (held: {})", s.held.join("; ")));
            }
            let _ = writeln!(o, "{line}");
        }
        if !d.tables.is_empty() {
            let _ = writeln!(
                o,
                "  {:<22}{:>10}{:>10}{:>13}",
                "table", "rows in", "curated", "quarantined"
            );
            for (t, c) in &d.tables {
                let _ = writeln!(
                    o,
                    "  {:<22}{:>10}{:>10}{:>13}",
                    t, c.rows_in, c.curated, c.quarantined
                );
            }
        }
        for p in &d.products {
            let short = p.delivery_id.get(..12).unwrap_or(&p.delivery_id);
            let mark = if p.delivered {
                paint("32", "delivered")
            } else {
                paint("33", "pending")
            };
            let _ = writeln!(
                o,
                "  {} {} {} (version {short}): {mark}",
                p.partner, p.product, p.period
            );
            for s in p.sinks.iter().chain(p.email.iter()) {
                let what = match (&s.delivered_at, s.already_present) {
                    (Some(t), false) => format!("receipt {}", local(*t)),
                    (Some(t), true) => format!("receipt {} (already there)", local(*t)),
                    _ => "no receipt yet".into(),
                };
                let name = if s.sink == "email" { "e-mail" } else { &s.sink };
                let _ = writeln!(o, "      {name:<7}{what}");
            }
        }
        if d.alerts.is_empty() {
            let _ = writeln!(o, "  alerts    none open");
        }
        for a in &d.alerts {
            let _ = writeln!(
                o,
                "  alert     {} {} [{}] x{} since {}: {}",
                paint("31", &a.kind),
                a.fingerprint,
                a.partner,
                a.total,
                local(a.first_seen),
                a.summary
            );
        }
        o.push('\n');
    }
    o
}

/// The partners of the contracts in the partners folder and their sinks; empty when the
/// folder cannot be read (receipts then name the partners).
pub fn partner_sinks(config: &Config) -> PartnerSinks {
    match crate::products::contract::load_dir(&config.worker.partners_dir) {
        Ok(cs) => cs
            .iter()
            .map(|c| {
                let sinks = c.sinks.iter().map(|s| s.name().to_string()).collect();
                (c.name.clone(), sinks)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "contracts not readable; partners read from receipts");
            PartnerSinks::new()
        }
    }
}

/// Yesterday in America/Sao_Paulo (the day `status` shows by default).
pub fn yesterday() -> NaiveDate {
    let today = Utc::now().with_timezone(&Sao_Paulo).date_naive();
    today.pred_opt().unwrap_or(today)
}

/// `datashare status`: prints the days' status (JSON with `json`); exit 1 when a day needs
/// action.
pub async fn run(
    config: &Config,
    days: &[NaiveDate],
    partner: Option<&str>,
    json: bool,
) -> anyhow::Result<Verdict> {
    let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
    let partners = partner_sinks(config);
    let status = collect(&gcs, config, &partners, days, partner, Utc::now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        use std::io::IsTerminal;
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", render(&status, colour));
    }
    Ok(if status.iter().any(|d| d.state.needs_action()) {
        Verdict::Failed
    } else {
        Verdict::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: &str, taken_at: &str) -> Step {
        Step {
            key: "5-abc".into(),
            state: state.into(),
            owner: "w".into(),
            taken_at: taken_at.into(),
            finished_at: None,
            held: vec!["batch 2026-11-27".into()],
            published: vec![],
            redelivered: vec![],
            takeovers: 0,
        }
    }

    #[test]
    fn verdicts_follow_the_latest_step_then_the_deadline() {
        let due = "2026-11-28T09:00:00Z".parse().unwrap();
        let before = "2026-11-28T08:00:00Z".parse().unwrap();
        let after = "2026-11-28T10:00:00Z".parse().unwrap();
        assert_eq!(verdict(&[], &[], &[], due, before).0, DayState::NotYet);
        assert_eq!(verdict(&[], &[], &[], due, after).0, DayState::Missing);
        let held = step("held", "2026-11-28T01:00:00Z");
        assert_eq!(
            verdict(std::slice::from_ref(&held), &[], &[], due, after).0,
            DayState::Held
        );
        let done = Step {
            state: "done".into(),
            held: vec![],
            ..step("done", "2026-11-28T02:00:00Z")
        };
        // A release after the hold: the latest step wins; no product pending: delivered.
        let v = verdict(&[held, done], &[], &[], due, after);
        assert_eq!(v.0, DayState::Delivered, "{v:?}");
        assert!(DayState::Stalled.needs_action() && !DayState::Running.needs_action());
    }
}
