//! Data-quality guardrails of the batch step on the real emulators, the worker in-process:
//! a blocking threshold holds the products until `datashare release`, a volume anomaly warns,
//! and a part the marker does not list is reported once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate};
use datashare::clean::{QualityReport, TableReport};
use datashare::config::Config;
use datashare::config::guardrails::{Limit, Share};
use datashare::events::{Alert, DeliveryRequest, Incoming, Severity};
use datashare::gcp::Gcs;
use datashare::pipeline::names;
use serde_json::Value;

use crate::harness::{Spec, TestApp, current_batch, generated, until, upload_day};
use crate::worker::check_delivery;

/// The alerts of `kind` among messages of the `alerts` topic.
fn alerts_of(msgs: &[Incoming], kind: &str) -> Vec<Alert> {
    msgs.iter()
        .filter(|m| m.attributes.get("kind").map(String::as_str) == Some(kind))
        .map(|m| Alert::parse(m).expect("an alert"))
        .collect()
}

/// Waits for the done marker of the batch now in the raw bucket; returns its body.
async fn done_marker(gcs: &Gcs, cfg: &Config, dt: NaiveDate, suffix: &str) -> Value {
    let ready = current_batch(gcs, cfg, dt).await;
    let done = names::batch_done(dt, &format!("{}{suffix}", ready.version()));
    let ops = &cfg.gcp.buckets.ops;
    let (body, _) = until(
        "the batch's done marker",
        Duration::from_secs(120),
        || async { gcs.read(ops, &done, None).await.unwrap() },
    )
    .await;
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_quarantine_threshold_holds_the_products_until_released() {
    let mut app = TestApp::spawn(
        Spec::new()
            .watch("deliveries", "test-deliveries")
            .watch("alerts", "test-alerts"),
    )
    .await;
    // A generated day quarantines several % of its transactions: 1 % is crossed, and blocks.
    app.cfg
        .guardrails
        .0
        .get_mut("transactions")
        .unwrap()
        .quarantine = Limit {
        warn: None,
        block: Some(Share::try_from(0.01).unwrap()),
    };
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;

    let dt = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    upload_day(gcs, &cfg, dt, 200, false).await;
    let body = done_marker(gcs, &cfg, dt, "").await;
    let held = body["held"].as_array().cloned().unwrap_or_default();
    assert_eq!(held.len(), 1, "{body}");
    assert!(
        held[0]
            .as_str()
            .unwrap()
            .contains("transactions.quarantine_share"),
        "{body}"
    );
    let msgs = stack
        .drain("test-alerts", Duration::from_secs(60), |m| {
            !alerts_of(m, "quality.guardrails").is_empty()
        })
        .await;
    // One batch, one alert: every finding listed in it, blocking ones first.
    assert!(alerts_of(&msgs, "quality.threshold").is_empty());
    let all = alerts_of(&msgs, "quality.guardrails");
    assert_eq!(all.len(), 1, "{all:?}");
    let a = &all[0];
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.details["blocking"][0], "transactions.quarantine_share");
    assert_eq!(a.details["held"], true);
    assert_eq!(a.details["dt"], dt.to_string());
    let findings = a.details["findings"].as_array().unwrap();
    assert!(
        findings[0]
            .as_str()
            .unwrap()
            .starts_with("[bloqueante] transactions quarantine_share"),
        "{findings:?}"
    );
    assert!(findings[0].as_str().unwrap().contains("acima de 1.00%"));
    assert_eq!(
        findings.len(),
        a.details["measures"].as_array().unwrap().len()
    );
    assert!(a.summary.contains("datashare release"), "{}", a.summary);
    assert_eq!(a.period, dt.to_string());
    let none = stack
        .drain("test-deliveries", Duration::from_secs(30), |_| true)
        .await;
    assert!(none.is_empty(), "held products are not delivered: {none:?}");

    // The team releases the batch: the guardrail no longer holds it.
    let out = crate::run_ok(
        crate::datashare_cmd()
            .args(["release", "--date", &dt.to_string()])
            .envs(&stack.env),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released batch"));
    let body = done_marker(gcs, &cfg, dt, ".release").await;
    assert_eq!(body["held"].as_array().map(Vec::len), Some(0), "{body}");
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    let d = check_delivery(gcs, &got[0], dt).await;
    assert!(
        d.source_batches.contains(&dt.to_string()),
        "source batches {:?}",
        d.source_batches
    );
    let msgs = stack
        .drain("test-alerts", Duration::from_secs(60), |m| {
            !alerts_of(m, "quality.guardrails").is_empty()
        })
        .await;
    let again: Vec<Alert> = alerts_of(&msgs, "quality.guardrails")
        .into_iter()
        .filter(|x| x.fingerprint == a.fingerprint)
        .collect();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0].severity,
        Severity::Warning,
        "released: no longer critical"
    );
    assert_eq!(again[0].details["held"], false);
    assert!(
        again[0].details["findings"][0]
            .as_str()
            .unwrap()
            .starts_with("[bloqueante, liberado]"),
        "{:?}",
        again[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_far_below_the_median_of_the_previous_seven_raises_a_volume_alert() {
    let app = TestApp::spawn(
        Spec::new()
            .watch("deliveries", "test-deliveries")
            .watch("alerts", "test-alerts"),
    )
    .await;
    let worker = Arc::new(app.worker().await);
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;

    // Seven earlier reports, as the batch step writes them: 2.5 times as many transactions as
    // the day about to come (60 % fewer), the other tables alike. An older, tiny one is beyond
    // the seven and must not count.
    let dt = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let (_, _, truth) = generated(dt, 200, false);
    let curated = &cfg.gcp.buckets.curated;
    for back in 1..=8u64 {
        let day = dt - Days::new(back);
        let tables = truth
            .iter()
            .map(|(t, rows)| {
                let rows = match (t.as_str(), back) {
                    (_, 8) => 1,
                    ("transactions", _) => rows * 5 / 2,
                    _ => *rows,
                };
                let r = TableReport {
                    rows_read: rows,
                    rows_kept: rows,
                    ..TableReport::default()
                };
                (t.clone(), r)
            })
            .collect();
        let report = QualityReport { dt: day, tables };
        gcs.write(
            curated,
            &format!("reports/dt={day}/quality.json"),
            serde_json::to_vec_pretty(&report).unwrap(),
            None,
        )
        .await
        .unwrap();
    }
    app.run("worker", worker.clone());
    upload_day(gcs, &cfg, dt, 200, false).await;
    let body = done_marker(gcs, &cfg, dt, "").await;
    assert_eq!(
        body["held"].as_array().map(Vec::len),
        Some(0),
        "volume warns only: {body}"
    );
    let msgs = stack
        .drain("test-alerts", Duration::from_secs(60), |m| {
            !alerts_of(m, "quality.guardrails").is_empty()
        })
        .await;
    let all = alerts_of(&msgs, "quality.guardrails");
    assert_eq!(all.len(), 1, "{all:?}");
    let a = &all[0];
    let volume: Vec<&str> = a.details["measures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .filter(|m| m.ends_with(".row_count"))
        .collect();
    assert_eq!(
        volume,
        ["transactions.row_count"],
        "only transactions is off: {a:?}"
    );
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.details["held"], false);
    let line = a.details["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.contains("linhas,"))
        .expect("the volume finding")
        .to_string();
    let median = truth["transactions"] * 5 / 2;
    for needle in [
        format!("transactions tem {} linhas", truth["transactions"]),
        format!("mediana {median} dos 7 lotes anteriores"),
    ] {
        assert!(line.contains(&needle), "{needle}: {line}");
    }
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "the products are delivered: {got:?}");
    let d: DeliveryRequest = check_delivery(gcs, &got[0], dt).await;
    assert_eq!(
        d.source_batches,
        vec![dt.to_string()],
        "only this day's curated data exists"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_the_marker_does_not_list_is_reported_once_and_left_out() {
    let app = TestApp::spawn(Spec::new().watch("alerts", "test-alerts")).await;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;

    // A valid part uploaded beside the batch but not in its marker (before the marker, so the
    // batch step surely sees it).
    let dt = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    let (_, parts, truth) = generated(dt, 200, false);
    let (_, bytes) = parts
        .iter()
        .find(|(n, _)| n.starts_with("extracts/transactions/"))
        .cloned()
        .unwrap();
    let unlisted = format!("extracts/transactions/dt={dt}/part-unlisted.csv");
    gcs.write(&cfg.gcp.buckets.raw, &unlisted, bytes, None)
        .await
        .unwrap();
    upload_day(gcs, &cfg, dt, 200, false).await;
    done_marker(gcs, &cfg, dt, "").await;
    let msgs = stack
        .drain("test-alerts", Duration::from_secs(60), |m| {
            !alerts_of(m, "extract.unlisted").is_empty()
        })
        .await;
    let got = alerts_of(&msgs, "extract.unlisted");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].severity, Severity::Warning);
    assert_eq!(got[0].details["object"], unlisted.as_str());
    assert_eq!(got[0].period, dt.to_string());
    let (body, _) = gcs
        .read(
            &cfg.gcp.buckets.curated,
            &format!("reports/dt={dt}/quality.json"),
            None,
        )
        .await
        .unwrap()
        .expect("quality report");
    let report: QualityReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        report.tables["transactions"].rows_read, truth["transactions"],
        "the unlisted part is not in the batch"
    );
    assert!(
        report.tables["transactions"]
            .files
            .iter()
            .all(|f| f.object != unlisted)
    );
    app.stop().await;
}
