//! Per schedule message (`schedules-worker`): monthly builds and the periodic tick.
//!
//! - `monthly` (requested by the batch step that completes a month, and by Cloud Scheduler as a
//!   backstop): builds month M's product for each contract that buys it, under a claim
//!   (`claims/monthly/<partner>/<M>.json`) so copies of the request build once at a time; an
//!   unchanged product version is not delivered again (its `deliveries/<id>.json` marker).
//! - `tick` (every 5 minutes): a batch step whose worker died (its claim's lease ran out, not
//!   released, no done marker) is published again, so it is taken over even when Pub/Sub has
//!   stopped redelivering its message (`batch.stalled` after [`MAX_TAKEOVERS`] takeovers); a day
//!   whose batch has been ready (marker and every listed part staged) for
//!   `unclaimed_restart_after_secs` without any claim — its worker died between publishing
//!   `BatchReady` and taking the claim, and the message is lost or stalled — is published again
//!   (each restart after [`MAX_UNCLAIMED_RESTARTS`] also alerts `batch.unclaimed`); a day
//!   whose batch has not finished by its deadline raises `extract.missing`; each partner
//!   product's freshness is recorded ([`super::delivered`]). (Ticks shortly
//!   before a deadline make each sink role check its own connections: [`super::check`].)

use std::collections::BTreeSet;

use chrono::{DateTime, Days, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::America::Sao_Paulo;

use super::stage::ready_batch;
use super::{Worker, batch::StepSummary, names};
use crate::events::{Alert, ErrorKind, Incoming, Schedule, Severity};
use crate::products::month_periods;
use crate::products::monthly;
use crate::service::claim::{self, Claim};
use crate::service::{Disposition, HandleError};

/// Kind of the alert raised for a day without a finished batch at its deadline.
pub const EXTRACT_MISSING: &str = "extract.missing";

/// Kind of the alert raised for a batch step whose workers keep dying.
pub const BATCH_STALLED: &str = "batch.stalled";

/// Takeovers of a batch step's claim after which ticks stop restarting it and alert instead
/// (a step that kills its worker every time, e.g. out of memory, is not restarted for ever).
pub const MAX_TAKEOVERS: u32 = 3;

/// Kind of the alert raised for a ready batch that stays unclaimed after restarts.
pub const BATCH_UNCLAIMED: &str = "batch.unclaimed";

/// Restarts of a ready but unclaimed batch after which each further restart also alerts.
pub const MAX_UNCLAIMED_RESTARTS: u32 = 3;

/// What the tick remembers of a ready batch without a claim
/// (`claims/unclaimed/dt=<D>/<step key>.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unclaimed {
    /// When a tick first saw it ready and unclaimed.
    pub first_seen: DateTime<Utc>,
    /// `BatchReady` published again this many times.
    pub restarts: u32,
    /// The last time it was published again.
    #[serde(default)]
    pub last_restart: Option<DateTime<Utc>>,
}

/// The pt-BR summary of the `product.missing_batches` alert of a monthly build (the team's
/// e-mails are in pt-BR; the error's own text, in English, goes to the logs).
pub(super) fn missing_batches_summary(e: &monthly::MonthlyError) -> String {
    match e {
        monthly::MonthlyError::MissingBatches {
            month,
            first,
            missing,
        } => format!(
            "mês {month}: {} lote(s) ausente(s), o primeiro em {first}; o produto mensal aguarda os lotes (`datashare build --allow-missing-batches` o constrói mesmo assim)",
            missing.len()
        ),
        other => other.to_string(),
    }
}

/// `claims/monthly/<partner>/<YYYY-MM>.json` in the ops bucket.
fn monthly_claim(partner: &str, month: NaiveDate) -> String {
    format!("claims/monthly/{partner}/{}.json", month.format("%Y-%m"))
}

