//! Grouping: one state object per fingerprint (`alerts/state/<fingerprint>.json` in ops),
//! changed by read-modify-write under `ifGenerationMatch`, so concurrent consumers never lose a
//! count. The transitions are pure functions of the state, the message and the time.
//!
//! At-least-once, and what can double: an e-mail is sent after its state is written as
//! "sending" and marked sent afterwards; a crash (or a failed write) between the send and the
//! mark sends that one e-mail again. A redelivered repeat is not counted twice (recent message
//! ids are kept), and a redelivered or concurrent tick does not send a digest twice unless the
//! first sender stalled longer than [`SENDING_LEASE_SECS`].
//!
//! One failure, one e-mail: a fingerprint is shared by different kinds only on purpose (a held
//! batch's `batch.held` alert reuses its failed file's dead-letter fingerprint), so a message of
//! another kind than the ones already seen is the same failure told by another service: it is
//! recorded ([`State::related`]) but neither e-mailed nor counted as a repeat.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::Alert;
use crate::gcp::{Gcs, GcsError};

/// Recent message ids kept per fingerprint to recognise redeliveries.
pub const SEEN_IDS: usize = 500;
/// After this long, an e-mail marked as being sent by someone else is sent again.
pub const SENDING_LEASE_SECS: i64 = 120;

/// The state object name of a fingerprint.
pub fn state_object(fingerprint: &str) -> String {
    format!("alerts/state/{fingerprint}.json")
}

/// An e-mail decided but not yet confirmed sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sending {
    /// The message that decided it (first alert) or the tick.
    pub by: String,
    /// When it was decided.
    pub at: DateTime<Utc>,
    /// Repeats it reports (0 for a first alert).
    pub count: u64,
    /// Since when those repeats were counted.
    pub since: Option<DateTime<Utc>>,
}

/// Everything known about one fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The fingerprint.
    pub fingerprint: String,
    /// The latest alert of this fingerprint (what the e-mails describe).
    pub alert: Alert,
    /// When it was first seen.
    pub first_seen: DateTime<Utc>,
    /// When it was last seen.
    pub last_seen: DateTime<Utc>,
    /// How many times it was seen, in all.
    pub total: u64,
    /// Repeats not yet reported.
    pub pending: u64,
    /// Since when the pending repeats were counted.
    pub pending_since: Option<DateTime<Utc>>,
    /// When the last e-mail about it was decided (opens the grouping window).
    pub last_mail_at: Option<DateTime<Utc>>,
    /// The first-alert e-mail in flight.
    pub first: Option<Sending>,
    /// The digest in flight.
    pub digest: Option<Sending>,
    /// Recent message ids (redeliveries are not counted twice).
    pub seen: VecDeque<String>,
    /// The kinds this fingerprint was seen with, and how often (the first kind's repeats are
    /// mailed and counted; another kind is the same failure told by another service).
    #[serde(default)]
    pub related: BTreeMap<String, u64>,
    /// When the condition was seen cleared and the "resolved" e-mail decided (closed until
    /// the alert comes again).
    #[serde(default)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The "resolved" e-mail in flight.
    #[serde(default)]
    pub resolving: Option<Sending>,
}

/// What to do with an alert once recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// E-mail it now (first of its fingerprint, or first after the window).
    MailNow,
    /// Counted for the next digest.
    Counted,
    /// A redelivery of a message already counted.
    Duplicate,
    /// Another kind of message about a failure already reported: recorded, not mailed.
    Related,
}

impl State {
    /// A fresh state for an alert.
    pub fn new(alert: &Alert, now: DateTime<Utc>) -> State {
        State {
            fingerprint: alert.fingerprint.clone(),
            alert: alert.clone(),
            first_seen: now,
            last_seen: now,
            total: 0,
            pending: 0,
            pending_since: None,
            last_mail_at: None,
            first: None,
            digest: None,
            seen: VecDeque::new(),
            related: BTreeMap::new(),
            resolved_at: None,
            resolving: None,
        }
    }

