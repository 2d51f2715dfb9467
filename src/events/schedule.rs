//! Scheduled messages (topic `schedules`): a tick every few minutes, and the monthly run.
//! Unknown kinds are kept as [`Schedule::Other`] so an older consumer acknowledges and logs them.

use serde::{Deserialize, Serialize};

use super::{Incoming, Malformed, Outgoing};

/// A message of topic `schedules`, tagged on `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// The periodic tick (Cloud Scheduler, every 5 minutes).
    Tick {
        /// When the scheduler fired.
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Build the monthly products of `month` (`YYYY-MM`), for one partner or all.
    Monthly {
        /// The month.
        month: String,
        /// Only this partner, when given.
        #[serde(default)]
        partner: Option<String>,
    },
    /// A kind this build does not know (acknowledged and logged).
    #[serde(other)]
    Other,
}

impl Schedule {
    /// Parses a schedule message.
    pub fn parse(msg: &Incoming) -> Result<Schedule, Malformed> {
        serde_json::from_slice(&msg.data)
            .map_err(|e| Malformed(format!("not a schedule message: {e}")))
    }

    /// The message for topic `schedules`.
    pub fn to_message(&self) -> Outgoing {
        Outgoing {
            data: serde_json::to_vec(self).unwrap_or_default(),
            attributes: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Schedule, Malformed> {
        Schedule::parse(&Incoming {
            data: s.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn ticks_months_and_unknown_kinds() {
        assert!(matches!(
            parse(r#"{"kind":"tick","at":"2026-11-28T14:05:00Z"}"#),
            Ok(Schedule::Tick { .. })
        ));
        assert_eq!(
            parse(r#"{"kind":"monthly","month":"2026-11"}"#).unwrap(),
            Schedule::Monthly {
                month: "2026-11".into(),
                partner: None
            }
        );
        assert_eq!(parse(r#"{"kind":"later"}"#).unwrap(), Schedule::Other);
        assert!(parse("nope").is_err());
        let t = Schedule::Tick {
            at: chrono::Utc::now(),
        };
        let back = Schedule::parse(&Incoming {
            data: t.to_message().data,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(back, t);
    }
}
