//! Cloud Billing budget notifications (topic `budgets`, subscription `budgets-alert`;
//! operations.md "Budget notifications"). Google publishes the budget's state several times a
//! day, mostly unchanged: only the first crossing of each threshold (actual or forecast) in a
//! cost interval is e-mailed, as a `budget.threshold` alert; its mark
//! (`alerts/budgets/<fingerprint>.json` in ops, conditional writes) makes every later copy a
//! counted duplicate that sends nothing.
//!
//! Severity: warning below 100% of the budget, error at 100% and above, and for a forecast.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::{SENDING_LEASE_SECS, Sending};
use crate::events::{Alert, Incoming, Malformed, Severity};

/// The alerting role's subscription to `budgets`.
pub const BUDGETS_SUBSCRIPTION: &str = "budgets-alert";

/// Kind of the alert of a crossed budget threshold.
pub const KIND: &str = "budget.threshold";

/// The data of a budget notification (Cloud Billing's documented JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetNotification {
    /// The budget's name.
    pub budget_display_name: String,
    /// Cost so far in the interval.
    pub cost_amount: f64,
    /// Start of the cost interval (RFC 3339).
    pub cost_interval_start: String,
    /// The budgeted amount.
    pub budget_amount: f64,
    /// `SPECIFIED_AMOUNT` or `LAST_PERIODS_AMOUNT`.
    #[serde(default)]
    pub budget_amount_type: String,
    /// Currency of the amounts.
    pub currency_code: String,
    /// The highest actual-spend threshold crossed (a fraction), absent before the first.
    #[serde(default)]
    pub alert_threshold_exceeded: Option<f64>,
    /// The highest forecast threshold crossed (a fraction), when forecasts are on.
    #[serde(default)]
    pub forecast_threshold_exceeded: Option<f64>,
}

/// A budget message: its data and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetMessage {
    /// The JSON data.
    pub notification: BudgetNotification,
    /// Attribute `billingAccountId`.
    pub billing_account_id: String,
    /// Attribute `budgetId`.
    pub budget_id: String,
    /// Attribute `schemaVersion`.
    pub schema_version: String,
}

/// A threshold crossed: on actual spend or on the forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crossing {
    /// Whether it is the forecast that crossed it.
    pub forecast: bool,
    /// The threshold, a fraction of the budget (`0.9`).
    pub threshold: f64,
}

impl BudgetMessage {
    /// Parses a message of `budgets` (permanent when it is not the documented shape).
    pub fn parse(msg: &Incoming) -> Result<BudgetMessage, Malformed> {
        let notification: BudgetNotification = serde_json::from_slice(&msg.data)
            .map_err(|e| Malformed(format!("not a budget notification: {e}")))?;
        let attr = |k: &str| msg.attributes.get(k).cloned().unwrap_or_default();
        let budget_id = attr("budgetId");
        if budget_id.is_empty() {
            return Err(Malformed("budget notification without budgetId".into()));
        }
        let n = &notification;
        let amounts = [
            Some(n.cost_amount),
            Some(n.budget_amount),
            n.alert_threshold_exceeded,
            n.forecast_threshold_exceeded,
        ];
        if amounts
            .iter()
            .flatten()
            .any(|v| !v.is_finite() || *v < 0.0 || *v > 1e15)
        {
            return Err(Malformed(
                "budget notification with an impossible amount".into(),
            ));
        }
        Ok(BudgetMessage {
            billing_account_id: attr("billingAccountId"),
            budget_id,
            schema_version: attr("schemaVersion"),
            notification,
        })
    }

    /// The thresholds this message says are crossed (none for a plain status update).
    pub fn crossings(&self) -> Vec<Crossing> {
        let n = &self.notification;
        let actual = n.alert_threshold_exceeded.map(|threshold| Crossing {
            forecast: false,
            threshold,
        });
        let forecast = n.forecast_threshold_exceeded.map(|threshold| Crossing {
            forecast: true,
            threshold,
        });
        actual.into_iter().chain(forecast).collect()
    }

