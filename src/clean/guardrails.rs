//! Data-quality guardrails of the batch step (events.md "Failures"): per table, the share of
//! quarantined rows, the share of duplicates, the null share of key fields, and the row count
//! against the median of the previous batches (volume anomaly). Thresholds come from
//! `[guardrails.<table>]` in the configuration; a crossed one is an alert (`quality.threshold`,
//! `quality.volume`), critical when marked blocking (the batch step then holds the products).
//!
//! Evaluation is pure: a quality report and the reports of earlier batches in, alerts out.

use super::report::{QualityReport, TableReport};
use super::schema::Schemas;
use crate::config::guardrails::{Guardrails, TableGuardrails, VOLUME_HISTORY, VolumeLimit};
use crate::events::alert::{Alert, Severity};

/// Alert kind of a crossed share threshold.
pub const KIND_THRESHOLD: &str = "quality.threshold";

/// Alert kind of a volume anomaly.
pub const KIND_VOLUME: &str = "quality.volume";

/// Alert kind of the one alert listing every finding of a batch (operations.md: one batch,
/// one e-mail).
pub const KIND_GUARDRAILS: &str = "quality.guardrails";

/// Checks every table and key field named exists in the schemas.
pub fn check_schemas(guardrails: &Guardrails, schemas: &Schemas) -> Result<(), String> {
    for (table, g) in &guardrails.0 {
        let Some(schema) = schemas.table(table) else {
            return Err(format!("guardrails.{table}: no such table"));
        };
        for f in &g.key_fields {
            if schema.column_index(f).is_none() {
                return Err(format!(
                    "guardrails.{table}.key_fields: `{f}` is not a column"
                ));
            }
        }
    }
    Ok(())
}

/// What the guardrails said about one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// One alert per crossed threshold (the higher level only).
    pub alerts: Vec<Alert>,
    /// `<table>.<measure>` of every blocking threshold crossed.
    pub blocking: Vec<String>,
}

impl Evaluation {
    /// Whether a blocking threshold was crossed (the products must be held).
    pub fn holds(&self) -> bool {
        !self.blocking.is_empty()
    }

    /// The same findings for a batch the team released (`datashare release`): nothing is held,
    /// blocking alerts become warnings that say so (same fingerprints, so they group).
    pub fn released(mut self) -> Evaluation {
        for a in &mut self.alerts {
            if a.severity == Severity::Critical {
                a.severity = Severity::Warning;
                if let Some(i) = a.summary.find(HELD) {
                    a.summary.truncate(i);
                }
                a.summary
                    .push_str("; lote liberado pela equipe, produtos entregues");
                a.details.insert("released".into(), true.into());
            }
        }
        self.blocking.clear();
        self
    }

    /// The one alert of the batch of `dt` listing every finding, blocking ones first; `None`
    /// without findings. Its fingerprint is the batch's day alone, so a re-run (or a release)
    /// of the batch groups with it.
    pub fn alert(&self, dt: chrono::NaiveDate) -> Option<Alert> {
        if self.alerts.is_empty() {
            return None;
        }
        let blocking = |a: &Alert| a.details.get("blocking") == Some(&true.into());
        let mut ordered: Vec<&Alert> = self.alerts.iter().collect();
        ordered.sort_by_key(|a| !blocking(a));
        let day = dt.to_string();
        let findings: Vec<String> = ordered
            .iter()
            .map(|a| {
                let mut line = a.summary.clone();
                if let Some(rest) = line.strip_prefix(&format!("lote {day}: ")) {
                    line = rest.to_string();
                }
                if let Some(i) = line.find(HELD) {
                    line.truncate(i);
                }
                let tag = match (blocking(a), a.details.contains_key("released")) {
                    (true, true) => "[bloqueante, liberado] ",
                    (true, false) => "[bloqueante] ",
                    _ => "",
                };
                format!("{tag}{line}")
            })
            .collect();
        let n_blocking = ordered.iter().filter(|a| blocking(a)).count();
        let severity = self
            .alerts
            .iter()
            .map(|a| a.severity)
            .min()
            .unwrap_or(Severity::Warning);
        let outcome = if self.holds() {
            format!("; produtos retidos até correção ou `datashare release --date {day}`")
        } else if n_blocking > 0 {
            "; lote liberado pela equipe, produtos entregues".to_string()
        } else {
            String::new()
        };
        let summary = format!(
            "lote {day}: {} achado(s) de qualidade, {n_blocking} bloqueante(s){outcome}",
            findings.len()
        );
        let measures: Vec<String> = ordered
            .iter()
            .filter_map(|a| {
                let t = a.details.get("table")?.as_str()?;
                let m = a.details.get("measure")?.as_str()?;
                Some(format!("{t}.{m}"))
            })
            .collect();
        Some(
            Alert::new(
                severity,
                KIND_GUARDRAILS,
                ("*", "*", &day),
                "guardrails",
                summary,
            )
            .with("findings", findings)
            .with("measures", measures)
            .with("blocking", self.blocking.clone())
            .with("held", self.holds())
            .with("dt", day.as_str()),
        )
    }
}

