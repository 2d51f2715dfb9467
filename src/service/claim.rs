//! Claims: an object in the ops bucket created with `ifGenerationMatch=0`, so one writer wins,
//! holding its owner and lease expiry. An expired claim is taken over conditionally on its
//! generation, so a killed worker never blocks a batch for ever.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::gcp::{Gcs, GcsError};

/// The body of a claim object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimBody {
    /// Who holds it.
    pub owner: String,
    /// When it was taken (RFC 3339 UTC).
    pub taken_at: String,
    /// Until when (RFC 3339 UTC); after that anyone may take it over.
    pub lease_expires_at: String,
    /// Given back by its holder after a failed attempt (not left behind by a dead one).
    #[serde(default)]
    pub released: bool,
    /// How many times a lease left behind by a dead holder was taken over.
    #[serde(default)]
    pub takeovers: u32,
}

impl ClaimBody {
    fn new(owner: &str, now: DateTime<Utc>, lease: Duration) -> ClaimBody {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::zero());
        ClaimBody {
            owner: owner.to_string(),
            taken_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
            lease_expires_at: until.to_rfc3339_opts(SecondsFormat::Millis, true),
            released: false,
            takeovers: 0,
        }
    }

    fn expires(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.lease_expires_at)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Whether its holder died with it: not released, and its lease (or its unreadable
    /// expiry) is past at `now`.
    pub fn abandoned(&self, now: DateTime<Utc>) -> bool {
        !self.released && self.expires().is_none_or(|t| t <= now)
    }
}

/// Reads the claim `name`; `None` when it does not exist or is unreadable.
pub async fn read(gcs: &Gcs, bucket: &str, name: &str) -> Result<Option<ClaimBody>, GcsError> {
    Ok(gcs
        .read(bucket, name, None)
        .await?
        .and_then(|(data, _)| serde_json::from_slice(&data).ok()))
}

/// What trying to take a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Taken: the claim object's generation (to release it later).
    Taken {
        /// Generation of the claim object we wrote.
        generation: i64,
        /// Whether an expired claim was taken over.
        took_over: bool,
    },
    /// Someone else holds an unexpired lease.
    Held {
        /// The holder.
        owner: String,
        /// Until when.
        until: String,
    },
}

/// Takes the claim `name` in `bucket` for `owner` with a lease of `lease`.
pub async fn take(
    gcs: &Gcs,
    bucket: &str,
    name: &str,
    owner: &str,
    lease: Duration,
) -> Result<Claim, GcsError> {
    let now = Utc::now();
    let mut claim = ClaimBody::new(owner, now, lease);
    let body = serde_json::to_vec(&claim).expect("claim encodes");
    match gcs.write(bucket, name, body, Some(0)).await {
        Ok(generation) => {
            return Ok(Claim::Taken {
                generation,
                took_over: false,
            });
        }
        Err(e) if e.is_precondition_failed() => {
            tracing::info!(claim = name, "claim exists (412)");
        }
        Err(e) => return Err(e),
    }
    let Some((data, generation)) = gcs.read(bucket, name, None).await? else {
        // Released and deleted in between: the next delivery tries again.
        return Ok(Claim::Held {
            owner: "unknown".into(),
            until: "just released".into(),
        });
    };
    let held: Option<ClaimBody> = serde_json::from_slice(&data).ok();
    let expires = held.as_ref().and_then(ClaimBody::expires);
    if let (Some(h), Some(until)) = (&held, expires)
        && until > now
    {
        return Ok(Claim::Held {
            owner: h.owner.clone(),
            until: h.lease_expires_at.clone(),
        });
    }
    // A lease its holder gave back is retried, not taken over: only a dead holder's counts.
    claim.takeovers = held
        .as_ref()
        .map_or(1, |h| h.takeovers + u32::from(!h.released));
    let body = serde_json::to_vec(&claim).expect("claim encodes");
    match gcs.write(bucket, name, body, Some(generation)).await {
        Ok(generation) => {
            tracing::warn!(
                claim = name,
                previous_owner = held.as_ref().map_or("unreadable", |h| h.owner.as_str()),
                takeovers = claim.takeovers,
                "expired claim taken over"
            );
            Ok(Claim::Taken {
                generation,
                took_over: true,
            })
        }
        Err(e) if e.is_precondition_failed() => Ok(Claim::Held {
            owner: "another taker".into(),
            until: "unknown".into(),
        }),
        Err(e) => Err(e),
    }
}

/// Releases a claim we hold by expiring its lease (conditional on our generation), so a retry
/// need not wait for the lease; failures are only logged (the lease expires anyway).
pub async fn release(gcs: &Gcs, bucket: &str, name: &str, owner: &str, generation: i64) {
    let mut claim = ClaimBody::new(owner, Utc::now(), Duration::ZERO);
    claim.released = true;
    let body = serde_json::to_vec(&claim).expect("claim encodes");
    if let Err(e) = gcs.write(bucket, name, body, Some(generation)).await {
        tracing::warn!(claim = name, error = %e, "claim not released; its lease will expire");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire() {
        let now = Utc::now();
        let b = ClaimBody::new("me", now, Duration::from_secs(60));
        assert!(b.expires().unwrap() > now);
        let b = ClaimBody::new("me", now, Duration::ZERO);
        assert!(b.expires().unwrap() <= now);
    }

    #[test]
    fn only_a_dead_holders_expired_claim_is_abandoned() {
        let now = Utc::now();
        let live = ClaimBody::new("me", now, Duration::from_secs(60));
        assert!(!live.abandoned(now));
        let mut dead = ClaimBody::new("me", now - chrono::Duration::minutes(5), Duration::ZERO);
        assert!(dead.abandoned(now));
        dead.released = true;
        assert!(!dead.abandoned(now), "given back after a failure");
        // Claims written before these fields existed read as not released, no takeovers.
        let old: ClaimBody = serde_json::from_str(
            r#"{"owner":"x","taken_at":"2026-11-01T00:00:00Z","lease_expires_at":"2026-11-01T00:20:00Z"}"#,
        )
        .unwrap();
        assert!(old.abandoned(now) && old.takeovers == 0);
    }
}