    /// The `budget.threshold` alert of a crossing; its fingerprint is the budget, the cost
    /// interval, actual or forecast, and the threshold (so each crossing is mailed once).
    pub fn alert(&self, c: Crossing) -> Alert {
        let n = &self.notification;
        let pct = (c.threshold * 100.0).round();
        let severity = if c.forecast || c.threshold >= 1.0 {
            Severity::Error
        } else {
            Severity::Warning
        };
        let basis = if c.forecast { "forecast" } else { "actual" };
        let month = n.cost_interval_start.get(..7).unwrap_or("*");
        let money = |v: f64| format!("{v:.2} {}", n.currency_code);
        let summary = format!(
            "orçamento «{}»: {}{pct:.0}% de {} ({} gasto até agora)",
            n.budget_display_name,
            if c.forecast {
                "previsão acima de "
            } else {
                ""
            },
            money(n.budget_amount),
            money(n.cost_amount),
        );
        Alert::new(
            severity,
            KIND,
            ("*", "*", month),
            &format!(
                "{}|{}|{basis}|{pct:.0}",
                self.budget_id, n.cost_interval_start
            ),
            summary,
        )
        .with("budget", n.budget_display_name.as_str())
        .with("budget_id", self.budget_id.as_str())
        .with("billing_account_id", self.billing_account_id.as_str())
        .with("threshold", format!("{pct:.0}% ({basis})"))
        .with("cost_amount", money(n.cost_amount))
        .with("budget_amount", money(n.budget_amount))
        .with("budget_amount_type", n.budget_amount_type.as_str())
        .with("cost_interval_start", n.cost_interval_start.as_str())
    }
}

/// The mark of one crossing: `alerts/budgets/<fingerprint>.json` in ops.
pub fn mark_object(fingerprint: &str) -> String {
    format!("alerts/budgets/{fingerprint}.json")
}

/// What is known of one crossing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// The alert (what the e-mail says).
    pub alert: Alert,
    /// When it was first seen.
    pub first_seen: DateTime<Utc>,
    /// Copies received after the first (sent nothing).
    pub duplicates: u64,
    /// The e-mail in flight.
    pub sending: Option<Sending>,
    /// When the e-mail was confirmed sent.
    pub sent_at: Option<DateTime<Utc>>,
}

