//! The worker on the real emulators (fake-gcp/stack.py: Pub/Sub emulator and fake-gcs-server),
//! one stack per test on free ports, stopped by a guard even when the test panics.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datashare::clean::QualityReport;
use datashare::config::{BATCHES_SUBSCRIPTION, Config, EXTRACTS_SUBSCRIPTION};
use datashare::events::{DeliveryRequest, Incoming, Outgoing, Schedule};
use datashare::gcp::{Bus, Gcs};
use datashare::pipeline::{Worker, names};
use datashare::products::manifest::sha256_hex;
use datashare::service::Outcome;
use datashare::service::claim::{self, Claim};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use base64::Engine as _;
use datashare::service::push;
use tokio::sync::watch;

use crate::harness::{
    Proc, Spec, Stack, TestApp, current_batch, generated, partners, publisher, until, upload_day,
};

/// The GCS notification of an object generation, as fake-gcs-server sends it.
fn notification(bucket: &str, name: &str, generation: i64) -> Outgoing {
    let data = json!({"kind": "storage#object", "name": name, "bucket": bucket,
        "generation": generation.to_string(), "size": "1"});
    Outgoing {
        data: data.to_string().into_bytes(),
        attributes: BTreeMap::from([
            ("eventType".to_string(), "OBJECT_FINALIZE".to_string()),
            ("payloadFormat".to_string(), "JSON_API_V1".to_string()),
            ("bucketId".to_string(), bucket.to_string()),
            ("objectId".to_string(), name.to_string()),
            ("objectGeneration".to_string(), generation.to_string()),
        ]),
    }
}

fn incoming(o: &Outgoing, id: &str) -> Incoming {
    Incoming {
        id: id.to_string(),
        data: o.data.clone(),
        attributes: o.attributes.clone(),
        delivery_attempt: Some(1),
    }
}

/// Checks the batch's curated outputs and quality report against the generator's truth.
async fn check_curated(gcs: &Gcs, cfg: &Config, dt: NaiveDate, truth: &BTreeMap<String, u64>) {
    let curated = &cfg.gcp.buckets.curated;
    for t in ["transactions", "products", "customers"] {
        let name = format!("curated/{t}/dt={dt}/part-00000.parquet");
        assert!(gcs.stat(curated, &name).await.unwrap().is_some(), "{name}");
    }
    let (body, _) = gcs
        .read(curated, &format!("reports/dt={dt}/quality.json"), None)
        .await
        .unwrap()
        .expect("quality report");
    let report: QualityReport = serde_json::from_slice(&body).unwrap();
    for (t, rows) in truth {
        let r = &report.tables[t];
        assert!(r.balances(), "{t} does not balance");
        assert_eq!(
            r.rows_read, *rows,
            "{t}: a part uploaded twice must not double"
        );
    }
}

/// Checks a delivery request's attributes and that its files are what it says.
pub(crate) async fn check_delivery(gcs: &Gcs, m: &Incoming, dt: NaiveDate) -> DeliveryRequest {
    let d = DeliveryRequest::parse(m).expect("a delivery request");
    let a = &m.attributes;
    assert_eq!(a["partner"], "ouchhungry");
    assert_eq!(a["product"], "daily");
    assert_eq!(a["period"], dt.to_string());
    assert_eq!(a["delivery_id"], d.delivery_id);
    assert_eq!(a.get("sink_sftp").map(String::as_str), Some("true"));
    assert_eq!(a.get("sink_api").map(String::as_str), Some("true"));
    assert!(!a.contains_key("sink_email"));
    assert_eq!(
        d.delivery_id,
        sha256_hex(format!("ouchhungry|daily|{dt}|{}", d.product_version).as_bytes())
    );
    assert_eq!(d.files.len(), 2, "parquet and csv");
    for f in &d.files {
        for digest in [&f.file, &f.manifest] {
            let (bucket, name) = digest
                .uri
                .strip_prefix("gs://")
                .unwrap()
                .split_once('/')
                .unwrap();
            let (data, _) = gcs
                .read(bucket, name, None)
                .await
                .unwrap()
                .expect("delivered file");
            assert_eq!(sha256_hex(&data), digest.sha256, "{}", digest.uri);
            assert_eq!(data.len() as u64, digest.bytes);
        }
    }
    assert_eq!(d.files[0].file.sha256, d.product_version);
    d
}