/// The deadline of day `dt`: `hour`:00 local (America/Sao_Paulo) of the next day, in UTC.
pub fn deadline(dt: NaiveDate, hour: u32) -> DateTime<Utc> {
    let next = dt + Days::new(1);
    let local = next.and_hms_opt(hour.min(23), 0, 0).unwrap_or_default();
    Sao_Paulo
        .from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        // A deadline inside a DST gap: the hour after it.
        .unwrap_or_else(|| Utc.from_utc_datetime(&local) + chrono::Duration::hours(3))
}

/// The days a tick at `at` checks: up to `lookback` days whose deadline has passed, newest first.
pub fn days_past_deadline(at: DateTime<Utc>, hour: u32, lookback: u32) -> Vec<NaiveDate> {
    let today = at.with_timezone(&Sao_Paulo).date_naive();
    (1..=u64::from(lookback) + 1)
        .filter_map(|back| today.checked_sub_days(Days::new(back)))
        .filter(|d| deadline(*d, hour) <= at)
        .take(lookback as usize)
        .collect()
}

/// The day whose deadline falls within `window` after `at`, if any.
pub fn deadline_within(
    at: DateTime<Utc>,
    hour: u32,
    window: chrono::Duration,
) -> Option<NaiveDate> {
    let today = at.with_timezone(&Sao_Paulo).date_naive();
    [today.pred_opt()?, today].into_iter().find(|d| {
        let due = deadline(*d, hour);
        at < due && due - at <= window
    })
}