impl Mark {
    /// Records one copy of the crossing; true when this message must send the e-mail (the
    /// first copy, its redelivery after a failed send, or a stalled sender's takeover).
    pub fn record(
        current: Option<Mark>,
        alert: &Alert,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> (Mark, bool) {
        let sending = Sending {
            by: message_id.to_string(),
            at: now,
            count: 0,
            since: None,
        };
        let Some(mut m) = current else {
            return (
                Mark {
                    alert: alert.clone(),
                    first_seen: now,
                    duplicates: 0,
                    sending: Some(sending),
                    sent_at: None,
                },
                true,
            );
        };
        let lease = chrono::Duration::seconds(SENDING_LEASE_SECS);
        let take = m.sent_at.is_none()
            && m.sending
                .as_ref()
                .is_none_or(|s| s.by == message_id || now - s.at >= lease);
        if take {
            m.sending = Some(sending);
        } else {
            m.duplicates += 1;
        }
        (m, take)
    }

    /// Marks the e-mail of `message_id` as sent.
    pub fn sent(&mut self, message_id: &str, now: DateTime<Utc>) {
        if self.sending.as_ref().is_some_and(|s| s.by == message_id) {
            self.sending = None;
            self.sent_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Google's documented example of a budget notification (a threshold crossed).
    const EXAMPLE: &str = r#"{
  "budgetDisplayName": "name-of-budget",
  "alertThresholdExceeded": 1.0,
  "costAmount": 100.01,
  "costIntervalStart": "2019-01-01T00:00:00Z",
  "budgetAmount": 100.00,
  "budgetAmountType": "SPECIFIED_AMOUNT",
  "currencyCode": "USD"
}"#;

    fn msg(data: &str) -> Incoming {
        Incoming {
            id: "1".into(),
            data: data.as_bytes().to_vec(),
            attributes: [
                ("billingAccountId", "01D4EE-079462-DFD6EC"),
                ("budgetId", "de72f49d-779b-4945-a127-4d6ce8def0bb"),
                ("schemaVersion", "1.0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            delivery_attempt: None,
        }
    }

    #[test]
    fn the_documented_example_is_an_error_with_its_amounts() {
        let m = BudgetMessage::parse(&msg(EXAMPLE)).unwrap();
        assert_eq!(m.schema_version, "1.0");
        let c = m.crossings();
        assert_eq!(
            c,
            [Crossing {
                forecast: false,
                threshold: 1.0
            }]
        );
        let a = m.alert(c[0]);
        assert_eq!((a.kind.as_str(), a.severity), (KIND, Severity::Error));
        assert_eq!(a.period, "2019-01");
        assert_eq!(a.details["cost_amount"], "100.01 USD");
        assert_eq!(a.details["budget_amount"], "100.00 USD");
        assert!(a.summary.contains("100% de 100.00 USD"), "{}", a.summary);
    }

    #[test]
    fn severities_fingerprints_and_plain_updates() {
        let at = |t: f64, forecast: bool| {
            let key = if forecast {
                "forecastThresholdExceeded"
            } else {
                "alertThresholdExceeded"
            };
            let data = EXAMPLE.replace(
                "\"alertThresholdExceeded\": 1.0",
                &format!("\"{key}\": {t}"),
            );
            let m = BudgetMessage::parse(&msg(&data)).unwrap();
            m.alert(m.crossings()[0])
        };
        assert_eq!(at(0.5, false).severity, Severity::Warning);
        assert_eq!(at(0.9, false).severity, Severity::Warning);
        assert_eq!(at(1.0, false).severity, Severity::Error);
        assert_eq!(at(1.0, true).severity, Severity::Error);
        assert_ne!(at(0.5, false).fingerprint, at(0.9, false).fingerprint);
        assert_ne!(at(1.0, false).fingerprint, at(1.0, true).fingerprint);
        assert_eq!(at(0.9, false).fingerprint, at(0.9, false).fingerprint);
        let next_month = EXAMPLE.replace("2019-01-01", "2019-02-01");
        let m = BudgetMessage::parse(&msg(&next_month)).unwrap();
        assert_ne!(
            m.alert(m.crossings()[0]).fingerprint,
            at(1.0, false).fingerprint
        );
        // A status update with no threshold crossed: nothing to alert.
        let plain = EXAMPLE.replace("\"alertThresholdExceeded\": 1.0,", "");
        assert!(
            BudgetMessage::parse(&msg(&plain))
                .unwrap()
                .crossings()
                .is_empty()
        );
        // Not the documented shape: permanent.
        assert!(BudgetMessage::parse(&msg("{}")).is_err());
        let mut no_id = msg(EXAMPLE);
        no_id.attributes.remove("budgetId");
        assert!(BudgetMessage::parse(&no_id).is_err());
    }

    #[test]
    fn only_the_first_copy_sends_unless_its_send_failed() {
        let m = BudgetMessage::parse(&msg(EXAMPLE)).unwrap();
        let a = m.alert(m.crossings()[0]);
        let t0 = Utc::now();
        let (mark, send) = Mark::record(None, &a, "m1", t0);
        assert!(send);
        // A copy while the first is being sent: a duplicate.
        let (mark, send) = Mark::record(Some(mark), &a, "m2", t0);
        assert!(!send);
        // The first's send failed: its redelivery sends.
        let (mut mark, send) = Mark::record(Some(mark), &a, "m1", t0);
        assert!(send);
        mark.sent("m1", t0);
        for id in ["m1", "m3", "m4"] {
            let (m2, send) = Mark::record(Some(mark), &a, id, t0 + chrono::Duration::hours(5));
            assert!(!send);
            mark = m2;
        }
        assert_eq!(mark.duplicates, 4);
    }
}