/// The median of counts (the mean of the two middle ones for an even number); none when empty.
pub fn median(counts: &[u64]) -> Option<f64> {
    let mut v = counts.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0),
    }
}

/// Evaluates the guardrails on `report`; `history` holds earlier reports (any order, any
/// number: the latest [`VOLUME_HISTORY`] before the batch's date are used).
pub fn evaluate(g: &Guardrails, report: &QualityReport, history: &[QualityReport]) -> Evaluation {
    let mut earlier: Vec<&QualityReport> = history.iter().filter(|h| h.dt < report.dt).collect();
    earlier.sort_by_key(|h| std::cmp::Reverse(h.dt));
    earlier.dedup_by_key(|h| h.dt);
    earlier.truncate(VOLUME_HISTORY);
    let mut out = Evaluation::default();
    let dt = report.dt.to_string();
    for (table, tg) in &g.0 {
        let Some(t) = report.tables.get(table) else {
            continue;
        };
        // A share of a handful of rows is noise: below `min_rows` (and for an empty table) the
        // shares are not evaluated.
        if t.rows_read > 0 && t.rows_read >= tg.min_rows {
            share_alerts(table, tg, t, &dt, &mut out);
        }
        if let Some(v) = &tg.volume {
            volume_alert(table, v, t, &earlier, &dt, &mut out);
        }
    }
    out
}

/// Adds the alerts of the share thresholds (quarantined rows, duplicates, null key fields)
/// that table `table` (report `t`, some rows read) crossed in batch `dt`.
fn share_alerts(
    table: &str,
    tg: &TableGuardrails,
    t: &TableReport,
    dt: &str,
    out: &mut Evaluation,
) {
    let mut shares = vec![
        (
            "quarantine_share".to_string(),
            tg.quarantine,
            t.rows_quarantined,
        ),
        (
            "duplicate_share".to_string(),
            tg.duplicates,
            t.duplicates_removed,
        ),
    ];
    for f in &tg.key_fields {
        shares.push((format!("null_share.{f}"), tg.key_nulls, nulls(t, f)));
    }
    for (measure, limit, count) in shares {
        let value = count as f64 / t.rows_read as f64;
        let crossed = match (limit.block, limit.warn) {
            (Some(b), _) if value > b.get() => Some((b, true)),
            (_, Some(w)) if value > w.get() => Some((w, false)),
            _ => None,
        };
        let Some((threshold, blocking)) = crossed else {
            continue;
        };
        let alert = Alert::new(
            severity(blocking),
            KIND_THRESHOLD,
            ("*", "*", dt),
            &format!("{table}|{measure}"),
            format!(
                "lote {dt}: {table} {measure} {:.2}% acima de {:.2}%{}",
                value * 100.0,
                threshold.get() * 100.0,
                held_note(blocking, dt)
            ),
        )
        .with("table", table)
        .with("measure", measure.as_str())
        .with("value", value)
        .with("threshold", threshold.get())
        .with("count", count)
        .with("rows_read", t.rows_read)
        .with("dt", dt)
        .with("blocking", blocking);
        if blocking {
            out.blocking.push(format!("{table}.{measure}"));
        }
        out.alerts.push(alert);
    }
}