impl Worker {
    /// Handles one schedule message.
    pub async fn handle_schedule(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        match Schedule::parse(msg)? {
            Schedule::Monthly { month, partner } => {
                let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").map_err(
                    |_| HandleError::Permanent {
                        kind: ErrorKind::MalformedMessage,
                        message: format!("month {month:?} is not YYYY-MM"),
                    },
                )?;
                let summary = self.monthly(first, partner.as_deref()).await?;
                tracing::info!(
                    month = %month,
                    published = summary.published.len(),
                    redelivered = summary.redelivered.len(),
                    held = summary.held.len(),
                    "monthly build done"
                );
                Ok(Disposition::Done)
            }
            Schedule::Tick { at } => {
                self.tick(at).await?;
                Ok(Disposition::Done)
            }
            Schedule::Other => {
                tracing::info!("schedule message of an unknown kind, ignored");
                Ok(Disposition::Done)
            }
        }
    }

    /// Builds month `first`'s products for every contract buying them (or the one named).
    pub async fn monthly(
        &self,
        first: NaiveDate,
        partner: Option<&str>,
    ) -> Result<StepSummary, HandleError> {
        let chosen: Vec<usize> = self
            .contracts
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.monthly_products().is_empty())
            .filter(|(_, c)| partner.is_none_or(|p| c.name == p))
            .map(|(i, _)| i)
            .collect();
        if let Some(p) = partner
            && chosen.is_empty()
        {
            return Err(HandleError::Permanent {
                kind: ErrorKind::MalformedMessage,
                message: format!("no contract {p:?} buying a monthly product"),
            });
        }
        let ops = &self.config.gcp.buckets.ops;
        let mut summary = StepSummary::default();
        for i in chosen {
            let contract = &self.contracts[i];
            let name = monthly_claim(&contract.name, first);
            let generation = match claim::take(
                &self.gcs,
                ops,
                &name,
                &self.owner,
                self.config.claim_lease(),
            )
            .await?
            {
                Claim::Taken { generation, .. } => generation,
                Claim::Held { owner, until } => {
                    return Err(HandleError::Transient(format!(
                        "monthly build of {} {} held by {owner} until {until}",
                        contract.name,
                        first.format("%Y-%m")
                    )));
                }
            };
            let result = self.monthly_one(i, first, &mut summary).await;
            // Released either way: a later request (a rebuild) may build again; an unchanged
            // version is not delivered twice.
            claim::release(&self.gcs, ops, &name, &self.owner, generation).await;
            result?;
        }
        Ok(summary)
    }

    async fn monthly_one(
        &self,
        contract: usize,
        first: NaiveDate,
        summary: &mut StepSummary,
    ) -> Result<(), HandleError> {
        let late = self.contracts[contract].late_days;
        let mut days: BTreeSet<NaiveDate> = monthly::window(first, late).into_iter().collect();
        days.extend(monthly::window(first - Months::new(1), late));
        // Batches of the window may still be running (they finish in any order): wait for them
        // (nack, retried with backoff; dead-lettered and alerted if one never comes).
        let missing = self.missing_batches(&monthly::window(first, late)).await?;
        if !missing.is_empty() {
            return Err(HandleError::Transient(format!(
                "monthly {} of {} waits for {} batch(es): {}",
                first.format("%Y-%m"),
                self.contracts[contract].name,
                missing.len(),
                missing
                    .iter()
                    .map(NaiveDate::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let tmp = self.tempdir()?;
        let input = tmp.path().join("in");
        // The products snapshots now (small); each batch's transactions when the build reads it.
        self.fetch_curated(&input, &days, &["products"]).await?;
        let transactions = self.stored_transactions(&days).await?;
        let timeout = std::time::Duration::from_secs(self.config.worker.step_timeout_secs);
        let output = tmp.path().join("products");
        let periods = month_periods(&self.contracts[contract], first)
            .into_iter()
            .map(|p| (contract, p))
            .collect();
        let build = self.build_products(&input, &output, periods, Some(transactions), summary);
        tokio::time::timeout(timeout, build)
            .await
            .map_err(|_| HandleError::Transient("monthly build exceeded the step timeout".into()))?
    }

    /// The tick: abandoned and unclaimed batch steps, missing batches past their deadline,
    /// products' freshness.
    pub async fn tick(&self, at: DateTime<Utc>) -> Result<(), HandleError> {
        self.restart_abandoned_batches().await?;
        self.restart_unclaimed_batches(at).await?;
        let w = &self.config.worker;
        let mut lateness = std::time::Duration::ZERO;
        for dt in days_past_deadline(at, w.deadline_local_hour, w.deadline_lookback_days) {
            if self.batch_finished(dt).await? {
                continue;
            }
            let due = deadline(dt, w.deadline_local_hour);
            lateness = lateness.max((at - due).to_std().unwrap_or_default());
            let alert = Alert::new(
                Severity::Critical,
                EXTRACT_MISSING,
                ("*", "*", &dt.to_string()),
                EXTRACT_MISSING,
                format!(
                    "nenhum lote completo de {dt} até o prazo {} (marcador ou partes listadas ausentes, ou a etapa do lote não terminou)",
                    due.to_rfc3339()
                ),
            )
            .with("deadline", due.to_rfc3339())
            .with("checked_at", at.to_rfc3339());
            self.alert(&alert).await;
        }
        crate::telemetry::metrics::batch_lateness(lateness);
        self.record_freshness(at).await;
        // Sink connections are checked by the sink roles on their own ticks (check.rs): the
        // worker holds no sink credentials.
        Ok(())
    }

    /// Publishes `BatchReady` again for every batch step whose claim was abandoned by a dead
    /// worker, while it is still the batch's current version; returns how many it published.
    pub async fn restart_abandoned_batches(&self) -> Result<usize, HandleError> {
        let ops = &self.config.gcp.buckets.ops;
        let names: BTreeSet<String> = self
            .gcs
            .list(ops, "claims/batch/")
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let now = Utc::now();
        let mut published = 0;
        for name in &names {
            let Some((dt, key)) = names::parse_batch_claim(name) else {
                continue;
            };
            if names.contains(&names::batch_done(dt, key)) {
                continue;
            }
            let Some(held) = claim::read(&self.gcs, ops, name).await? else {
                continue;
            };
            if !held.abandoned(now) {
                continue;
            }
            let current = ready_batch(&self.gcs, &self.config, &self.schemas, dt).await?;
            let Some(ready) = current.and_then(|r| r.for_step_key(key)) else {
                tracing::info!(%dt, key, "abandoned batch step superseded by a newer version");
                continue;
            };
            if held.takeovers >= MAX_TAKEOVERS {
                // Unless the team got the version through meanwhile (a release or a replay).
                let version = format!("claims/batch/dt={dt}/{}", ready.version());
                if names
                    .iter()
                    .any(|n| n.starts_with(&version) && n.ends_with(".done.json"))
                {
                    continue;
                }
                let alert = Alert::new(
                    Severity::Critical,
                    BATCH_STALLED,
                    ("*", "*", &dt.to_string()),
                    key,
                    format!(
                        "a etapa do lote de {dt} perdeu seu worker {} vezes (último: {}); não é mais reiniciada",
                        held.takeovers + 1,
                        held.owner
                    ),
                )
                .with("claim", name.as_str())
                .with("taken_at", held.taken_at.as_str());
                self.alert(&alert).await;
                continue;
            }
            let id = self
                .bus
                .publish(&self.config.gcp.topics.batches, ready.to_message())
                .await?;
            tracing::warn!(%dt, key, previous_owner = %held.owner, message_id = %id, "abandoned batch step published again");
            published += 1;
        }
        Ok(published)
    }

    /// Publishes `BatchReady` again for each day of the lookback whose batch version has been
    /// ready `unclaimed_restart_after_secs` with neither a claim nor a done marker (its worker
    /// died after publishing it, before the claim, and the message was lost); returns how many
    /// it published. The first tick that sees one only notes it; repeats are spaced as much.
    pub async fn restart_unclaimed_batches(&self, at: DateTime<Utc>) -> Result<usize, HandleError> {
        let w = &self.config.worker;
        let (raw, ops) = (&self.config.gcp.buckets.raw, &self.config.gcp.buckets.ops);
        let today = at.with_timezone(&Sao_Paulo).date_naive();
        let oldest = today - Days::new(u64::from(w.unclaimed_lookback_days));
        let days: BTreeSet<NaiveDate> = self
            .gcs
            .list(raw, "extracts/dt=")
            .await?
            .iter()
            .filter_map(|o| {
                o.name
                    .strip_prefix("extracts/dt=")?
                    .strip_suffix("/_SUCCESS")
            })
            .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .filter(|d| (oldest..=today).contains(d))
            .collect();
        if days.is_empty() {
            return Ok(0);
        }
        let claims: Vec<String> = self
            .gcs
            .list(ops, "claims/batch/")
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let after = chrono::Duration::seconds(w.unclaimed_restart_after_secs as i64);
        let mut published = 0;
        for dt in days {
            let Some(ready) = ready_batch(&self.gcs, &self.config, &self.schemas, dt).await? else {
                continue;
            };
            let key = ready.step_key();
            // Any claim or done marker of this version (or of its release or replay) means a
            // worker took it: the abandoned-claim restart covers the rest.
            let taken = format!("claims/batch/dt={dt}/{}", ready.version());
            if claims.iter().any(|n| n.starts_with(&taken)) {
                continue;
            }
            let state_name = names::unclaimed(dt, &key);
            let now = Utc::now();
            let Some((body, generation)) = self.gcs.read(ops, &state_name, None).await? else {
                let state = Unclaimed {
                    first_seen: now,
                    restarts: 0,
                    last_restart: None,
                };
                self.write_unclaimed(&state_name, &state, 0).await?;
                tracing::info!(%dt, %key, "batch ready without a claim, noted");
                continue;
            };
            let mut state: Unclaimed = serde_json::from_slice(&body).unwrap_or(Unclaimed {
                first_seen: now,
                restarts: 0,
                last_restart: None,
            });
            if now - state.last_restart.unwrap_or(state.first_seen) < after {
                continue;
            }
            state.restarts = state.restarts.saturating_add(1);
            state.last_restart = Some(now);
            // Noted first, conditionally: of two ticks at once only one publishes.
            if !self
                .write_unclaimed(&state_name, &state, generation)
                .await?
            {
                continue;
            }
            let id = self
                .bus
                .publish(&self.config.gcp.topics.batches, ready.to_message())
                .await?;
            tracing::warn!(%dt, %key, restarts = state.restarts, message_id = %id, "unclaimed ready batch published again");
            published += 1;
            // Restarting is cheap and harmless (the claim makes the step run once), so it goes
            // on; past the limit every restart also alerts (grouped per batch version).
            if state.restarts > MAX_UNCLAIMED_RESTARTS {
                let alert = Alert::new(
                    Severity::Critical,
                    BATCH_UNCLAIMED,
                    ("*", "*", &dt.to_string()),
                    &key,
                    format!(
                        "o lote de {dt} está pronto desde {} e nenhum worker o assumiu após {} reinícios",
                        state.first_seen.to_rfc3339(),
                        state.restarts - 1
                    ),
                )
                .with("batch_version", key.as_str())
                .with(
                    "next",
                    "verifique a assinatura batches e os logs do worker; `datashare replay --date` roda a etapa",
                );
                self.alert(&alert).await;
            }
        }
        Ok(published)
    }

    /// Writes the unclaimed state if its generation is still `generation` (0: absent); false
    /// when a concurrent tick wrote first (it acts, this one skips).
    async fn write_unclaimed(
        &self,
        name: &str,
        state: &Unclaimed,
        generation: i64,
    ) -> Result<bool, HandleError> {
        let body =
            serde_json::to_vec(state).map_err(|e| HandleError::local("unclaimed state", e))?;
        let ops = &self.config.gcp.buckets.ops;
        match self.gcs.write(ops, name, body, Some(generation)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The days of `days` without a curated quality report (their batch step has not run).
    async fn missing_batches(&self, days: &[NaiveDate]) -> Result<Vec<NaiveDate>, HandleError> {
        let curated = &self.config.gcp.buckets.curated;
        let present: BTreeSet<String> = self
            .gcs
            .list(curated, "reports/dt=")
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
        Ok(days
            .iter()
            .filter(|d| !present.contains(&format!("reports/dt={d}/quality.json")))
            .copied()
            .collect())
    }

    /// Whether any version of batch `dt` has its done marker.
    async fn batch_finished(&self, dt: NaiveDate) -> Result<bool, HandleError> {
        let ops = &self.config.gcp.buckets.ops;
        let prefix = format!("claims/batch/dt={dt}/");
        Ok(self
            .gcs
            .list(ops, &prefix)
            .await?
            .iter()
            .any(|o| o.name.ends_with(".done.json")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn deadlines_are_local_six_of_the_next_day() {
        // São Paulo is UTC-3 (no DST since 2019).
        assert_eq!(deadline(d("2026-11-27"), 6), t("2026-11-28T09:00:00Z"));
        // 2018-11-04 00:00 local did not exist (DST start): 06:00 did.
        assert_eq!(deadline(d("2018-11-03"), 6), t("2018-11-04T08:00:00Z"));
    }

    #[test]
    fn ticks_check_the_days_whose_deadline_passed() {
        assert_eq!(
            days_past_deadline(t("2026-11-28T08:59:00Z"), 6, 3),
            vec![d("2026-11-26"), d("2026-11-25"), d("2026-11-24")]
        );
        assert_eq!(
            days_past_deadline(t("2026-11-28T09:00:00Z"), 6, 2),
            vec![d("2026-11-27"), d("2026-11-26")]
        );
    }

    #[test]
    fn sink_checks_run_in_the_window_before_a_deadline() {
        let w = chrono::Duration::minutes(120);
        assert_eq!(
            deadline_within(t("2026-11-28T07:30:00Z"), 6, w),
            Some(d("2026-11-27"))
        );
        assert_eq!(deadline_within(t("2026-11-28T06:30:00Z"), 6, w), None);
        assert_eq!(deadline_within(t("2026-11-28T09:00:00Z"), 6, w), None);
    }
}