    /// Whether the condition is still open (not resolved).
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }

    /// Records one delivery of an alert message.
    pub fn record(
        &mut self,
        alert: &Alert,
        message_id: &str,
        now: DateTime<Utc>,
        window_secs: u64,
    ) -> Recorded {
        if !message_id.is_empty() && self.seen.iter().any(|s| s == message_id) {
            // The first e-mail of this very message may have failed: send it again.
            return match &self.first {
                Some(s) if s.by == message_id => Recorded::MailNow,
                _ => Recorded::Duplicate,
            };
        }
        if !message_id.is_empty() {
            self.seen.push_back(message_id.to_string());
            while self.seen.len() > SEEN_IDS {
                self.seen.pop_front();
            }
        }
        if self.resolved_at.is_some_and(|r| alert.raised_at <= r) {
            // Raised before the condition was seen cleared, delivered after: not a new incident.
            return Recorded::Duplicate;
        }
        if self.resolved_at.take().is_some() {
            // The condition came back after it was resolved: a new incident, mailed at once.
            self.resolving = None;
            self.last_mail_at = None;
            self.pending = 0;
            self.pending_since = None;
            self.first_seen = now;
        }
        self.total += 1;
        self.last_seen = now;
        let known = !self.related.is_empty();
        let kind = self.related.entry(alert.kind.clone()).or_insert(0);
        *kind += 1;
        if known && *kind == 1 {
            return Recorded::Related;
        }
        self.alert = alert.clone();
        let window = chrono::Duration::seconds(window_secs as i64);
        let open = self.last_mail_at.is_some_and(|t| now - t < window);
        // Repeats already waiting for their digest keep waiting with it: the tick after the
        // window sends them, whichever of this message and that tick comes first.
        if open || self.first.is_some() || self.pending > 0 {
            self.pending += 1;
            self.pending_since.get_or_insert(now);
            return Recorded::Counted;
        }
        self.last_mail_at = Some(now);
        self.first = Some(Sending {
            by: message_id.to_string(),
            at: now,
            count: 0,
            since: None,
        });
        Recorded::MailNow
    }

    /// Marks the first-alert e-mail of `message_id` as sent.
    pub fn first_sent(&mut self, message_id: &str) {
        if self.first.as_ref().is_some_and(|s| s.by == message_id) {
            self.first = None;
        }
    }

    /// At a tick: the digest to send now, if any (moves the pending repeats into it). A digest
    /// goes out only once the window since the last e-mail of the fingerprint has passed: at
    /// most one e-mail per fingerprint per window.
    pub fn take_digest(
        &mut self,
        tick: &str,
        now: DateTime<Utc>,
        window_secs: u64,
    ) -> Option<Sending> {
        if let Some(d) = &self.digest {
            let stalled = now - d.at >= chrono::Duration::seconds(SENDING_LEASE_SECS);
            if d.by == tick || stalled {
                let d = Sending {
                    by: tick.to_string(),
                    at: now,
                    ..d.clone()
                };
                self.digest = Some(d.clone());
                return Some(d);
            }
            return None;
        }
        if self.pending == 0 || !self.is_open() {
            return None;
        }
        let window = chrono::Duration::seconds(i64::try_from(window_secs).unwrap_or(i64::MAX));
        if self.last_mail_at.is_some_and(|t| now - t < window) {
            return None;
        }
        let d = Sending {
            by: tick.to_string(),
            at: now,
            count: self.pending,
            since: self.pending_since,
        };
        self.pending = 0;
        self.pending_since = None;
        self.last_mail_at = Some(now);
        self.digest = Some(d.clone());
        Some(d)
    }

    /// Marks the digest sent by `tick` as sent.
    pub fn digest_sent(&mut self, tick: &str) {
        if self.digest.as_ref().is_some_and(|d| d.by == tick) {
            self.digest = None;
        }
    }

    /// At a tick that saw the condition cleared: the "resolved" e-mail to send, if any. It
    /// carries the repeats not yet reported (nothing is silently dropped) and closes the
    /// fingerprint; a redelivered tick, or another after [`SENDING_LEASE_SECS`], sends it again.
    pub fn take_resolved(&mut self, tick: &str, now: DateTime<Utc>) -> Option<Sending> {
        if let Some(r) = &self.resolving {
            let stalled = now - r.at >= chrono::Duration::seconds(SENDING_LEASE_SECS);
            if r.by == tick || stalled {
                let r = Sending {
                    by: tick.to_string(),
                    at: now,
                    ..r.clone()
                };
                self.resolving = Some(r.clone());
                return Some(r);
            }
            return None;
        }
        if !self.is_open() {
            return None;
        }
        let r = Sending {
            by: tick.to_string(),
            at: now,
            count: self.pending,
            since: self.pending_since,
        };
        self.pending = 0;
        self.pending_since = None;
        self.digest = None;
        self.first = None;
        self.resolved_at = Some(now);
        self.last_mail_at = Some(now);
        self.resolving = Some(r.clone());
        Some(r)
    }

    /// Marks the "resolved" e-mail sent by `tick` as sent.
    pub fn resolved_sent(&mut self, tick: &str) {
        if self.resolving.as_ref().is_some_and(|r| r.by == tick) {
            self.resolving = None;
        }
    }
}