/// Adds the volume alert of table `table` (report `t`) in batch `dt` when its row count is
/// too far from the median of the `earlier` reports (latest first) that have the table.
fn volume_alert(
    table: &str,
    v: &VolumeLimit,
    t: &TableReport,
    earlier: &[&QualityReport],
    dt: &str,
    out: &mut Evaluation,
) {
    let past: Vec<(String, u64)> = earlier
        .iter()
        .filter_map(|h| h.tables.get(table).map(|t| (h.dt.to_string(), t.rows_read)))
        .collect();
    if past.len() < v.min_history {
        return;
    }
    let counts: Vec<u64> = past.iter().map(|p| p.1).collect();
    let Some(m) = median(&counts).filter(|m| *m > 0.0) else {
        return;
    };
    let deviation = (t.rows_read as f64 - m).abs() / m;
    if deviation <= v.max_deviation.get() {
        return;
    }
    let measure = "row_count";
    let alert = Alert::new(
        severity(v.blocking),
        KIND_VOLUME,
        ("*", "*", dt),
        &format!("{table}|{measure}"),
        format!(
            "lote {dt}: {table} tem {} linhas, {:.0}% distante da mediana {m} dos {} lotes anteriores (limite {:.0}%){}",
            t.rows_read,
            deviation * 100.0,
            past.len(),
            v.max_deviation.get() * 100.0,
            held_note(v.blocking, dt)
        ),
    )
    .with("table", table)
    .with("measure", measure)
    .with("value", t.rows_read)
    .with("median", m)
    .with("deviation", deviation)
    .with("threshold", v.max_deviation.get())
    .with("history", past.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
    .with("dt", dt)
    .with("blocking", v.blocking);
    if v.blocking {
        out.blocking.push(format!("{table}.{measure}"));
    }
    out.alerts.push(alert);
}

/// Null values of a key field: rows quarantined for missing it, plus invalid values nulled.
fn nulls(t: &TableReport, field: &str) -> u64 {
    t.quarantined_by_reason
        .get(&format!("missing_{field}"))
        .copied()
        .unwrap_or(0)
        + t.fields.get(field).map_or(0, |f| f.nulled)
}

fn severity(blocking: bool) -> Severity {
    if blocking {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

/// How a finding's summary says the products are held (pt-BR, like the team's e-mails).
const HELD: &str = "; produtos retidos";

fn held_note(blocking: bool, dt: &str) -> String {
    if blocking {
        format!("{HELD} até correção ou `datashare release --date {dt}`")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::guardrails::{MIN_ROWS, VolumeLimit};

    #[test]
    fn the_default_guardrails_name_existing_tables_and_columns() {
        let c = crate::config::Config::load_with(None, &|_| None).unwrap();
        let schemas = Schemas::builtin().unwrap();
        assert_eq!(check_schemas(&c.guardrails, &schemas), Ok(()));
    }
    use chrono::NaiveDate;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn report(d: u32, rows: u64, quarantined: u64, dups: u64) -> QualityReport {
        let mut t = TableReport {
            rows_read: rows,
            rows_quarantined: quarantined,
            duplicates_removed: dups,
            rows_kept: rows - quarantined - dups,
            ..Default::default()
        };
        t.quarantined_by_reason
            .insert("missing_customer_id".into(), quarantined);
        t.fields.insert(
            "delivery_cep".into(),
            crate::clean::FieldCounts {
                normalized: 0,
                nulled: 3,
            },
        );
        QualityReport {
            dt: day(d),
            tables: [("transactions".to_string(), t)].into(),
        }
    }

    fn rails() -> Guardrails {
        let toml = r#"
            [transactions]
            quarantine = { warn = 0.05, block = 0.20 }
            duplicates = { warn = 0.10 }
            key_nulls = { block = 0.05 }
            key_fields = ["customer_id", "delivery_cep"]
            volume = { max_deviation = 0.5, min_history = 3 }
        "#;
        let g: Guardrails = toml::from_str(toml).unwrap();
        g.validate().unwrap();
        g
    }

    fn measures(e: &Evaluation) -> Vec<(String, Severity)> {
        e.alerts
            .iter()
            .map(|a| {
                (
                    a.details["measure"].as_str().unwrap().to_string(),
                    a.severity,
                )
            })
            .collect()
    }

    #[test]
    fn shares_alert_only_above_their_threshold() {
        let g = rails();
        // Exactly at the warn level (5 %): no alert; the null share of customer_id is 5 %
        // (not above 5 %), delivery_cep 3 %.
        let e = evaluate(&g, &report(27, 100, 5, 10), &[]);
        assert!(e.alerts.is_empty(), "{:?}", measures(&e));
        assert!(!e.holds());
        // Just above warn, below block: one warning per measure, nothing held.
        let e = evaluate(&g, &report(27, 1000, 51, 101), &[]);
        assert_eq!(
            measures(&e),
            vec![
                ("quarantine_share".into(), Severity::Warning),
                ("duplicate_share".into(), Severity::Warning),
                ("null_share.customer_id".into(), Severity::Critical),
            ]
        );
        assert_eq!(e.blocking, vec!["transactions.null_share.customer_id"]);
        // At the block level exactly: still a warning; above it: critical, held.
        let e = evaluate(&g, &report(27, 100, 20, 0), &[]);
        assert_eq!(e.alerts[0].severity, Severity::Warning);
        let e = evaluate(&g, &report(27, 1000, 201, 0), &[]);
        let a = &e.alerts[0];
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.kind, KIND_THRESHOLD);
        assert_eq!(a.details["threshold"], 0.2);
        assert_eq!(a.details["dt"], "2026-11-27");
        assert!(a.summary.contains("datashare release --date 2026-11-27"));
        assert!(e.holds());
        let r = e.released();
        assert!(!r.holds());
        assert!(r.alerts.iter().all(|a| a.severity == Severity::Warning));
        assert!(
            r.alerts[0].summary.contains("lote liberado pela equipe"),
            "{}",
            r.alerts[0].summary
        );
    }

    #[test]
    fn fingerprints_are_stable_per_kind_table_measure_and_day() {
        let g = rails();
        let a = evaluate(&g, &report(27, 1000, 60, 0), &[]).alerts;
        let b = evaluate(&g, &report(27, 1000, 300, 0), &[]).alerts;
        assert_eq!(a[0].fingerprint, b[0].fingerprint, "warn and block group");
        let c = evaluate(&g, &report(26, 1000, 60, 0), &[]).alerts;
        assert_ne!(a[0].fingerprint, c[0].fingerprint, "another day");
        assert_ne!(a[0].fingerprint, a[1].fingerprint, "another measure");
    }

    #[test]
    fn an_empty_table_has_no_shares() {
        let e = evaluate(&rails(), &report(27, 0, 0, 0), &[]);
        assert!(e.alerts.is_empty());
    }

    #[test]
    fn shares_need_min_rows_read() {
        let mut g = rails();
        assert_eq!(g.0["transactions"].min_rows, MIN_ROWS, "the default");
        // 99 rows, a third quarantined: below the default minimum of 100, no share is checked.
        let e = evaluate(&g, &report(27, 99, 33, 0), &[]);
        assert!(e.alerts.is_empty(), "{:?}", measures(&e));
        let e = evaluate(&g, &report(27, 100, 33, 0), &[]);
        assert!(!e.alerts.is_empty());
        // Configured per table: 206 rows (a product catalog) with 15 quarantined is 7.3 %,
        // above warn, but under a minimum of 500 rows it is not checked.
        g.0.get_mut("transactions").unwrap().min_rows = 500;
        let e = evaluate(&g, &report(27, 206, 15, 0), &[]);
        assert!(e.alerts.is_empty(), "{:?}", measures(&e));
        let e = evaluate(&g, &report(27, 500, 30, 0), &[]);
        assert_eq!(
            measures(&e),
            vec![
                ("quarantine_share".into(), Severity::Warning),
                ("null_share.customer_id".into(), Severity::Critical),
            ]
        );
        // The volume check does not depend on it.
        let hist: Vec<QualityReport> = (1..=3).map(|d| report(d, 1000, 0, 0)).collect();
        let e = evaluate(&g, &report(10, 200, 0, 0), &hist);
        assert_eq!(measures(&e), vec![("row_count".into(), Severity::Warning)]);
        let parsed: Guardrails = toml::from_str("[t]\nmin_rows = 0").unwrap();
        assert_eq!(parsed.0["t"].min_rows, 0);
    }

    #[test]
    fn volume_uses_the_median_of_the_previous_seven_batches_only() {
        let g = rails();
        let hist: Vec<QualityReport> = (1..=9).map(|d| report(d, 1000, 0, 0)).collect();
        // 50 % away exactly: no alert; 501 rows is 49.9 % away: none; 499: above 50 %.
        for (rows, alerts) in [(500, 0), (1500, 0), (501, 0), (499, 1), (1501, 1)] {
            let e = evaluate(&g, &report(10, rows, 0, 0), &hist);
            let vol: Vec<_> = e.alerts.iter().filter(|a| a.kind == KIND_VOLUME).collect();
            assert_eq!(vol.len(), alerts, "{rows} rows");
            assert!(!e.holds(), "volume is not blocking by default");
        }
        // Only the 7 batches before the date count: older huge batches and later ones do not.
        let mut hist: Vec<QualityReport> = (1..=3).map(|d| report(d, 100_000, 0, 0)).collect();
        hist.extend((4..=10).map(|d| report(d, 1000, 0, 0)));
        hist.push(report(12, 100_000, 0, 0));
        let e = evaluate(&g, &report(11, 400, 0, 0), &hist);
        let a = &e.alerts[0];
        assert_eq!(a.kind, KIND_VOLUME);
        assert_eq!(a.details["median"], 1000.0);
        assert_eq!(a.details["history"].as_array().unwrap().len(), 7);
        assert!(
            (a.details["deviation"].as_f64().unwrap() - 0.6).abs() < 1e-9,
            "{a:?}"
        );
        // The current batch's own report in the history is excluded.
        let hist = vec![
            report(8, 1000, 0, 0),
            report(9, 1000, 0, 0),
            report(10, 1000, 0, 0),
        ];
        let e = evaluate(&g, &report(10, 100, 0, 0), &hist);
        assert!(
            e.alerts.iter().all(|a| a.kind != KIND_VOLUME),
            "two earlier batches are below min_history"
        );
    }

    #[test]
    fn blocking_volume_holds_and_medians_are_exact() {
        let mut g = rails();
        g.0.get_mut("transactions").unwrap().volume = Some(VolumeLimit {
            blocking: true,
            ..VolumeLimit::default()
        });
        let hist: Vec<QualityReport> = [100, 200, 300, 400]
            .iter()
            .zip(1..)
            .map(|(r, d)| report(d, *r, 0, 0))
            .collect();
        assert_eq!(median(&[100, 400, 200, 300]), Some(250.0));
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[]), None);
        let e = evaluate(&g, &report(10, 120, 0, 0), &hist);
        assert_eq!(e.blocking, vec!["transactions.row_count"]);
        assert_eq!(e.alerts[0].kind, KIND_VOLUME);
        assert_eq!(e.alerts[0].severity, Severity::Critical);
    }

    #[test]
    fn configuration_is_checked() {
        let bad = |t: &str| -> String {
            match toml::from_str::<Guardrails>(t) {
                Err(e) => e.to_string(),
                Ok(g) => g.validate().unwrap_err().1,
            }
        };
        assert!(bad("[t]\nquarantine = { warn = 1.5 }").contains("between 0 and 1"));
        assert!(bad("[t]\nquarantine = { warn = 0.5, block = 0.1 }").contains("above block"));
        assert!(bad("[t]\nquarantine = { warm = 0.5 }").contains("warm"));
        assert!(bad("[t]\nkey_nulls = { warn = 0.5 }").contains("no key field"));
        assert!(bad("[t]\nvolume = { min_history = 0 }").contains("between 1 and 7"));
        assert!(bad("[t]\nvolume = { max_deviation = -1.0 }").contains("above 0"));
        let schemas = Schemas::builtin().unwrap();
        let g: Guardrails = toml::from_str("[transactions]\nkey_fields = [\"nope\"]").unwrap();
        assert!(check_schemas(&g, &schemas).unwrap_err().contains("nope"));
        let g: Guardrails = toml::from_str("[stores]\n").unwrap();
        assert!(check_schemas(&g, &schemas).unwrap_err().contains("stores"));
    }

    #[test]
    fn one_batch_is_one_alert_listing_every_finding_blocking_first() {
        let g = rails();
        let e = evaluate(&g, &report(27, 1000, 60, 300), &[]);
        assert!(e.alerts.len() >= 2, "{:?}", measures(&e));
        let a = e
            .alert(e.alerts[0].details["dt"].as_str().unwrap().parse().unwrap())
            .unwrap();
        assert_eq!(a.kind, KIND_GUARDRAILS);
        assert_eq!(a.severity, Severity::Critical);
        let findings = a.details["findings"].as_array().unwrap();
        assert_eq!(findings.len(), e.alerts.len());
        assert!(
            findings[0].as_str().unwrap().starts_with("[bloqueante]"),
            "{findings:?}"
        );
        assert!(
            !findings
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("[bloqueante]")
        );
        assert!(
            a.summary.contains("datashare release --date 2026-11-27"),
            "{}",
            a.summary
        );
        // Stable per batch: another run of the same day with other findings, or its release,
        // groups; another day does not.
        let d = e.alerts[0].details["dt"].as_str().unwrap().parse().unwrap();
        let other = evaluate(&g, &report(27, 1000, 60, 0), &[])
            .alert(d)
            .unwrap();
        assert_eq!(other.fingerprint, a.fingerprint);
        let released = e.clone().released().alert(d).unwrap();
        assert_eq!(released.fingerprint, a.fingerprint);
        assert_eq!(released.severity, Severity::Warning);
        assert!(
            released.summary.contains("liberado"),
            "{}",
            released.summary
        );
        let next = evaluate(&g, &report(28, 1000, 60, 0), &[]);
        let nd = next.alerts[0].details["dt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(next.alert(nd).unwrap().fingerprint, a.fingerprint);
        assert_eq!(Evaluation::default().alert(d), None);
    }
}