fn is_daily(m: &Incoming) -> bool {
    m.attributes.get("product").map(String::as_str) == Some("daily")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_worker_turns_a_messy_upload_into_one_delivery_per_version() {
    let app = TestApp::spawn(
        Spec::new()
            .watch("deliveries", "test-deliveries")
            .watch("updates", "test-updates"),
    )
    .await;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());

    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let (marker, mut parts, truth) = generated(dt, 400, false);
    parts.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    let gcs = &worker.gcs;
    let raw = &cfg.gcp.buckets.raw;
    // The marker first, then the parts in any order, one of them twice (a new generation).
    gcs.write(raw, &marker.0, marker.1.clone(), None)
        .await
        .unwrap();
    let mut last = (String::new(), 0);
    for (name, data) in &parts {
        last = (
            name.clone(),
            gcs.write(raw, name, data.clone(), None).await.unwrap(),
        );
    }
    let (again, again_data) = parts[0].clone();
    gcs.write(raw, &again, again_data, None).await.unwrap();
    // A duplicated notification.
    let bus = Bus::connect(
        &cfg.gcp.project,
        &["extracts"],
        cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    bus.publish("extracts", notification(raw, &last.0, last.1))
        .await
        .unwrap();

    let ready = current_batch(gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until(
        "the batch's done marker",
        Duration::from_secs(180),
        || async { gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    check_curated(gcs, &cfg, dt, &truth).await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(
        got.len(),
        1,
        "one delivery request per product version: {got:?}"
    );
    assert!(is_daily(&got[0]));
    check_delivery(gcs, &got[0], dt).await;
    // The BigQuery products table's copy of the period's Parquet: the delivered bytes.
    let req = DeliveryRequest::parse(&got[0]).unwrap();
    let parquet = req.files.iter().find(|f| f.format == "parquet").unwrap();
    let table_copy = format!(
        "tables/daily/dt=2026-11-27/partner=ouchhungry/{}",
        parquet.name
    );
    let (copy, _) = gcs
        .read(&cfg.gcp.buckets.products, &table_copy, None)
        .await
        .unwrap()
        .expect("the products table's copy");
    assert_eq!(sha256_hex(&copy), parquet.file.sha256);
    // What the step updated, for the Power BI monitor: once, with the batch version.
    let updates = stack
        .drain("test-updates", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert!(updates[0].attributes.contains_key("traceparent"));
    let u = datashare::events::Updates::parse(&updates[0]).unwrap();
    assert_eq!(
        (u.dt.as_str(), u.batch_version),
        ("2026-11-27", ready.step_key())
    );
    assert_eq!(
        u.tables,
        [
            "curated/customers",
            "curated/products",
            "curated/transactions",
            "products/daily"
        ]
    );

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_race_for_one_batch_claim() {
    let app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let a = Arc::new(app.worker().await);
    let b = Arc::new(app.worker().await);
    let ops = &cfg.gcp.buckets.ops;
    let lease = Duration::from_secs(60);

    // The claim itself: of two concurrent takers one wins, the other gets 412 and backs off.
    let name = "claims/test/race.json";
    let (x, y) = tokio::join!(
        claim::take(&a.gcs, ops, name, "a", lease),
        claim::take(&b.gcs, ops, name, "b", lease)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let taken = [&x, &y]
        .iter()
        .filter(|c| matches!(c, Claim::Taken { .. }))
        .count();
    assert_eq!(taken, 1, "{x:?} {y:?}");
    assert!([&x, &y].iter().any(|c| matches!(c, Claim::Held { .. })));
    // An expired claim is taken over once, conditionally on its generation.
    let name = "claims/test/expired.json";
    let first = claim::take(&a.gcs, ops, name, "a", Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        first,
        Claim::Taken {
            took_over: false,
            ..
        }
    ));
    let second = claim::take(&b.gcs, ops, name, "b", lease).await.unwrap();
    assert!(
        matches!(
            second,
            Claim::Taken {
                took_over: true,
                ..
            }
        ),
        "{second:?}"
    );
    let third = claim::take(&a.gcs, ops, name, "a", lease).await.unwrap();
    assert!(
        matches!(&third, Claim::Held { owner, .. } if owner == "b"),
        "{third:?}"
    );

    // Stage the batch through worker a's handler (no subscriber runs in this test).
    let dt = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
    let (written, truth) = upload_day(&a.gcs, &cfg, dt, 200, false).await;
    for (i, (name, generation)) in written.iter().enumerate() {
        let n = notification(&cfg.gcp.buckets.raw, name, *generation);
        let outcome = a
            .handle(EXTRACTS_SUBSCRIPTION, &incoming(&n, &format!("n{i}")))
            .await;
        assert_eq!(outcome, Outcome::Ack, "{name}");
    }

    // Both workers get the same batch at once: one runs the step, the other backs off (or,
    // if the first already finished, finds the done marker).
    let ready = current_batch(&a.gcs, &cfg, dt).await;
    // A version naming a part at another generation than the bucket's (replaced since) is
    // skipped: acknowledged, no claim taken.
    let mut stale = ready.clone();
    stale.files[0].generation += 1;
    let stale_msg = incoming(&stale.to_message(), "batch-stale");
    assert_eq!(
        a.handle(BATCHES_SUBSCRIPTION, &stale_msg).await,
        Outcome::Ack
    );
    let stale_claim = names::batch_claim(dt, &stale.step_key());
    assert!(a.gcs.stat(ops, &stale_claim).await.unwrap().is_none());
    let msg = incoming(&ready.to_message(), "batch-1");
    let race = |w: &Arc<Worker>| {
        let (w, msg) = (w.clone(), msg.clone());
        tokio::spawn(async move { w.handle(BATCHES_SUBSCRIPTION, &msg).await })
    };
    let (ta, tb) = (race(&a), race(&b));
    let (oa, ob) = (ta.await.unwrap(), tb.await.unwrap());
    assert!(oa == Outcome::Ack || ob == Outcome::Ack, "{oa:?} {ob:?}");
    // A redelivery after the step is acknowledged without running it again.
    assert_eq!(b.handle(BATCHES_SUBSCRIPTION, &msg).await, Outcome::Ack);
    assert_eq!(a.handle(BATCHES_SUBSCRIPTION, &msg).await, Outcome::Ack);
    assert!(
        a.gcs
            .stat(ops, &names::batch_done(dt, &ready.version()))
            .await
            .unwrap()
            .is_some()
    );
    check_curated(&a.gcs, &cfg, dt, &truth).await;

    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&a.gcs, &got[0], dt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_the_layout_are_dead_lettered_once_and_acked() {
    let app = TestApp::spawn(Spec::new()).await;
    let cfg = app.cfg.clone();
    let worker = Arc::new(app.worker().await);
    let raw = cfg.gcp.buckets.raw.clone();

    // Handled directly: acknowledged (never retried) after one dead letter.
    let n = notification(&raw, "uploads/readme.txt", 1);
    assert_eq!(
        worker
            .handle(EXTRACTS_SUBSCRIPTION, &incoming(&n, "x1"))
            .await,
        Outcome::Ack
    );
    let garbage = Incoming {
        id: "x2".into(),
        data: b"not json".to_vec(),
        ..Incoming::default()
    };
    assert_eq!(
        worker.handle(BATCHES_SUBSCRIPTION, &garbage).await,
        Outcome::Ack
    );

    // Through the subscription: a real upload outside the layout.
    app.run("worker", worker.clone());
    let stack = &app.stack;
    let stray = "extracts/transactions/dt=2026-11-27/notes.txt";
    worker
        .gcs
        .write(&raw, stray, b"hello".to_vec(), None)
        .await
        .unwrap();

    let letters = stack
        .drain(
            "extracts-worker-dead-letter-alert",
            Duration::from_secs(60),
            |m| {
                m.iter()
                    .any(|l| l.attributes.get("objectId").map(String::as_str) == Some(stray))
            },
        )
        .await;
    let kinds: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.attributes["error_kind"].as_str(),
                l.attributes["objectId"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("unknown_layout", "uploads/readme.txt"),
            ("unknown_layout", stray)
        ],
        "one dead letter per failure"
    );
    for l in &letters {
        assert_eq!(l.attributes["source_subscription"], "extracts-worker");
        assert_eq!(l.attributes["source_topic"], "extracts");
        assert!(!l.attributes["error"].is_empty());
    }
    let batches = stack
        .drain(
            "batches-worker-dead-letter-alert",
            Duration::from_secs(30),
            |m| !m.is_empty(),
        )
        .await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].attributes["error_kind"], "malformed_message");
    assert_eq!(batches[0].data, b"not json");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_worker_through_the_emulators_push_subscriptions() {
    let app = TestApp::spawn(
        Spec::new()
            .push("worker")
            .watch("deliveries", "test-deliveries"),
    )
    .await;
    let port = app.push_port("worker");
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());

    let base = format!("http://127.0.0.1:{port}");
    let health = stack
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let bad = stack
        .http
        .post(format!("{base}/push/extracts"))
        .body("not an envelope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let dt = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    let (_, truth) = upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until(
        "the batch's done marker",
        Duration::from_secs(120),
        || async { worker.gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    check_curated(&worker.gcs, &cfg, dt, &truth).await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&worker.gcs, &got[0], dt).await;
    app.stop().await;
}

/// With `[push].verify` on (as on Cloud Run), a push endpoint handles only requests carrying an
/// OIDC token of the push account for its audience, signed by a key of the JWK set (here a
/// throwaway RSA key served on loopback): no token, another audience or another signer get 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_requests_need_the_push_accounts_token_when_verification_is_on() {
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const AUD: &str = "https://datashare-worker.push.test.invalid";
    const SA: &str = "datashare-invoker@test.iam.gserviceaccount.com";
    let key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let stranger = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = key.public_key();
    let jwks = json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
        "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
        "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
    }]})
    .to_string();
    let certs = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let body = jwks.clone();
            async move { body }
        }),
    );
    let certs_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let certs_url = format!("http://{}/certs", certs_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(certs_listener, certs).await });
    let token = |pair: &RsaKeyPair, aud: &str| {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"iss": "https://accounts.google.com", "aud": aud, "email": SA,
            "email_verified": true, "iat": now, "exp": now + 600});
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}).to_string()),
            B64.encode(claims.to_string())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("Bearer {input}.{}", B64.encode(sig))
    };

    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(
        &partners(dir.path()),
        &[
            ("DATASHARE_PUSH_VERIFY", "true"),
            ("DATASHARE_PUSH_AUDIENCE", AUD),
            ("DATASHARE_PUSH_SERVICE_ACCOUNT", SA),
            ("DATASHARE_PUSH_JWKS_URL", certs_url.as_str()),
        ],
    );
    let worker = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    let serving = tokio::spawn(push::serve(worker.clone(), listener, rx));

    let at = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(18, 0, 0)
        .unwrap();
    let tick = Schedule::Tick { at: at.and_utc() }.to_message();
    let envelope = json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(&tick.data),
            "attributes": tick.attributes,
            "messageId": "1",
        },
        "subscription": "projects/datashare-local/subscriptions/schedules-worker",
    })
    .to_string();
    let push = |auth: Option<String>| {
        let mut req = stack
            .http
            .post(format!("{base}/push/schedules"))
            .body(envelope.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(push(None).await, 401, "no token");
    assert_eq!(
        push(Some(token(&key, "https://elsewhere"))).await,
        401,
        "another audience"
    );
    assert_eq!(
        push(Some(token(&stranger, AUD))).await,
        401,
        "another signer"
    );
    assert_eq!(
        push(Some(token(&key, AUD))).await,
        204,
        "the push account's token"
    );
    let health = stack
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "health needs no token");
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_file_holds_the_products_until_the_batch_is_released() {
    let app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;
    let ops = cfg.gcp.buckets.ops.clone();

    // One part per table can never be parsed: each is one dead letter, the batch step still
    // writes what it can, and the products are held.
    let dt = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    upload_day(gcs, &cfg, dt, 200, true).await;
    let ready = current_batch(gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    until(
        "the held batch's done marker",
        Duration::from_secs(120),
        || async { gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    let (body, _) = gcs.read(&ops, &done, None).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["held"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(
        gcs.stat(
            &cfg.gcp.buckets.curated,
            &format!("reports/dt={dt}/quality.json")
        )
        .await
        .unwrap()
        .is_some()
    );
    let letters = stack
        .drain(
            "extracts-worker-dead-letter-alert",
            Duration::from_secs(60),
            |m| m.len() >= 3,
        )
        .await;
    assert_eq!(letters.len(), 3, "one dead letter per failed file");
    assert!(
        letters
            .iter()
            .all(|l| l.attributes["error_kind"] == "invalid_extract")
    );
    let none = stack
        .drain("test-deliveries", Duration::from_secs(30), |_| true)
        .await;
    assert!(none.is_empty(), "held products are not delivered: {none:?}");

    // The team releases the batch without the failed files (the CLI, as an operator would).
    let out = crate::run_ok(
        crate::datashare_cmd()
            .args(["release", "--date", &dt.to_string()])
            .envs(&stack.env),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released batch"));
    let released = names::batch_done(dt, &format!("{}.release", ready.version()));
    until(
        "the release's done marker",
        Duration::from_secs(120),
        || async { gcs.stat(&ops, &released).await.unwrap() },
    )
    .await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(gcs, &got[0], dt).await;
    app.stop().await;
}

/// Kills a worker (a real process, SIGKILL: no cleanup) at an injected point of the batch step,
/// drops its messages (as if Pub/Sub had given up on them: the test does not rely on the
/// emulator's redelivery) and starts another: a tick finds the abandoned claim, publishes the
/// batch again, the new worker takes the claim over and the batch completes with exactly one
/// delivery request.
async fn killed_at(point: &str, dt: NaiveDate) {
    let app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    let (stack, cfg, partners) = (&app.stack, app.cfg.clone(), app.partners.clone());
    // Short claim leases (2 × 10 s), so the takeover comes soon.
    let lease = [
        ("DATASHARE_STEP_TIMEOUT_SECS", "10"),
        ("DATASHARE_LEASE_EXTENSION_SECS", "10"),
    ];
    let crash = format!("crash:{point}");
    let mut a = Proc::worker(
        stack,
        &partners,
        &[lease[0], lease[1], ("DATASHARE_FAULTS", crash.as_str())],
    );
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    upload_day(&gcs, &cfg, dt, 200, false).await;

    // Worker a dies at the point, holding the claim and its messages.
    let status = a.exit(Duration::from_secs(120)).await;
    assert!(
        !status.success(),
        "the injected crash kills the worker: {status:?}"
    );
    stack.forget(BATCHES_SUBSCRIPTION).await;
    let ready = current_batch(&gcs, &cfg, dt).await;
    let ops = cfg.gcp.buckets.ops.clone();
    let done = names::batch_done(dt, &ready.version());
    assert!(gcs.stat(&ops, &done).await.unwrap().is_none());
    let first = stack
        .drain("test-deliveries", Duration::from_secs(15), |_| true)
        .await;
    let published_before = usize::from(point == "before_done");
    assert_eq!(first.len(), published_before, "{point}: {first:?}");

    // Worker b gets ticks (Cloud Scheduler's, every 5 minutes in production); once the dead
    // worker's lease has run out a tick publishes the batch again, b takes the claim over and
    // finishes the step without publishing what was already published.
    let mut b = Proc::worker(stack, &partners, &lease);
    let schedules = publisher(&cfg, &cfg.gcp.topics.schedules).await;
    until("the done marker", Duration::from_secs(240), || async {
        // At 15:00 UTC: outside the sink checks' window before the 06:00 local deadline.
        let at = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(15, 0, 0)
            .unwrap();
        let tick = Schedule::Tick { at: at.and_utc() };
        schedules
            .publish(&cfg.gcp.topics.schedules, tick.to_message())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    let again = stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            m.len() + published_before >= 1
        })
        .await;
    assert_eq!(
        again.len() + published_before,
        1,
        "{point}: one delivery request in all: {again:?}"
    );
    let taken = claim::read(&gcs, &ops, &names::batch_claim(dt, &ready.version()))
        .await
        .unwrap()
        .expect("the claim");
    assert_eq!(taken.takeovers, 1, "{point}: taken over once: {taken:?}");

    // SIGTERM: the worker finishes in-flight messages and exits cleanly.
    let pid = b.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = b.exit(Duration::from_secs(60)).await;
    assert!(status.success(), "graceful shutdown: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_taking_the_claim_is_taken_over() {
    killed_at(
        "after_claim",
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_publishing_is_taken_over_and_publishes_once() {
    killed_at(
        "before_publish",
        NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_its_done_marker_is_taken_over_without_publishing_again() {
    killed_at(
        "before_done",
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    )
    .await;
}

/// Kills a worker right after it published `BatchReady`, before any claim exists, and drops
/// every message of `extracts` and `batches` (lost, or stalled as the emulator's streams can be):
/// no claim means no abandoned-claim restart. Another worker's ticks see the day ready without
/// a claim, note it, publish `BatchReady` again once `unclaimed_restart_after_secs` has passed,
/// and the batch completes with one delivery request and no takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_batch_ready_and_claim_is_restarted_by_the_tick() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let partners = partners(dir.path());
    let cfg = stack.config(&partners, &[]);
    stack.watch("deliveries", "test-deliveries").await;
    let mut a = Proc::worker(
        &stack,
        &partners,
        &[("DATASHARE_FAULTS", "crash:after_batch_ready")],
    );
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    // A recent day: ticks look back `unclaimed_lookback_days` (7) days from their own.
    let dt = chrono::Utc::now().date_naive() - chrono::Days::new(2);
    upload_day(&gcs, &cfg, dt, 200, false).await;
    let status = a.exit(Duration::from_secs(120)).await;
    assert!(
        !status.success(),
        "the injected crash kills the worker: {status:?}"
    );
    stack.forget(EXTRACTS_SUBSCRIPTION).await;
    stack.forget(BATCHES_SUBSCRIPTION).await;
    let ops = cfg.gcp.buckets.ops.clone();
    let claims = gcs
        .list(&ops, &format!("claims/batch/dt={dt}/"))
        .await
        .unwrap();
    assert!(claims.is_empty(), "no claim was taken: {claims:?}");
    let ready = current_batch(&gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());

    let _b = Proc::worker(
        &stack,
        &partners,
        &[("DATASHARE_UNCLAIMED_RESTART_AFTER_SECS", "3")],
    );
    let schedules = publisher(&cfg, &cfg.gcp.topics.schedules).await;
    until("the done marker", Duration::from_secs(240), || async {
        let at = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(15, 0, 0)
            .unwrap();
        let tick = Schedule::Tick { at: at.and_utc() };
        schedules
            .publish(&cfg.gcp.topics.schedules, tick.to_message())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    let taken = claim::read(&gcs, &ops, &names::batch_claim(dt, &ready.version()))
        .await
        .unwrap()
        .expect("the claim");
    assert_eq!(
        taken.takeovers, 0,
        "a fresh claim, not a takeover: {taken:?}"
    );
    let (state, _) = gcs
        .read(&ops, &names::unclaimed(dt, &ready.step_key()), None)
        .await
        .unwrap()
        .expect("the tick noted the unclaimed batch");
    let state: Value = serde_json::from_slice(&state).unwrap();
    assert!(state["restarts"].as_u64() >= Some(1), "restarted: {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_step_longer_than_the_ack_deadline_runs_once() {
    let app = TestApp::spawn(
        Spec::new()
            .push("worker")
            .watch("deliveries", "test-deliveries"),
    )
    .await;
    app.stack.ack_deadline(BATCHES_SUBSCRIPTION, 10).await;
    let cfg = app.cfg.clone();
    let mut worker = app.worker().await;
    worker.faults = datashare::service::faults::Faults::parse("delay:batch_step:25").unwrap();
    let worker = Arc::new(worker);
    app.run("worker", worker.clone());
    let stack = &app.stack;

    let started = Instant::now();
    let dt = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until("the done marker", Duration::from_secs(180), || async {
        worker.gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(25));
    // Redeliveries during the step found the claim held (503); after it, the done marker (204).
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&worker.gcs, &got[0], dt).await;
    app.stop().await;
}

/// Pull mode: the subscriber extends the lease of a step longer than the ack deadline, so the
/// message that runs it is not redelivered meanwhile (its trace id would show up again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_step_longer_than_the_ack_deadline_keeps_its_lease_and_runs_once() {
    let mut app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    app.stack.ack_deadline(BATCHES_SUBSCRIPTION, 10).await;
    app.cfg.worker.lease_extension_secs = 10;
    let cfg = app.cfg.clone();
    let mut worker = app.worker().await;
    worker.faults = datashare::service::faults::Faults::parse("delay:batch_step:25").unwrap();
    let worker = Arc::new(worker);
    app.run("worker", worker.clone());
    let stack = &app.stack;

    let dt = NaiveDate::from_ymd_opt(2026, 11, 19).unwrap();
    upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until("the done marker", Duration::from_secs(180), || async {
        worker.gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");

    let logs = crate::harness::captured_logs();
    let version = ready.version();
    let ran: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("batch step ran") && l.contains(&format!("dt={dt}")))
        .filter(|l| l.contains("subscription=\"batches-worker\""))
        .collect();
    let taken: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("batch claim taken") && l.contains(&version))
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let trace = taken[0]
        .split("trace_id=")
        .nth(1)
        .and_then(|t| t.split(['}', ' ']).next())
        .expect("the step's message span has a trace id");
    let seen: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&format!("trace_id={trace}")) && l.contains("batches-worker"))
        .filter(|l| !l.contains("attempt=1 "))
        .collect();
    assert!(seen.is_empty(), "redelivered during the step: {seen:?}");
    assert!(
        ran.iter().any(|l| l.contains(&format!("trace_id={trace}"))),
        "{ran:?}"
    );
    app.stop().await;
}

/// Each batch step writes its batch's window file; a day that has none (a batch from before
/// window files, or a contract added since) gets one from its curated files, and the next
/// day's daily build reads it streamed from the curated bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_files_are_written_refilled_and_read_from_the_bucket() {
    let app = TestApp::spawn(Spec::new().watch("deliveries", "test-deliveries")).await;
    let worker = app.spawn_worker().await;
    let (stack, cfg) = (&app.stack, app.cfg.clone());
    let gcs = &worker.gcs;
    let (curated, ops) = (&cfg.gcp.buckets.curated, &cfg.gcp.buckets.ops);
    let done = |dt: NaiveDate| {
        let cfg = cfg.clone();
        async move {
            let ready = current_batch(gcs, &cfg, dt).await;
            let done = names::batch_done(dt, &ready.version());
            until(
                "the batch's done marker",
                Duration::from_secs(180),
                || async { gcs.stat(ops, &done).await.unwrap() },
            )
            .await;
        }
    };
    let (d1, d2) = (
        NaiveDate::from_ymd_opt(2026, 11, 26).unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
    );
    upload_day(gcs, &cfg, d1, 300, false).await;
    done(d1).await;
    let first = gcs.list(curated, "window/dt=2026-11-26/").await.unwrap();
    assert_eq!(first.len(), 1, "one file per daily contract: {first:?}");
    assert!(
        first[0]
            .name
            .starts_with("window/dt=2026-11-26/ouchhungry-")
    );
    stack.delete_object(curated, &first[0].name).await;

    upload_day(gcs, &cfg, d2, 300, false).await;
    done(d2).await;
    let refilled = gcs.stat(curated, &first[0].name).await.unwrap();
    assert!(refilled.is_some(), "day 1's window file written again");
    let second = gcs.list(curated, "window/dt=2026-11-27/").await.unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| m.len() >= 2)
        .await;
    let req = got
        .iter()
        .find(|m| m.attributes.get("period").map(String::as_str) == Some("2026-11-27"))
        .expect("day 2's delivery request");
    let req = check_delivery(gcs, req, d2).await;
    let (bucket, name) = req.files[0].manifest.uri["gs://".len()..]
        .split_once('/')
        .unwrap();
    let (manifest, _) = gcs.read(bucket, name, None).await.unwrap().unwrap();
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["source_batches"],
        json!(["2026-11-26", "2026-11-27"]),
        "day 1 counted in day 2's window"
    );
    app.stop().await;
}
