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
        /// When the scheduler fired (Cloud Scheduler's fixed body has none: when received).
        #[serde(default = "chrono::Utc::now")]
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Build the monthly products of `month` (`YYYY-MM`), for one partner or all.
    Monthly {
        /// The month (Cloud Scheduler's fixed body has none: the month before the current one
        /// in America/Sao_Paulo).
        #[serde(default = "previous_month")]
        month: String,
        /// Only this partner, when given.
        #[serde(default)]
        partner: Option<String>,
    },
    /// A kind this build does not know (acknowledged and logged).
    #[serde(other)]
    Other,
}

/// The month before the current one in America/Sao_Paulo, as `YYYY-MM`.
fn previous_month() -> String {
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::America::Sao_Paulo)
        .date_naive();
    let month = today - chrono::Months::new(1);
    month.format("%Y-%m").to_string()
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
        // Cloud Scheduler's fixed bodies (terraform/scheduler.tf): the time and the month are
        // filled in on receipt.
        let before = chrono::Utc::now();
        match parse(r#"{"kind":"tick"}"#).unwrap() {
            Schedule::Tick { at } => assert!(at >= before && at <= chrono::Utc::now()),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"kind":"monthly"}"#).unwrap() {
            Schedule::Monthly { month, partner } => {
                assert_eq!(month, previous_month());
                assert_eq!(partner, None);
                let first = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d");
                assert!(first.unwrap() < before.date_naive());
            }
            other => panic!("{other:?}"),
        }
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
