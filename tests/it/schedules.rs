//! The worker's schedules on the real emulators: the month boundary requests and builds the
//! monthly product once (late days included), ticks raise `extract.missing` after a day's
//! deadline and restart batch steps abandoned by a dead worker.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use datashare::events::{Alert, BatchReady, DeliveryRequest, Schedule};
use datashare::pipeline::schedules::{BATCH_STALLED, MAX_TAKEOVERS};
use datashare::pipeline::{names, release};

use crate::harness::{Spec, TestApp, current_batch, publisher, until, upload_day};

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_month_boundary_builds_the_monthly_product_once_with_its_late_days() {
    let app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;

    // Every day of November and the two late days of December (late_days = 2), in order of
    // upload but finishing in any order: the monthly request waits for the window's batches.
    let days: Vec<NaiveDate> = day("2026-11-01")
        .iter_days()
        .take_while(|d| *d <= day("2026-12-02"))
        .collect();
    for d in &days {
        upload_day(gcs, &cfg, *d, 200, false).await;
    }
    let ops = cfg.gcp.buckets.ops.clone();
    for d in &days {
        let ready = current_batch(gcs, &cfg, *d).await;
        let done = names::batch_done(*d, &ready.version());
        until(
            "every batch's done marker",
            Duration::from_secs(600),
            || async { gcs.stat(&ops, &done).await.unwrap() },
        )
        .await;
    }
    let monthly = |got: &[datashare::events::Incoming]| -> Vec<DeliveryRequest> {
        got.iter()
            .filter(|m| m.attributes.get("product").map(String::as_str) == Some("monthly"))
            .map(|m| DeliveryRequest::parse(m).unwrap())
            .collect()
    };
    let got = stack
        .drain("test-deliveries", Duration::from_secs(180), |m| {
            !monthly(m).is_empty()
        })
        .await;
    let months = monthly(&got);
    assert_eq!(months.len(), 1, "one monthly delivery request: {months:?}");
    let m = &months[0];
    assert_eq!(m.period, "2026-11");
    // Built from the month's batches and its late days (late corrections of November).
    for d in ["2026-11-01", "2026-11-30", "2026-12-01", "2026-12-02"] {
        assert!(
            m.source_batches.iter().any(|b| b.contains(d)),
            "{d} in {:?}",
            m.source_batches
        );
    }
    let product = |m: &datashare::events::Incoming, p: &str| {
        m.attributes.get("product").map(String::as_str) == Some(p)
    };
    let dailies = got.iter().filter(|m| product(m, "daily")).count();
    assert_eq!(dailies, days.len(), "one daily request per day");
    // The brand view of the month goes with the monthly aggregate (the contract buys both).
    let more = if got.iter().any(|m| product(m, "monthly_brands")) {
        Vec::new()
    } else {
        stack
            .drain("test-deliveries", Duration::from_secs(60), |m| {
                m.iter().any(|m| product(m, "monthly_brands"))
            })
            .await
    };
    let brands: Vec<DeliveryRequest> = got
        .iter()
        .chain(&more)
        .filter(|m| product(m, "monthly_brands"))
        .map(|m| DeliveryRequest::parse(m).unwrap())
        .collect();
    assert_eq!(brands.len(), 1, "one brand view request: {brands:?}");
    assert_eq!(brands[0].period, "2026-11");
    assert_eq!(
        brands[0].files[0].name,
        "ouchhungry_monthly_brands_2026-11.parquet"
    );

    // A second request for the month (Cloud Scheduler's backstop): same bytes, no new request.
    let bus = publisher(&cfg, "schedules").await;
    let again = Schedule::Monthly {
        month: "2026-11".into(),
        partner: None,
    };
    bus.publish("schedules", again.to_message()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let more = stack.pull("test-deliveries").await;
    assert!(
        more.is_empty(),
        "an unchanged month is not delivered again: {more:?}"
    );

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_raises_extract_missing_for_days_without_a_batch_and_replays_run_again_quietly() {
    let mut app = TestApp::spawn(
        Spec::new()
            .watch("alerts", "test-alerts")
            .watch("deliveries", "test-deliveries"),
    )
    .await;
    app.cfg.worker.deadline_lookback_days = 3;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;

    // 2026-11-26 arrives complete; 2026-11-25 and 2026-11-27 never do.
    let complete = day("2026-11-26");
    upload_day(gcs, &cfg, complete, 200, false).await;
    let ready = current_batch(gcs, &cfg, complete).await;
    let done = names::batch_done(complete, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until(
        "the batch's done marker",
        Duration::from_secs(120),
        || async { gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    stack.pull("test-alerts").await;

    // A tick at 07:00 local of 2026-11-28: the deadlines of 25, 26 and 27 have passed.
    let at: DateTime<Utc> = "2026-11-28T10:00:00Z".parse().unwrap();
    let bus = publisher(&cfg, "schedules").await;
    bus.publish("schedules", Schedule::Tick { at }.to_message())
        .await
        .unwrap();
    let missing = |got: &[datashare::events::Incoming]| -> Vec<Alert> {
        got.iter()
            .filter_map(|m| Alert::parse(m).ok())
            .filter(|a| a.kind == "extract.missing")
            .collect()
    };
    let got = stack
        .drain("test-alerts", Duration::from_secs(60), |m| {
            missing(m).len() >= 2
        })
        .await;
    let mut periods: Vec<String> = missing(&got).into_iter().map(|a| a.period).collect();
    periods.sort();
    assert_eq!(periods, ["2026-11-25", "2026-11-27"], "{got:?}");
    // Before the deadline of 2026-11-28 (09:00 UTC on the 29th) it is not missing yet.
    assert!(!periods.contains(&(complete + Days::new(2)).to_string()));

    // `datashare replay --date`: the step runs again (a second done marker), and the unchanged
    // product is not delivered again.
    let first = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(first.len(), 1);
    let schemas = datashare::clean::Schemas::builtin().unwrap();
    let batches = publisher(&cfg, "batches").await;
    let (replayed, skipped) =
        release::replay_batches(gcs, &batches, &cfg, &schemas, complete, complete)
            .await
            .unwrap();
    assert_eq!((replayed.len(), skipped.len()), (1, 0));
    let prefix = format!("claims/batch/dt={complete}/");
    until(
        "the replay's done marker",
        Duration::from_secs(120),
        || async {
            let done = gcs.list(&ops, &prefix).await.unwrap();
            (done
                .iter()
                .filter(|o| o.name.ends_with(".done.json"))
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = stack.pull("test-deliveries").await;
    assert!(
        again.is_empty(),
        "a replay delivers nothing unchanged: {again:?}"
    );
    app.stop().await;

    // Abandoned steps (no worker pulls now): a dead holder's expired claim is published again,
    // one taken over MAX_TAKEOVERS times alerts instead, a released one and a live one are left.
    stack.watch("batches", "test-batches").await;
    stack.pull("test-alerts").await;
    let claim = |suffix: &str, lease_mins: i64, released: bool, takeovers: u32| {
        let now = Utc::now();
        let body = serde_json::json!({
            "owner": "local:1:dead",
            "taken_at": (now - chrono::Duration::minutes(30)).to_rfc3339(),
            "lease_expires_at": (now + chrono::Duration::minutes(lease_mins)).to_rfc3339(),
            "released": released,
            "takeovers": takeovers,
        });
        let name = names::batch_claim(complete, &format!("{}.replay-{suffix}", ready.version()));
        let ops = ops.clone();
        async move {
            gcs.write(&ops, &name, body.to_string().into_bytes(), Some(0))
                .await
                .unwrap();
        }
    };
    claim("dead", -1, false, 0).await;
    claim("crashing", -1, false, MAX_TAKEOVERS).await;
    claim("released", -1, true, 0).await;
    claim("running", 10, false, 0).await;
    let stalled = |got: &[datashare::events::Incoming]| -> Vec<Alert> {
        got.iter()
            .filter_map(|m| Alert::parse(m).ok())
            .filter(|a| a.kind == BATCH_STALLED)
            .collect()
    };
    assert_eq!(worker.restart_abandoned_batches().await.unwrap(), 1);
    let restarted = stack
        .drain("test-batches", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    let keys: Vec<String> = restarted
        .iter()
        .map(|m| BatchReady::parse(m).unwrap().step_key())
        .collect();
    assert_eq!(keys, [format!("{}.replay-dead", ready.version())]);
    // The version got through meanwhile (its first run and a replay): no stalled alert.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = stack.pull("test-alerts").await;
    assert!(stalled(&quiet).is_empty(), "{quiet:?}");

    // Without those done markers the crashing step is reported, not restarted.
    for o in gcs.list(&ops, &prefix).await.unwrap() {
        if o.name.ends_with(".done.json") {
            stack.delete_object(&ops, &o.name).await;
        }
    }
    assert_eq!(worker.restart_abandoned_batches().await.unwrap(), 1);
    let alerts = stack
        .drain("test-alerts", Duration::from_secs(30), |m| {
            !stalled(m).is_empty()
        })
        .await;
    let stalled = stalled(&alerts);
    assert_eq!(stalled.len(), 1, "{alerts:?}");
    assert!(
        stalled[0].summary.contains("perdeu seu worker 4 vezes"),
        "{}",
        stalled[0].summary
    );
}