/// Changes a fingerprint's state with `f` under a generation precondition, retrying on 412;
/// returns what `f` returned for the state that was written (`None` when `f` wants no write).
pub async fn update<T>(
    gcs: &Gcs,
    bucket: &str,
    fingerprint: &str,
    f: impl FnMut(Option<State>) -> Option<(State, T)>,
) -> Result<Option<T>, GcsError> {
    update_object(gcs, bucket, &state_object(fingerprint), f).await
}

/// Changes the JSON object `name` with `f` under a generation precondition (created with
/// `ifGenerationMatch=0`), retrying on 412; `None` when `f` wants no write. An unreadable
/// object is handed to `f` as absent.
pub async fn update_object<S, T>(
    gcs: &Gcs,
    bucket: &str,
    name: &str,
    mut f: impl FnMut(Option<S>) -> Option<(S, T)>,
) -> Result<Option<T>, GcsError>
where
    S: Serialize + serde::de::DeserializeOwned,
{
    let fingerprint = name;
    for attempt in 0.. {
        let (current, generation) = match gcs.read(bucket, name, None).await? {
            Some((bytes, g)) => match serde_json::from_slice::<S>(&bytes) {
                Ok(s) => (Some(s), g),
                Err(e) => {
                    // Unreadable: start again rather than block every alert of the fingerprint.
                    tracing::warn!(object = fingerprint, error = %e, "alert state unreadable, reset");
                    (None, g)
                }
            },
            None => (None, 0),
        };
        let Some((next, out)) = f(current) else {
            return Ok(None);
        };
        let body = serde_json::to_vec(&next).unwrap_or_default();
        match gcs.write(bucket, name, body, Some(generation)).await {
            Ok(_) => return Ok(Some(out)),
            Err(e) if e.is_precondition_failed() && attempt < 50 => {
                tracing::debug!(
                    object = fingerprint,
                    attempt,
                    "alert state changed meanwhile, retried"
                );
                let jitter = rand::random::<u64>() % (10 + 10 * attempt.min(10) as u64);
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Severity;

    const H: chrono::Duration = chrono::Duration::seconds(3600);

    fn alert() -> Alert {
        Alert::new(
            Severity::Error,
            "quality.volume",
            ("p", "daily", "2026-11-27"),
            "x",
            "s".into(),
        )
    }

    #[test]
    fn a_storm_is_one_mail_then_one_digest() {
        let t0 = Utc::now();
        let a = alert();
        let mut s = State::new(&a, t0);
        assert_eq!(s.record(&a, "m0", t0, 3600), Recorded::MailNow);
        // Until the first is confirmed, even a later message is counted, never mailed.
        assert_eq!(s.record(&a, "m1", t0, 3600), Recorded::Counted);
        s.first_sent("m0");
        for i in 2..50 {
            assert_eq!(s.record(&a, &format!("m{i}"), t0, 3600), Recorded::Counted);
        }
        assert_eq!(s.record(&a, "m7", t0, 3600), Recorded::Duplicate);
        assert_eq!((s.total, s.pending), (50, 49));
        let d = s.take_digest("tick1", t0 + H, 3600).unwrap();
        assert_eq!((d.count, d.since), (49, Some(t0)));
        // A redelivered tick resends the same digest; another tick waits for the lease.
        assert_eq!(s.take_digest("tick2", t0 + H, 3600), None);
        assert_eq!(s.take_digest("tick1", t0 + H, 3600).unwrap().count, 49);
        s.digest_sent("tick1");
        assert_eq!(s.take_digest("tick1", t0 + H, 3600), None);
        assert_eq!(s.pending, 0);
    }

    #[test]
    fn another_kind_of_message_about_the_same_failure_is_not_mailed_again() {
        let t0 = Utc::now();
        let dead_letter = alert();
        let held = Alert {
            kind: "batch.held".into(),
            ..dead_letter.clone()
        };
        let mut s = State::new(&dead_letter, t0);
        assert_eq!(s.record(&dead_letter, "m0", t0, 3600), Recorded::MailNow);
        s.first_sent("m0");
        let later = t0 + chrono::Duration::seconds(7200);
        assert_eq!(s.record(&held, "m1", later, 3600), Recorded::Related);
        assert_eq!(s.take_digest("tick", later, 3600), None);
        assert_eq!(s.alert.kind, "quality.volume");
        // Its own repeats are repeats like any other.
        assert_eq!(s.record(&held, "m2", later, 3600), Recorded::MailNow);
        assert_eq!(s.related["batch.held"], 2);
    }

    #[test]
    fn the_window_reopens_and_failed_sends_are_retried() {
        let t0 = Utc::now();
        let a = alert();
        let mut s = State::new(&a, t0);
        assert_eq!(s.record(&a, "m0", t0, 3600), Recorded::MailNow);
        // The send failed: the redelivery of m0 mails again.
        assert_eq!(s.record(&a, "m0", t0, 3600), Recorded::MailNow);
        s.first_sent("m0");
        assert_eq!(s.record(&a, "m0", t0, 3600), Recorded::Duplicate);
        let later = t0 + chrono::Duration::seconds(3601);
        assert_eq!(s.record(&a, "m1", later, 3600), Recorded::MailNow);
        assert_eq!(s.total, 2);
        // A stalled digest is taken over by another tick after the lease.
        s.first_sent("m1");
        s.record(&a, "m2", later, 3600);
        s.take_digest("t1", later + H, 3600).unwrap();
        let much_later = later + chrono::Duration::seconds(SENDING_LEASE_SECS);
        assert_eq!(s.take_digest("t2", much_later + H, 3600).unwrap().count, 1);
    }

    #[test]
    fn a_condition_raised_at_every_tick_is_one_mail_per_window_then_resolved() {
        let t0 = Utc::now();
        let a = alert();
        let mut s = State::new(&a, t0);
        let tick = chrono::Duration::seconds(300);
        let mut mails = 0;
        // Two hours of ticks raising the same condition, with the alerting tick after each.
        for i in 0..24 {
            let now = t0 + tick * i;
            if s.record(&a, &format!("m{i}"), now, 3600) == Recorded::MailNow {
                mails += 1;
                s.first_sent(&format!("m{i}"));
            }
            if let Some(d) = s.take_digest(&format!("t{i}"), now, 3600) {
                mails += 1;
                s.digest_sent(&d.by);
            }
        }
        // The first at t0, one digest an hour after it (t0+60 min), and one an hour later.
        assert_eq!(mails, 2, "{s:?}");
        let end = t0 + tick * 24;
        let d = s.take_digest("late", end, 3600).unwrap();
        assert_eq!(d.count, 11);
        s.digest_sent("late");
        // One more repeat, then the condition clears: one "resolved" e-mail carries it.
        s.record(&a, "m-last", end, 3600);
        let r = s.take_resolved("tr", end).unwrap();
        assert_eq!(r.count, 1);
        assert!(!s.is_open());
        // A redelivered tick sends it again; another tick does not, nor a digest.
        assert_eq!(s.take_resolved("tr", end).unwrap().count, 1);
        assert_eq!(s.take_resolved("tr2", end), None);
        s.resolved_sent("tr");
        assert_eq!(s.take_resolved("tr2", end + H), None);
        assert_eq!(s.take_digest("t", end + H + H, 3600), None);
        // A message raised before the resolution but delivered after it reopens nothing.
        let late = Alert {
            raised_at: end - H,
            ..a.clone()
        };
        assert_eq!(s.record(&late, "late", end + H, 3600), Recorded::Duplicate);
        assert!(!s.is_open());
        // The condition comes back: a new incident, e-mailed at once.
        let again = Alert {
            raised_at: end + H,
            ..a.clone()
        };
        assert_eq!(s.record(&again, "again", end + H, 3600), Recorded::MailNow);
        assert!(s.is_open());
    }
}
